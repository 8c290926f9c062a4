"""The tenant × date partitions every asset shares, and helpers over their keys."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable

from dagster import (
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
)

from etl_platform.config.settings import get_settings

TENANT_DIMENSION = "tenant"
DATE_DIMENSION = "date"

tenant_partitions = DynamicPartitionsDefinition(name="tenant")


def tenant_date_partitions() -> MultiPartitionsDefinition:
    """The partitions every asset shares: `date` (daily from ETL_START_DATE, in ETL_TIMEZONE,
    including today) × `tenant`; settings read now."""
    settings = get_settings()
    dates = DailyPartitionsDefinition(
        start_date=settings.start_date.isoformat(), timezone=settings.timezone, end_offset=1
    )
    return MultiPartitionsDefinition({DATE_DIMENSION: dates, TENANT_DIMENSION: tenant_partitions})


def partition_key(tenant: str, day: dt.date | str) -> MultiPartitionKey:
    """The key for (tenant, day); it reads '2024-01-01|acme'."""
    day_str = day.isoformat() if isinstance(day, dt.date) else day
    return MultiPartitionKey({DATE_DIMENSION: day_str, TENANT_DIMENSION: tenant})


def split_key(key: str | MultiPartitionKey) -> tuple[str, dt.date]:
    """(tenant, day) of a multi-partition key."""
    if isinstance(key, MultiPartitionKey):
        dims = key.keys_by_dimension
        return dims[TENANT_DIMENSION], dt.date.fromisoformat(dims[DATE_DIMENSION])
    day, tenant = str(key).split("|", 1)
    return tenant, dt.date.fromisoformat(day)


def days_by_tenant(keys: Iterable[str | MultiPartitionKey]) -> dict[str, list[dt.date]]:
    """Group the partition keys of a run (one or a backfill range) by tenant, days sorted."""
    out: dict[str, set[dt.date]] = defaultdict(set)
    for key in keys:
        tenant, day = split_key(key)
        out[tenant].add(day)
    return {tenant: sorted(days) for tenant, days in sorted(out.items())}
