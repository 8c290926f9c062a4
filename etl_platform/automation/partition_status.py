"""The UI's partition status, computed before anyone looks: the `refresh_partition_status` job.

Dagster keeps each partitioned asset's status (materialized, failed, in progress) in a cache
that the UI's Partitions tab reads and updates. The cache is keyed by the partitions
definition, and a dynamic dimension's definition changes with its keys: each new tenant
invalidates every asset's cache, and the next view rebuilds it from the event log, which takes
several times as long as a view of a current cache (benchmarks/bench_control_plane.py: 18.6 s
against 4.7 s for 366,000 materialized partitions). The onboarding sensor requests this job
when it adds tenants, so that the rebuild happens in a run, not in front of a person.

It calls the function the webserver calls for that view
(`dagster._core.storage.partition_status_cache`: Dagster has no public API that refreshes the
cache).
"""

from __future__ import annotations

import time

from dagster import AssetKey, DagsterInstance, job, op
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

from etl_platform.assets.keys import ENGINEERING_KEY, RECORDS_KEY, source_of
from etl_platform.observability.run_logger import RUN_CONFIG
from etl_platform.runs.partitions import tenant_date_partitions

JOB_NAME = "refresh_partition_status"


def platform_assets(instance: DagsterInstance) -> list[AssetKey]:
    """The platform's assets Dagster has events of: raw, records, metrics (every one is
    partitioned by tenant and date)."""
    keys = instance.get_asset_keys()
    return sorted((k for k in keys if k in (RECORDS_KEY, ENGINEERING_KEY) or source_of(k)), key=str)


def refresh_partition_status(instance: DagsterInstance, keys: list[AssetKey]) -> dict[AssetKey, float]:
    """Bring the status cache of each asset (partitioned by tenant and date) up to date; the
    seconds each took."""
    seconds = {}
    partitions = tenant_date_partitions()
    for key in keys:
        started = time.monotonic()
        get_and_update_asset_status_cache_value(instance, key, partitions)
        seconds[key] = time.monotonic() - started
    return seconds


@op(description="Rebuild the UI's partition status of every asset partitioned by tenant and date.")
def refresh_partition_status_op(context) -> None:  # noqa: ANN001 - Dagster reads the hint
    for key, seconds in refresh_partition_status(context.instance, platform_assets(context.instance)).items():
        context.log.info(f"{key.to_user_string()}: partition status up to date in {seconds:.1f}s")


@job(name=JOB_NAME, config=RUN_CONFIG,
     description="Rebuild the UI's partition status after tenants were added (the Partitions tab "
     "then reads it instead of rebuilding it from the event log).")  # fmt: skip
def refresh_partition_status_job() -> None:
    refresh_partition_status_op()
