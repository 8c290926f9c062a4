"""Queries over Dagster's run storage: a tenant's runs, per-source stats, daemon heartbeats.

Shared by the read API (/stats, /health) and the CLI (`etl-platform runs`). A run covers one
tenant (tag `etl/tenant`) or several (`etl/tenants`, with `etl/multi_tenant=true` so they can be
found); in a run of several tenants each tenant succeeds or fails on its own (the failed ones are
tagged `etl/failed_tenants`). A tenant is shown only its own part of a shared run (`summarize` with
`tenant`): its status, its days, and its failure from its own entries (`tenant_failure_reason`),
never the run-level text that lists every failed tenant. Load figures come from the per-partition materializations of
`normalized/records`: each partition counted once, at its latest materialization.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    RunRecord,
    RunsFilter,
)

from etl_platform.config.names import is_raw_name_of
from etl_platform.loading.failures import TenantFailure
from etl_platform.runs.coverage import run_coverage
from etl_platform.runs.failures import FAILED_TENANTS_TAG, run_failures
from etl_platform.runs.tags import (
    ATTEMPT_TAG,
    MULTI_TENANT_TAG,
    PARENT_RUN_TAG,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    SOURCE_TAG,
    TENANT_TAG,
    TENANTS_TAG,
    TRIGGER_TAG,
    sources_of_selection,
)

NORMALIZED_ASSET = AssetKey(["normalized", "records"])
LOAD_COUNTS = ("records_written", "rejects", "raw_rows")
FINISHED = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
REASON_MAX_CHARS = 500
RECENT_SCAN = 200  # a tenant's recent runs scanned for its last success and failure per source
FAILED_RUNS_READ = 50  # a tenant's newest failed runs whose own entries /stats reads (one query each, cached)
STATS_MAX_WINDOW_DAYS = 90  # the longest window /stats counts runs over (the purge keeps those run records)


class DagsterUnavailable(RuntimeError):
    """The Dagster instance (DAGSTER_HOME) cannot be loaded or queried (the read API answers 503)."""


def _utc(ts: float | None) -> dt.datetime | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.timezone.utc).isoformat()


@dataclass(frozen=True)
class RunSummary:
    """One run as the platform sees it: tenant(s), source, trigger, partition, timing, failure."""

    run_id: str
    job_name: str
    status: str
    tenant: str | None  # a run spanning several tenants: their ids, comma-separated
    source: str | None  # None: every source of the tenant
    trigger: str | None
    attempt: int | None
    parent_run_id: str | None
    partition: str | None  # one key ('2024-01-01|acme') or a range 'start...end'
    created_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    failure_reason: str | None = None
    failed_tenants: str | None = None  # of a run of several tenants: those that failed

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return round((self.ended_at - self.started_at).total_seconds(), 3)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 UTC strings, plus `duration_s`."""
        out = asdict(self)
        for key in ("created_at", "started_at", "ended_at"):
            out[key] = _iso(out[key])
        out["duration_s"] = self.duration_s
        return out


def _own_partition(tags: dict[str, str], tenant: str) -> str | None:
    """The tenant's own partitions of a run of several tenants: its key, or its range of days."""
    days = run_coverage(tags, {}).days
    if not days:
        return None
    first, last = f"{days[0].isoformat()}|{tenant}", f"{days[-1].isoformat()}|{tenant}"
    return first if first == last else f"{first}...{last}"


def summarize(record: RunRecord, failure_reason: str | None = None, *, tenant: str | None = None) -> RunSummary:
    """A RunSummary of one run record; with `tenant`, that tenant's own part of it (its status,
    its partitions, no other tenant named): what the tenant is shown of a run it shares."""
    run = record.dagster_run
    tags = run.tags
    partition = tags.get(PARTITION_TAG)
    if partition is None and RANGE_START_TAG in tags:
        partition = f"{tags[RANGE_START_TAG]}...{tags.get(RANGE_END_TAG, '')}"
    attempt = tags.get(ATTEMPT_TAG)
    shared = tenant is not None and tags.get(TENANT_TAG) != tenant
    if shared:
        partition = _own_partition(tags, tenant) if partition else None
    status = tenant_status(record, tenant) if tenant is not None else run.status.value
    return RunSummary(
        run_id=run.run_id,
        job_name=run.job_name,
        status=status,
        tenant=tenant if shared else tags.get(TENANT_TAG) or tags.get(TENANTS_TAG),
        source=tags.get(SOURCE_TAG),
        trigger=tags.get(TRIGGER_TAG),
        attempt=int(attempt) if attempt and attempt.isdigit() else None,
        parent_run_id=tags.get(PARENT_RUN_TAG),
        partition=partition,
        created_at=record.create_timestamp.astimezone(dt.timezone.utc),
        started_at=_utc(record.start_time),
        ended_at=_utc(record.end_time),
        failure_reason=failure_reason,
        failed_tenants=(tenant if status == DagsterRunStatus.FAILURE.value else None)
        if shared
        else tags.get(FAILED_TENANTS_TAG),
    )


def _innermost(error: Any) -> Any:
    """The user's exception under Dagster's wrappers (step execution errors carry it as `cause`)."""
    while getattr(error, "cause", None) is not None and error.cls_name and error.cls_name.startswith("Dagster"):
        error = error.cause
    return error


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= REASON_MAX_CHARS else text[: REASON_MAX_CHARS - 1] + "…"


def failure_reason(instance: DagsterInstance, run_id: str) -> str | None:
    """Why a run failed: the first step failure's error (step key and message), else the
    run failure event's error or message."""
    events = instance.all_logs(run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE})
    run_failure = None
    for entry in events:
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == DagsterEventType.STEP_FAILURE:
            error = _innermost(event.step_failure_data.error)
            message = error.message if error is not None else entry.message
            return _clip(f"{event.step_key}: {message}")
        run_failure = run_failure or entry
    if run_failure is None:
        return None
    data = run_failure.dagster_event.event_specific_data
    error = getattr(data, "error", None)
    return _clip(_innermost(error).message if error is not None else run_failure.message)


def own_failures(instance: DagsterInstance, run_id: str, tenant: str) -> list[TenantFailure]:
    """The tenant's own failure entries of a run (each failed tenant's are recorded apart)."""
    return [f for f in run_failures(instance, run_id) if f.tenant == tenant]


def _describe(failures: list[TenantFailure], source: str | None) -> str:
    mine = [f for f in failures if source is None or f.source in (source, None)] or failures
    text = "; ".join(f.describe() for f in mine[:10])
    return _clip(text + (f"; and {len(mine) - 10} more" if len(mine) > 10 else ""))


def tenant_failure_reason(
    instance: DagsterInstance,
    record: RunRecord,
    tenant: str,
    source: str | None = None,
    failures: list[TenantFailure] | None = None,
) -> str | None:
    """Why a run failed for `tenant`, from the tenant's own failure entries only (those of
    `source` first). A run of the tenant alone without entries (a crash, a run killed) gives its
    run-level reason; a shared run without entries of the tenant says so without any text of the
    run, which may name the other tenants."""
    run = record.dagster_run
    mine = own_failures(instance, run.run_id, tenant) if failures is None else failures
    if mine:
        return _describe(mine, source)
    if run.tags.get(TENANT_TAG) == tenant or run.tags.get(TENANTS_TAG) == tenant:
        return failure_reason(instance, run.run_id)
    return "the run this tenant shared with others failed before recording this tenant's own failure"


def _status_list(statuses: Iterable[str | DagsterRunStatus] | None) -> list[DagsterRunStatus]:
    return [s if isinstance(s, DagsterRunStatus) else DagsterRunStatus(str(s).upper()) for s in statuses or ()]


def covers_tenant(record: RunRecord, tenant: str) -> bool:
    tags = record.dagster_run.tags
    return tags.get(TENANT_TAG) == tenant or tenant in (tags.get(TENANTS_TAG) or "").split(",")


def tenant_runs(
    instance: DagsterInstance,
    tenant: str,
    *,
    statuses: Sequence[DagsterRunStatus] = (),
    created_after: dt.datetime | None = None,
    limit: int = RECENT_SCAN,
    extra_tags: dict[str, str] | None = None,
) -> list[RunRecord]:
    """The tenant's runs, newest first: its own runs and the runs of several tenants it is in."""
    base = dict(extra_tags or {})
    own = instance.get_run_records(
        RunsFilter(tags={**base, TENANT_TAG: tenant}, statuses=list(statuses), created_after=created_after),
        limit=limit,
    )
    shared = instance.get_run_records(
        RunsFilter(tags={**base, MULTI_TENANT_TAG: "true"}, statuses=list(statuses), created_after=created_after),
        limit=limit,
    )
    merged = own + [r for r in shared if covers_tenant(r, tenant)]
    return sorted(merged, key=lambda r: r.create_timestamp, reverse=True)[:limit]


def tenant_status(record: RunRecord, tenant: str) -> str:
    """The run's outcome for one tenant: a run of several tenants failed only for those it names."""
    run = record.dagster_run
    failed = run.tags.get(FAILED_TENANTS_TAG)
    if run.status == DagsterRunStatus.FAILURE and failed is not None and tenant not in failed.split(","):
        return DagsterRunStatus.SUCCESS.value
    return run.status.value


def recent_runs(
    instance: DagsterInstance,
    tenant: str | None = None,
    limit: int = 50,
    *,
    source: str | None = None,
    statuses: Iterable[str | DagsterRunStatus] | None = None,
    with_reasons: bool = True,
) -> list[RunSummary]:
    """The newest runs (of one tenant and/or source, with the given statuses), newest first;
    failed runs carry their failure reason unless `with_reasons` is false."""
    wanted = _status_list(statuses)
    source_tags = {SOURCE_TAG: source} if source else {}
    if tenant:
        records = tenant_runs(instance, tenant, statuses=wanted, limit=limit, extra_tags=source_tags)
    else:
        records = instance.get_run_records(RunsFilter(tags=source_tags, statuses=wanted), limit=limit)
    if tenant:  # the tenant's own part of each run
        return [
            summarize(
                r,
                tenant_failure_reason(instance, r, tenant, source)
                if with_reasons and tenant_status(r, tenant) == DagsterRunStatus.FAILURE.value
                else None,
                tenant=tenant,
            )
            for r in records
        ]
    return [
        summarize(
            r,
            failure_reason(instance, r.dagster_run.run_id)
            if with_reasons and r.dagster_run.status == DagsterRunStatus.FAILURE
            else None,
        )
        for r in records
    ]


def sources_of_run(record: RunRecord) -> set[str] | None:
    """The sources a run loaded; None: every source of its tenants."""
    run = record.dagster_run
    if run.tags.get(SOURCE_TAG):
        return {run.tags[SOURCE_TAG]}
    if run.asset_selection:
        return set(sources_of_selection(run.asset_selection))
    return None


def _partition_loads(
    instance: DagsterInstance, tenant: str, records: list[RunRecord], since: float, order: dict[str, int]
) -> tuple[dict[str, Counter[str]], float | None]:
    """source -> figures of the tenant's partitions materialized since `since` (each partition at
    its latest materialization), from `normalized/records`' per-partition metadata; and the newest
    of those materializations."""
    keys = sorted(
        {f"{day.isoformat()}|{tenant}" for r in records for day in run_coverage(r.dagster_run.tags, order).days}
    )
    latest: dict[str, Any] = {}
    for start in range(0, len(keys), 500):
        batch = keys[start : start + 500]
        result = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=NORMALIZED_ASSET, asset_partitions=batch, after_timestamp=since),
            limit=len(batch) * 50,
        )
        for record in result.records:
            current = latest.get(record.partition_key or "")
            if current is None or record.timestamp > current.timestamp:
                latest[record.partition_key or ""] = record
    by_source: dict[str, Counter[str]] = {}
    for record in latest.values():
        metadata = record.asset_materialization.metadata if record.asset_materialization else {}
        by_table = getattr(metadata.get("by_table"), "value", None) or {}
        for table, figures in by_table.items():
            share = by_source.setdefault(table, Counter())
            share["raw_rows"] += int(figures.get("raw_rows", 0))
            share["records_written"] += int(figures.get("records", 0))
            share["rejects"] += int(figures.get("rejects", 0))
    newest = max((r.timestamp for r in latest.values()), default=None)
    return by_source, newest


def table_owner(table: str, sources: Iterable[str], tables: Mapping[str, Iterable[str]] | None = None) -> str | None:
    """The source a raw table belongs to: the source whose configured tables (`tables`) hold it
    (exactly); for a source without a list, the longest source name the table is a raw name of
    (`a_b_rows` is `a_b`'s, never `a`'s)."""
    tables = tables or {}
    for name, owned in tables.items():
        if table in set(owned):
            return name
    candidates = [s for s in sources if s not in tables and is_raw_name_of(s, table)]
    return max(candidates, key=len, default=None)


def _shares(
    by_table: dict[str, Counter[str]], sources: list[str], tables: Mapping[str, Iterable[str]] | None
) -> dict[str, Counter[str]]:
    """source -> its figures: each raw table counted for exactly one source (`table_owner`)."""
    out: dict[str, Counter[str]] = {}
    for table, figures in by_table.items():
        owner = table_owner(table, sources, tables)
        if owner is not None:
            out.setdefault(owner, Counter()).update(figures)
    return out


def _failed_for(failures: list[TenantFailure], source: str) -> bool:
    """The tenant's own entries concern `source` (or the tenant as a whole; none: the run died)."""
    return not failures or any(f.source in (source, None) for f in failures)


def source_stats(
    instance: DagsterInstance,
    tenant: str,
    window_hours: float = 24,
    *,
    sources: Iterable[str] = (),
    tables: Mapping[str, Iterable[str]] | None = None,
    now: dt.datetime | None = None,
    max_runs: int = 1000,
) -> list[dict[str, Any]]:
    """Per source of `tenant` (the given ones, the tenant's configured sources; without any, those
    seen on its recent runs): last success and last failure for this tenant (any age; the failure:
    the newest of its `FAILED_RUNS_READ` newest failed runs whose own entries concern the source,
    described from those entries), runs by status and average duration within the last
    `window_hours`, and the records/rejects/raw rows of the partitions loaded in the window (each
    partition once, each raw table for its one source: `tables`, source -> its raw tables)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    since = now - dt.timedelta(hours=window_hours)
    window = tenant_runs(instance, tenant, created_after=since, limit=max_runs)
    recent = tenant_runs(instance, tenant, limit=RECENT_SCAN)
    names = list(dict.fromkeys(sources))
    if not names:
        names = sorted({s for r in recent + window for s in (sources_of_run(r) or ())})
    order = {t: i for i, t in enumerate(instance.get_dynamic_partitions("tenant"))}
    loads, newest = _partition_loads(instance, tenant, window, since.timestamp(), order)
    shares = _shares(loads, names, tables)
    entries: dict[str, list[TenantFailure]] = {}  # run id -> the tenant's own failure entries

    def own(record: RunRecord) -> list[TenantFailure]:
        run_id = record.dagster_run.run_id
        if run_id not in entries:
            entries[run_id] = own_failures(instance, run_id, tenant)
        return entries[run_id]

    out = []
    for name in names:
        touched = lambda r, name=name: sources_of_run(r) is None or name in (sources_of_run(r) or ())  # noqa: E731
        in_window = [r for r in window if touched(r)]
        mine = [r for r in recent if touched(r)]
        success = next((r for r in mine if tenant_status(r, tenant) == "SUCCESS"), None)
        failed = [r for r in mine if tenant_status(r, tenant) == "FAILURE"][:FAILED_RUNS_READ]
        failure = next((r for r in failed if _failed_for(own(r), name)), None)
        durations = [r.end_time - r.start_time for r in in_window if r.start_time is not None and r.end_time]
        share = shares.get(name, Counter())
        last_mat = _utc(newest) if share else (success and _utc(success.end_time))
        reason = failure and tenant_failure_reason(instance, failure, tenant, name, own(failure))
        out.append(
            {
                "source": name,
                "last_success": summarize(success, tenant=tenant).to_dict() if success else None,
                "last_failure": summarize(failure, reason, tenant=tenant).to_dict() if failure else None,
                "runs_by_status": dict(sorted(Counter(tenant_status(r, tenant) for r in in_window).items())),
                "runs_in_window": len(in_window),
                "avg_duration_s": round(sum(durations) / len(durations), 3) if durations else None,
                **{count: int(share.get(count, 0)) for count in LOAD_COUNTS},
                "last_materialization_at": _iso(last_mat),
                "materialization_age_s": round((now - last_mat).total_seconds(), 3) if last_mat else None,
            }
        )
    return out


def daemon_heartbeat_ages(instance: DagsterInstance, now: float | None = None) -> dict[str, float]:
    """Seconds since each daemon type's last heartbeat (empty: no daemon ever ran)."""
    now = time.time() if now is None else now
    return {
        daemon: round(max(0.0, now - beat.timestamp), 3) for daemon, beat in instance.get_daemon_heartbeats().items()
    }


def last_run_by_tenant(instance: DagsterInstance, tenants: Iterable[str]) -> dict[str, RunSummary | None]:
    """The newest run of each tenant (None: never ran)."""
    shared = instance.get_run_records(RunsFilter(tags={MULTI_TENANT_TAG: "true"}), limit=RECENT_SCAN)
    out: dict[str, RunSummary | None] = {}
    for tenant in tenants:
        own = instance.get_run_records(RunsFilter(tags={TENANT_TAG: tenant}), limit=1)
        candidates = own + [r for r in shared if covers_tenant(r, tenant)]
        newest = max(candidates, key=lambda r: r.create_timestamp, default=None)
        out[tenant] = summarize(newest, tenant=tenant) if newest else None
    return out
