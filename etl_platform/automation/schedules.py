"""Hourly ingestion for every active tenant, and a daily re-load of the last days.

Both evaluate in ETL_TIMEZONE (the partition days' timezone). Run keys name the tenant, the
partition day(s) and the tick, so evaluating a tick twice (daemon restart, catch-up) never
launches a run twice. Paused tenants (`paused: true`) and tenants not registered as partitions
yet get no run; the tick's log and skip reason name them.
"""

from __future__ import annotations

import datetime as dt
import os
from zoneinfo import ZoneInfo

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from etl_platform.automation.jobs import INGEST_JOB
from etl_platform.automation.tags import (
    ATTEMPT_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    TENANT_TAG,
    TRIGGER_TAG,
)
from etl_platform.config.models import TenantConfig
from etl_platform.config.registry import Registry, load_registry
from etl_platform.config.settings import get_settings
from etl_platform.partitions import partition_key, tenant_partitions


def _eligible(context: ScheduleEvaluationContext, registry: Registry) -> tuple[list[TenantConfig], list[str]]:
    """(tenants to run, 'id (why)' of the tenants skipped)."""
    registered = set(context.instance.get_dynamic_partitions(tenant_partitions.name))
    active, skipped = [], []
    for tenant in registry.tenants:
        if tenant.paused:
            skipped.append(f"{tenant.id} (paused)")
        elif tenant.id not in registered:
            skipped.append(f"{tenant.id} (not registered yet: the onboarding sensor or `etl-platform tenants sync`)")
        else:
            active.append(tenant)
    return active, skipped


def _local_now(context: ScheduleEvaluationContext, timezone: str) -> dt.datetime:
    return context.scheduled_execution_time.astimezone(ZoneInfo(timezone))


def hourly_days(now: dt.datetime, late_data_hours: int, start_date: dt.date) -> list[dt.date]:
    """Today, and yesterday too during the first `late_data_hours` hours after midnight."""
    today = now.date()
    days = [today] + ([today - dt.timedelta(days=1)] if now.hour < late_data_hours else [])
    return [d for d in days if d >= start_date]


def hourly_requests(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
    """One run per active registered tenant for today; early in the day also yesterday."""
    settings = get_settings()
    now = _local_now(context, settings.timezone)
    days = hourly_days(now, settings.late_data_hours, settings.start_date)
    active, skipped = _eligible(context, load_registry())
    requests = [
        RunRequest(
            run_key=f"hourly:{tenant.id}:{day.isoformat()}:{now:%Y-%m-%dT%H%z}",
            partition_key=str(partition_key(tenant.id, day)),
            tags={TENANT_TAG: tenant.id, TRIGGER_TAG: "schedule", ATTEMPT_TAG: "1"},
        )
        for tenant in active
        for day in days
    ]
    summary = (
        f"{now:%Y-%m-%d %H:%M %Z}: {len(requests)} runs for {[t.id for t in active]} "
        f"on {[d.isoformat() for d in days]}; skipped: {', '.join(skipped) or 'none'}"
    )
    context.log.info(summary)
    if not requests:
        return SkipReason(f"no active tenants to run; skipped: {', '.join(skipped) or 'none'}")
    return requests


def rebackfill_window(today: dt.date, rebackfill_days: int, start_date: dt.date) -> tuple[dt.date, dt.date] | None:
    """The last `rebackfill_days` complete days (yesterday back), not before the start date."""
    first = max(today - dt.timedelta(days=rebackfill_days), start_date)
    last = today - dt.timedelta(days=1)
    return (first, last) if first <= last else None


def rebackfill_requests(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
    """One single run per active tenant re-loading the last N days (late and corrected data).

    The run targets the partition range 'first|tenant...last|tenant', a rectangle of one tenant
    and N days: the assets' BackfillPolicy.single_run() executes it as one run."""
    settings = get_settings()
    today = _local_now(context, settings.timezone).date()
    window = rebackfill_window(today, settings.rebackfill_days, settings.start_date)
    if window is None:
        return SkipReason("no complete days to re-load yet")
    first, last = window
    active, skipped = _eligible(context, load_registry())
    requests = [
        RunRequest(
            run_key=f"rebackfill:{tenant.id}:{first}:{last}",
            tags={
                RANGE_START_TAG: str(partition_key(tenant.id, first)),
                RANGE_END_TAG: str(partition_key(tenant.id, last)),
                TENANT_TAG: tenant.id,
                TRIGGER_TAG: "backfill",
                ATTEMPT_TAG: "1",
            },
        )
        for tenant in active
    ]
    context.log.info(
        f"re-loading {first}..{last} for {[t.id for t in active]}; skipped: {', '.join(skipped) or 'none'}"
    )
    return requests or SkipReason(f"no active tenants; skipped: {', '.join(skipped) or 'none'}")


def build_schedules(jobs: list) -> list[ScheduleDefinition]:
    settings = get_settings()
    job = next(j for j in jobs if j.name == INGEST_JOB)

    @schedule(
        name="hourly_ingest",
        job=job,
        cron_schedule=os.environ.get("ETL_HOURLY_CRON", "0 * * * *"),
        execution_timezone=settings.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Every hour: each active tenant's today partition (and yesterday's in the first "
        "ETL_LATE_DATA_HOURS hours).",
    )
    def hourly_ingest(context: ScheduleEvaluationContext):
        return hourly_requests(context)

    @schedule(
        name="daily_rebackfill",
        job=job,
        cron_schedule=os.environ.get("ETL_REBACKFILL_CRON", "30 2 * * *"),
        execution_timezone=settings.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Daily: re-load the last ETL_REBACKFILL_DAYS days of every active tenant in one run each.",
    )
    def daily_rebackfill(context: ScheduleEvaluationContext):
        return rebackfill_requests(context)

    return [hourly_ingest, daily_rebackfill]
