"""The app factory and `serve()` (the CLI's `etl-platform serve` calls it)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from dagster import DagsterInstance
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from etl_platform.api.auth import KeyRing
from etl_platform.api.db import QueryTimeout, Reader
from etl_platform.api.fairness import TenantBusy
from etl_platform.api.health import HealthCache
from etl_platform.api.limits import HeaderLimitMiddleware
from etl_platform.api.middleware import RequestContextMiddleware, configure_logging
from etl_platform.api.params import timeout_detail
from etl_platform.api.ratelimit import RateLimiter
from etl_platform.api.readers import TenantReaders
from etl_platform.api.routes import router
from etl_platform.config import secrets
from etl_platform.config.registry import Registry, load_registry
from etl_platform.config.settings import METRICS_TOKEN_ENV, ApiSettings
from etl_platform.observability import logs
from etl_platform.observability import warnings as known_warnings
from etl_platform.observability.api_metrics import instrument
from etl_platform.runs.history import DagsterUnavailable
from etl_platform.security.redaction import remember
from etl_platform.warehouse import Warehouse, WarehouseError, get_warehouse


def _instance_getter(instance: Any) -> Callable[[], Any]:
    """The injected instance, else DagsterInstance.get() on first use (then kept)."""
    lock, box = threading.Lock(), [instance]

    def get() -> Any:
        if box[0] is None:
            with lock:
                if box[0] is None:
                    try:
                        box[0] = DagsterInstance.get()
                    except Exception as exc:
                        raise DagsterUnavailable(f"cannot load the Dagster instance: {exc}") from exc
        return box[0]

    return get


def create_app(
    registry: Registry | None = None,
    warehouse: Warehouse | None = None,
    instance: Any = None,
    *,
    settings: ApiSettings | None = None,
    keyring: KeyRing | None = None,
    metrics_token: str | None = None,
) -> FastAPI:
    """The read API. Defaults: tenants file (ETL_TENANTS_FILE), ETL_WAREHOUSE_URL, the Dagster
    instance of DAGSTER_HOME (loaded on first use), settings, keys and the /metrics token
    (ETL_METRICS_TOKEN) from the environment."""
    registry = registry or load_registry()
    settings = settings or ApiSettings.from_env()

    def make_reader(wh: Warehouse) -> Reader:
        return Reader(
            wh,
            pool_size=settings.pg_pool_size,
            statement_timeout_ms=settings.statement_timeout_ms,
            duckdb_lock_timeout_s=settings.duckdb_lock_timeout_s,
            tenant_connections=settings.pg_tenant_connections or None,
        )

    reader = make_reader(warehouse or get_warehouse())
    readers = TenantReaders(registry, reader, make_reader)  # tenants with a warehouse of their own

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await readers.close()

    # /docs and /redoc from Swagger UI's and ReDoc's files shipped in fastapi-offline: no CDN, works offline
    app = FastAPIOffline(
        title="etl-platform read API",
        version="1",
        summary="Each tenant's unified records, load stats and platform health.",
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.settings = settings
    app.state.reader = reader
    app.state.readers = readers
    app.state.keyring = keyring or KeyRing.from_env(registry)
    app.state.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
    # anonymous /health: per client address, and one components' check per `health_cache_s`
    app.state.health_limiter = RateLimiter(settings.health_rate_per_s * 60, settings.health_burst)
    app.state.health_cache = HealthCache(settings.health_cache_s)
    app.state.get_instance = _instance_getter(instance)
    app.include_router(router)

    @app.exception_handler(WarehouseError)
    async def _warehouse_down(request: Request, exc: WarehouseError) -> JSONResponse:
        return JSONResponse({"detail": "warehouse unavailable"}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(QueryTimeout)
    async def _query_timeout(request: Request, exc: QueryTimeout) -> JSONResponse:
        return JSONResponse({"detail": timeout_detail(request.url.path, exc.timeout_ms)}, status_code=504)

    @app.exception_handler(TenantBusy)
    async def _tenant_busy(request: Request, exc: TenantBusy) -> JSONResponse:
        detail = (f"too many concurrent queries for this tenant: at most {exc.share} run at once; "
                  "retry when one has finished")
        return JSONResponse({"detail": detail}, status_code=429, headers={"Retry-After": "1"})

    @app.exception_handler(DagsterUnavailable)
    async def _dagster_down(request: Request, exc: DagsterUnavailable) -> JSONResponse:
        return JSONResponse({"detail": "Dagster storage unavailable"}, status_code=503, headers={"Retry-After": "5"})

    if settings.cors_origins:
        any_origin = "*" in settings.cors_origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=["*"] if any_origin else list(settings.cors_origins),
            allow_methods=["GET", "OPTIONS"],
            allow_headers=["Authorization", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            allow_credentials=not any_origin,
        )
    if metrics_token is None:
        metrics_token = secrets.value(METRICS_TOKEN_ENV) or None
        remember(metrics_token)
    instrument(app, reader, metrics_token)  # GET /metrics (Prometheus; bearer token when set)
    app.add_middleware(RequestContextMiddleware)  # every response gets X-Request-ID
    app.add_middleware(HeaderLimitMiddleware, max_bytes=settings.max_header_bytes)  # outermost: 431 before anything
    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory (`--factory etl_platform.api.app:app_from_env`): warning filters and JSON
    logs, then create_app()."""
    known_warnings.install()
    logs.configure_from_env()
    configure_logging()
    return create_app()


def http_limits(settings: ApiSettings | None = None) -> dict[str, Any]:
    """uvicorn settings that bound a request's head in memory: h11 buffers at most
    `max_header_bytes` of an incomplete request line and headers, then answers 400 and closes the
    connection (uvicorn's default parser, httptools, buffers headers without any limit). A head
    that arrives whole is refused by `limits.HeaderLimitMiddleware` (431)."""
    settings = settings or ApiSettings.from_env()
    return {"http": "h11", "h11_max_incomplete_event_size": settings.max_header_bytes}


def serve(host: str = "127.0.0.1", port: int = 8000, *, workers: int = 1, log_level: str = "info") -> None:
    """Run the API with uvicorn (blocks). Each worker process keeps its own pool and rate limits."""
    configure_logging(log_level)
    uvicorn.run(
        "etl_platform.api.app:app_from_env", factory=True, host=host, port=port, workers=workers,
        log_level=log_level, log_config=None, access_log=False, server_header=False, **http_limits(),
    )
