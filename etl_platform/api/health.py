"""GET /health: warehouse, Dagster storage, daemon heartbeat; the last run per tenant only for
a key that may see it (the admin key: every tenant; a tenant's key: its own). Without a key the
answer is aggregate: it names no tenant."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from etl_platform.api.db import Reader
from etl_platform.api.queries import ping
from etl_platform.config.settings import ApiSettings
from etl_platform.runs import history
from etl_platform.security.redaction import excerpt

HEALTH_LOCK_TIMEOUT_S = 2.0


def _error(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return excerpt(f"{type(exc).__name__}: {first}", 300)


async def check_warehouse(reader: Reader) -> dict[str, Any]:
    """Reachable and answering; a DuckDB file held by a writer for long is reported busy, not down."""
    started = time.perf_counter()
    warehouse = reader.warehouse
    if warehouse.kind == "duckdb":
        folder = warehouse.duckdb_path.parent
        if not folder.is_dir():
            return {"ok": False, "detail": f"the warehouse folder {folder} does not exist"}
        if not warehouse.duckdb_path.exists():
            return {"ok": True, "detail": "no database file yet (nothing loaded)"}
    try:
        await ping(reader, lock_timeout_s=HEALTH_LOCK_TIMEOUT_S)
    except Exception as exc:
        if warehouse.kind == "duckdb" and "lock" in str(exc).lower():  # our file lock, or DuckDB's own
            return {"ok": True, "detail": "busy: a writer holds the DuckDB lock"}
        return {"ok": False, "detail": _error(exc)}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3)}


def check_dagster(get_instance: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
    """(component, instance or None): the run storage answers a one-row query."""
    started = time.perf_counter()
    try:
        instance = get_instance()
        instance.get_run_records(limit=1)
    except Exception as exc:
        return {"ok": False, "detail": _error(exc)}, None
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3)}, instance


def check_daemon(instance: Any, settings: ApiSettings) -> dict[str, Any]:
    """The newest daemon heartbeat's age; missing or older than the limit is not ok."""
    out: dict[str, Any] = {"ok": False, "required": settings.health_require_daemon}
    if instance is None:
        return {**out, "detail": "Dagster storage unreachable"}
    try:
        ages = history.daemon_heartbeat_ages(instance)
    except Exception as exc:
        return {**out, "detail": _error(exc)}
    if not ages:
        return {**out, "detail": "no daemon heartbeat recorded"}
    age = min(ages.values())
    out["heartbeat_age_s"] = age
    if age > settings.daemon_max_age_s:
        return {**out, "detail": f"last heartbeat {age:.0f}s ago (limit {settings.daemon_max_age_s:.0f}s)"}
    return {**out, "ok": True}


def _dagster_checks(
    get_instance: Callable[[], Any], tenants: list[str] | None, settings: ApiSettings
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(dagster, daemon, last run per tenant or None): blocking storage calls, run in a worker thread."""
    dagster, instance = check_dagster(get_instance)
    daemon = check_daemon(instance, settings)
    if tenants is None:
        return dagster, daemon, None
    last_runs: dict[str, Any] = {}
    if instance is not None:
        try:
            for tenant, run in history.last_run_by_tenant(instance, tenants).items():
                at = run and (run.ended_at or run.started_at or run.created_at)
                last_runs[tenant] = {"status": run.status, "at": at.isoformat()} if run else None
        except Exception as exc:
            dagster.update(ok=False, detail=_error(exc))
    return dagster, daemon, last_runs


async def check_health(
    reader: Reader, get_instance: Callable[[], Any], tenants: list[str] | None, settings: ApiSettings
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): 503 when the warehouse, Dagster or a required daemon fails.
    `tenants`: whose last run to report (None: no per-tenant detail at all)."""
    warehouse = await check_warehouse(reader)
    dagster, daemon, last_runs = await run_in_threadpool(_dagster_checks, get_instance, tenants, settings)
    components = {"warehouse": warehouse, "dagster": dagster, "daemon": daemon}
    failing = [n for n in ("warehouse", "dagster") if not components[n]["ok"]]
    degraded: list[str] = []
    if not daemon["ok"]:
        (failing if settings.health_require_daemon else degraded).append("daemon")
    status = "unhealthy" if failing else "degraded" if degraded else "ok"
    body = {"status": status, "failing": failing, "degraded": degraded, "components": components,
            "last_runs": last_runs}
    return (503 if failing else 200), body
