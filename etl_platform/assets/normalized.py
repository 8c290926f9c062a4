"""`normalized/records` for one tenant's days: normalize, then one materialization and one result
per check for each partition day, with that day's own figures."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from dagster import MetadataValue

from etl_platform.assets.checks import record_checks
from etl_platform.assets.events import materialization
from etl_platform.assets.keys import RECORDS_KEY
from etl_platform.config.models import TenantConfig
from etl_platform.normalize.run import DayFigures, NormalizeResult, normalize_tenant
from etl_platform.warehouse import Warehouse


def normalize_partitions(
    context: Any, warehouse: Warehouse, tenant: TenantConfig, days: list[dt.date], checks: set[str]
) -> Iterator[Any]:
    """Normalize the tenant's days; the events of each partition (materialization, checks)."""
    result = normalize_tenant(warehouse, tenant, days)
    context.log.info(
        f"tenant {tenant.id}: {result.raw_rows} raw rows -> {result.records_written} records, "
        f"{result.rejects} record rejects, {result.ingest_rejects} ingest rejects over {len(days)} day(s)"
    )
    for day in result.days:
        figures = result.by_day[day]
        yield materialization(RECORDS_KEY, tenant.id, day, day_metadata(figures, result))
        yield from record_checks(tenant.id, day, figures.checks, checks)


def day_metadata(day: DayFigures, result: NormalizeResult) -> dict[str, Any]:
    """A partition's figures (never the run's totals)."""
    return {
        "raw_rows": MetadataValue.int(day.raw_rows),
        "records_written": MetadataValue.int(day.records_written),
        "rejects": MetadataValue.int(day.rejects),
        "ingest_rejects": MetadataValue.int(day.ingest_rejects),
        "dagster/row_count": MetadataValue.int(day.records_written),
        "reject_reasons": MetadataValue.json(day.reject_reasons),
        "by_table": MetadataValue.json(day.by_table),
        "records_upserted_in_run": MetadataValue.int(result.records_upserted),
        "seconds (whole run)": MetadataValue.json({"normalize": result.normalize_s, "checks": result.checks_s}),
    }
