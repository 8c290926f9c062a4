"""Request IDs, JSON access logs (no headers, no keys) and a last-resort 500 with the ID."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode

from etl_platform.observability.logs import JsonFormatter, log_context

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SECRET_PARAM = re.compile(r"key|token|secret|password|auth", re.IGNORECASE)
access_log = logging.getLogger("etl_platform.api.access")
error_log = logging.getLogger("etl_platform.api.error")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when well-formed, else a new one."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            candidate = value.decode("latin-1")
            if _REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def safe_query(query_string: bytes) -> str:
    """The query string with any secret-looking parameter's value masked."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return urlencode([(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in pairs])


class RequestContextMiddleware:
    """Pure ASGI: sets `request.state.request_id`/`started`, echoes X-Request-ID, logs one JSON
    line per request, and answers unhandled errors with a JSON 500 carrying the ID."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope.get("headers", []))
        state = scope.setdefault("state", {})
        state["request_id"], state["started"] = request_id, started
        status = {"code": 500, "sent": False}

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            with log_context(request_id=request_id):
                await self.app(scope, receive, send_with_id)
        except Exception:
            error_log.exception("unhandled error", extra={"fields": {"request_id": request_id}})
            if status["sent"]:
                raise
            body = json.dumps({"detail": "internal server error", "request_id": request_id}).encode()
            await send_with_id({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send_with_id({"type": "http.response.body", "body": body})
        finally:
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info("request", extra={"fields": {
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "query": safe_query(scope.get("query_string", b"")),
                    "status": status["code"],
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "client": client[0] if client else None,
                    "principal": state.get("principal"),
                }})


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for the API's and uvicorn's loggers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
