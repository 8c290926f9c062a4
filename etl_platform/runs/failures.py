"""A run's failures as Dagster records them: the step's `Failure` naming each failed tenant
(with every tenant's own entries as JSON metadata, `etl/failures`), and reading them back for
the retry sensor, the alerts and the read API. Classification itself: `loading.failures`."""

from __future__ import annotations

import json
from typing import Any

from dagster import DagsterEventType, Failure, MetadataValue

from etl_platform.loading.failures import PERMANENT, TRANSIENT, TenantFailure

ERROR_KIND_KEY = "etl/error_kind"
FAILURES_KEY = "etl/failures"  # metadata of a run's Failure: every failed (tenant, source), as JSON
FAILED_TENANTS_TAG = "etl/failed_tenants"  # run tag: the tenants a run failed for, comma-separated


def run_failure(failures: list[TenantFailure], tenants_in_run: int) -> Failure:
    """The Failure a run step raises after finishing every tenant it could: it names each failed
    tenant and source. Permanent when every failure is; the retry sensor then retries only the
    tenants whose failure was transient."""
    kind = PERMANENT if all(f.permanent for f in failures) else TRANSIENT
    failed = sorted({f.tenant for f in failures})
    head = (
        failures[0].describe()
        if len(failures) == 1
        else f"[{kind}] {len(failed)} of {tenants_in_run} tenants failed: "
        + "; ".join(f.describe() for f in failures[:10])
        + (f"; and {len(failures) - 10} more" if len(failures) > 10 else "")
    )
    return Failure(
        description=head,
        metadata={
            ERROR_KIND_KEY: MetadataValue.text(kind),
            FAILURES_KEY: MetadataValue.json([f.to_json() for f in failures]),
            "failed_tenants": MetadataValue.json(failed),
        },
        allow_retries=False,  # the retry sensor retries the failed tenants, not the whole run
    )


def run_failures(instance: Any, run_id: str) -> list[TenantFailure]:
    """The failed (tenant, source) pairs of a finished run, from its step failure events."""
    out: list[TenantFailure] = []
    records = instance.get_records_for_run(run_id, of_type={DagsterEventType.STEP_FAILURE}).records
    for record in records:
        event = record.event_log_entry.dagster_event
        user = getattr(getattr(event, "event_specific_data", None), "user_failure_data", None)
        metadata = getattr(user, "metadata", None) or {}
        listed = getattr(metadata.get(FAILURES_KEY), "value", None)
        if isinstance(listed, str):
            listed = json.loads(listed)
        if listed:
            out.extend(TenantFailure.from_json(item) for item in listed)
        elif metadata.get("tenant") is not None:  # a step that failed for one (tenant, source)
            value = {k: getattr(v, "value", v) for k, v in metadata.items()}.get
            description = getattr(user, "description", None) or ""
            out.append(
                TenantFailure(
                    tenant=value("tenant"),
                    source=value("source"),
                    kind=value(ERROR_KIND_KEY) or TRANSIENT,
                    error=description.split(": ", 2)[1] if description.count(": ") >= 2 else "Failure",
                    message=description.split(": ", 1)[-1],
                    http_status=value("http_status"),
                )
            )
    return out
