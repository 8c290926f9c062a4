"""Per-partition events: one materialization or check result per `<day>|<tenant>`, each with
that partition's own figures, yielded from the run's step (Dagster's public path: each is
stored as it is yielded).

- A materialization carries its partition's data version (`dagster/data_version`), so that a
  reload whose data did not change is recognised (`assets/previous.py`) and writes nothing.
- `normalized/records` and `metrics/engineering` carry their inputs' versions (Dagster's data
  provenance tags). Dagster's UI reads a partition as "Unsynced" when an upstream partition has
  no materialization: the raw assets of sources a tenant does not have never do, and are listed
  as inputs that never change, so they never make the tenant's records look out of date.
- `failure_mark`: where Dagster plans one event per asset for the whole run (the setting
  `DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS`, which production uses to write one planned
  event per asset instead of one per partition), a failed partition is marked as planned on its
  own, so that the run's failure reads as Failed on exactly that tenant's partitions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from dagster import AssetCheckEvaluation, AssetCheckSeverity, AssetKey, AssetMaterialization

# no public API writes a planned event (failure_marks)
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent

from etl_platform.runs.partitions import DATE_DIMENSION, TENANT_DIMENSION, partition_key

# Dagster's data-version tags (dagster._core.definitions.data_version), spelled out: its public
# API sets them only on Outputs, and a step that materializes many partitions yields events.
DATA_VERSION = "dagster/data_version"
CODE_VERSION = "dagster/code_version"
INPUT_VERSION = "dagster/input_data_version/"
INPUT_POINTER = "dagster/input_event_pointer/"
NULL = "NULL"
STEP_NAME = "tenant_partitions"  # the one step of every run (assets/ingest.py)


def _tags(tenant: str, day: dt.date) -> dict[str, str]:
    return {f"dagster/partition/{DATE_DIMENSION}": day.isoformat(), f"dagster/partition/{TENANT_DIMENSION}": tenant}


def materialization(
    key: AssetKey,
    tenant: str,
    day: dt.date,
    metadata: Mapping[str, Any],
    *,
    version: str | None = None,
    provenance: Mapping[str, str] | None = None,
) -> AssetMaterialization:
    """The materialization of one partition of `key`, with its data version and inputs."""
    tags = _tags(tenant, day)
    if version:
        tags[DATA_VERSION] = version
    tags.update(provenance or {})
    return AssetMaterialization(
        asset_key=key, partition=str(partition_key(tenant, day)), metadata=dict(metadata), tags=tags
    )


def provenance(rules: str, inputs: Mapping[AssetKey, str | None], pointer: int | None) -> dict[str, str]:
    """Provenance tags: the rules' version and, per upstream asset, the version used and the
    event id that bounds it (`None`: the input does not apply to this tenant)."""
    tags = {CODE_VERSION: rules}
    for key, version in inputs.items():
        name = key.to_user_string()
        tags[INPUT_VERSION + name] = version or NULL
        tags[INPUT_POINTER + name] = str(pointer) if version and pointer else NULL
    return tags


def check_result(
    key: AssetKey,
    check: str,
    tenant: str,
    day: dt.date,
    *,
    passed: bool,
    metadata: Mapping[str, Any],
    severity: AssetCheckSeverity = AssetCheckSeverity.ERROR,
    description: str | None = None,
) -> AssetCheckEvaluation:
    """One partition's result of a partitioned check (the UI shows the tenant and day it judged)."""
    return AssetCheckEvaluation(
        asset_key=key,
        check_name=check,
        passed=passed,
        metadata=dict(metadata),
        severity=severity,
        description=description,
        partition=str(partition_key(tenant, day)),
    )


def failure_marks(context: Any, keys: Iterable[AssetKey], tenant: str, days: Iterable[dt.date]) -> int:
    """Mark (asset, partition) pairs as planned by this run, partition by partition, so that
    Dagster reads them as Failed once the run fails (Dagster's own event builder)."""
    run = context.run
    written = 0
    for key in keys:
        for day in days:
            event = DagsterEvent.build_asset_materialization_planned_event(
                run.job_name, STEP_NAME, AssetMaterializationPlannedData(key, partition=str(partition_key(tenant, day)))
            )
            context.instance.report_dagster_event(event, run.run_id)
            written += 1
    return written
