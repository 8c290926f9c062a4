"""The Dagster entry point: assembles assets, checks, jobs, schedules and sensors.

Every Dagster process that loads the code imports it (code server, run workers, the `dagster`
CLI): it configures the platform's logging and the known-warning filters first.
"""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from etl_platform.assets.ingest import build_ingest_assets
from etl_platform.assets.keys import source_of
from etl_platform.automation.jobs import build_jobs
from etl_platform.automation.partition_status import refresh_partition_status_job
from etl_platform.automation.retention import build_retention_schedule, purge_history_job
from etl_platform.automation.schedules import build_schedules
from etl_platform.automation.sensors import sensors
from etl_platform.config.registry import load_registry
from etl_platform.observability import logs
from etl_platform.observability import warnings as known_warnings
from etl_platform.observability.run_logger import console_logger
from etl_platform.warehouse import get_warehouse


def build_definitions() -> Definitions:
    known_warnings.install()  # before any asset is declared
    registry = load_registry()
    warehouse = get_warehouse()
    assets = build_ingest_assets(registry, warehouse)
    keys_by_source: dict[str, list] = {}
    for key in sorted(assets.keys, key=str):
        if source_of(key):
            keys_by_source.setdefault(source_of(key), []).append(key)
    jobs = build_jobs(registry)
    return Definitions(
        assets=[assets],
        jobs=[*jobs, purge_history_job, refresh_partition_status_job],
        schedules=[*build_schedules(jobs, keys_by_source), build_retention_schedule()],
        sensors=sensors(jobs),
        # a run is one step (assets/ingest.py): no process per step to start
        executor=in_process_executor,
        # every job's `console` logger: JSON lines with ETL_LOG_FORMAT=json, else Dagster's coloured one
        loggers={"console": console_logger},
    )


logs.configure_from_env()  # ETL_LOG_FORMAT=json: JSON lines from the platform's loggers
defs = build_definitions()
