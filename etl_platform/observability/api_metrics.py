"""Prometheus metrics of the read API, served at GET /metrics (prometheus-client).

Requests by method, route template and status (never raw paths, ids or keys), their latency
histogram, requests in flight, rate-limit rejections (429), database errors (warehouse or
Dagster storage unavailable) and the PostgreSQL pool's slots in use and waiters. Each API
process has its own registry (uvicorn workers count separately). An optional bearer token
(ETL_METRICS_TOKEN) guards the endpoint for deployments that publish it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from etl_platform.runs.history import DagsterUnavailable
from etl_platform.security.tokens import WWW_AUTHENTICATE, bearer_allows
from etl_platform.warehouse import WarehouseError

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNMATCHED = "<unmatched>"
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}  # others: OTHER (a client picks it)


class PoolCollector(Collector):
    """The warehouse pool's state, read at scrape time from `reader.pool_stats()`."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.reader.pool_stats() or {}
        for name, key, text in (
            ("etl_api_db_pool_size", "size", "PostgreSQL connections the pool may hold"),
            ("etl_api_db_pool_in_use", "in_use", "warehouse queries holding a pool slot"),
            ("etl_api_db_pool_waiting", "waiting", "warehouse queries waiting for a pool slot"),
        ):
            family = GaugeMetricFamily(name, text)
            if key in stats:
                family.add_metric([], stats[key])
            yield family


class ApiMetrics:
    """The API's metric families, in a registry of their own."""

    def __init__(self, reader: Any) -> None:
        self.registry = CollectorRegistry()
        labels = ["method", "route", "status"]
        self.requests = Counter("etl_api_requests", "HTTP requests answered", labels, registry=self.registry)
        self.latency = Histogram(
            "etl_api_request_duration_seconds", "time to answer a request", labels,
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.in_flight = Gauge("etl_api_requests_in_flight", "requests being answered", registry=self.registry)
        self.rate_limited = Counter(
            "etl_api_rate_limited", "requests refused by the per-key rate limit (429)", registry=self.registry
        )
        self.database_errors = Counter(
            "etl_api_database_errors", "requests that failed because a database was unavailable (503)",
            ["database"], registry=self.registry,
        )
        for database in ("warehouse", "dagster"):
            self.database_errors.labels(database)
        self.registry.register(PoolCollector(reader))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)
        if status == 429:
            self.rate_limited.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI: times every HTTP request and labels it with its route template."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope.get("method", "GET") if scope.get("method") in METHODS else "OTHER"
            self.metrics.observe(method, route, status["code"], time.perf_counter() - started)


def _counting(handler: Callable, counter: Any) -> Callable:
    async def handle(request: Any, exc: Exception) -> Any:
        counter.inc()
        return await handler(request, exc)

    return handle


def instrument(app: Any, reader: Any, token: str | None = None) -> ApiMetrics:
    """Add the metrics middleware and GET /metrics; count the app's database-unavailable answers
    (call after the app's exception handlers are registered, before the first request). `token`
    (ETL_METRICS_TOKEN): when set, a scrape without `Authorization: Bearer <token>` gets 401."""
    metrics = ApiMetrics(reader)
    app.state.metrics = metrics
    for exc_class, database in ((WarehouseError, "warehouse"), (DagsterUnavailable, "dagster")):
        handler = app.exception_handlers.get(exc_class)
        if handler is not None:
            app.exception_handlers[exc_class] = _counting(handler, metrics.database_errors.labels(database))

    async def get_metrics(request: Request) -> Response:
        if not bearer_allows(request.headers.get("authorization"), token):
            return Response(b"unauthorized\n", status_code=401, headers={"WWW-Authenticate": WWW_AUTHENTICATE})
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", get_metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return metrics
