"""Per-partition events: one materialization or check result per `<day>|<tenant>`, each with
that partition's own figures (a ranged run never claims the whole range's figures per day)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from dagster import AssetCheckSeverity, AssetKey, AssetMaterialization
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation

from etl_platform.partitions import DATE_DIMENSION, TENANT_DIMENSION, partition_key


def _tags(tenant: str, day: dt.date) -> dict[str, str]:
    return {f"dagster/partition/{DATE_DIMENSION}": day.isoformat(), f"dagster/partition/{TENANT_DIMENSION}": tenant}


def materialization(key: AssetKey, tenant: str, day: dt.date, metadata: Mapping[str, Any]) -> AssetMaterialization:
    """The materialization of one partition of `key`."""
    return AssetMaterialization(
        asset_key=key, partition=str(partition_key(tenant, day)), metadata=dict(metadata), tags=_tags(tenant, day)
    )


def check_result(
    key: AssetKey,
    check: str,
    tenant: str,
    day: dt.date,
    *,
    passed: bool,
    metadata: Mapping[str, Any],
    severity: AssetCheckSeverity = AssetCheckSeverity.ERROR,
    description: str | None = None,
) -> AssetCheckEvaluation:
    """One partition's result of a partitioned check (the UI shows the tenant and day it judged)."""
    return AssetCheckEvaluation(
        asset_key=key,
        check_name=check,
        passed=passed,
        metadata=dict(metadata),
        severity=severity,
        description=description,
        partition=str(partition_key(tenant, day)),
    )
