"""GET /health: warehouse, Dagster storage, daemon heartbeat; the last run per tenant only for
a key that may see it (the admin key: every tenant; a tenant's key: its own). Without a key the
answer is aggregate: it names no tenant, and each component is only ok or not (the detail, which
may name a host, port, path or database, is the admin key's). One check of the components serves
every caller for a second or two (`HealthCache`); anonymous callers are rate-limited per client
address (routes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
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


def _dagster_checks(get_instance: Callable[[], Any], settings: ApiSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(dagster, daemon): blocking storage calls, run in a worker thread."""
    dagster, instance = check_dagster(get_instance)
    return dagster, check_daemon(instance, settings)


async def check_components(reader: Reader, get_instance: Callable[[], Any], settings: ApiSettings) -> dict[str, Any]:
    """Warehouse, Dagster storage and daemon, each with its detail (the admin's view)."""
    warehouse = await check_warehouse(reader)
    dagster, daemon = await run_in_threadpool(_dagster_checks, get_instance, settings)
    return {"warehouse": warehouse, "dagster": dagster, "daemon": daemon}


class HealthCache:
    """One check of the components serves every caller for `ttl_s` seconds; callers arriving
    while it runs wait for that same check. A flood of /health never reaches the databases
    more than once per `ttl_s`. `checks`: how many checks ran."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.checks = 0
        self._value: dict[str, Any] | None = None
        self._at = 0.0
        self._locks: dict[Any, asyncio.Lock] = {}  # per event loop (one in production)

    def _fresh(self) -> bool:
        return self._value is not None and time.monotonic() - self._at < self.ttl_s

    async def get(self, compute: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        if self.ttl_s <= 0:
            self.checks += 1
            return await compute()
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            self._locks = {loop: (lock := asyncio.Lock())}
        if not self._fresh():
            async with lock:
                if not self._fresh():
                    self._value = await compute()
                    self._at = time.monotonic()
                    self.checks += 1
        assert self._value is not None
        return self._value


def _last_runs(get_instance: Callable[[], Any], tenants: list[str], dagster: dict[str, Any]) -> dict[str, Any]:
    """The last run per tenant (its own outcome of it); `dagster` is marked failing on an error."""
    last_runs: dict[str, Any] = {}
    if not dagster["ok"]:
        return last_runs
    try:
        for tenant, run in history.last_run_by_tenant(get_instance(), tenants).items():
            at = run and (run.ended_at or run.started_at or run.created_at)
            last_runs[tenant] = {"status": run.status, "at": at.isoformat()} if run else None
    except Exception as exc:
        dagster.update(ok=False, detail=_error(exc))
    return last_runs


async def check_health(
    reader: Reader,
    get_instance: Callable[[], Any],
    tenants: list[str] | None,
    settings: ApiSettings,
    *,
    cache: HealthCache | None = None,
    detail: bool = True,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body): 503 when the warehouse, Dagster or a required daemon fails.
    `tenants`: whose last run to report (None: no per-tenant detail at all). `detail` false:
    each component's status only (ok or not): no host, port, path, role, database or error text.
    `cache`: the components' check shared with other callers for a second or two."""
    checked = await (cache or HealthCache(0)).get(lambda: check_components(reader, get_instance, settings))
    components = {name: dict(value) for name, value in checked.items()}
    last_runs = None
    if tenants is not None:
        last_runs = await run_in_threadpool(_last_runs, get_instance, tenants, components["dagster"])
    failing = [n for n in ("warehouse", "dagster") if not components[n]["ok"]]
    degraded: list[str] = []
    if not components["daemon"]["ok"]:
        (failing if settings.health_require_daemon else degraded).append("daemon")
    status = "unhealthy" if failing else "degraded" if degraded else "ok"
    if not detail:
        components = {name: {"ok": value["ok"]} for name, value in components.items()}
    body = {"status": status, "failing": failing, "degraded": degraded, "components": components,
            "last_runs": last_runs}
    return (503 if failing else 200), body
