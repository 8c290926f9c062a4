"""Sensors: tenant onboarding (tenants file → `tenant` partitions) and retries with backoff."""

from dagster import DefaultSensorStatus, SensorEvaluationContext, SensorResult, SkipReason, sensor

from etl_platform.automation.onboarding import plan_sync, registered_tenants
from etl_platform.config.registry import load_registry
from etl_platform.partitions import tenant_partitions


@sensor(
    name="tenant_onboarding",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Adds the tenants file's tenants as `tenant` partitions; reports tenants removed from the file "
    "(their partitions and data are kept).",
)
def tenant_onboarding_sensor(context: SensorEvaluationContext):
    registry = load_registry()
    plan = plan_sync(registered_tenants(context.instance), registry)
    context.log.info(plan.summary())
    if not plan.to_add:
        return SkipReason(plan.summary())
    return SensorResult(dynamic_partitions_requests=[tenant_partitions.build_add_request(plan.to_add)])


def sensors(jobs: list) -> list:
    from etl_platform.automation.alerts import failure_alerts_sensor
    from etl_platform.automation.retries import build_retry_sensor

    return [tenant_onboarding_sensor, build_retry_sensor(jobs), failure_alerts_sensor]
