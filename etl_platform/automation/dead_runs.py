"""Runs whose process died are marked failed, so they never hold their tenant's queue slot.

Runs launched through the code server or the Docker run launcher are watched by Dagster's run
monitoring (`run_monitoring` in the instance YAML). A run executed in the process that started
it (`dagster asset materialize`, `etl-platform demo`) has no launcher to ask: when that process
is killed, the run would stay STARTED forever, and the queue would count it against its tenant.
Every run records its worker (host, pid and the process's start time, tag `etl/worker`) at its
first step; this sensor marks FAILURE the started runs whose worker, on the daemon's host, no
longer exists. The retry sensor then treats them as any other failure.
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
    """Mark FAILURE every started run whose worker process on this host is gone; their ids."""
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
