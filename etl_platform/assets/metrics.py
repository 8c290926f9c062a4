"""`metrics/engineering`: engineering metrics per tenant × day from the Jira and GitHub records
(table `engineering_metrics` in `tenant_<id>`), with the `unmapped_jira_statuses` check."""

from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from etl_platform.assets.normalized import RECORDS_KEY
from etl_platform.config.registry import load_registry
from etl_platform.config.settings import get_settings
from etl_platform.metrics.run import METRICS_TABLE, MetricsResult, compute_tenant_metrics
from etl_platform.partitions import days_by_tenant, tenant_date_partitions
from etl_platform.warehouse import get_warehouse

ENGINEERING_KEY = AssetKey(["metrics", "engineering"])
METRICS_GROUP = "metrics"
UNMAPPED_STATUSES_CHECK = "unmapped_jira_statuses"


def build_metrics_assets(warehouse_kind: str) -> AssetsDefinition:
    @asset(
        key=ENGINEERING_KEY,
        group_name=METRICS_GROUP,
        partitions_def=tenant_date_partitions,
        backfill_policy=BackfillPolicy.single_run(),
        deps=[RECORDS_KEY],
        kinds={"sql", warehouse_kind},
        description=(
            f"Engineering metrics per tenant and day from the Jira and GitHub records: table `{METRICS_TABLE}` "
            "in `tenant_<id>`, one row per (metric_date, metric, repository) — PR lead time, time to first "
            "review, reviews, merged PRs, releases, deployments, reverts/hotfixes, Jira cycle time. "
            "Tenants without Jira or GitHub get no rows."
        ),
        check_specs=[
            AssetCheckSpec(
                UNMAPPED_STATUSES_CHECK,
                asset=ENGINEERING_KEY,
                blocking=False,
                description="every active Jira status in use maps to one of the tenant's flow steps (warning)",
            )
        ],
    )
    def engineering(context: AssetExecutionContext) -> Iterator[Any]:
        registry = load_registry()
        warehouse = get_warehouse()
        timezone = get_settings().timezone
        keys = context.partition_keys if context.has_partition_key_range else [context.partition_key]
        results: list[MetricsResult] = []
        for tenant_id, days in days_by_tenant(keys).items():
            result = compute_tenant_metrics(warehouse, registry.tenant(tenant_id), days, timezone)
            context.log.info(
                f"tenant {tenant_id}: {len(result.metrics)} metric rows for {len(days)} day(s)"
                + (f"; unmapped Jira statuses: {sorted(result.unmapped_statuses)}" if result.unmapped_statuses else "")
            )
            results.append(result)
        yield MaterializeResult(metadata=_metadata(results))
        yield unmapped_statuses_result(results)

    return engineering


def unmapped_statuses_result(results: list[MetricsResult]) -> AssetCheckResult:
    unmapped = {r.tenant_id: r.unmapped_statuses for r in results if r.unmapped_statuses}
    return AssetCheckResult(
        check_name=UNMAPPED_STATUSES_CHECK,
        asset_key=ENGINEERING_KEY,
        passed=not unmapped,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "unmapped_statuses": MetadataValue.json(unmapped),
            "hint": MetadataValue.text("map each status to a step in the tenant's flow_steps (tenants file)"),
        },
    )


def _metadata(results: list[MetricsResult]) -> dict[str, Any]:
    return {
        "rows_written": MetadataValue.int(sum(len(r.metrics) for r in results)),
        "table": MetadataValue.text(METRICS_TABLE),
        "by_tenant": MetadataValue.json(
            {
                r.tenant_id: {
                    "days": [d.isoformat() for d in r.days],
                    "sources": r.sources,
                    "rows": len(r.metrics),
                    "latest": r.latest(),
                    "unmapped_statuses": r.unmapped_statuses,
                }
                for r in results
            }
        ),
    }
