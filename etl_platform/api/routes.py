"""The endpoints: /data, /data/{record_id}, /stats, /admin/stats, /health."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from etl_platform.api import queries
from etl_platform.api.auth import Principal, admin_principal, optional_principal, tenant_principal
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
from etl_platform.api.params import (
    CURSOR,
    ERRORS,
    TEXT,
    TIMESTAMP,
    TIMESTAMP_DOC,
    invalid,
    metadata,
    reject_unknown_params,
    timestamp,
)
from etl_platform.api.ratelimit import retry_after
from etl_platform.config.names import REJECTS_TABLE, raw_table
from etl_platform.runs import history
from etl_platform.runs.history import DagsterUnavailable

router = APIRouter(dependencies=[Depends(reject_unknown_params)])


@router.get("/data", response_model=DataPage, responses=ERRORS, tags=["data"])
async def get_data(
    request: Request,
    principal: Principal = Depends(tenant_principal),
    source: str | None = Query(None, max_length=200, pattern=TEXT, description="exact source name"),
    record_type: str | None = Query(None, max_length=200, pattern=TEXT),
    category: str | None = Query(None, max_length=500, pattern=TEXT),
    status: str | None = Query(None, max_length=200, pattern=TEXT, description="case-insensitive"),
    updated_since: str | None = Query(None, pattern=TIMESTAMP, description="sort_at >= this; " + TIMESTAMP_DOC),
    updated_until: str | None = Query(None, pattern=TIMESTAMP, description="sort_at < this; " + TIMESTAMP_DOC),
    q: str | None = Query(
        None, max_length=200, pattern=TEXT,
        description="case-insensitive text in title or description (a substring); at least "
        f"{queries.MIN_SEARCH_RUN} letters or digits in a row",
    ),
    include_inactive: bool = Query(False, description="also records no longer active at the source"),
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(
        None, max_length=1402, pattern=CURSOR, description="next_cursor of the previous page"
    ),
) -> Any:
    """The tenant's records, newest first (sort_at, then record_id, descending), by keyset pages."""
    since, until = timestamp("updated_since", updated_since), timestamp("updated_until", updated_until)
    try:
        if since is not None and until is not None and since >= until:
            raise invalid("updated_until", "must be later than updated_since")
    except OverflowError:
        raise invalid("updated_until", "out of range") from None
    if q is not None and (problem := queries.search_problem(q)):
        raise invalid("q", problem)
    try:
        after = decode_cursor(cursor) if cursor is not None else None
    except CursorError as exc:
        raise invalid("cursor", str(exc)) from None
    query = queries.DataQuery(
        source=source, record_type=record_type, category=category, status=status, updated_since=since,
        updated_until=until, q=q, include_inactive=include_inactive, limit=limit, after=after,
    )
    reader = request.app.state.readers.for_tenant(principal.tenant_id)
    timeout_ms = request.app.state.settings.data_timeout_ms
    page = await queries.fetch_page(reader, principal.tenant_id, query, timeout_ms=timeout_ms)
    meta = metadata(request)
    meta["pagination"] = {
        "limit": limit,
        "next_cursor": encode_cursor(*page.next_after) if page.next_after else None,
        "has_more": page.next_after is not None,
    }
    # assembled from each row's JSON (built by PostgreSQL, or orjson on DuckDB) rather than
    # re-validated by FastAPI: this is the hot path, and the rows are typed by the table
    body = b'{"data":[' + b",".join(page.rows) + b'],"metadata":' + orjson.dumps(meta) + b"}"
    return Response(body, media_type="application/json")


@router.get(
    "/data/{record_id:path}", response_model=RecordResponse, tags=["data"],
    responses={**ERRORS, 404: {"model": Error, "description": "no such record for this key"}},
)
async def get_record(
    request: Request, record_id: str, principal: Principal = Depends(tenant_principal)
) -> Any:
    """One record by record_id (inactive ones too); another tenant's record is 404 as well."""
    if "\x00" in record_id or len(record_id) > 1024:
        raise HTTPException(404, "record not found")
    reader = request.app.state.readers.for_tenant(principal.tenant_id)
    row = await queries.fetch_record(reader, principal.tenant_id, record_id,
                                     timeout_ms=request.app.state.settings.data_timeout_ms)
    if row is None:
        raise HTTPException(404, "record not found")
    return {"data": row, "metadata": metadata(request)}


def _run_stats(state: Any, tenant: str, window_hours: float, tables: dict[str, list[str]], now: dt.datetime) -> list:
    instance = state.get_instance()
    try:
        return history.source_stats(instance, tenant, window_hours, sources=list(tables), tables=tables, now=now)
    except SQLAlchemyError as exc:
        raise DagsterUnavailable(f"Dagster run storage query failed: {exc}") from exc


def configured_tables(state: Any, tenant: str) -> dict[str, list[str]]:
    """The tenant's configured sources (from the tenants file), each with its raw tables: the only
    sources its /stats names, whatever its runs selected or its warehouse holds."""
    return {
        s.name: [raw_table(s.name, r) for r in s.resource_names if r != REJECTS_TABLE]
        for s in state.registry.tenant(tenant).sources
    }


async def tenant_stats(
    request: Request, tenant: str, window_hours: float, only: str | None = None
) -> dict[str, Any]:
    """Run stats per configured source (Dagster, in a worker thread) merged with active-record
    counts (warehouse); `only`: one configured source (else 404)."""
    state = request.app.state
    now = dt.datetime.now(dt.timezone.utc)
    tables = configured_tables(state, tenant)
    if only is not None:
        if only not in tables:
            raise HTTPException(404, "source not found")
        tables = {only: tables[only]}
    records = [r for r in await queries.active_counts(state.readers.for_tenant(tenant), tenant)
               if r["source"] in tables]
    sources = await run_in_threadpool(_run_stats, state, tenant, window_hours, tables, now)
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
async def get_stats(
    request: Request,
    principal: Principal = Depends(tenant_principal),
    window_hours: float = WINDOW,
    source: str | None = Query(None, max_length=200, pattern=TEXT, description="only this source"),
) -> Any:
    """Per configured source: last success, last failure and why (the tenant's own failure only),
    runs by status, loads, freshness. Another tenant's source, or any source not configured, is 404."""
    stats = await tenant_stats(request, principal.tenant_id, window_hours, source)
    return {**stats, "metadata": metadata(request)}


@router.get(
    "/admin/stats", response_model=AdminStatsResponse, tags=["admin"],
    responses={**ERRORS, 404: {"model": Error, "description": "no such tenant"}},
)
async def get_admin_stats(
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
    tenants = [await tenant_stats(request, t, window_hours) for t in ids]
    return {"tenants": tenants, "metadata": metadata(request)}


@router.get(
    "/health", response_model=HealthResponse, tags=["health"],
    openapi_extra={"security": [{}]},  # the key is optional: `{}` beside the bearer requirement
    responses={
        401: ERRORS[401], 429: ERRORS[429],
        503: {"model": HealthResponse, "description": "a component is failing (see `failing`)"},
    },
)
async def get_health(request: Request, principal: Principal | None = Depends(optional_principal)) -> Any:
    """Warehouse and Dagster storage reachable, daemon heartbeat; no key needed (then rate-limited
    per client address, and each component's status without detail: the admin key gets the
    detail). The last run per tenant only with a key: every tenant's with the admin key, the
    tenant's own with its key."""
    state = request.app.state
    if principal is None:
        tenants = None
        wait = state.health_limiter.take(f"ip:{request.client.host if request.client else '-'}")
        if wait > 0:
            raise HTTPException(429, "rate limit exceeded", headers={"Retry-After": retry_after(wait)})
    else:
        tenants = state.registry.tenant_ids if principal.is_admin else [principal.tenant_id]
    code, body = await check_health(state.reader, state.get_instance, tenants, state.settings,
                                    cache=state.health_cache, detail=principal is not None and principal.is_admin)
    if code != 200:
        return JSONResponse(HealthResponse.model_validate(body).model_dump(mode="json"), status_code=code)
    return body
