"""The one step of every run: tenant by tenant, each in a process of its own, load the run's days
of each configured source, normalize, compute metrics, check; one event per partition.

Why one step: a run may cover many tenants (scheduled chunks, backfills). Why a process per
tenant: tenants do not trust each other. Each tenant's work runs in a child of the run's fork
server (`isolation/`), with only its own secrets, a memory limit, a deadline and a CPU-time
limit; a tenant that dies or goes over a limit fails alone, with a reason naming the limit, and
the others of the run finish. The child reports figures and content versions
(`loading/tenant.py`); this step turns them into Dagster events:

- a partition whose data changed gets a materialization (with its data version), and the checks
  that judge it a result; a reload that changed nothing writes nothing. Runs a person launched
  (the UI, the CLI, a Dagster backfill) or that select checks write every partition they ask for;
- partitions of a source a tenant does not have are not part of its scheduled runs; a run that
  asks for them anyway (a selection of everything, a backfill) records them as materialized with
  `applies: false`, so that the run and the backfill end as they happened: complete;
- a source that fails does not block the tenant's others: they load, the tenant's days are
  normalized, and the records' metadata names the failed source. After every tenant was
  attempted the step fails if any tenant failed, naming each one (`runs.failures.run_failure`)
  and tagging the run `etl/failed_tenants`; the retry sensor retries only those tenants. Only the
  failed tenants' own partitions read Failed in the UI (`assets/events.py:failure_marks`).

Tenants are serialized across runs by a lease per tenant (an advisory lock on PostgreSQL, a lock
file on DuckDB), held by this process while the tenant's child works: a tenant busy in another
run is done last, after the others.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    MetadataValue,
    TableColumn,
    TableSchema,
    multi_asset,
)

from etl_platform.assets.checks import (
    Verdict,
    drift_verdict,
    evaluate_freshness,
    not_applicable,
    record_verdicts,
    unmapped_verdict,
)
from etl_platform.assets.events import check_result, failure_marks, materialization, provenance
from etl_platform.assets.keys import (
    DRIFT_CHECK,
    ENGINEERING_KEY,
    FRESHNESS_CHECK,
    RECORDS_KEY,
    raw_asset_key,
    resource_of,
    source_of,
)
from etl_platform.assets.previous import Previous, latest_materializations, planned_per_partition
from etl_platform.assets.specs import check_specs, freshness_spec, metrics_spec, raw_specs, records_spec
from etl_platform.config import secrets
from etl_platform.config.models import TenantConfig
from etl_platform.config.names import REJECTS_TABLE
from etl_platform.config.registry import Registry, load_registry
from etl_platform.config.settings import get_settings
from etl_platform.isolation.environment import platform_environment, tenant_secrets
from etl_platform.isolation.limits import ChildDied, LimitExceeded, Limits
from etl_platform.isolation.supervisor import ForkServer
from etl_platform.loading import messages as m
from etl_platform.loading.failures import PERMANENT, TRANSIENT, TenantFailure, tenant_failure
from etl_platform.loading.versions import METRICS_RULES, NORMALIZE_RULES
from etl_platform.metrics.run import METRIC_KINDS
from etl_platform.runs.failures import FAILED_TENANTS_TAG, run_failure
from etl_platform.runs.partitions import days_by_tenant, partition_key, tenant_date_partitions
from etl_platform.runs.tags import BACKFILL_TAG, TRIGGER_TAG, default_trigger, ensure_run_tags
from etl_platform.warehouse import Warehouse, WarehouseError, warehouse_for

STEP_NAME = "tenant_partitions"
TENANT_WORK = "etl_platform.loading.tenant:run"
# imported once by the run's fork server, so that a tenant's process starts in milliseconds; and
# what a tenant's first load would import and build (loading/warm.py), paid once per run
PRELOAD = ("etl_platform.loading.tenant", "etl_platform.sources.rest_api", "etl_platform.sources.csv.source",
           "etl_platform.sources.feeds", "etl_platform.sources.jira", "etl_platform.sources.github",
           "etl_platform.loading.warm:warm_up")  # fmt: skip
log = logging.getLogger(__name__)


def build_ingest_assets(registry: Registry, warehouse: Warehouse) -> AssetsDefinition:
    """Every asset of the platform, as one multi-asset (see the module docstring)."""
    raw = raw_specs(registry, warehouse.kind, warehouse.dlt_destination())
    raw_keys = [spec.key for spec in raw]
    data_keys = [key for key in raw_keys if resource_of(key) != REJECTS_TABLE]

    @multi_asset(
        name=STEP_NAME,
        specs=[*raw, records_spec(raw_keys, warehouse.kind), metrics_spec(warehouse.kind)],
        check_specs=[*check_specs(data_keys), freshness_spec()],
        can_subset=True,
        partitions_def=tenant_date_partitions(),
        backfill_policy=BackfillPolicy.single_run(),
    )
    def tenant_partitions(context):  # noqa: ANN001 - Dagster reads the hint; a string one fails its check
        yield from IngestRun(context, raw_keys).events()

    return tenant_partitions


@dataclass
class RunScope:
    """What a run does: tenant -> days, and the assets and checks it selected."""

    tenants: dict[str, list[dt.date]]
    assets: set[AssetKey]
    checks: set[AssetCheckKey]

    @classmethod
    def of(cls, context: AssetExecutionContext) -> RunScope:
        if context.has_partition_key_range:
            keys = context.partition_keys
        elif context.has_partition_key:
            keys = [context.partition_key]
        else:  # a run of the freshness check alone
            keys = []
        return cls(days_by_tenant(keys), set(context.selected_asset_keys), set(context.selected_asset_check_keys))

    def check_selected(self, key: AssetKey, name: str) -> bool:
        return AssetCheckKey(key, name) in self.checks


_SERVERS = threading.local()


def fork_server(registry: Registry | None) -> ForkServer:
    """This thread's fork server (started at its first tenant, kept for the process's life: a
    run worker runs one run), with the platform's environment and no tenant's variable."""
    server = getattr(_SERVERS, "server", None)
    if server is None or server.process.poll() is not None:
        if registry is None:
            raise RuntimeError("no fork server started in this thread")
        server = ForkServer(platform_environment(secrets.environment(), registry.tenants), PRELOAD)
        _SERVERS.server = server
    return server


def tenant_limits(tenant: TenantConfig) -> Limits:
    """The tenant's limits: its own (`limits:` in the tenants file), else the settings'."""
    settings, own = get_settings(), tenant.limits
    return Limits(
        memory_bytes=int((own.memory_mb or settings.tenant_memory_mb) * (1 << 20)),
        deadline_s=float((own.deadline_minutes or settings.tenant_deadline_minutes) * 60),
        cpu_s=int((own.cpu_minutes or settings.tenant_cpu_minutes) * 60),
    )


class IngestRun:
    """One run's step: every tenant of the run in turn, then the run's outcome."""

    def __init__(self, context: AssetExecutionContext, raw_keys: list[AssetKey]) -> None:
        self.context = context
        self.scope = RunScope.of(context)
        self.raw_keys = raw_keys
        tags = context.run.tags
        partitioned_checks = {c for c in self.scope.checks if c.name != FRESHNESS_CHECK}
        # a person asked for these partitions (or their checks): every one of them gets an answer
        trigger = tags.get(TRIGGER_TAG) or default_trigger(tags)
        self.rebuild = bool(tags.get(BACKFILL_TAG)) or trigger == "manual" or bool(partitioned_checks)
        self.checks_on_change = not self.rebuild and not partitioned_checks
        self.single_partition = context.has_partition_key and not context.has_partition_key_range
        self.failures: list[TenantFailure] = []
        self.outcomes: list[TenantEvents] = []
        self.judged: dict[AssetCheckKey, list[bool]] = {}

    def events(self) -> Iterator[Any]:
        ensure_run_tags(self.context)
        if self.scope.tenants:
            yield from self._tenants()
        if self.scope.check_selected(RECORDS_KEY, FRESHNESS_CHECK):
            yield self._freshness()
        yield from self._check_summaries()
        self._finish()

    # --- tenants -------------------------------------------------------------------------------

    def _tenants(self) -> Iterator[Any]:
        registry = load_registry()
        instance, run_id = self.context.instance, self.context.run.run_id
        partitions = [str(partition_key(t, d)) for t, days in self.scope.tenants.items() for d in days]
        previous = Previous() if self.rebuild else latest_materializations(instance, self.scope.assets, partitions)
        self.per_partition = planned_per_partition(instance, run_id)
        deferred = []
        for tenant_id in self.scope.tenants:
            done = yield from self._with_lease(registry, tenant_id, previous, wait=False)
            if not done:
                deferred.append(tenant_id)
        for tenant_id in deferred:
            self.context.log.info(f"tenant {tenant_id}: busy in another run; waiting for it")
            yield from self._with_lease(registry, tenant_id, previous, wait=True)
        if self.failures and self.per_partition:
            yield from self._fill_in()

    def _with_lease(self, registry: Registry, tenant_id: str, previous: Previous, *, wait: bool):
        """Run one tenant under its lease; False (nothing done) when the lease is busy and `wait`
        is false."""
        days = self.scope.tenants[tenant_id]
        try:
            tenant = registry.tenant(tenant_id)
            warehouse = warehouse_for(tenant)
        except Exception as exc:  # noqa: BLE001 - unknown tenant, its warehouse variable unset
            outcome = TenantEvents(self, None, tenant_id, days, previous)
            outcome.fail(tenant_failure(exc, tenant_id, None, days))
            yield from outcome.finish()
            return True
        timeout = get_settings().tenant_lease_timeout_s if wait else 0
        try:
            lease = warehouse.lock(write=True, name=f"tenant_{tenant_id}", timeout_s=timeout)
            lease.__enter__()
        except WarehouseError as exc:
            if not wait:
                return False
            outcome = TenantEvents(self, tenant, tenant_id, days, previous)
            outcome.fail(tenant_failure(exc, tenant_id, None, days))
            yield from outcome.finish()
            return True
        try:
            yield from self._tenant(registry, tenant, days, previous)
        finally:
            lease.__exit__(None, None, None)
        return True

    def _tenant(self, registry: Registry, tenant: TenantConfig, days: list[dt.date], previous: Previous):
        outcome = TenantEvents(self, tenant, tenant.id, days, previous)
        server = fork_server(registry)
        environ = secrets.environment()
        env = {**platform_environment(environ, registry.tenants), **tenant_secrets(environ, tenant)}
        try:
            for message in server.run(TENANT_WORK, outcome.job(), env, tenant_limits(tenant), label=tenant.id):
                yield from outcome.on(message)
        except (LimitExceeded, ChildDied) as exc:
            kind = PERMANENT if isinstance(exc, LimitExceeded) else TRANSIENT
            outcome.fail(TenantFailure(tenant.id, None, kind, type(exc).__name__, str(exc),
                                       tuple(d.isoformat() for d in days)))
        yield from outcome.finish()

    # --- the run's end -------------------------------------------------------------------------

    def _fill_in(self) -> Iterator[Any]:
        """The run fails and Dagster planned it partition by partition: every planned partition
        without a materialization would read Failed. Those that did not fail get one (their data
        unchanged, or a source the tenant does not have), so that only failures read Failed."""
        for outcome in self.outcomes:
            yield from outcome.unchanged_materializations()

    def _freshness(self) -> AssetCheckResult:
        """Tenant freshness: the run's tenants, or every active tenant in a run of the check alone."""
        registry = load_registry()
        if self.scope.tenants:
            ids = [t for t in self.scope.tenants if registry.has(t) and not registry.entry(t).paused]
            tenants = [registry.tenant(t) for t in ids]
        else:
            tenants = registry.active_tenants()
        return evaluate_freshness(tenants, dt.datetime.now(dt.timezone.utc))

    def _check_summaries(self) -> Iterator[Any]:
        """A ranged run that was asked for partitioned checks judged each partition on its own
        (above); Dagster also expects one result per check from the step: the run's summary."""
        if self.single_partition:
            return
        for key in sorted(self.scope.checks, key=str):
            if key.name == FRESHNESS_CHECK:
                continue
            results = self.judged.get(key, [])
            failed = results.count(False)
            yield AssetCheckResult(
                asset_key=key.asset_key,
                check_name=key.name,
                passed=failed == 0,
                metadata={"partitions_judged": MetadataValue.int(len(results)),
                          "partitions_failed": MetadataValue.int(failed)},
                description=f"this run judged {len(results)} partition(s): {failed} did not pass",
            )

    def _finish(self) -> None:
        if self.outcomes:
            failed = sum(1 for o in self.outcomes if o.failures)
            changed = sum(1 for o in self.outcomes if o.wrote and not o.failures)
            self.context.log.info(
                f"{len(self.outcomes)} tenant(s): {changed} with changes written, "
                f"{len(self.outcomes) - changed - failed} unchanged" + (f", {failed} failed" if failed else "")
            )
        if self.failures:
            failed = sorted({f.tenant for f in self.failures})
            self.context.instance.add_run_tags(self.context.run.run_id, {FAILED_TENANTS_TAG: ",".join(failed)})
            raise run_failure(self.failures, len(self.scope.tenants)) from None


class TenantEvents:
    """One tenant's part of the run: its job, and its reports turned into Dagster events."""

    def __init__(self, run: IngestRun, tenant: TenantConfig | None, tenant_id: str, days: list[dt.date],
                 previous: Previous) -> None:
        self.run, self.tenant, self.tenant_id, self.days, self.previous = run, tenant, tenant_id, days, previous
        self.context = run.context
        self.scope = run.scope
        self.emitted: set[tuple[AssetKey, dt.date]] = set()
        self.reported: set[AssetKey] = set()  # assets the tenant's process reported on
        self.versions: dict[AssetKey, dict[dt.date, str]] = {}
        self.failures: list[TenantFailure] = []
        self.wrote = False
        self.started = time.monotonic()
        run.outcomes.append(self)

    # --- the job -------------------------------------------------------------------------------

    def sources(self) -> dict[str, list[str]]:
        """The tenant's sources the run selected, with their selected data resources."""
        out = {}
        for source in self.tenant.sources:
            names = [r for r in source.resource_names if raw_asset_key(source.name, r) in self.scope.assets]
            names = [r for r in names if r != REJECTS_TABLE]
            if names:
                out[source.name] = names
        return out

    def job(self) -> m.TenantJob:
        tenant = self.tenant
        previous: dict[str, dict[dt.date, str]] = {
            "records": self.previous.of_tenant(RECORDS_KEY, tenant.id),
            "metrics": self.previous.of_tenant(ENGINEERING_KEY, tenant.id),
        }
        return m.TenantJob(
            run_id=self.context.run.run_id,
            tenant_id=tenant.id,
            days=tuple(self.days),
            resources=self.sources(),
            normalize=RECORDS_KEY in self.scope.assets,
            metrics=ENGINEERING_KEY in self.scope.assets,
            previous=previous,
            rebuild=self.run.rebuild,
        )

    # --- reports -------------------------------------------------------------------------------

    def on(self, message: Any) -> Iterator[Any]:
        if isinstance(message, m.SourceLoaded):
            yield from self._loaded(message)
        elif isinstance(message, m.SourceFailed):
            self.fail(message.failure)
        elif isinstance(message, m.Normalized):
            yield from self._normalized(message)
        elif isinstance(message, m.MetricsComputed):
            yield from self._metrics(message)
        elif isinstance(message, m.StepFailed):
            self.fail(message.failure)
        elif isinstance(message, m.TenantFinished):
            self.seconds = message.seconds
        elif isinstance(message, dict) and message.get("op") == "log":
            self._log(message)

    def _log(self, message: dict[str, Any]) -> None:
        """The child's log lines: warnings and errors go to the run's event log, the rest to the
        process's own log (JSON lines in production)."""
        level, text = message["level"], f"tenant {self.tenant_id}: {message['message']}"
        if level >= logging.WARNING:
            self.context.log.warning(text) if level < logging.ERROR else self.context.log.error(text)
        else:
            logging.getLogger(message.get("logger") or __name__).log(level, text)

    def fail(self, failure: TenantFailure) -> None:
        self.failures.append(failure)
        self.run.failures.append(failure)
        self.context.log.error(failure.describe())

    def _changed(self, key: AssetKey, day: dt.date, version: str) -> bool:
        return self.run.rebuild or self.previous.version(key, self.tenant_id, day) != version

    def _emit(self, key: AssetKey, day: dt.date, metadata: dict[str, Any], version: str | None, **kwargs: Any):
        self.emitted.add((key, day))
        self.wrote = True
        return materialization(key, self.tenant_id, day, metadata, version=version, **kwargs)

    def _loaded(self, load: m.SourceLoaded) -> Iterator[Any]:
        pages = load.summary.get("pages_by_resource") or {}
        summary = {k: v for k, v in load.summary.items() if k != "pages_by_resource"}
        summary.update(seconds=load.seconds, days=len(self.days))
        notes = {k: v for k, v in load.summary.items() if k in ("warning", "skipped_by_reason", "contract_violations")}
        if notes:
            self.context.log.info(f"tenant {self.tenant_id}, source {load.source}: {notes}")
        for res in load.resources:
            key = raw_asset_key(load.source, res.resource)
            self.versions[key] = res.versions
            if key not in self.scope.assets:
                continue
            self.reported.add(key)
            for day in self.days:
                if not self._changed(key, day, res.versions[day]):
                    continue
                metadata = {
                    "dagster/row_count": MetadataValue.int(res.rows[day]),
                    "rejects": MetadataValue.int(load.rejects.get(day, 0)),
                    "dagster/table_name": MetadataValue.text(f"{self.tenant.dataset}.{res.table}"),
                    "load": MetadataValue.json(
                        {**summary, "pages": pages[res.resource]} if res.resource in pages else summary
                    ),
                }
                if res.columns_added:
                    # the columns when this load added some (a new table, a new field): the UI shows
                    # the latest ones it was given, the warehouse has them all
                    metadata["dagster/column_schema"] = MetadataValue.table_schema(
                        TableSchema(columns=[TableColumn(name=n, type=t) for n, t in res.columns.items()])
                    )
                verdicts = []
                if res.drift is not None:
                    discarded = int(load.summary.get("contract_rows_discarded", 0) or 0)
                    verdicts.append(drift_verdict(DRIFT_CHECK, self.tenant_id, res.drift, discarded))
                yield from self._judged(key, day, metadata, res.versions[day], verdicts)

    def _judged(
        self, key: AssetKey, day: dt.date, metadata: dict[str, Any], version: str | None,
        verdicts: list[Verdict], **kwargs: Any,
    ) -> Iterator[Any]:
        """A partition's materialization, then the results of its checks. The verdicts are kept in
        the materialization (`checks`); a reload that did not change a verdict writes no new result
        for it (unless the run was asked for the check), so the latest result stands."""
        before = self.previous.metadata.get(key, {}).get((self.tenant_id, day), {}).get("checks")
        before = getattr(before, "value", None) or {}
        if verdicts:
            metadata = {**metadata, "checks": MetadataValue.json({v.check: v.outcome() for v in verdicts})}
        yield self._emit(key, day, metadata, version, **kwargs)
        for verdict in verdicts:
            if self.scope.check_selected(key, verdict.check) or (
                self.run.checks_on_change and before.get(verdict.check) != verdict.outcome()
            ):
                yield from self._verdict(key, day, verdict)

    def _verdict(self, key: AssetKey, day: dt.date, verdict: Verdict) -> Iterator[Any]:
        check = AssetCheckKey(key, verdict.check)
        if check in self.scope.checks:
            self.run.judged.setdefault(check, []).append(verdict.passed)
        if self.run.single_partition and check in self.scope.checks:
            yield AssetCheckResult(asset_key=key, check_name=verdict.check, passed=verdict.passed,
                                   metadata=verdict.metadata, severity=verdict.severity,
                                   description=verdict.description)
            return
        yield check_result(key, verdict.check, self.tenant_id, day, passed=verdict.passed, metadata=verdict.metadata,
                           severity=verdict.severity, description=verdict.description)

    def _inputs(self) -> dict[AssetKey, str | None]:
        """Per raw asset of the graph: this tenant's version of it (None: not its source)."""
        configured = {s.name for s in self.tenant.sources}
        return {key: ("current" if source_of(key) in configured else None) for key in self.run.raw_keys}

    def _normalized(self, result: m.Normalized) -> Iterator[Any]:
        self.reported.add(RECORDS_KEY)
        if RECORDS_KEY not in self.scope.assets:
            return
        pointer = self.context.instance.event_log_storage.get_maximum_record_id()
        inputs = self._inputs()
        current = sorted({s.name for s in self.tenant.sources} - set(result.failed_sources))
        for day, figures in sorted(result.days.items()):
            day_inputs = {k: (self.versions.get(k, {}).get(day) or v) for k, v in inputs.items()}
            metadata = {
                "raw_rows": MetadataValue.int(figures.raw_rows),
                "records_written": MetadataValue.int(figures.records_written),
                "rejects": MetadataValue.int(figures.rejects),
                "ingest_rejects": MetadataValue.int(figures.ingest_rejects),
                "dagster/row_count": MetadataValue.int(figures.records_written),
                "reject_reasons": MetadataValue.json(figures.reject_reasons),
                "by_table": MetadataValue.json(figures.by_table),
                "sources": MetadataValue.json({"current": current, "failed": list(result.failed_sources)}),
                "seconds": MetadataValue.json({"normalize": result.normalize_s, "checks": result.checks_s}),
            }
            yield from self._judged(RECORDS_KEY, day, metadata, figures.version, record_verdicts(figures.checks),
                                    provenance=provenance(NORMALIZE_RULES, day_inputs, pointer))
        if result.failed_sources:
            self.context.log.warning(
                f"tenant {self.tenant_id}: normalized with the last successful load of {list(result.failed_sources)}"
            )

    def _metrics(self, result: m.MetricsComputed) -> Iterator[Any]:
        self.reported.add(ENGINEERING_KEY)
        if ENGINEERING_KEY not in self.scope.assets:
            return
        pointer = self.context.instance.event_log_storage.get_maximum_record_id()
        for day, figures in sorted(result.days.items()):
            metadata = {
                "rows_written": MetadataValue.int(figures.rows),
                "dagster/row_count": MetadataValue.int(figures.rows),
                "dagster/table_name": MetadataValue.text(result.table),
                "values": MetadataValue.json(figures.values),
            }
            yield from self._judged(ENGINEERING_KEY, day, metadata, figures.version,
                                    [unmapped_verdict(result.unmapped_statuses)],
                                    provenance=provenance(METRICS_RULES, {RECORDS_KEY: "current"}, pointer))

    # --- the tenant's end ----------------------------------------------------------------------

    def applies(self, key: AssetKey) -> bool:
        if self.tenant is None:
            return True
        if key == ENGINEERING_KEY:
            return any(s.kind in METRIC_KINDS for s in self.tenant.sources)
        source = source_of(key)
        return source is None or self.tenant.source(source) is not None

    def failed_keys(self) -> set[AssetKey]:
        """The selected assets this tenant's failures concern: a failed source's assets, and what
        the tenant's process never reported on (its records when no source could feed them, or
        everything after it was stopped)."""
        if not self.failures:
            return set()
        sources = {f.source for f in self.failures if f.source}
        out = {k for k in self.scope.assets if source_of(k) in sources}
        if any(f.source is None for f in self.failures):
            out |= {k for k in self.scope.assets if k not in self.reported}
        else:
            out |= {k for k in self.scope.assets if source_of(k) is None and k not in self.reported}
        return {k for k in out if self.applies(k)}

    def finish(self) -> Iterator[Any]:
        failed = self.failed_keys()
        if failed and not getattr(self.run, "per_partition", True):
            failure_marks(self.context, sorted(failed, key=str), self.tenant_id, self.days)
        if self.run.rebuild:
            yield from self._not_applicable()
        if self.tenant is not None and (self.wrote or self.failures):
            self.context.log.info(
                f"tenant {self.tenant_id}: {len(self.days)} day(s) in {time.monotonic() - self.started:.1f}s"
                + (f", {len(self.failures)} failure(s)" if self.failures else "")
            )

    def _not_applicable(self) -> Iterator[Any]:
        """Partitions a person asked for of sources the tenant does not have: answered as such."""
        for key in sorted(self.scope.assets, key=str):
            if self.applies(key):
                continue
            what = source_of(key) or "jira or github"
            metadata = {
                "applies": MetadataValue.bool(False),
                "dagster/row_count": MetadataValue.int(0),
                "note": MetadataValue.text(f"tenant {self.tenant_id!r} has no source {what!r}"),
            }
            for day in self.days:
                yield self._emit(key, day, metadata, None)
                for check in self.scope.checks:
                    if check.asset_key == key:
                        yield from self._verdict(key, day, not_applicable(check.name, self.tenant_id, what))

    def unchanged_materializations(self) -> Iterator[Any]:
        """For every selected partition this tenant neither wrote nor failed: a materialization
        repeating its latest one (its data did not change), or `applies: false`."""
        failed = self.failed_keys()
        for key in sorted(self.scope.assets, key=str):
            if key in failed:
                continue
            for day in self.days:
                if (key, day) in self.emitted:
                    continue
                if not self.applies(key):
                    yield self._emit(key, day, {"applies": MetadataValue.bool(False)}, None)
                    continue
                before = self.previous.metadata.get(key, {}).get((self.tenant_id, day))
                version = self.previous.version(key, self.tenant_id, day)
                if before is None:
                    continue  # never materialized and nothing new: nothing to repeat
                yield self._emit(key, day, {**before, "unchanged": MetadataValue.bool(True)}, version)
