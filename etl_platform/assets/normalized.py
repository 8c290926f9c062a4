"""`normalized/records`: every raw row of the partition as one unified record (or a reject),
with its data-quality checks evaluated on the partition it just wrote."""

from collections.abc import Iterator
from typing import Any

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from etl_platform.assets.quality import (
    NOT_NULL_CHECK,
    RECONCILIATION_CHECK,
    UNIQUE_KEY_CHECK,
    check_not_null,
    check_reconciliation,
    check_unique_key,
)
from etl_platform.automation.tags import ensure_run_tags
from etl_platform.config.registry import load_registry
from etl_platform.normalize.run import NormalizeResult, normalize_tenant
from etl_platform.partitions import days_by_tenant, tenant_date_partitions
from etl_platform.warehouse import get_warehouse

RECORDS_KEY = AssetKey(["normalized", "records"])


def build_normalized_assets(raw_keys: list[AssetKey], warehouse_kind: str) -> AssetsDefinition:
    @asset(
        key=RECORDS_KEY,
        group_name="normalized",
        partitions_def=tenant_date_partitions,
        backfill_policy=BackfillPolicy.single_run(),
        deps=raw_keys,
        kinds={"sql", warehouse_kind},
        description=(
            "Every source's rows in one schema: table `records` in `tenant_<id>`, upserted on "
            "(tenant_id, source, record_type, source_id); rows that cannot be mapped go to `record_rejects` "
            "with their reason."
        ),
        check_specs=[
            AssetCheckSpec(UNIQUE_KEY_CHECK, asset=RECORDS_KEY, description="upsert key is unique"),
            AssetCheckSpec(NOT_NULL_CHECK, asset=RECORDS_KEY, description="required columns are not null"),
            AssetCheckSpec(
                RECONCILIATION_CHECK,
                asset=RECORDS_KEY,
                description="raw rows = rows now in records + rejects, for the partition",
            ),
        ],
    )
    def records(context: AssetExecutionContext) -> Iterator[Any]:
        ensure_run_tags(context)
        registry = load_registry()
        warehouse = get_warehouse()
        keys = context.partition_keys if context.has_partition_key_range else [context.partition_key]
        results: list[NormalizeResult] = []
        for tenant_id, days in days_by_tenant(keys).items():
            tenant = registry.tenant(tenant_id)
            result = normalize_tenant(warehouse, tenant, days)
            context.log.info(
                f"tenant {tenant_id}: {result.raw_rows} raw rows -> {result.records_written} records, "
                f"{result.rejects} rejects"
            )
            results.append(result)
        yield MaterializeResult(metadata=_metadata(results))
        scope = [(registry.tenant(r.tenant_id), r.days) for r in results]
        yield check_unique_key(warehouse, scope)
        yield check_not_null(warehouse, scope)
        yield check_reconciliation(warehouse, scope)

    return records


def _metadata(results: list[NormalizeResult]) -> dict[str, Any]:
    return {
        "raw_rows": MetadataValue.int(sum(r.raw_rows for r in results)),
        "records_written": MetadataValue.int(sum(r.records_written for r in results)),
        "records_upserted": MetadataValue.int(sum(r.records_upserted for r in results)),
        "rejects": MetadataValue.int(sum(r.rejects for r in results)),
        "ingest_rejects": MetadataValue.int(sum(r.ingest_rejects for r in results)),
        "reject_reasons": MetadataValue.json(
            {
                reason: sum(r.reject_reasons.get(reason, 0) for r in results)
                for r in results
                for reason in r.reject_reasons
            }
        ),
        "by_tenant": MetadataValue.json(
            {
                r.tenant_id: {
                    "days": [d.isoformat() for d in r.days],
                    "raw_rows": r.raw_rows,
                    "records_written": r.records_written,
                    "rejects": r.rejects,
                    "by_table": r.by_table,
                }
                for r in results
            }
        ),
    }
