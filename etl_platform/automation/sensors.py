"""Sensors: tenant onboarding (tenants file → `tenant` partitions) and retries with backoff."""

import logging

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from etl_platform.automation.alerts import failure_alerts_sensor
from etl_platform.automation.dead_runs import build_dead_runs_sensor
from etl_platform.automation.onboarding import plan_sync, registered_tenants
from etl_platform.automation.partition_status import refresh_partition_status_job
from etl_platform.automation.retries import build_retry_sensor
from etl_platform.config.registry import load_registry
from etl_platform.observability.logs import tick_log
from etl_platform.runs.partitions import tenant_partitions
from etl_platform.runs.tags import TRIGGER_TAG


@sensor(
    name="tenant_onboarding",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    jobs=[refresh_partition_status_job],
    description="Adds the tenants file's tenants as `tenant` partitions, then rebuilds the UI's partition status "
    "in a run; reports tenants removed from the file (their partitions and data are kept).",
)
def tenant_onboarding_sensor(context: SensorEvaluationContext):
    """Does nothing while the tenants file is unchanged (the cursor holds its content hash). New
    tenants change the partitions definition, which invalidates every asset's status cache: the
    `refresh_partition_status` run rebuilds them (Dagster adds the partitions before it launches
    the run)."""
    registry = load_registry()
    if context.cursor and context.cursor == registry.content_hash:
        return SkipReason("the tenants file has not changed")
    plan = plan_sync(registered_tenants(context.instance), registry)
    log = tick_log(context.log, sensor="tenant_onboarding")
    # INFO only when the sensor acts (adds tenants); a changed file with nothing to add: DEBUG
    log.log(logging.INFO if plan.to_add else logging.DEBUG, plan.summary())
    if not plan.to_add:
        return SensorResult(skip_reason=plan.summary(), cursor=registry.content_hash)
    return SensorResult(
        dynamic_partitions_requests=[tenant_partitions.build_add_request(plan.to_add)],
        run_requests=[RunRequest(run_key=f"status:{registry.content_hash}", job_name=refresh_partition_status_job.name,
                                 tags={TRIGGER_TAG: "sensor"})],  # fmt: skip
        cursor=registry.content_hash,
    )


def sensors(jobs: list) -> list:
    return [tenant_onboarding_sensor, build_retry_sensor(jobs), build_dead_runs_sensor(), failure_alerts_sensor]
