"""Request helpers shared by the endpoints: parameter patterns, 422s naming the field,
unknown-parameter rejection, timestamps, response metadata, documented errors."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from fastapi import HTTPException, Request

from etl_platform.api.models import Error

TEXT = r"^[^\x00]+$"  # PostgreSQL text cannot hold NUL
TIMESTAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?$"
TIMESTAMP_DOC = "ISO 8601 date-time such as 2024-05-01T00:00:00Z (no offset: UTC)"
CURSOR = r"^[A-Za-z0-9_-]+={0,2}$"
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "missing or invalid API key"},
    429: {"model": Error, "description": "rate limit exceeded, or too many concurrent queries (see Retry-After)"},
    503: {"model": Error, "description": "warehouse or Dagster storage unavailable"},
    504: {"model": Error, "description": "the query ran longer than its limit and was cancelled (narrow it)"},
}


def invalid(field: str, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, naming the query parameter."""
    return HTTPException(422, [{"loc": ["query", field], "msg": message, "type": "value_error"}])


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def reject_unknown_params(request: Request) -> None:
    """422 for a query parameter the route does not declare (a typo must not widen a filter)."""
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return
    known = getattr(route, "_etl_query_names", None)
    if known is None:
        known = frozenset(_query_names(route.dependant))
        route._etl_query_names = known  # computed once per route
    for name in request.query_params:
        if name not in known:
            raise invalid(name, "unknown query parameter")


def timestamp(field: str, raw: str | None) -> dt.datetime | None:
    """An ISO 8601 date-time query parameter; without an offset it is UTC."""
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise invalid(field, "not a valid date-time") from None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


def timeout_detail(path: str, timeout_ms: int) -> str:
    """The 504 answer: what happened and, for /data, how to narrow the query."""
    detail = f"the query ran longer than {timeout_ms / 1000:g}s and was cancelled"
    if path.startswith("/data"):
        detail += ("; narrow it: a longer or rarer q, source or record_type, "
                   "updated_since/updated_until, or a smaller limit")
    return detail


def metadata(request: Request) -> dict[str, Any]:
    """request_id and latency so far, for every response body."""
    return {
        "request_id": request.state.request_id,
        "api_latency_ms": round((time.perf_counter() - request.state.started) * 1000, 3),
    }
