"""Queries over Dagster's run storage: recent runs, per-source stats, daemon heartbeats.

Shared by the read API (/stats, /health) and the CLI (`etl-platform runs`). Runs are
found by the tags the platform puts on them (`etl/tenant`, `etl/source`, ...); a run
without `etl/source` loads every source of its tenant and is reported under `ALL_SOURCES`.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunRecord, RunsFilter

from etl_platform.automation.tags import (
    ATTEMPT_TAG,
    PARENT_RUN_TAG,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    SOURCE_TAG,
    TENANT_TAG,
    TENANTS_TAG,
    TRIGGER_TAG,
)

ALL_SOURCES = "*"
NORMALIZED_ASSET = AssetKey(["normalized", "records"])
LOAD_COUNTS = ("records_written", "rejects", "raw_rows")
FINISHED = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
REASON_MAX_CHARS = 500
# recent runs of a tenant scanned for its sources and its last all-source run
RECENT_SCAN = 200


def _utc(ts: float | None) -> dt.datetime | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.timezone.utc).isoformat()


@dataclass(frozen=True)
class RunSummary:
    """One run as the platform sees it: tenant, source, trigger, partition, timing, failure."""

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


def summarize(record: RunRecord, failure_reason: str | None = None) -> RunSummary:
    """A RunSummary of one run record."""
    run = record.dagster_run
    tags = run.tags
    partition = tags.get(PARTITION_TAG)
    if partition is None and RANGE_START_TAG in tags:
        partition = f"{tags[RANGE_START_TAG]}...{tags.get(RANGE_END_TAG, '')}"
    attempt = tags.get(ATTEMPT_TAG)
    return RunSummary(
        run_id=run.run_id,
        job_name=run.job_name,
        status=run.status.value,
        tenant=tags.get(TENANT_TAG) or tags.get(TENANTS_TAG),
        source=tags.get(SOURCE_TAG),
        trigger=tags.get(TRIGGER_TAG),
        attempt=int(attempt) if attempt and attempt.isdigit() else None,
        parent_run_id=tags.get(PARENT_RUN_TAG),
        partition=partition,
        created_at=record.create_timestamp.astimezone(dt.timezone.utc),
        started_at=_utc(record.start_time),
        ended_at=_utc(record.end_time),
        failure_reason=failure_reason,
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


def _status_list(statuses: Iterable[str | DagsterRunStatus] | None) -> list[DagsterRunStatus]:
    return [s if isinstance(s, DagsterRunStatus) else DagsterRunStatus(str(s).upper()) for s in statuses or ()]


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
    tags = {k: v for k, v in ((TENANT_TAG, tenant), (SOURCE_TAG, source)) if v}
    records = instance.get_run_records(RunsFilter(tags=tags, statuses=_status_list(statuses)), limit=limit)
    return [
        summarize(
            r,
            failure_reason(instance, r.dagster_run.run_id)
            if with_reasons and r.dagster_run.status == DagsterRunStatus.FAILURE
            else None,
        )
        for r in records
    ]


def _last_run(
    instance: DagsterInstance, tenant: str, source: str, statuses: Sequence[DagsterRunStatus] = ()
) -> RunRecord | None:
    """The newest run of (tenant, source) with one of `statuses`: a run of that source, or an
    untagged run (it loads every source); ALL_SOURCES: untagged runs only."""
    candidates: list[RunRecord] = []
    if source != ALL_SOURCES:
        filters = RunsFilter(tags={TENANT_TAG: tenant, SOURCE_TAG: source}, statuses=list(statuses))
        candidates.extend(instance.get_run_records(filters, limit=1))
    filters = RunsFilter(tags={TENANT_TAG: tenant}, statuses=list(statuses))
    for record in instance.get_run_records(filters, limit=RECENT_SCAN):
        if SOURCE_TAG not in record.dagster_run.tags:
            candidates.append(record)
            break
    return max(candidates, key=lambda r: r.create_timestamp) if candidates else None


def _load_counts(
    instance: DagsterInstance, run_id: str, tenant: str, source: str = ALL_SOURCES
) -> tuple[Counter[str], float | None]:
    """Sums of `records_written`/`rejects`/`raw_rows` over the run's `normalized/records`
    materializations of this tenant's partitions (for one source: its raw tables' share), and
    the newest such materialization time."""
    totals: Counter[str] = Counter()
    newest: float | None = None
    connection = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    for record in connection.records:
        event = record.event_log_entry.dagster_event
        if event is None or event.asset_key != NORMALIZED_ASSET:
            continue
        partition = event.partition or ""
        if partition and partition.split("|")[-1] != tenant:
            continue
        metadata = event.step_materialization_data.materialization.metadata
        if source != ALL_SOURCES:
            totals.update(_source_share(metadata, tenant, source))
            ts = record.event_log_entry.timestamp
            newest = ts if newest is None else max(newest, ts)
            continue
        for name in LOAD_COUNTS:
            value = getattr(metadata.get(name), "value", metadata.get(name))
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[name] += int(value)
        ts = record.event_log_entry.timestamp
        newest = ts if newest is None else max(newest, ts)
    return totals, newest


def _source_share(metadata: Any, tenant: str, source: str) -> Counter[str]:
    """One source's figures from the per-table breakdown (`by_tenant.<t>.by_table`)."""
    by_tenant = getattr(metadata.get("by_tenant"), "value", None) or {}
    share: Counter[str] = Counter()
    for table, figures in (by_tenant.get(tenant, {}).get("by_table") or {}).items():
        if table.startswith(f"{source}_"):
            share["raw_rows"] += int(figures.get("raw_rows", 0))
            share["records_written"] += int(figures.get("records", 0))
            share["rejects"] += int(figures.get("rejects", 0))
    return share


def source_stats(
    instance: DagsterInstance,
    tenant: str,
    window_hours: float = 24,
    *,
    sources: Iterable[str] = (),
    now: dt.datetime | None = None,
    max_runs: int = 1000,
) -> list[dict[str, Any]]:
    """Per source of `tenant`: last success, last failure and its reason (any age); runs by
    status, average duration and records/rejects/raw rows loaded within the last
    `window_hours`; the last `normalized/records` materialization and its age.

    `sources` (e.g. the configured ones) are always listed, then sources seen on the window's
    or the last 200 runs, then `ALL_SOURCES` if runs without an `etl/source` tag were seen.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    since = now - dt.timedelta(hours=window_hours)
    window = instance.get_run_records(
        RunsFilter(tags={TENANT_TAG: tenant}, created_after=since), limit=max_runs
    )
    by_source: dict[str, list[RunRecord]] = {}
    for record in window:
        by_source.setdefault(record.dagster_run.tags.get(SOURCE_TAG, ALL_SOURCES), []).append(record)
    recent = instance.get_run_records(RunsFilter(tags={TENANT_TAG: tenant}), limit=RECENT_SCAN)
    seen = {r.dagster_run.tags.get(SOURCE_TAG, ALL_SOURCES) for r in recent} | set(by_source)
    names = list(dict.fromkeys([*sources, *sorted(seen - {ALL_SOURCES})]))
    if ALL_SOURCES in seen:
        names.append(ALL_SOURCES)
    untagged = by_source.get(ALL_SOURCES, [])  # runs of every source count for each source
    return [
        _one_source(
            instance, tenant, name, by_source.get(name, []) + (untagged if name != ALL_SOURCES else []), now
        )
        for name in names
    ]


def _one_source(
    instance: DagsterInstance, tenant: str, source: str, window: list[RunRecord], now: dt.datetime
) -> dict[str, Any]:
    success = _last_run(instance, tenant, source, [DagsterRunStatus.SUCCESS])
    failure = _last_run(instance, tenant, source, [DagsterRunStatus.FAILURE])
    counts: Counter[str] = Counter()
    newest: float | None = None
    durations = [r.end_time - r.start_time for r in window if r.start_time is not None and r.end_time]
    in_window = {r.dagster_run.run_id for r in window if r.dagster_run.status in FINISHED}
    # a run of this source counts whole; a run of every source counts with this source's share
    source_tagged = {r.dagster_run.run_id for r in window if SOURCE_TAG in r.dagster_run.tags}
    if success is not None and SOURCE_TAG in success.dagster_run.tags:
        source_tagged.add(success.dagster_run.run_id)
    # the last success may predate the window: it still tells the last materialization
    scanned = in_window | ({success.dagster_run.run_id} if success else set())
    for run_id in scanned:
        tagged = run_id in source_tagged
        totals, ts = _load_counts(instance, run_id, tenant, ALL_SOURCES if tagged else source)
        if run_id in in_window:
            counts.update(totals)
        if ts is not None:
            newest = ts if newest is None else max(newest, ts)
    last_mat = _utc(newest)
    return {
        "source": source,
        "last_success": summarize(success).to_dict() if success else None,
        "last_failure": summarize(failure, failure_reason(instance, failure.dagster_run.run_id)).to_dict()
        if failure
        else None,
        "runs_by_status": dict(sorted(Counter(r.dagster_run.status.value for r in window).items())),
        "runs_in_window": len(window),
        "avg_duration_s": round(sum(durations) / len(durations), 3) if durations else None,
        **{name: counts.get(name, 0) for name in LOAD_COUNTS},
        "last_materialization_at": _iso(last_mat),
        "materialization_age_s": round((now - last_mat).total_seconds(), 3) if last_mat else None,
    }


def daemon_heartbeat_ages(instance: DagsterInstance, now: float | None = None) -> dict[str, float]:
    """Seconds since each daemon type's last heartbeat (empty: no daemon ever ran)."""
    now = time.time() if now is None else now
    return {
        daemon: round(max(0.0, now - beat.timestamp), 3)
        for daemon, beat in instance.get_daemon_heartbeats().items()
    }


def last_run_by_tenant(instance: DagsterInstance, tenants: Iterable[str]) -> dict[str, RunSummary | None]:
    """The newest run of each tenant (None: never ran)."""
    out: dict[str, RunSummary | None] = {}
    for tenant in tenants:
        records = instance.get_run_records(RunsFilter(tags={TENANT_TAG: tenant}), limit=1)
        out[tenant] = summarize(records[0]) if records else None
    return out
