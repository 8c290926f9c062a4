"""The one step of every run: tenant by tenant, load the run's days of each configured source,
normalize, compute metrics, check; one materialization and one check result per partition.

Why one step: a run may cover many tenants (scheduled chunks, backfills). Each tenant succeeds or
fails on its own: its partitions are materialized only when its work succeeded, so in the UI a
partition reads as materialized only when that tenant's data for that day is in the warehouse,
and a source a tenant does not configure is never materialized for it (it stays missing). After
every tenant was attempted, the step fails if any tenant failed, naming each one
(`failures.run_failure`), and tags the run with `etl/failed_tenants`; the retry sensor then
retries only those tenants.

Tenants are serialized across runs by a lease per tenant (an advisory lock on PostgreSQL, a lock
file on DuckDB): a tenant busy in another run is done last, after the others.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dagster import AssetCheckKey, AssetExecutionContext, AssetKey, AssetsDefinition, BackfillPolicy, multi_asset

from etl_platform.assets.checks import drift_check
from etl_platform.assets.events import log_events, materialization
from etl_platform.assets.keys import (
    DRIFT_CHECK,
    ENGINEERING_KEY,
    RECORDS_KEY,
    resource_of,
    source_of,
)
from etl_platform.assets.metrics import has_metrics, metrics_partitions
from etl_platform.assets.normalized import normalize_partitions
from etl_platform.assets.raw import SourceLoad, load_source, selected_resources
from etl_platform.assets.specs import check_specs, metrics_spec, raw_specs, records_spec
from etl_platform.config.models import TenantConfig
from etl_platform.config.names import REJECTS_TABLE
from etl_platform.config.registry import Registry, load_registry
from etl_platform.config.settings import get_settings
from etl_platform.normalize.drift import remember_schema
from etl_platform.observability.logs import log_context
from etl_platform.runs.failures import (
    FAILED_TENANTS_TAG,
    TRANSIENT,
    TenantFailure,
    classify,
    run_failure,
    tenant_failure,
)
from etl_platform.runs.partitions import days_by_tenant, tenant_date_partitions
from etl_platform.runs.tags import ensure_run_tags
from etl_platform.warehouse import Warehouse, WarehouseError, warehouse_for

STEP_NAME = "tenant_partitions"
T = TypeVar("T")


def build_ingest_assets(registry: Registry, warehouse: Warehouse) -> AssetsDefinition:
    """Every asset of the platform, as one multi-asset (see the module docstring)."""
    raw = raw_specs(registry, warehouse.kind, warehouse.dlt_destination())
    raw_keys = [spec.key for spec in raw]
    data_keys = [key for key in raw_keys if resource_of(key) != REJECTS_TABLE]

    @multi_asset(
        name=STEP_NAME,
        specs=[*raw, records_spec(raw_keys, warehouse.kind), metrics_spec(warehouse.kind)],
        check_specs=check_specs(data_keys),
        can_subset=True,
        partitions_def=tenant_date_partitions(),
        backfill_policy=BackfillPolicy.single_run(),
    )
    def tenant_partitions(context):  # noqa: ANN001 - Dagster reads the hint
        run_tenants(context)
        yield from ()  # every event was logged per partition; no output is required

    return tenant_partitions


@dataclass
class RunScope:
    """What a run does: tenant -> days, and the assets and checks it selected."""

    tenants: dict[str, list[dt.date]]
    assets: set[AssetKey]
    checks: set[AssetCheckKey]

    @classmethod
    def of(cls, context: AssetExecutionContext) -> RunScope:
        keys = context.partition_keys if context.has_partition_key_range else [context.partition_key]
        return cls(days_by_tenant(keys), set(context.selected_asset_keys), set(context.selected_asset_check_keys))

    def check_names(self, key: AssetKey) -> set[str]:
        return {c.name for c in self.checks if c.asset_key == key}


def run_tenants(context: AssetExecutionContext) -> None:
    """Every tenant of the run, each under its lease; then fail naming the tenants that failed."""
    ensure_run_tags(context)
    scope = RunScope.of(context)
    registry = load_registry()
    failures: list[TenantFailure] = []
    deferred: list[str] = []
    for tenant_id in scope.tenants:
        done = _with_lease(context, registry, tenant_id, scope, wait=False)
        if done is None:
            deferred.append(tenant_id)
        else:
            failures.extend(done)
    for tenant_id in deferred:
        context.log.info(f"tenant {tenant_id}: busy in another run; waiting for it")
        failures.extend(_with_lease(context, registry, tenant_id, scope, wait=True) or [])
    if failures:
        failed = sorted({f.tenant for f in failures})
        context.instance.add_run_tags(context.run.run_id, {FAILED_TENANTS_TAG: ",".join(failed)})
        for failure in failures:
            context.log.error(failure.describe())
        raise run_failure(failures, len(scope.tenants)) from None


def _with_lease(
    context: Any, registry: Registry, tenant_id: str, scope: RunScope, *, wait: bool
) -> list[TenantFailure] | None:
    """Run one tenant under its lease; None when the lease is busy and `wait` is false."""
    days = scope.tenants[tenant_id]
    try:
        tenant = registry.tenant(tenant_id)
        warehouse = warehouse_for(tenant)
    except Exception as exc:  # noqa: BLE001 - unknown tenant, its warehouse variable unset
        return [tenant_failure(exc, tenant_id, None, days)]
    timeout = get_settings().tenant_lease_timeout_s if wait else 0
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(warehouse.lock(write=True, name=f"tenant_{tenant_id}", timeout_s=timeout))
        except WarehouseError as exc:
            if not wait:
                return None
            return [tenant_failure(exc, tenant_id, None, days)]
        partitions = f"{days[0]}..{days[-1]}|{tenant_id}" if len(days) > 1 else f"{days[0]}|{tenant_id}"
        with log_context(tenant=tenant_id, partition=partitions):  # JSON log lines name them
            return TenantRun(context, registry, warehouse, tenant, days, scope).run()


@dataclass
class TenantRun:
    """One tenant's work in a run."""

    context: Any
    registry: Registry
    warehouse: Warehouse
    tenant: TenantConfig
    days: list[dt.date]
    scope: RunScope
    failures: list[TenantFailure] = field(default_factory=list)

    def run(self) -> list[TenantFailure]:
        started = time.monotonic()
        for source in self._selected_sources():
            self._load(source)
        tenant, log = self.tenant, self.context.log
        if RECORDS_KEY in self.scope.assets:
            if self.failures:
                log.warning(f"tenant {tenant.id}: not normalized, sources failed (the retry normalizes)")
            else:
                self._emit(
                    "normalization",
                    lambda: normalize_partitions(
                        self.context, self.warehouse, tenant, self.days, self.scope.check_names(RECORDS_KEY)
                    ),
                )
        if ENGINEERING_KEY in self.scope.assets and has_metrics(tenant) and not self.failures:
            self._emit(
                "metrics",
                lambda: metrics_partitions(
                    self.context, self.warehouse, tenant, self.days, self.scope.check_names(ENGINEERING_KEY)
                ),
            )
        log.info(
            f"tenant {tenant.id}: {len(self.days)} day(s) in {time.monotonic() - started:.1f}s"
            + (f", {len(self.failures)} failure(s)" if self.failures else "")
        )
        return self.failures

    def _selected_sources(self) -> list[Any]:
        """The tenant's sources with a selected raw asset; other selected sources are not the
        tenant's and stay unmaterialized for it."""
        wanted = {source_of(key) for key in self.scope.assets} - {None}
        configured = {s.name for s in self.tenant.sources}
        for name in sorted(wanted - configured):
            self.context.log.debug(f"tenant {self.tenant.id} has no source {name!r}: nothing to load")
        return [s for s in self.tenant.sources if s.name in wanted]

    def _load(self, config: Any) -> None:
        resources = selected_resources(config, self.scope.assets)
        if not resources:
            return
        try:
            load = with_retries(
                self.context,
                f"tenant {self.tenant.id}, source {config.name}",
                lambda: load_source(
                    self.context,
                    self.registry,
                    self.warehouse,
                    self.tenant,
                    config,
                    self.days,
                    resources,
                ),
            )
        except Exception as exc:  # noqa: BLE001 - classified, redacted, reported at the end of the run
            self.failures.append(tenant_failure(exc, self.tenant.id, config.name, self.days, config=config))
            return
        self._log_load(load)
        log_events(self.context, list(self._raw_events(load)))

    def _raw_events(self, load: SourceLoad) -> Iterator[Any]:
        stats = {k: v for k, v in load.stats.items() if k != "pages_by_resource"}
        whole_run = {"days": len(self.days), "duration_s": load.duration_s, "swept": load.swept, **stats}
        pages = load.stats.get("pages_by_resource") or {}
        for res in load.resources:
            if res.key not in self.scope.assets:
                continue
            whole = {**whole_run, **({"pages": pages[res.resource]} if res.resource in pages else {})}
            for day in self.days:
                rows = res.rows_by_day.get(day, 0)
                yield materialization(
                    res.key,
                    self.tenant.id,
                    day,
                    {
                        "rows_loaded": rows,
                        "dagster/row_count": rows,
                        "rejects": load.rejects_by_day.get(day, 0),
                        "table": res.table,
                        **res.metadata,
                        "load (whole run)": whole,
                    },
                )
        drift_checks = {c.asset_key for c in self.scope.checks if c.name == DRIFT_CHECK}
        data = [r for r in load.resources if r.key in drift_checks]
        if data:
            with self.warehouse.connect(write=True) as conn:
                for res in data:
                    previous, at = remember_schema(conn, self.tenant.dataset, load.source, res.resource, res.observed)
                    yield from drift_check(res.key, self.tenant.id, self.days, res.observed, previous, at)

    def _log_load(self, load: SourceLoad) -> None:
        rows = sum(sum(r.rows_by_day.values()) for r in load.resources if r.resource != REJECTS_TABLE)
        rejects = sum(load.rejects_by_day.values())
        notes = [f"warning: {load.stats['warning']}"] if load.stats.get("warning") else []
        for name in ("skipped_by_reason", "event_time_fallbacks", "contract_violations"):
            if load.stats.get(name):  # rows not loaded (or loaded differently), with the reason
                notes.append(f"{name}: {load.stats[name]}")
        self.context.log.info(
            f"tenant {self.tenant.id}, source {load.source}: {rows} rows in {len(self.days)} day(s), "
            f"{rejects} rejects, {load.duration_s:.1f}s" + ("; " + "; ".join(notes) if notes else "")
        )

    def _emit(self, what: str, events: Callable[[], Iterator[Any]]) -> None:
        """Log the events of a step of the tenant's work (normalization, metrics: not one
        source's); a failure is recorded for the tenant as a whole, not raised."""
        try:
            log_events(self.context, list(events()))
        except Exception as exc:  # noqa: BLE001 - classified, redacted, reported at the end of the run
            failure = tenant_failure(exc, self.tenant.id, None, self.days)
            self.failures.append(failure)
            self.context.log.error(f"tenant {self.tenant.id}: {what} failed: {failure.message}")


def with_retries(context: Any, what: str, attempt: Callable[[], T]) -> T:
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
            context.log.warning(f"{what}: transient failure ({type(exc).__name__}); retrying in {delay}s")
            time.sleep(delay)
    raise AssertionError("unreachable")
