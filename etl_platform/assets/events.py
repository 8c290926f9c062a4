"""Per-partition events: one materialization or check result per `<day>|<tenant>`, each with
that partition's own figures (a ranged run never claims the whole range's figures per day)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from dagster import AssetCheckEvaluation, AssetCheckSeverity, AssetKey, AssetMaterialization

from etl_platform.runs.partitions import DATE_DIMENSION, TENANT_DIMENSION, partition_key


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


def log_events(context: Any, events: Sequence[Any]) -> None:
    """Log a tenant's events as one batch: with DAGSTER_EVENT_BATCH_SIZE set (the platform sets
    1000), Dagster's storage writes them in one go instead of one write (and, on SQLite, one
    connection) each: a year's backfill logs thousands. Through Dagster's own step events with
    batch metadata; `context.log_event` one by one where that is not available."""
    if not events:
        return
    try:
        from dagster._core.events import DagsterEvent, DagsterEventBatchMetadata, DagsterEventType

        op_context = getattr(context, "op_execution_context", context)
        step_context = op_context._step_execution_context  # noqa: SLF001 - Dagster's own batch path
        pending = op_context._events  # noqa: SLF001
    except (AttributeError, ImportError):
        for event in events:
            context.log_event(event)
        return
    batch = uuid.uuid4().hex
    for n, event in enumerate(events):
        metadata = DagsterEventBatchMetadata(batch, n == len(events) - 1)
        if isinstance(event, AssetMaterialization):
            pending.append(DagsterEvent.asset_materialization(step_context, event, batch_metadata=metadata))
        else:
            message = f"Asset check '{event.check_name}' on '{event.asset_key.to_user_string()}' " + (
                "passed." if event.passed else "did not pass."
            )
            if event.description:
                message += f" Description: '{event.description}'"
            pending.append(
                DagsterEvent.from_step(
                    DagsterEventType.ASSET_CHECK_EVALUATION, step_context, event, message, batch_metadata=metadata
                )
            )
