"""Run tags the platform sets (runs are the record of every job, in Dagster's run storage).

Every run ends up with `etl/tenant` (single-tenant runs; `etl/tenants` lists the tenants of a
run spanning several), `etl/trigger`, and `etl/source` when it loads exactly one source.
Schedules and the retry sensor set them on their run requests; `PlatformRunCoordinator`
(dagster.yaml) adds the missing ones to every run submitted to the queue (UI launches and
backfills) before the queue's tag concurrency limits look at it; `ensure_run_tags` adds them
from inside a run that bypassed the queue (`dagster asset materialize`, execute_in_process).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from etl_platform.config.registry import load_registry
from etl_platform.runs.worker import WORKER_TAG, this_worker

TENANT_TAG = "etl/tenant"
TENANTS_TAG = "etl/tenants"  # comma-separated, on runs spanning several tenants
MULTI_TENANT_TAG = "etl/multi_tenant"  # "true" on those runs, so that a tenant's runs can be found
SOURCE_TAG = "etl/source"
TRIGGER_TAG = "etl/trigger"  # schedule | retry | backfill | manual | sensor
ATTEMPT_TAG = "etl/attempt"  # 1 for the first run, 2.. for retries
PARENT_RUN_TAG = "etl/parent_run_id"
ROOT_RUN_TAG = "etl/root_run_id"
RETRY_STATE_TAG = "etl/retry"  # on a failed run: requested:<n> | retried:<run id> | gave_up:<why> | skipped:<why>

# Dagster's own tags (dagster._core.storage.tags), spelled out to keep this module import-light:
# the run coordinator imports it in the webserver and daemon processes.
PARTITION_TAG = "dagster/partition"
PARTITION_TENANT_TAG = "dagster/partition/tenant"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
BACKFILL_TAG = "dagster/backfill"
SCHEDULE_TAG = "dagster/schedule_name"
SENSOR_TAG = "dagster/sensor_name"


def tenant_tags(tenants: list[str]) -> dict[str, str]:
    """The tags naming a run's tenants: `etl/tenant` for one (the queue limits each tenant to one
    run at a time), else `etl/tenants` + `etl/multi_tenant` (tenants are then serialized by their
    leases inside the run)."""
    if len(tenants) == 1:
        return {TENANT_TAG: tenants[0]}
    return {TENANTS_TAG: ",".join(tenants), MULTI_TENANT_TAG: "true"} if tenants else {}


def _tenant_of_key(key: str) -> str | None:
    """The tenant of a 'YYYY-MM-DD|tenant' multi-partition key."""
    parts = key.split("|", 1)
    return parts[1] if len(parts) == 2 and parts[1] else None


def tenants_of_tags(tags: Mapping[str, str], registered: Iterable[str] | None = None) -> list[str]:
    """The tenants a run covers, from its partition tags.

    A range 'D1|a...D2|c' is a per-dimension rectangle: the tenants from a to c in the order of
    the `tenant` dynamic partitions (`registered`); without that order only a and c are known.
    """
    if tags.get(PARTITION_TENANT_TAG):
        return [tags[PARTITION_TENANT_TAG]]
    if tags.get(PARTITION_TAG):
        tenant = _tenant_of_key(tags[PARTITION_TAG])
        return [tenant] if tenant else []
    first, last = _tenant_of_key(tags.get(RANGE_START_TAG, "")), _tenant_of_key(tags.get(RANGE_END_TAG, ""))
    if not first or not last:
        return []
    if first == last:
        return [first]
    order = list(registered or [])
    if first in order and last in order:
        lo, hi = order.index(first), order.index(last)
        return order[min(lo, hi) : max(lo, hi) + 1]
    return [first, last]


def sources_of_selection(asset_keys: Iterable[object] | None) -> list[str]:
    """Source names of the raw assets (`raw/<source>/<resource>`) in an asset selection."""
    out: set[str] = set()
    for key in asset_keys or []:
        path = list(getattr(key, "path", key))
        if len(path) >= 3 and path[0] == "raw":
            out.add(path[1])
    return sorted(out)


def default_trigger(tags: Mapping[str, str]) -> str:
    if tags.get(BACKFILL_TAG):
        return "backfill"
    if tags.get(SCHEDULE_TAG):
        return "schedule"
    if tags.get(SENSOR_TAG):
        return "sensor"
    if tags.get(RANGE_START_TAG):
        return "backfill"
    return "manual"


def sources_of_job(job_name: str | None) -> list[str]:
    """The sources an `ingest_<kind>` job loads (all of that kind in the tenants file)."""
    if not job_name or not job_name.startswith("ingest_"):
        return []
    kind = job_name.removeprefix("ingest_")
    return sorted(s for s, k in load_registry().source_kinds().items() if k == kind)


def missing_platform_tags(
    tags: Mapping[str, str],
    asset_selection: Iterable[object] | None = None,
    registered: Iterable[str] | None = None,
    job_name: str | None = None,
) -> dict[str, str]:
    """The platform tags a run lacks (existing tags are never overwritten)."""
    out: dict[str, str] = {}
    tenants = tenants_of_tags(tags, registered)
    if TENANT_TAG not in tags and TENANTS_TAG not in tags:
        out.update(tenant_tags(tenants))
    if TRIGGER_TAG not in tags:
        out[TRIGGER_TAG] = default_trigger(tags)
    if SOURCE_TAG not in tags:
        sources = sources_of_selection(asset_selection) if asset_selection else sources_of_job(job_name)
        if len(sources) == 1:
            out[SOURCE_TAG] = sources[0]
    return out


def ensure_run_tags(context) -> None:
    """From inside a run (an asset's compute): add the platform tags the run lacks.

    Runs submitted to the queue already have them (PlatformRunCoordinator); runs started by
    `dagster asset materialize` or execute_in_process get them here, once, at their first step.
    Every run also records the process executing it (`etl/worker`).
    """
    try:
        run = context.run
        missing = missing_platform_tags(run.tags, run.asset_selection, _registered(context.instance), run.job_name)
        missing[WORKER_TAG] = this_worker()  # the dead-run sweep checks it (runs/worker.py)
        context.instance.add_run_tags(run.run_id, missing)
    except Exception as exc:  # noqa: BLE001 - tagging must never fail a run
        context.log.warning(f"could not add the platform's run tags: {exc}")


def _registered(instance) -> list[str]:
    try:
        return list(instance.get_dynamic_partitions("tenant"))
    except Exception:  # noqa: BLE001 - tagging must never fail a run
        return []
