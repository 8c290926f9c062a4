"""The endpoints: /data, /data/{record_id}, /stats, /admin/stats, /health."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from etl_platform import runs
from etl_platform.api import queries
from etl_platform.api.auth import Principal, admin_principal, tenant_principal
from etl_platform.api.cursor import CursorError, decode_cursor, encode_cursor
from etl_platform.api.health import check_health
from etl_platform.api.models import (
    AdminStatsResponse,
    DataPage,
    Error,
    HealthResponse,
    RecordResponse,
    StatsResponse,
)

_ALLOWED: dict[int, frozenset[str]] = {}


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def reject_unknown_params(request: Request) -> None:
    """422 for a query parameter the route does not declare (a typo must not widen a filter)."""
    route = request.scope.get("route")
    if route is None or not hasattr(route, "dependant"):
        return
    allowed = _ALLOWED.get(id(route))
    if allowed is None:
        allowed = _ALLOWED[id(route)] = frozenset(_query_names(route.dependant))
    for name in request.query_params:
        if name not in allowed:
            raise invalid(name, "unknown query parameter")


router = APIRouter(dependencies=[Depends(reject_unknown_params)])


class DagsterUnavailable(RuntimeError):
    """The Dagster instance (DAGSTER_HOME) cannot be loaded or queried (answered with 503)."""

TEXT = r"^[^\x00]+$"  # PostgreSQL text cannot hold NUL
TIMESTAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?$"
TIMESTAMP_DOC = "ISO 8601 date-time such as 2024-05-01T00:00:00Z (no offset: UTC)"
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Error, "description": "missing or invalid API key"},
    429: {"model": Error, "description": "rate limit exceeded (see Retry-After)"},
    503: {"model": Error, "description": "warehouse or Dagster storage unavailable"},
}


def metadata(request: Request) -> dict[str, Any]:
    """request_id and latency so far, for every response body."""
    return {
        "request_id": request.state.request_id,
        "api_latency_ms": round((time.perf_counter() - request.state.started) * 1000, 3),
    }


def invalid(field: str, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, naming the query parameter."""
    return HTTPException(422, [{"loc": ["query", field], "msg": message, "type": "value_error"}])


def timestamp(field: str, raw: str | None) -> dt.datetime | None:
    """An ISO 8601 date-time query parameter; without an offset it is UTC."""
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise invalid(field, "not a valid date-time") from None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


@router.get("/data", response_model=DataPage, responses=ERRORS, tags=["data"])
def get_data(
    request: Request,
    principal: Principal = Depends(tenant_principal),
    source: str | None = Query(None, max_length=200, pattern=TEXT, description="exact source name"),
    record_type: str | None = Query(None, max_length=200, pattern=TEXT),
    category: str | None = Query(None, max_length=500, pattern=TEXT),
    status: str | None = Query(None, max_length=200, pattern=TEXT, description="case-insensitive"),
    updated_since: str | None = Query(None, pattern=TIMESTAMP, description="sort_at >= this; " + TIMESTAMP_DOC),
    updated_until: str | None = Query(None, pattern=TIMESTAMP, description="sort_at < this; " + TIMESTAMP_DOC),
    q: str | None = Query(None, max_length=200, pattern=TEXT, description="text in title or description"),
    include_inactive: bool = Query(False, description="also records no longer active at the source"),
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(
        None, max_length=1402, pattern=r"^[A-Za-z0-9_-]+={0,2}$", description="next_cursor of the previous page"
    ),
) -> Any:
    """The tenant's records, newest first (sort_at, then record_id, descending), by keyset pages."""
    since, until = timestamp("updated_since", updated_since), timestamp("updated_until", updated_until)
    try:
        if since is not None and until is not None and since >= until:
            raise invalid("updated_until", "must be later than updated_since")
    except OverflowError:
        raise invalid("updated_until", "out of range") from None
    try:
        after = decode_cursor(cursor) if cursor is not None else None
    except CursorError as exc:
        raise invalid("cursor", str(exc)) from None
    query = queries.DataQuery(
        source=source, record_type=record_type, category=category, status=status, updated_since=since,
        updated_until=until, q=q, include_inactive=include_inactive, limit=limit, after=after,
    )
    tenant = principal.tenant_id
    rows, has_more = request.app.state.reader.run(lambda conn: queries.fetch_page(conn, tenant, query))
    next_cursor = encode_cursor(rows[-1]["sort_at"], rows[-1]["record_id"]) if has_more else None
    meta = metadata(request)
    meta["pagination"] = {"limit": limit, "next_cursor": next_cursor, "has_more": has_more}
    return {"data": rows, "metadata": meta}


@router.get(
    "/data/{record_id:path}", response_model=RecordResponse, tags=["data"],
    responses={**ERRORS, 404: {"model": Error, "description": "no such record for this key"}},
)
def get_record(request: Request, record_id: str, principal: Principal = Depends(tenant_principal)) -> Any:
    """One record by record_id (inactive ones too); another tenant's record is 404 as well."""
    if "\x00" in record_id or len(record_id) > 1024:
        raise HTTPException(404, "record not found")
    tenant = principal.tenant_id
    row = request.app.state.reader.run(lambda conn: queries.fetch_record(conn, tenant, record_id))
    if row is None:
        raise HTTPException(404, "record not found")
    return {"data": row, "metadata": metadata(request)}


def tenant_stats(request: Request, tenant: str, window_hours: float) -> dict[str, Any]:
    """Run stats per source (Dagster) merged with active-record counts (warehouse)."""
    state = request.app.state
    now = dt.datetime.now(dt.timezone.utc)
    records = state.reader.run(lambda conn: queries.active_counts(conn, tenant))
    configured = [s.name for s in state.registry.tenant(tenant).sources]
    in_warehouse = [r["source"] for r in records]
    instance = state.get_instance()
    try:
        sources = runs.source_stats(instance, tenant, window_hours, sources=[*configured, *in_warehouse], now=now)
    except SQLAlchemyError as exc:
        raise DagsterUnavailable(f"Dagster run storage query failed: {exc}") from exc
    for item in sources:
        mine = [r for r in records if r["source"] == item["source"]]
        newest = max((r["newest_record_at"] for r in mine if r["newest_record_at"]), default=None)
        item["active_records"] = sum(r["active_records"] for r in mine)
        item["newest_record_at"] = newest
        item["newest_record_age_s"] = round((now - newest).total_seconds(), 3) if newest else None
    return {"tenant": tenant, "window_hours": window_hours, "generated_at": now, "sources": sources,
            "records": records}


WINDOW = Query(24.0, gt=0, le=24 * 90, description="hours back for run counts, durations and loads")


@router.get(
    "/stats", response_model=StatsResponse, tags=["stats"],
    responses={**ERRORS, 404: {"model": Error, "description": "no such source for this key"}},
)
def get_stats(
    request: Request,
    principal: Principal = Depends(tenant_principal),
    window_hours: float = WINDOW,
    source: str | None = Query(None, max_length=200, pattern=TEXT, description="only this source"),
) -> Any:
    """Per source: last success, last failure and why, runs by status, loads, freshness."""
    stats = tenant_stats(request, principal.tenant_id, window_hours)
    if source is not None:
        stats["sources"] = [s for s in stats["sources"] if s["source"] == source]
        stats["records"] = [r for r in stats["records"] if r["source"] == source]
        if not stats["sources"]:
            raise HTTPException(404, "source not found")
    return {**stats, "metadata": metadata(request)}


@router.get(
    "/admin/stats", response_model=AdminStatsResponse, tags=["admin"],
    responses={**ERRORS, 404: {"model": Error, "description": "no such tenant"}},
)
def get_admin_stats(
    request: Request,
    principal: Principal = Depends(admin_principal),
    window_hours: float = WINDOW,
    tenant: str | None = Query(None, max_length=200, pattern=TEXT, description="only this tenant"),
) -> Any:
    """The /stats of every tenant (admin key)."""
    ids = request.app.state.registry.tenant_ids
    if tenant is not None:
        if tenant not in ids:
            raise HTTPException(404, "tenant not found")
        ids = [tenant]
    return {"tenants": [tenant_stats(request, t, window_hours) for t in ids], "metadata": metadata(request)}


@router.get(
    "/health", response_model=HealthResponse, tags=["health"],
    responses={503: {"model": HealthResponse, "description": "a component is failing (see `failing`)"}},
)
def get_health(request: Request) -> Any:
    """Warehouse and Dagster storage reachable, daemon heartbeat, last run per tenant; no key."""
    state = request.app.state
    code, body = check_health(state.reader, state.get_instance, state.registry.tenant_ids, state.settings)
    if code != 200:
        return JSONResponse(HealthResponse.model_validate(body).model_dump(mode="json"), status_code=code)
    return body
