"""What Dagster recorded before this run: each partition's latest materialization (its data
version and metadata), and how the run's materializations were planned.

A reload compares the versions it computes with these, so a partition whose data did not change
gets no new event. Read in one or two queries per asset for the whole run (a chunk of tenants).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance

from etl_platform.runs.partitions import split_key

VERSION_TAG = "dagster/data_version"  # Dagster's data version tag (what its staleness reads)
BATCH = 1000  # partitions per query


@dataclass
class Previous:
    """asset -> (tenant, day) -> the latest materialization's version and metadata."""

    versions: dict[AssetKey, dict[tuple[str, dt.date], str]] = field(default_factory=dict)
    metadata: dict[AssetKey, dict[tuple[str, dt.date], dict[str, Any]]] = field(default_factory=dict)

    def version(self, key: AssetKey, tenant: str, day: dt.date) -> str | None:
        return self.versions.get(key, {}).get((tenant, day))

    def of_tenant(self, key: AssetKey, tenant: str) -> dict[dt.date, str]:
        return {day: v for (t, day), v in self.versions.get(key, {}).items() if t == tenant}


def latest_materializations(
    instance: DagsterInstance, keys: Iterable[AssetKey], partitions: list[str]
) -> Previous:
    """The latest materialization of each of `partitions` ('<day>|<tenant>') of each asset."""
    out = Previous()
    storage = instance.event_log_storage
    for key in keys:
        for start in range(0, len(partitions), BATCH):
            batch = set(partitions[start : start + BATCH])
            ids = storage.get_latest_storage_id_by_partition(key, DagsterEventType.ASSET_MATERIALIZATION, batch)
            if not ids:
                continue
            records = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=key, storage_ids=list(ids.values())), limit=len(ids)
            ).records
            for record in records:
                materialization = record.asset_materialization
                if materialization is None or record.partition_key is None:
                    continue
                where = split_key(record.partition_key)
                version = (materialization.tags or {}).get(VERSION_TAG)
                if version:
                    out.versions.setdefault(key, {})[where] = version
                out.metadata.setdefault(key, {})[where] = dict(materialization.metadata)
    return out


def planned_per_partition(instance: DagsterInstance, run_id: str) -> bool:
    """Whether Dagster planned this run's materializations partition by partition (its default:
    a run that fails then marks every planned partition it did not materialize as failed) or as
    one event per asset (`DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS`: nothing is marked
    failed unless the platform says so)."""
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED, limit=1
    ).records
    if not records:
        return False
    planned = records[0].event_log_entry.dagster_event.event_specific_data
    return getattr(planned, "partition", None) is not None
