"""The Dagster entry point: assembles assets, checks, jobs, schedules, sensors and resources."""

from __future__ import annotations

from dagster import Definitions, in_process_executor, multiprocess_executor

from etl_platform.assets.metrics import build_metrics_assets
from etl_platform.assets.normalized import build_normalized_assets
from etl_platform.assets.quality import drift_checks, freshness_check
from etl_platform.assets.raw import build_raw_assets
from etl_platform.automation.jobs import build_jobs
from etl_platform.automation.schedules import build_schedules
from etl_platform.automation.sensors import sensors
from etl_platform.config.registry import load_registry
from etl_platform.resources import platform_resources
from etl_platform.warehouse import get_warehouse


def build_definitions() -> Definitions:
    registry = load_registry()
    warehouse = get_warehouse()
    raw = build_raw_assets(registry, warehouse)
    raw_keys = [key for assets_def in raw for key in assets_def.keys]
    normalized = build_normalized_assets(raw_keys, warehouse.kind)
    jobs = build_jobs(registry)
    return Definitions(
        assets=[*raw, normalized, build_metrics_assets(warehouse.kind)],
        asset_checks=[freshness_check(), *([drift_checks(raw_keys)] if raw_keys else [])],
        jobs=jobs,
        schedules=build_schedules(jobs),
        sensors=sensors(jobs),
        resources=platform_resources(),
        # DuckDB has one writer: run steps in one process; PostgreSQL loads sources in parallel
        executor=in_process_executor if warehouse.kind == "duckdb" else multiprocess_executor.configured(
            {"max_concurrent": 4}
        ),
    )


defs = build_definitions()
