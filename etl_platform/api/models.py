"""Response models (they are the OpenAPI schema at /docs and /openapi.json)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field, computed_field

from etl_platform.runs.labels import job_label


class Record(BaseModel):
    """One row of the tenant's unified `records` table."""

    record_id: str = Field(description="source/record_type/source_id; unique within the tenant")
    tenant_id: str
    source: str
    source_kind: str
    record_type: str
    source_id: str
    title: str | None = None
    description: str | None = None
    url: str | None = None
    author: str | None = None
    category: str | None = None
    status: str | None = None
    value: float | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    sort_at: dt.datetime = Field(description="updated_at, else created_at, else event_date: the page order")
    event_date: dt.date | None = None
    is_active: bool
    attributes: Any = Field(None, description="source fields not mapped to a column")
    parent_id: str | None = None
    raw_table: str | None = None
    raw_row_key: str | None = None
    raw_load_id: str | None = None
    normalized_at: dt.datetime | None = None


class Pagination(BaseModel):
    limit: int
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")
    has_more: bool


class Metadata(BaseModel):
    request_id: str
    api_latency_ms: float


class PageMetadata(Metadata):
    pagination: Pagination


class DataPage(BaseModel):
    data: list[Record]
    metadata: PageMetadata


class RecordResponse(BaseModel):
    data: Record
    metadata: Metadata


class RunInfo(BaseModel):
    """A run of the tenant as recorded by Dagster."""

    run_id: str
    job_name: str = Field(description="Dagster's job name (`__ASSET_JOB`: assets launched from the UI or CLI)")
    status: str
    source: str | None
    trigger: str | None
    attempt: int | None
    parent_run_id: str | None
    partition: str | None
    created_at: str
    started_at: str | None
    ended_at: str | None
    duration_s: float | None
    failure_reason: str | None = None

    @computed_field(description="the job as a person reads it, e.g. 'assets (launched from the UI or CLI)'")
    @property
    def job(self) -> str:
        return job_label(self.job_name)


class SourceStats(BaseModel):
    source: str = Field(description="a source name, or '*' for runs that load every source")
    last_success: RunInfo | None
    last_failure: RunInfo | None
    runs_by_status: dict[str, int] = Field(description="runs created within the window, by status")
    runs_in_window: int
    avg_duration_s: float | None
    records_written: int
    rejects: int
    raw_rows: int
    last_materialization_at: str | None
    materialization_age_s: float | None
    newest_record_at: dt.datetime | None = None
    newest_record_age_s: float | None = None
    active_records: int = 0


class RecordCount(BaseModel):
    source: str
    record_type: str
    active_records: int
    newest_record_at: dt.datetime | None


class TenantStats(BaseModel):
    tenant: str
    window_hours: float
    generated_at: dt.datetime
    sources: list[SourceStats]
    records: list[RecordCount]


class StatsResponse(TenantStats):
    metadata: Metadata


class AdminStatsResponse(BaseModel):
    tenants: list[TenantStats]
    metadata: Metadata


class Component(BaseModel):
    ok: bool
    detail: str | None = None
    latency_ms: float | None = None


class DaemonComponent(Component):
    heartbeat_age_s: float | None = None
    required: bool = False


class TenantRun(BaseModel):
    status: str
    at: str


class HealthResponse(BaseModel):
    status: str = Field(description="ok, degraded (e.g. no daemon heartbeat) or unhealthy")
    failing: list[str] = Field(description="components that make /health answer 503")
    degraded: list[str]
    components: dict[str, Component | DaemonComponent]
    last_runs: dict[str, TenantRun | None] | None = Field(
        None,
        description="newest run per tenant: every tenant with the admin key, the caller's own with a tenant key; "
        "null without a key",
    )


class Error(BaseModel):
    detail: str
