"""The platform exporter: Prometheus metrics by tenant and source from Dagster's storage, the
tenants file and the warehouse (`etl-platform exporter`, GET /metrics on port 9108).

A background thread refreshes `PlatformState` every ETL_EXPORTER_REFRESH_SECONDS (15); a
scrape only renders what the last refresh found, so its cost does not depend on Dagster's
storage. Labels are tenant ids, source names, run statuses, failure kinds and check names:
never run ids, partitions or messages. ETL_EXPORTER_TOKEN, when set, is required as a bearer
token (for deployments that publish the port).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg
from dagster import DagsterInstance
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from etl_platform.config import secrets
from etl_platform.config.registry import load_registry
from etl_platform.config.settings import EXPORTER_TOKEN_ENV, exporter_lookback_hours, exporter_refresh_s
from etl_platform.observability.platform_state import PlatformState
from etl_platform.security.redaction import remember
from etl_platform.security.tokens import WWW_AUTHENTICATE, bearer_allows
from etl_platform.warehouse import get_warehouse

log = logging.getLogger(__name__)
DEFAULT_PORT = 9108


class PlatformCollector(Collector):
    """Renders a PlatformState, the tenants' freshness windows and the storages' health."""

    def __init__(self, instance: Any, state: PlatformState | None = None, registry_loader: Any = None) -> None:
        self.instance = instance
        self.state = state or PlatformState(lookback_s=_lookback_s(registry_loader or load_registry))
        self.load_registry = registry_loader or load_registry
        self.dagster_up = 0.0
        self.warehouse_up = 0.0
        self.last_refresh = 0.0
        self.refresh_seconds = 0.0
        self.refresh_errors = 0
        self._freshness: tuple[str, dict[str, int]] = ("", {})

    def refresh(self, now: float | None = None) -> None:
        """One refresh of everything (the background thread calls it; tests call it directly)."""
        started = time.monotonic()
        try:
            self.state.refresh(self.instance, now)
            self.dagster_up = 1.0
        except Exception as exc:  # noqa: BLE001 - a storage outage is a metric, not a crash
            self.dagster_up = 0.0
            self.refresh_errors += 1
            log.warning("exporter: Dagster storage refresh failed: %s", type(exc).__name__, exc_info=exc)
        self.warehouse_up = 1.0 if _warehouse_reachable() else 0.0
        self.refresh_seconds = time.monotonic() - started
        self.last_refresh = time.time()

    def _freshness_hours(self) -> dict[str, int]:
        """Active tenant -> freshness window (validated once per tenants-file content)."""
        try:
            registry = self.load_registry()
        except Exception as exc:  # noqa: BLE001 - an invalid tenants file keeps the last windows
            log.warning("exporter: cannot read the tenants file: %s", exc)
            return self._freshness[1]
        if registry.content_hash != self._freshness[0] or not registry.content_hash:
            self._freshness = (registry.content_hash, {t.id: t.freshness_hours for t in registry.active_tenants()})
        return self._freshness[1]

    def collect(self) -> Iterator[Any]:
        state = self.state
        with state.lock:
            runs, failures = dict(state.runs), dict(state.failures)
            rows, rejects, checks = dict(state.rows), dict(state.rejects), dict(state.check_failures)
            last_success, last_loaded = dict(state.last_success), dict(state.last_loaded)
            queued, oldest, in_progress = dict(state.queued), state.queue_oldest_s, state.in_progress
        yield _family(CounterMetricFamily, "etl_runs", "finished runs per tenant (a run spanning tenants counts "
                      "for each; SUCCESS for the tenants it did not fail for)", ["tenant", "source", "status"], runs)
        yield _family(CounterMetricFamily, "etl_run_failures", "failed (tenant, source) pairs of failed runs",
                      ["tenant", "source", "kind"], failures)
        yield _family(CounterMetricFamily, "etl_rows_loaded", "raw rows loaded (per-partition materializations)",
                      ["tenant", "source"], rows)
        yield _family(CounterMetricFamily, "etl_rejects", "records rejected at ingestion or normalization",
                      ["tenant", "source", "stage"], rejects)
        yield _family(CounterMetricFamily, "etl_check_failures", "failed asset check evaluations",
                      ["tenant", "check"], checks)
        freshness = self._freshness_hours()
        yield _family(GaugeMetricFamily, "etl_tenant_freshness_hours",
                      "hours without a successful run after which an active tenant is stale", ["tenant"],
                      {(t,): h for t, h in freshness.items()})
        yield _family(GaugeMetricFamily, "etl_tenant_last_success_timestamp_seconds",
                      "end of the tenant's last successful run (0: none in the exporter's lookback)", ["tenant"],
                      {(t,): last_success.get(t, 0.0) for t in sorted(set(freshness) | set(last_success))})
        yield _family(GaugeMetricFamily, "etl_source_last_loaded_timestamp_seconds",
                      "time of the last raw materialization of a tenant's source", ["tenant", "source"], last_loaded)
        yield _family(GaugeMetricFamily, "etl_runs_queued", "runs waiting in the run queue", ["tenant"],
                      {(t,): n for t, n in queued.items()})
        yield _gauge("etl_queue_length", "runs waiting in the run queue, in all", sum(queued.values()))
        yield _gauge("etl_queue_oldest_age_seconds", "age of the oldest queued run", oldest)
        yield _gauge("etl_runs_in_progress", "runs starting or running", in_progress)
        yield _gauge("etl_dagster_storage_up", "1 when the last refresh read Dagster's storage", self.dagster_up)
        yield _gauge("etl_warehouse_up", "1 when the warehouse answered the last refresh", self.warehouse_up)
        yield _gauge("etl_exporter_last_refresh_timestamp_seconds", "time of the last refresh", self.last_refresh)
        yield _gauge("etl_exporter_refresh_duration_seconds", "duration of the last refresh", self.refresh_seconds)
        errors = CounterMetricFamily("etl_exporter_refresh_errors", "refreshes that could not read Dagster's storage")
        errors.add_metric([], self.refresh_errors)
        yield errors


def _family(cls: Any, name: str, text: str, labels: list[str], values: dict) -> Any:
    family = cls(name, text, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric([str(k) for k in (key if isinstance(key, tuple) else (key,))], value)
    return family


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _lookback_s(load_registry: Any) -> float:
    """ETL_EXPORTER_LOOKBACK_HOURS, else the longest freshness window + 1 h (at least 25 h)."""
    hours = exporter_lookback_hours()
    if hours is not None:
        return hours * 3600
    try:
        longest = max((t.freshness_hours for t in load_registry().active_tenants()), default=24)
    except Exception:  # noqa: BLE001 - the collector reports the tenants file itself
        longest = 48
    return (max(longest, 24) + 1) * 3600


def _warehouse_reachable() -> bool:
    """The platform's warehouse answers `SELECT 1` (DuckDB: its folder exists; a writer holding
    the file is busy, not down)."""
    try:
        warehouse = get_warehouse()
        if warehouse.kind == "duckdb":
            return warehouse.duckdb_path.parent.is_dir()
        with psycopg.connect(warehouse.postgres_dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means down
        return False


class Exporter:
    """The collector, its registry and the refresh thread (`start()`/`stop()`)."""

    def __init__(self, instance: Any, interval_s: float | None = None) -> None:
        self.collector = PlatformCollector(instance)
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)
        self.interval_s = interval_s or exporter_refresh_s()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="etl-exporter-refresh", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.collector.refresh()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the standard signature
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def metrics_app(registry: CollectorRegistry, token: str | None) -> Any:
    """The WSGI app serving /metrics; with `token` (ETL_EXPORTER_TOKEN) a request without
    `Authorization: Bearer <token>` gets 401 and no metric."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if not bearer_allows(environ.get("HTTP_AUTHORIZATION"), token):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", WWW_AUTHENTICATE)])
            return [b"unauthorized\n"]
        return metrics(environ, start_response)

    return app


def start_server(registry: CollectorRegistry, host: str, port: int, token: str | None = None
                 ) -> tuple[WSGIServer, threading.Thread]:
    """Serve the registry on host:port in a thread (GET /metrics), behind the optional token."""
    server = make_server(host, port, metrics_app(registry, token), server_class=_Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="etl-exporter-http", daemon=True)
    thread.start()
    return server, thread


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve GET /metrics until interrupted (blocks); ETL_EXPORTER_TOKEN, when set, is required
    as a bearer token."""
    token = secrets.value(EXPORTER_TOKEN_ENV) or None
    remember(token)
    with DagsterInstance.get() as instance:
        exporter = Exporter(instance)
        exporter.collector.refresh()  # the first scrape already has figures
        exporter.start()
        server, thread = start_server(exporter.registry, host, port, token)
        log.info("exporter serving http://%s:%s/metrics%s", host, port, " (bearer token required)" if token else "")
        try:
            while thread.is_alive():
                thread.join(1)
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
            exporter.stop()
