"""What each check concludes, from the figures a tenant's work reported: one verdict per check
and partition (the UI shows which tenant and day it judged, and plots the numeric metadata), and
the tenant freshness check, which looks across tenants on its own hourly schedule."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue

from etl_platform.assets.keys import (
    FRESHNESS_CHECK,
    NOT_NULL_CHECK,
    RECONCILIATION_CHECK,
    RECORDS_KEY,
    UNIQUE_KEY_CHECK,
    UNMAPPED_STATUSES_CHECK,
)
from etl_platform.config.models import TenantConfig
from etl_platform.loading.messages import DriftFigures
from etl_platform.normalize.checks import DayChecks
from etl_platform.normalize.drift import diff_schemas
from etl_platform.normalize.schema import NOT_NULL, RECORDS_TABLE
from etl_platform.security.redaction import excerpt
from etl_platform.warehouse import Warehouse, quote, warehouse_for


@dataclass(frozen=True)
class Verdict:
    """One check's result for one partition."""

    check: str
    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    severity: AssetCheckSeverity = AssetCheckSeverity.ERROR
    description: str | None = None

    def outcome(self) -> str:
        """The verdict in a few words (kept in the judged asset's materialization, so that a
        reload writes a new result only when the verdict changes)."""
        if self.passed:
            return "passed"
        return f"{self.severity.value.lower()}: {excerpt(self.description or '', 120)}"


def record_verdicts(figures: DayChecks) -> list[Verdict]:
    """The three checks of `normalized/records` for one partition, on what normalization staged."""
    return [
        Verdict(UNIQUE_KEY_CHECK, figures.duplicate_keys == 0,
                {"duplicate_keys": MetadataValue.int(figures.duplicate_keys)}),
        Verdict(
            NOT_NULL_CHECK,
            not figures.null_counts,
            {"null_values": MetadataValue.int(sum(figures.null_counts.values())),
             "null_counts": MetadataValue.json(figures.null_counts)},
            description=None if not figures.null_counts else f"nulls in required columns {list(NOT_NULL)}",
        ),
        Verdict(
            RECONCILIATION_CHECK,
            figures.reconciled,
            {"raw_rows": MetadataValue.int(figures.raw_rows), "records": MetadataValue.int(figures.records),
             "rejects": MetadataValue.int(figures.rejects), "mismatches": MetadataValue.int(figures.mismatches)},
            description=None
            if figures.reconciled
            else f"{figures.raw_rows} raw rows, but {figures.records} are in records and {figures.rejects} rejected",
        ),
    ]  # fmt: skip


def drift_verdict(check: str, tenant: str, drift: DriftFigures, discarded: int = 0) -> Verdict:
    """`schema_drift` of one raw asset: this load's fields against the tenant's own previous load
    (added fields warn; removed or retyped fields are errors). Fields of rows a schema contract
    discarded count as observed: a contract that discarded every row still shows its drift."""
    note = f"; the schema contract discarded {discarded} row(s)" if discarded else ""
    if not drift.observed:
        text = "no rows loaded: nothing to compare" + (
            f" (last fields observed at {drift.previous_at})" if drift.previous_at else ""
        )
        return Verdict(check, True, {"fields": MetadataValue.int(len(drift.previous or {})),
                                     "rows_observed": MetadataValue.int(0)}, AssetCheckSeverity.WARN, text)
    if drift.previous is None:
        text = f"first load of tenant {tenant!r}: {len(drift.observed)} fields" + note
        return Verdict(check, True, {"fields": MetadataValue.int(len(drift.observed))}, AssetCheckSeverity.WARN, text)
    change = diff_schemas(drift.previous, drift.observed)
    return Verdict(
        check,
        not change.any,
        {
            "fields": MetadataValue.int(len(drift.observed)),
            "added": MetadataValue.int(len(change.added)),
            "removed": MetadataValue.int(len(change.removed)),
            "retyped": MetadataValue.int(len(change.retyped)),
            "columns_added": MetadataValue.json(change.added),
            "columns_removed": MetadataValue.json(change.removed),
            "columns_retyped": MetadataValue.json({k: f"{a} -> {b}" for k, (a, b) in change.retyped.items()}),
        },
        AssetCheckSeverity.ERROR if change.breaking else AssetCheckSeverity.WARN,
        f"tenant {tenant!r}: {change.describe()}" + note,
    )  # fmt: skip


def unmapped_verdict(unmapped: dict[str, int]) -> Verdict:
    return Verdict(
        UNMAPPED_STATUSES_CHECK,
        not unmapped,
        {"unmapped": MetadataValue.int(len(unmapped)), "unmapped_statuses": MetadataValue.json(unmapped)},
        AssetCheckSeverity.WARN,
        None if not unmapped else "map each status to a step in the tenant's flow_steps (tenants file)",
    )


def not_applicable(check: str, tenant: str, source: str) -> Verdict:
    """A check a run was asked for on a source the tenant does not have."""
    return Verdict(check, True, {"applies": MetadataValue.bool(False)}, AssetCheckSeverity.WARN,
                   f"not applicable: tenant {tenant!r} has no source {source!r}")


def evaluate_freshness(
    tenants: list[TenantConfig], now: dt.datetime, warehouse: Warehouse | None = None
) -> AssetCheckResult:
    """Age of each tenant's newest normalization (bounded by the `event_date` index: only the
    days of the freshness window are read)."""
    ages: dict[str, Any] = {}
    stale: list[str] = []
    by_warehouse: dict[str, list[TenantConfig]] = {}
    for tenant in tenants:
        by_warehouse.setdefault(str((warehouse or warehouse_for(tenant)).url), []).append(tenant)
    for url, group in by_warehouse.items():
        with Warehouse(url).connect() as conn:
            for tenant in group:
                newest = None
                if conn.table_exists(tenant.dataset, RECORDS_TABLE):
                    since = (now - dt.timedelta(hours=tenant.freshness_hours + 24)).date().isoformat()
                    newest = conn.query(
                        f"SELECT max(normalized_at) FROM {quote(tenant.dataset)}.{quote(RECORDS_TABLE)} "
                        f"WHERE event_date >= DATE '{since}'"
                    )[0][0]
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
        metadata={
            "stale": MetadataValue.int(len(stale)),
            "tenants": MetadataValue.int(len(tenants)),
            "age_hours": MetadataValue.json(ages),
            "stale_tenants": MetadataValue.json(stale),
        },
    )
