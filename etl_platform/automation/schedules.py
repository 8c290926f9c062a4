"""Hourly ingestion for every active tenant, and a daily re-load of the last days."""


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
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from etl_platform.automation.jobs import INGEST_JOB
from etl_platform.automation.tags import TENANT_TAG, TRIGGER_TAG
from etl_platform.config.settings import get_settings
from etl_platform.config.tenants import load_registry
from etl_platform.partitions import partition_key, tenant_partitions


def hourly_requests(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
    """One run per active registered tenant for today; early in the day also yesterday."""
    settings = get_settings()
    now = context.scheduled_execution_time.astimezone(ZoneInfo(settings.timezone))
    today = now.date()
    days = [today] + ([today - dt.timedelta(days=1)] if now.hour < settings.late_data_hours else [])
    registered = set(context.instance.get_dynamic_partitions(tenant_partitions.name))
    requests, skipped = [], []
    for tenant in load_registry().tenants:
        if tenant.paused:
            skipped.append(f"{tenant.id} (paused)")
            continue
        if tenant.id not in registered:
            skipped.append(f"{tenant.id} (not registered yet: the onboarding sensor or `etl-platform tenants sync`)")
            continue
        for day in days:
            requests.append(
                RunRequest(
                    run_key=f"hourly:{tenant.id}:{day.isoformat()}:{now:%Y-%m-%dT%H}",
                    partition_key=partition_key(tenant.id, day),
                    tags={TENANT_TAG: tenant.id, TRIGGER_TAG: "schedule"},
                )
            )
    if skipped:
        context.log.info(f"skipped tenants: {', '.join(skipped)}")
    if not requests:
        return SkipReason(f"no active tenants to run; skipped: {', '.join(skipped) or 'none'}")
    return requests


def rebackfill_requests(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
    """One single run per active tenant re-loading the last N days (late and corrected data)."""
    settings = get_settings()
    today = context.scheduled_execution_time.astimezone(ZoneInfo(settings.timezone)).date()
    first = max(today - dt.timedelta(days=settings.rebackfill_days), settings.start_date)
    last = today - dt.timedelta(days=1)
    if last < first:
        return SkipReason("no complete days to re-load yet")
    registered = set(context.instance.get_dynamic_partitions(tenant_partitions.name))
    requests, skipped = [], []
    for tenant in load_registry().tenants:
        if tenant.paused or tenant.id not in registered:
            skipped.append(tenant.id)
            continue
        requests.append(
            RunRequest(
                run_key=f"rebackfill:{tenant.id}:{first}:{last}",
                tags={
                    ASSET_PARTITION_RANGE_START_TAG: str(partition_key(tenant.id, first)),
                    ASSET_PARTITION_RANGE_END_TAG: str(partition_key(tenant.id, last)),
                    TENANT_TAG: tenant.id,
                    TRIGGER_TAG: "backfill",
                },
            )
        )
    if skipped:
        context.log.info(f"skipped tenants (paused or not registered): {', '.join(skipped)}")
    return requests or SkipReason("no active tenants")


def build_schedules(jobs: list) -> list[ScheduleDefinition]:
    settings = get_settings()
    job = next(j for j in jobs if j.name == INGEST_JOB)

    @schedule(
        name="hourly_ingest",
        job=job,
        cron_schedule=os.environ.get("ETL_HOURLY_CRON", "0 * * * *"),
        execution_timezone=settings.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Every hour: each active tenant's today partition (and yesterday's in the first hours).",
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
