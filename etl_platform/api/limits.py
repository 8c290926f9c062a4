"""Bounded request heads: a request whose request line and headers exceed `max_bytes` gets 431
before any route, key check or log line handles it.

Two layers, because neither alone bounds both memory and size: `serve()` runs uvicorn's h11
parser with `h11_max_incomplete_event_size`, so a head that keeps arriving is cut off after that
many bytes (the server never buffers more than one socket read beyond it); this middleware then
refuses any complete head larger than the limit (h11 accepts a head that arrives whole).
"""

from __future__ import annotations

import json
from typing import Any

Scope = dict[str, Any]


class HeaderLimitMiddleware:
    """Pure ASGI: 431 Request Header Fields Too Large when the head exceeds `max_bytes`."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and head_size(scope) > self.max_bytes:
            body = json.dumps({"detail": f"request line and headers exceed {self.max_bytes} bytes"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 431,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")],
                }
            )  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def head_size(scope: Scope) -> int:
    """Bytes of the request line and headers as sent (each header line: name, ': ', value, CRLF)."""
    line = len(scope.get("raw_path") or scope.get("path", "").encode()) + len(scope.get("query_string", b"")) + 16
    return line + sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))
