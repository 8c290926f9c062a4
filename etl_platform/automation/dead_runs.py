"""Runs whose process died are marked failed, so they never hold their tenant's queue slot.

On an instance whose run launcher Dagster's run monitoring can check (`run_monitoring` enabled
and the launcher's `supports_check_run_worker_health`: Docker, Kubernetes, Celery, the code
server's MonitoredRunLauncher), every started run is Dagster's to judge, and this sweep leaves
them all alone. A run executed in the process that started it (`dagster asset materialize`,
`etl-platform demo`) on an instance without such a launcher has nobody to ask: when that process
is killed, the run would stay STARTED forever, and the queue would count it against its tenant.
Every run records its worker (`etl/worker`: host, pid, start time, boot id and PID namespace) at
its first step; this sensor marks FAILURE the started runs whose worker, in the sensor's own boot
and PID namespace, no longer exists. A worker of another namespace (a container, even on the host
network with the host's name) or machine is never judged: its pid means nothing here. The retry
sensor then treats the marked runs as any other failure.
"""

from __future__ import annotations

import time

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    sensor,
)

from etl_platform.config.settings import get_settings
from etl_platform.observability.logs import tick_log
from etl_platform.runs.worker import WORKER_TAG, worker_alive

SENSOR_NAME = "mark_dead_runs"


def mark_dead_runs(instance: DagsterInstance, now: float | None = None) -> list[str]:
    """Mark FAILURE every started run whose worker process in this boot and PID namespace is
    gone; their ids. Nothing when Dagster's run monitoring checks the instance's runs."""
    if monitored_by_dagster(instance):
        return []
    now = time.time() if now is None else now
    grace = get_settings().dead_run_grace_s  # a younger run may not have recorded its worker yet
    marked = []
    records = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED]), limit=500)
    for record in records:
        run = record.dagster_run
        worker = run.tags.get(WORKER_TAG)
        started = record.start_time or record.create_timestamp.timestamp()
        if not worker or now - started < grace or worker_alive(worker) is not False:
            continue
        instance.report_run_failed(
            run, f"the process executing this run ({worker}) no longer exists: it was killed or crashed"
        )
        marked.append(run.run_id)
    return marked


def monitored_by_dagster(instance: DagsterInstance) -> bool:
    """Does Dagster's run monitoring check this instance's started runs' workers?"""
    try:
        return bool(instance.run_monitoring_enabled and instance.run_launcher.supports_check_run_worker_health)
    except Exception:  # noqa: BLE001 - a launcher that cannot load here: judge by worker identity
        return False


def build_dead_runs_sensor() -> SensorDefinition:
    """The sweep's sensor, ticking every ETL_DEAD_RUN_SENSOR_INTERVAL_SECONDS (read when the
    definitions are built)."""

    @sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=get_settings().dead_run_sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="Marks FAILURE the started runs whose process died (e.g. `dagster asset materialize` killed), "
        "so they never block their tenant's queue slot; the retry sensor then retries them.",
    )
    def dead_runs_sensor(context: SensorEvaluationContext):
        marked = mark_dead_runs(context.instance)
        for run_id in marked:
            tick_log(context.log, sensor=SENSOR_NAME).warning(f"run {run_id}: its process is gone; marked failed")

    return dead_runs_sensor
