"""Data-quality checks on `records`: key uniqueness, required columns, reconciliation with
raw rows, freshness per tenant; and schema drift on every raw asset."""

import datetime as dt
from collections.abc import Iterable
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    DagsterInstance,
    MetadataValue,
    asset_check,
    multi_asset_check,
)

from etl_platform.config.models import TenantConfig
from etl_platform.normalize.drift import diff_schemas
from etl_platform.normalize.run import mappings_for
from etl_platform.normalize.schema import NOT_NULL, RECORD_REJECTS_TABLE, RECORDS_TABLE, UPSERT_KEY
from etl_platform.normalize.sql import select_for
from etl_platform.warehouse import Warehouse, quote

UNIQUE_KEY_CHECK = "unique_upsert_key"
NOT_NULL_CHECK = "required_columns_not_null"
RECONCILIATION_CHECK = "raw_reconciles_with_records_and_rejects"
FRESHNESS_CHECK = "tenant_freshness"
DRIFT_CHECK = "schema_drift"
RECORDS_KEY = AssetKey(["normalized", "records"])

Scope = list[tuple[TenantConfig, list[dt.date]]]


def _days_sql(days: Iterable[dt.date]) -> str:
    return ", ".join(f"DATE '{d.isoformat()}'" for d in days)


def check_unique_key(warehouse: Warehouse, scope: Scope) -> AssetCheckResult:
    duplicates: dict[str, int] = {}
    keys = ", ".join(quote(k) for k in UPSERT_KEY)
    with warehouse.connect() as conn:
        for tenant, _ in scope:
            if not conn.table_exists(tenant.dataset, RECORDS_TABLE):
                continue
            n = conn.query(
                f"SELECT count(*) FROM (SELECT {keys} FROM {quote(tenant.dataset)}.{quote(RECORDS_TABLE)} "
                f"GROUP BY {keys} HAVING count(*) > 1) AS d"
            )[0][0]
            duplicates[tenant.id] = int(n)
    return AssetCheckResult(
        check_name=UNIQUE_KEY_CHECK,
        asset_key=RECORDS_KEY,
        passed=not any(duplicates.values()),
        severity=AssetCheckSeverity.ERROR,
        metadata={"duplicate_keys": MetadataValue.json(duplicates)},
    )


def check_not_null(warehouse: Warehouse, scope: Scope) -> AssetCheckResult:
    nulls: dict[str, dict[str, int]] = {}
    with warehouse.connect() as conn:
        for tenant, days in scope:
            if not conn.table_exists(tenant.dataset, RECORDS_TABLE):
                continue
            counts = ", ".join(f"count(*) - count({quote(c)})" for c in NOT_NULL)
            row = conn.query(
                f"SELECT {counts} FROM {quote(tenant.dataset)}.{quote(RECORDS_TABLE)} "
                f"WHERE event_date IN ({_days_sql(days)})"
            )[0]
            bad = {c: int(n) for c, n in zip(NOT_NULL, row) if n}
            if bad:
                nulls[tenant.id] = bad
    return AssetCheckResult(
        check_name=NOT_NULL_CHECK,
        asset_key=RECORDS_KEY,
        passed=not nulls,
        severity=AssetCheckSeverity.ERROR,
        metadata={"null_counts": MetadataValue.json(nulls), "columns": MetadataValue.json(list(NOT_NULL))},
    )


def reconcile(warehouse: Warehouse, tenant: TenantConfig, days: list[dt.date]) -> dict[str, int]:
    """Raw rows of the days; how many are valid and present in `records` under their key;
    how many rejects the days recorded. Reconciled when raw = records + rejects."""
    schema, days_sql = tenant.dataset, _days_sql(days)
    raw = matched = rejects = 0
    with warehouse.connect() as conn:
        has_records = conn.table_exists(schema, RECORDS_TABLE)
        for source in tenant.sources:
            for table, mapping in mappings_for(source):
                columns = conn.columns(schema, table)
                if not columns:
                    continue
                staged = select_for(conn.dialect, mapping, schema, table, tenant.id, days_sql, set(columns))
                raw += conn.query(f"SELECT count(*) FROM ({staged}) AS s")[0][0]
                if has_records:
                    matched += conn.query(
                        f"SELECT count(*) FROM ({staged}) AS s WHERE s.reject_reason IS NULL AND EXISTS ("
                        f"SELECT 1 FROM {quote(schema)}.{quote(RECORDS_TABLE)} AS rec WHERE rec.source = s.source "
                        "AND rec.record_type = s.record_type AND rec.source_id = s.source_id)"
                    )[0][0]
        if conn.table_exists(schema, RECORD_REJECTS_TABLE):
            rejects = conn.query(
                f"SELECT count(*) FROM {quote(schema)}.{quote(RECORD_REJECTS_TABLE)} "
                f"WHERE tenant_id = ? AND event_date IN ({days_sql})",
                [tenant.id],
            )[0][0]
    return {"raw_rows": int(raw), "records": int(matched), "rejects": int(rejects)}


def check_reconciliation(warehouse: Warehouse, scope: Scope) -> AssetCheckResult:
    figures = {t.id: reconcile(warehouse, t, days) for t, days in scope}
    passed = all(f["raw_rows"] == f["records"] + f["rejects"] for f in figures.values())
    return AssetCheckResult(
        check_name=RECONCILIATION_CHECK,
        asset_key=RECORDS_KEY,
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={"by_tenant": MetadataValue.json(figures)},
    )


def freshness_check() -> AssetChecksDefinition:
    @asset_check(
        asset=RECORDS_KEY,
        name=FRESHNESS_CHECK,
        description="Every active tenant's newest record is younger than its freshness_hours (warning).",
        blocking=False,
    )
    def tenant_freshness() -> AssetCheckResult:
        from etl_platform.config.registry import load_registry
        from etl_platform.warehouse import get_warehouse

        return evaluate_freshness(get_warehouse(), load_registry().active_tenants(), dt.datetime.now(dt.timezone.utc))

    return tenant_freshness


def evaluate_freshness(warehouse: Warehouse, tenants: list[TenantConfig], now: dt.datetime) -> AssetCheckResult:
    ages: dict[str, Any] = {}
    stale: list[str] = []
    with warehouse.connect() as conn:
        for tenant in tenants:
            newest = None
            if conn.table_exists(tenant.dataset, RECORDS_TABLE):
                newest = conn.query(f"SELECT max(normalized_at) FROM {quote(tenant.dataset)}.{quote(RECORDS_TABLE)}")[
                    0
                ][0]
            if newest is None:
                ages[tenant.id] = None
                stale.append(tenant.id)
                continue
            if newest.tzinfo is None:
                newest = newest.replace(tzinfo=dt.timezone.utc)
            hours = (now - newest).total_seconds() / 3600
            ages[tenant.id] = round(hours, 2)
            if hours > tenant.freshness_hours:
                stale.append(tenant.id)
    return AssetCheckResult(
        check_name=FRESHNESS_CHECK,
        asset_key=RECORDS_KEY,
        passed=not stale,
        severity=AssetCheckSeverity.WARN,
        metadata={"age_hours": MetadataValue.json(ages), "stale_tenants": MetadataValue.json(stale)},
    )


def drift_checks(raw_keys: list[AssetKey]) -> AssetChecksDefinition:
    """One `schema_drift` check per raw asset: the latest load's fields vs the previous load's,
    per tenant. Added fields warn; removed or retyped fields are errors."""

    @multi_asset_check(
        specs=[AssetCheckSpec(DRIFT_CHECK, asset=key, blocking=False) for key in raw_keys],
        can_subset=True,
        name="raw_schema_drift",
    )
    def raw_schema_drift(context) -> Iterable[AssetCheckResult]:
        for check_key in context.selected_asset_check_keys:
            yield drift_result(context.instance, check_key.asset_key)

    return raw_schema_drift


def drift_result(instance: DagsterInstance, key: AssetKey, history: int = 50) -> AssetCheckResult:
    """For each tenant, its newest observed schema against its previous one (searching the
    asset's recent materializations, newest first)."""
    latest: dict[str, dict[str, str]] = {}
    previous: dict[str, dict[str, str]] = {}
    for record in instance.fetch_materializations(key, limit=history).records:
        meta = record.asset_materialization.metadata if record.asset_materialization else {}
        tenants = getattr(meta.get("tenants"), "value", None) or {}
        for tenant_id, figures in tenants.items():
            schema = figures.get("observed_schema")
            if not schema:
                continue
            if tenant_id not in latest:
                latest[tenant_id] = schema
            elif tenant_id not in previous:
                previous[tenant_id] = schema
    drifts = {t: diff_schemas(previous[t], latest[t]) for t in latest if t in previous}
    breaking = {t: d.describe() for t, d in drifts.items() if d.breaking}
    changed = {t: d.describe() for t, d in drifts.items() if d.any}
    return AssetCheckResult(
        check_name=DRIFT_CHECK,
        asset_key=key,
        passed=not changed,
        severity=AssetCheckSeverity.ERROR if breaking else AssetCheckSeverity.WARN,
        metadata={
            "drift": MetadataValue.json(changed),
            "columns_added": MetadataValue.json({t: d.added for t, d in drifts.items() if d.added}),
            "columns_removed": MetadataValue.json({t: d.removed for t, d in drifts.items() if d.removed}),
            "columns_retyped": MetadataValue.json(
                {t: {k: f"{a} -> {b}" for k, (a, b) in d.retyped.items()} for t, d in drifts.items() if d.retyped}
            ),
            "tenants_compared": MetadataValue.json(sorted(drifts)),
        },
    )
