"""What the platform knows of one finished run, from its record and tags (the failure alerts and
the metrics exporter read runs through it)."""

from __future__ import annotations

from dataclasses import dataclass

from dagster import RunRecord

from etl_platform.runs.failures import FAILED_TENANTS_TAG
from etl_platform.runs.tags import (
    ATTEMPT_TAG,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    RETRY_STATE_TAG,
    SOURCE_TAG,
    TENANT_TAG,
    TENANTS_TAG,
    sources_of_selection,
    tenants_of_tags,
)


@dataclass(frozen=True)
class RunFacts:
    """What the alerts and the exporter need to know about one finished run."""

    run_id: str
    created: float
    ended: float
    tenants: tuple[str, ...]
    sources: tuple[str, ...] | None  # None: every source of its tenants
    partitions: tuple[str, ...]
    attempt: int
    retry_state: str
    failed_tenants: tuple[str, ...] = ()  # of a failed run (its `etl/failed_tenants` tag)

    @classmethod
    def of(cls, record: RunRecord) -> RunFacts:
        run, tags = record.dagster_run, record.dagster_run.tags
        if tags.get(TENANT_TAG):
            tenants: list[str] = [tags[TENANT_TAG]]
        elif tags.get(TENANTS_TAG):
            tenants = [t for t in tags[TENANTS_TAG].split(",") if t]
        else:
            tenants = tenants_of_tags(tags)
        if tags.get(SOURCE_TAG):
            sources: tuple[str, ...] | None = (tags[SOURCE_TAG],)
        else:
            sources = tuple(sources_of_selection(run.asset_selection)) if run.asset_selection else None
        if tags.get(PARTITION_TAG):
            partitions: tuple[str, ...] = (tags[PARTITION_TAG],)
        elif tags.get(RANGE_START_TAG):
            partitions = (f"{tags[RANGE_START_TAG]}...{tags.get(RANGE_END_TAG, '')}",)
        else:
            partitions = ()
        attempt = tags.get(ATTEMPT_TAG, "1")
        return cls(
            run_id=run.run_id,
            created=record.create_timestamp.timestamp(),
            ended=record.end_time or record.update_timestamp.timestamp(),
            tenants=tuple(tenants),
            sources=sources or None,
            partitions=partitions,
            attempt=int(attempt) if attempt.isdigit() else 1,
            retry_state=tags.get(RETRY_STATE_TAG, ""),
            failed_tenants=tuple(t for t in tags.get(FAILED_TENANTS_TAG, "").split(",") if t),
        )

    @property
    def retriable(self) -> bool:
        """The retry sensor considers only runs of a partition or a range."""
        return bool(self.partitions)
