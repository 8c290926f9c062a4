"""One tenant's work in its own process: load the run's sources, normalize the days whose inputs
changed, compute metrics, and report each step to the run worker as it ends.

A source that fails does not stop the others: each loads on its own (with in-run retries of
transient failures), and the tenant's days are normalized from what every source holds now,
the failed one's last successful load included (the run worker says which sources failed).
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from etl_platform.config.models import TenantConfig
from etl_platform.config.registry import Registry, load_registry
from etl_platform.config.settings import get_settings
from etl_platform.isolation import progress
from etl_platform.isolation.child import Outbox, attach
from etl_platform.loading import messages as m
from etl_platform.loading.failures import TRANSIENT, TenantFailure, classify, tenant_failure
from etl_platform.loading.raw import SourceLoad, load_source
from etl_platform.loading.versions import METRICS_RULES, combine, records_version, slice_figures
from etl_platform.metrics.run import METRIC_KINDS, METRICS_TABLE, compute_tenant_metrics
from etl_platform.normalize.run import NormalizeResult, mappings_for, normalize_tenant
from etl_platform.security.redaction import install_log_redaction
from etl_platform.warehouse import Warehouse, warehouse_for

log = logging.getLogger(__name__)
T = TypeVar("T")


def run(job: m.TenantJob, sock: socket.socket) -> None:
    """The child's entry point (`ForkServer.run("etl_platform.loading.tenant:run", job, ...)`)."""
    install_log_redaction()
    outbox = attach(sock)
    TenantWork(job, outbox).run()


class TenantWork:
    def __init__(self, job: m.TenantJob, outbox: Outbox) -> None:
        self.job = job
        self.days = list(job.days)
        self.send = outbox.send
        self.failures: list[TenantFailure] = []
        self.loads: dict[str, SourceLoad] = {}

    def run(self) -> None:
        started = time.monotonic()
        try:
            registry = load_registry()
            tenant = registry.tenant(self.job.tenant_id)
            warehouse = warehouse_for(tenant)
        except Exception as exc:  # noqa: BLE001 - the tenant's configuration or warehouse: reported
            self.failures.append(tenant_failure(exc, self.job.tenant_id, None, self.days))
            self.send(m.TenantFinished(round(time.monotonic() - started, 3), self.failures))
            return
        for source, resources in self.job.resources.items():
            self._load(registry, warehouse, tenant, source, resources)
        if self.job.normalize and (self.loads or not self.job.resources):
            # from what every source holds now; not when every source the run loaded failed
            self._step("normalization", lambda: self._normalize(warehouse, tenant))
        if self.job.metrics and any(s.kind in METRIC_KINDS for s in tenant.sources):
            self._step("metrics", lambda: self._metrics(warehouse, tenant))
        self.send(m.TenantFinished(round(time.monotonic() - started, 3), self.failures))

    # --- raw ---------------------------------------------------------------------------------

    def _load(self, registry: Registry, warehouse: Warehouse, tenant: TenantConfig, name: str, resources: list[str]):
        config = tenant.source(name)
        progress.step("loading", source=name)
        try:
            load = with_retries(
                f"tenant {tenant.id}, source {name}",
                lambda: load_source(self.job.run_id, registry, warehouse, tenant, config, self.days, resources),
            )
        except Exception as exc:  # noqa: BLE001 - classified, redacted, reported; the other sources go on
            failure = tenant_failure(exc, tenant.id, name, self.days, config=config)
            self.failures.append(failure)
            self.send(m.SourceFailed(name, failure))
            return
        self.loads[name] = load
        self.send(
            m.SourceLoaded(
                source=name,
                resources=[
                    m.ResourceDays(s.resource, s.table, s.rows, s.versions, s.columns, s.columns_added,
                                   s.drift)
                    for s in load.slices
                ],
                rejects=load.rejects,
                summary={**load.summary, **({"swept": load.swept} if load.swept else {})},
                seconds=load.duration_s,
            )
        )

    # --- records and metrics -----------------------------------------------------------------

    def _step(self, what: str, work: Callable[[], None]) -> None:
        progress.step(what)
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - classified, redacted, reported
            failure = tenant_failure(exc, self.job.tenant_id, None, self.days)
            self.failures.append(failure)
            self.send(m.StepFailed(what, failure))

    def _raw_versions(self, warehouse: Warehouse, tenant: TenantConfig) -> dict[dt.date, list[tuple[str, str]]]:
        """Per day, the version of every data table of every source of the tenant: this run's
        loads, and what the other (unselected or failed) sources hold."""
        per_day: dict[dt.date, list[tuple[str, str]]] = {d: [] for d in self.days}
        missing = []
        for source in tenant.sources:
            load = self.loads.get(source.name)
            for table, _mapping in mappings_for(source):
                found = next((s for s in load.slices if s.table == table), None) if load else None
                if found is None:
                    missing.append((source.name, table))
                    continue
                for day in self.days:
                    per_day[day].append((table, found.versions[day]))
        if missing:
            with warehouse.connect() as conn:
                for source_name, table in missing:
                    _, versions = slice_figures(conn, tenant.dataset, table, source_name, self.days)
                    for day in self.days:
                        per_day[day].append((table, versions[day]))
        return per_day

    def _changed(self, kind: str, versions: dict[dt.date, str]) -> list[dt.date]:
        before = self.job.previous.get(kind, {})
        return [d for d in self.days if self.job.rebuild or before.get(d) != versions[d]]

    def _normalize(self, warehouse: Warehouse, tenant: TenantConfig) -> None:
        started = time.monotonic()
        mapping_config = [s.model_dump(mode="json") for s in tenant.sources]
        raw = self._raw_versions(warehouse, tenant)
        self.records_versions = {d: records_version(raw[d], mapping_config) for d in self.days}
        changed = self._changed("records", self.records_versions)
        days: dict[dt.date, m.RecordsDay] = {}
        seconds = (0.0, 0.0)
        if changed:
            result = normalize_tenant(warehouse, tenant, changed)
            days = {d: self._records_day(result, d) for d in result.days}
            seconds = (result.normalize_s, result.checks_s)
        failed = tuple(sorted({f.source for f in self.failures if f.source}))
        unchanged = tuple(d for d in self.days if d not in days)
        self.send(m.Normalized(days, unchanged, failed, round(time.monotonic() - started, 3), *seconds))

    def _records_day(self, result: NormalizeResult, day: dt.date) -> m.RecordsDay:
        figures = result.by_day[day]
        return m.RecordsDay(
            version=self.records_versions[day],
            raw_rows=figures.raw_rows,
            records_written=figures.records_written,
            rejects=figures.rejects,
            ingest_rejects=figures.ingest_rejects,
            reject_reasons=dict(sorted(figures.reject_reasons.items(), key=lambda kv: -kv[1])[:10]),
            by_table=figures.by_table,
            checks=figures.checks,
        )

    def _metrics(self, warehouse: Warehouse, tenant: TenantConfig) -> None:
        records = getattr(self, "records_versions", None) or {
            d: v for d, v in self.job.previous.get("records", {}).items() if d in self.days
        }
        versions = {d: combine(METRICS_RULES, records.get(d), tenant.flow_steps) for d in self.days}
        changed = self._changed("metrics", versions)
        days: dict[dt.date, m.MetricsDay] = {}
        unmapped: dict[str, int] = {}
        sources = sorted(s.name for s in tenant.sources if s.kind in METRIC_KINDS)
        if changed:
            result = compute_tenant_metrics(warehouse, tenant, changed, get_settings().timezone)
            unmapped, sources = dict(result.unmapped_statuses), list(result.sources)
            for day in result.days:
                rows = [x for x in result.metrics if x.day == day]
                values = {x.name: x.value for x in rows if x.repository == ""}
                days[day] = m.MetricsDay(versions[day], len(rows), values)
        unchanged = tuple(d for d in self.days if d not in days)
        self.send(m.MetricsComputed(days, unchanged, unmapped, sources, f"{tenant.dataset}.{METRICS_TABLE}"))


def with_retries(what: str, attempt: Callable[[], T]) -> T:
    """`attempt()`, retried after transient failures (ETL_STEP_RETRIES times, the first after
    ETL_STEP_RETRY_DELAY_SECONDS, doubling); dlt already retries each HTTP request."""
    settings = get_settings()
    for n in range(settings.step_retries + 1):
        try:
            return attempt()
        except Exception as exc:  # noqa: BLE001 - re-raised unless transient and attempts remain
            if n >= settings.step_retries or classify(exc) != TRANSIENT:
                raise
            delay = settings.step_retry_delay_s * 2**n
            log.warning("%s: transient failure (%s); retrying in %ss", what, type(exc).__name__, delay)
            progress.note(retry=n + 1)
            time.sleep(delay)
    raise AssertionError("unreachable")



