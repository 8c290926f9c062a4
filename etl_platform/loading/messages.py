"""What the run worker asks of a tenant's child, and what the child reports back (pickled over
its channel, `isolation.channel`). Plain data: figures per partition day, versions, redacted
failures; the run worker turns them into Dagster events."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from etl_platform.loading.failures import TenantFailure
from etl_platform.normalize.checks import DayChecks


@dataclass(frozen=True)
class TenantJob:
    """One tenant's work in one run."""

    run_id: str
    tenant_id: str
    days: tuple[dt.date, ...]
    resources: dict[str, list[str]]  # source -> its data resources the run selected
    normalize: bool  # `normalized/records` selected
    metrics: bool  # `metrics/engineering` selected
    # the latest versions Dagster recorded for this tenant's partitions: "records"/"metrics" or a
    # raw table name -> day -> version (absent: never materialized)
    previous: dict[str, dict[dt.date, str]] = field(default_factory=dict)
    rebuild: bool = False  # rebuild every day even where nothing changed (a person asked for it)


@dataclass(frozen=True)
class DriftFigures:
    """One raw data table's fields in this load against the tenant's previous load."""

    observed: dict[str, str]
    previous: dict[str, str] | None
    previous_at: str | None


@dataclass(frozen=True)
class ResourceDays:
    """A raw resource's slice per day after a load."""

    resource: str
    table: str
    rows: dict[dt.date, int]
    versions: dict[dt.date, str]
    columns: dict[str, str]
    columns_added: list[str]
    drift: DriftFigures | None  # None for `rejects`


@dataclass(frozen=True)
class SourceLoaded:
    source: str
    resources: list[ResourceDays]
    rejects: dict[dt.date, int]  # the source's rows in the tenant's `rejects` per day
    summary: dict[str, Any]  # the load's own figures (pages, bytes, rows read, skipped by reason, contract)
    seconds: float


@dataclass(frozen=True)
class SourceFailed:
    source: str
    failure: TenantFailure


@dataclass(frozen=True)
class RecordsDay:
    """A day of `normalized/records` after normalization."""

    version: str
    raw_rows: int
    records_written: int
    rejects: int
    ingest_rejects: int
    reject_reasons: dict[str, int]
    by_table: dict[str, dict[str, int]]  # raw table -> raw_rows, records, rejects
    checks: DayChecks


@dataclass(frozen=True)
class Normalized:
    """Normalization of the days whose inputs changed (`days`); the rest were current."""

    days: dict[dt.date, RecordsDay]
    unchanged: tuple[dt.date, ...]
    failed_sources: tuple[str, ...]  # their records are those of their last successful load
    seconds: float
    normalize_s: float = 0.0  # staging, rejects and upsert
    checks_s: float = 0.0  # the checks' queries


@dataclass(frozen=True)
class MetricsDay:
    version: str
    rows: int
    values: dict[str, float]


@dataclass(frozen=True)
class MetricsComputed:
    days: dict[dt.date, MetricsDay]
    unchanged: tuple[dt.date, ...]
    unmapped_statuses: dict[str, int]
    sources: list[str]
    table: str


@dataclass(frozen=True)
class StepFailed:
    """Normalization or metrics failed for the tenant (its loads stand)."""

    step: str
    failure: TenantFailure


@dataclass(frozen=True)
class TenantFinished:
    seconds: float
    failures: list[TenantFailure] = field(default_factory=list)
