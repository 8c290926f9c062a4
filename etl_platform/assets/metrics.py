"""`metrics/engineering` for one tenant's days (tenants with Jira or GitHub only): compute, then
one materialization and one `unmapped_jira_statuses` result per partition day."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from dagster import AssetCheckSeverity, MetadataValue

from etl_platform.assets.events import check_result, materialization
from etl_platform.assets.keys import ENGINEERING_KEY, UNMAPPED_STATUSES_CHECK
from etl_platform.config.models import TenantConfig
from etl_platform.config.settings import get_settings
from etl_platform.metrics.run import METRIC_KINDS, METRICS_TABLE, compute_tenant_metrics
from etl_platform.warehouse import Warehouse


def has_metrics(tenant: TenantConfig) -> bool:
    """Engineering metrics come from Jira and GitHub sources; other tenants have none."""
    return any(s.kind in METRIC_KINDS for s in tenant.sources)


def metrics_partitions(
    context: Any, warehouse: Warehouse, tenant: TenantConfig, days: list[dt.date], checks: set[str]
) -> Iterator[Any]:
    result = compute_tenant_metrics(warehouse, tenant, days, get_settings().timezone)
    context.log.info(
        f"tenant {tenant.id}: {len(result.metrics)} metric rows for {len(days)} day(s)"
        + (f"; unmapped Jira statuses: {sorted(result.unmapped_statuses)}" if result.unmapped_statuses else "")
    )
    for day in result.days:
        rows = [m for m in result.metrics if m.day == day]
        latest = {m.name: m.value for m in rows if m.repository == ""}
        yield materialization(
            ENGINEERING_KEY,
            tenant.id,
            day,
            {
                "rows_written": MetadataValue.int(len(rows)),
                "dagster/row_count": MetadataValue.int(len(rows)),
                "table": MetadataValue.text(f"{tenant.dataset}.{METRICS_TABLE}"),
                "sources": MetadataValue.json(result.sources),
                "values": MetadataValue.json(latest),
            },
        )
        if UNMAPPED_STATUSES_CHECK in checks:
            yield check_result(
                ENGINEERING_KEY,
                UNMAPPED_STATUSES_CHECK,
                tenant.id,
                day,
                passed=not result.unmapped_statuses,
                severity=AssetCheckSeverity.WARN,
                metadata={
                    "unmapped": MetadataValue.int(len(result.unmapped_statuses)),
                    "unmapped_statuses": MetadataValue.json(result.unmapped_statuses),
                    "hint": MetadataValue.text("map each status to a step in the tenant's flow_steps (tenants file)"),
                },
            )
