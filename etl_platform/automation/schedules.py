"""Hourly ingestion of every active tenant, a daily re-load of the last days, and the hourly
freshness check.

Tenants are batched: one run covers a chunk of up to ETL_CHUNK_SIZE tenants (default 50) that
are consecutive in registration order and configure the same sources, so run creation and
process start are paid per chunk, not per tenant. Inside the run each tenant succeeds or fails
on its own, and the retry sensor retries only the tenants that failed (`assets/ingest.py`).
Paused tenants, tenants not registered yet and tenants with a run still queued or in progress
get no run in this tick; they end a chunk, so no run's range includes a tenant it must skip.

Both evaluate in ETL_TIMEZONE (the partition days' timezone). Run keys name the chunk, the
days and the tick, so evaluating a tick twice never launches a run twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from zoneinfo import ZoneInfo

from dagster import (
    AssetKey,
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from etl_platform.assets.keys import ENGINEERING_KEY, RECORDS_KEY
from etl_platform.automation.jobs import FRESHNESS_JOB, INGEST_JOB
from etl_platform.config.registry import Registry, load_registry
from etl_platform.config.settings import get_settings
from etl_platform.observability.logs import tick_log
from etl_platform.runs.coverage import contiguous_chunks, partition_request, run_coverage
from etl_platform.runs.partitions import tenant_partitions
from etl_platform.runs.tags import ATTEMPT_TAG, PARTITION_TAG, TRIGGER_TAG, tenant_tags

IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
METRIC_KINDS = ("jira", "github")
NAMED_SKIPS = 20  # tenants named in a tick's log per reason; the rest are counted


def busy_tenants(context: ScheduleEvaluationContext, order: Sequence[str], days: Sequence[dt.date]) -> set[str]:
    """Tenants with a queued or running run covering one of `days` (one query for all)."""
    runs = context.instance.get_runs(RunsFilter(statuses=IN_FLIGHT), limit=1000)
    position = {t: i for i, t in enumerate(order)}
    busy: set[str] = set()
    for run in runs:
        coverage = run_coverage(run.tags, position)
        if set(coverage.days) & set(days):
            busy.update(coverage.tenants)
    return busy


def _eligible(
    context: ScheduleEvaluationContext, registry: Registry, days: Sequence[dt.date], skip_busy: bool
) -> tuple[list[str], dict[str, tuple[str, ...]], dict[str, list[str]]]:
    """(registration order, tenant -> its sources for the tenants to run, reason -> skipped tenants)."""
    order = list(context.instance.get_dynamic_partitions(tenant_partitions.name))
    registered = set(order)
    busy = busy_tenants(context, order, days) if skip_busy else set()
    wanted: dict[str, tuple[str, ...]] = {}
    skipped: dict[str, list[str]] = {}
    for entry in registry.entries:
        if entry.paused:
            skipped.setdefault("paused", []).append(entry.id)
        elif entry.id not in registered:
            skipped.setdefault("not registered yet: the onboarding sensor or `etl-platform tenants sync`", []).append(
                entry.id
            )
        elif entry.id in busy:
            skipped.setdefault("a run of these days is still queued or in progress", []).append(entry.id)
        elif not entry.sources:
            skipped.setdefault("no sources", []).append(entry.id)
        else:
            wanted[entry.id] = tuple(sorted(entry.sources))
    return order, wanted, skipped


def describe_skips(skipped: Mapping[str, list[str]]) -> str:
    parts = []
    for reason, tenants in skipped.items():
        named = ", ".join(tenants[:NAMED_SKIPS]) + (
            f" and {len(tenants) - NAMED_SKIPS} more" if len(tenants) > NAMED_SKIPS else ""
        )
        parts.append(f"{named} ({reason})")
    return "; ".join(parts) or "none"


def selection(
    sources: Sequence[str], keys_by_source: Mapping[str, list[AssetKey]], registry: Registry
) -> list[AssetKey]:
    """The assets of a chunk: its sources' raw assets, records, and metrics when it has Jira or GitHub."""
    kinds = registry.source_kinds()
    keys = [k for s in sources for k in keys_by_source.get(s, [])] + [RECORDS_KEY]
    if any(kinds.get(s) in METRIC_KINDS for s in sources):
        keys.append(ENGINEERING_KEY)
    return keys


def chunk_requests(
    context: ScheduleEvaluationContext,
    days: Sequence[dt.date],
    keys_by_source: Mapping[str, list[AssetKey]],
    *,
    trigger: str,
    run_key: str,
    skip_busy: bool,
) -> tuple[list[RunRequest], str]:
    """One run request per chunk of eligible tenants over `days`, and a summary for the log.
    `skip_busy`: leave out tenants with a run of these days queued or in progress (the hourly
    schedule: the next tick catches up; the daily re-load waits for them instead)."""
    registry = load_registry()
    order, wanted, skipped = _eligible(context, registry, days, skip_busy)
    requests = []
    for chunk in contiguous_chunks(order, wanted, get_settings().chunk_size):
        partition = partition_request(chunk, days)
        tags = {TRIGGER_TAG: trigger, ATTEMPT_TAG: "1"}
        tags.update(tenant_tags(chunk))
        requests.append(
            RunRequest(
                run_key=f"{run_key}:{chunk[0]}:{chunk[-1]}",
                partition_key=partition.get(PARTITION_TAG),
                asset_selection=selection(wanted[chunk[0]], keys_by_source, registry),
                # no check is planned: the run reports the checks of what changed (assets/ingest.py)
                asset_check_keys=[],
                tags={**tags, **{k: v for k, v in partition.items() if k != PARTITION_TAG}},
            )
        )
    summary = (
        f"{len(requests)} runs for {len(wanted)} tenants on {[d.isoformat() for d in days]}; "
        f"skipped: {describe_skips(skipped)}"
    )
    return requests, summary


def _local_now(context: ScheduleEvaluationContext, timezone: str) -> dt.datetime:
    return context.scheduled_execution_time.astimezone(ZoneInfo(timezone))


def hourly_days(now: dt.datetime, late_data_hours: int, start_date: dt.date) -> list[dt.date]:
    """Today, and yesterday too during the first `late_data_hours` hours after midnight."""
    today = now.date()
    days = [today] + ([today - dt.timedelta(days=1)] if now.hour < late_data_hours else [])
    return sorted(d for d in days if d >= start_date)


def hourly_requests(
    context: ScheduleEvaluationContext, keys_by_source: Mapping[str, list[AssetKey]]
) -> list[RunRequest] | SkipReason:
    """Today's partitions (early in the day also yesterday's) of every active tenant, in chunks."""
    settings = get_settings()
    now = _local_now(context, settings.timezone)
    days = hourly_days(now, settings.late_data_hours, settings.start_date)
    requests, summary = chunk_requests(
        context, days, keys_by_source, trigger="schedule", run_key=f"hourly:{now:%Y-%m-%dT%H%z}", skip_busy=True
    )
    tick_log(context.log, schedule="hourly_ingest").info(f"{now:%Y-%m-%d %H:%M %Z}: {summary}")
    return requests or SkipReason(f"no active tenants to run; {summary}")


def rebackfill_window(today: dt.date, rebackfill_days: int, start_date: dt.date) -> tuple[dt.date, dt.date] | None:
    """The last `rebackfill_days` complete days (yesterday back), not before the start date."""
    first = max(today - dt.timedelta(days=rebackfill_days), start_date)
    last = today - dt.timedelta(days=1)
    return (first, last) if first <= last else None


def rebackfill_requests(
    context: ScheduleEvaluationContext, keys_by_source: Mapping[str, list[AssetKey]]
) -> list[RunRequest] | SkipReason:
    """The last N complete days of every active tenant (late and corrected data), in chunks: a
    run's range is the rectangle of its tenants × the N days, executed as one run."""
    settings = get_settings()
    today = _local_now(context, settings.timezone).date()
    window = rebackfill_window(today, settings.rebackfill_days, settings.start_date)
    if window is None:
        return SkipReason("no complete days to re-load yet")
    first, last = window
    days = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
    requests, summary = chunk_requests(
        context, days, keys_by_source, trigger="backfill", run_key=f"rebackfill:{first}:{last}", skip_busy=False
    )
    tick_log(context.log, schedule="daily_rebackfill").info(f"re-loading {first}..{last}: {summary}")
    return requests or SkipReason(f"no active tenants; {summary}")


def build_schedules(jobs: list, keys_by_source: Mapping[str, list[AssetKey]]) -> list[ScheduleDefinition]:
    settings = get_settings()
    job = next(j for j in jobs if j.name == INGEST_JOB)

    @schedule(
        name="hourly_ingest",
        job=job,
        cron_schedule=settings.hourly_cron,
        execution_timezone=settings.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Every hour: each active tenant's today partition (and yesterday's in the first "
        "ETL_LATE_DATA_HOURS hours), ETL_CHUNK_SIZE tenants per run.",
    )
    def hourly_ingest(context: ScheduleEvaluationContext):
        return hourly_requests(context, keys_by_source)

    @schedule(
        name="daily_rebackfill",
        job=job,
        cron_schedule=settings.rebackfill_cron,
        execution_timezone=settings.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Daily: re-load the last ETL_REBACKFILL_DAYS days of every active tenant, in chunks.",
    )
    def daily_rebackfill(context: ScheduleEvaluationContext):
        return rebackfill_requests(context, keys_by_source)

    freshness = ScheduleDefinition(
        name="tenant_freshness",
        job=next(j for j in jobs if j.name == FRESHNESS_JOB),
        cron_schedule=settings.freshness_cron,
        execution_timezone=settings.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Hourly: is every active tenant's newest record younger than its freshness_hours?",
    )
    return [hourly_ingest, daily_rebackfill, freshness]
