"""Retry failed runs with exponential backoff (a polling sensor), only for the tenants that failed.

A run covers one or many tenants (scheduled chunks); it fails naming each failed tenant and
source with a permanent or transient kind (`failures.run_failures`). Only tenants whose failure
is transient are retried; a run that failed without reaching its step (its worker died, run
monitoring failed it) is retried for all of its tenants. A failed run's attempt n (tag
`etl/attempt`, 1 = the original run) is retried as attempt n+1 after base × 2^(n-1) seconds
(ETL_RETRY_BASE_DELAY_SECONDS, default 300), capped at ETL_RETRY_MAX_DELAY_SECONDS (default
1800), up to ETL_RETRY_MAX_ATTEMPTS retries (default 3). A retry covers the run's days for the
tenants to retry (one run per contiguous group of them), with the run's asset selection,
`etl/attempt`, `etl/parent_run_id` (the failed run) and `etl/root_run_id` (the first of the chain).

Not retried: canceled runs (only FAILURE runs are considered), permanent failures (bad config,
auth 401/403, schema contract), tenants whose partitions succeeded since, and tenants covered by
a newer run of the same days (the next hourly run carries on: one retry chain per partition).
The sensor records its decision on the failed run (`etl/retry`): `requested:<n>` →
`retried:<retry run ids>`, `gave_up:<why>` (permanent, or the last attempt failed),
`skipped:<why>`. Dagster's own run retries stay off (dagster.yaml).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

from dagster import (
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRecord,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from etl_platform.assets.keys import RECORDS_KEY, source_of
from etl_platform.automation.jobs import INGEST_JOB
from etl_platform.config.settings import get_settings
from etl_platform.loading.failures import TenantFailure
from etl_platform.observability.logs import tick_log
from etl_platform.runs.coverage import Coverage, contiguous_chunks, partition_request, run_coverage
from etl_platform.runs.failures import run_failures
from etl_platform.runs.partitions import partition_key
from etl_platform.runs.tags import (
    ATTEMPT_TAG,
    PARENT_RUN_TAG,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    RETRY_STATE_TAG,
    ROOT_RUN_TAG,
    TRIGGER_TAG,
    tenant_tags,
)

SENSOR_NAME = "retry_failed_runs"
LOOKBACK_SECONDS = 2 * 24 * 3600
MAX_FAILED_RUNS = 500
PARTITION_TAGS = (PARTITION_TAG, RANGE_START_TAG, RANGE_END_TAG)
# tags of the failed run that its retry does not inherit
NOT_INHERITED_PREFIXES = ("dagster/", "etl/retry", "etl/attempt", "etl/parent_run_id", "etl/trigger", "etl/root_run_id")
NOT_INHERITED = ("etl/tenant", "etl/tenants", "etl/multi_tenant", "etl/failed_tenants")
REQUESTED, RETRIED, GAVE_UP, SKIPPED = "requested", "retried", "gave_up", "skipped"


@dataclass(frozen=True)
class RetryPolicySettings:
    max_attempts: int  # retries after the first run
    base_delay_s: int
    max_delay_s: int

    def delay(self, attempt: int) -> int:
        """Seconds to wait after failed attempt `attempt` (1 = the original run)."""
        return min(self.base_delay_s * 2 ** (attempt - 1), self.max_delay_s)

    @classmethod
    def from_env(cls) -> RetryPolicySettings:
        s = get_settings()
        return cls(s.retry_max_attempts, s.retry_base_delay_s, s.retry_max_delay_s)


@dataclass(frozen=True)
class Decision:
    action: str  # retry | wait | give_up | skip
    reason: str
    due_at: float | None = None


def decide(
    *,
    attempt: int,
    permanent: bool,
    succeeded_since: bool,
    failed_at: float,
    now: float,
    policy: RetryPolicySettings,
    superseded_by: str | None = None,
) -> Decision:
    """What to do with one failed run (pure; the sensor supplies the facts)."""
    if permanent:
        return Decision("give_up", "permanent failure, not retried")
    if succeeded_since:
        return Decision("skip", "partition succeeded since")
    if superseded_by:
        return Decision("skip", f"superseded by the newer run {superseded_by} of the partition")
    if attempt > policy.max_attempts:
        return Decision("give_up", f"attempt {attempt} failed, {policy.max_attempts} retries exhausted")
    due = failed_at + policy.delay(attempt)
    if now < due:
        return Decision("wait", f"retry {attempt} of {policy.max_attempts} due in {int(due - now) + 1}s", due)
    return Decision("retry", f"retry {attempt} of {policy.max_attempts}", due)


@dataclass(frozen=True)
class FailedRun:
    """What a failed run covered and what it failed for."""

    record: RunRecord
    coverage: Coverage
    failures: list[TenantFailure]

    @property
    def run(self) -> DagsterRun:
        return self.record.dagster_run

    def retryable_tenants(self) -> list[str]:
        """Tenants with a transient failure; all of the run's tenants when it failed without
        saying which (its worker died before the step reported)."""
        if not self.failures:
            return list(self.coverage.tenants)
        permanent = {f.tenant for f in self.failures if f.permanent}
        return [t for t in dict.fromkeys(f.tenant for f in self.failures) if t not in permanent]

    def days_of(self, tenant: str) -> list[dt.date]:
        listed = {dt.date.fromisoformat(d) for f in self.failures if f.tenant == tenant for d in f.days}
        return sorted(listed or self.coverage.days)


def partition_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k in PARTITION_TAGS}


def _succeeded_since(instance: DagsterInstance, failed: FailedRun, tenant: str, since: float) -> bool:
    """Every day of the tenant in the failed run has a materialization since: of `records` when
    the run selected it, else of the raw assets of the sources that failed."""
    run = failed.run
    selection = set(run.asset_selection or [])
    if not selection or RECORDS_KEY in selection:
        keys = [RECORDS_KEY]
    else:
        sources = {f.source for f in failed.failures if f.tenant == tenant and f.source}
        keys = [k for k in selection if source_of(k) in sources] or sorted(selection, key=str)[:1]
    wanted = {str(partition_key(tenant, d)) for d in failed.days_of(tenant)}
    for key in keys:
        found: set[str] = set()
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=key, asset_partitions=sorted(wanted), after_timestamp=since),
            limit=len(wanted) * 4,
        ).records
        for record in records:
            found.add(record.partition_key or "")
        if not wanted <= found:
            return False
    return True


def _newer_runs(instance: DagsterInstance, failed: FailedRun, since: float) -> list[DagsterRun]:
    """Runs created after the failed one, not canceled, not its own retries (one query)."""
    records = instance.get_run_records(RunsFilter(created_after=_dt(since)), limit=200)
    return [
        r.dagster_run
        for r in records
        if r.dagster_run.run_id != failed.run.run_id
        and r.dagster_run.status != DagsterRunStatus.CANCELED
        and r.dagster_run.tags.get(PARENT_RUN_TAG) != failed.run.run_id
    ]


def _covers(newer: DagsterRun, run: DagsterRun) -> bool:
    """`newer` loads at least what `run` loads: the same job or `ingest`, and all of the job's
    assets or a superset of `run`'s selection."""
    if newer.job_name not in (run.job_name, INGEST_JOB):
        return False
    if newer.asset_selection is None:
        return newer.job_name == INGEST_JOB or newer.job_name == run.job_name
    return run.asset_selection is not None and set(newer.asset_selection) >= set(run.asset_selection)


def superseded_by(newer_runs: list[DagsterRun], failed: FailedRun, tenant: str, order: dict[str, int]) -> str | None:
    """A newer run (queued, running or failed, e.g. the next hourly run) covering the tenant's
    days with the same assets: that one carries on, so a failing source gets one retry chain."""
    days = failed.days_of(tenant)
    for newer in newer_runs:
        if _covers(newer, failed.run) and run_coverage(newer.tags, order).covers(tenant, days):
            return newer.run_id
    return None


def _retry_children(instance: DagsterInstance, run_id: str) -> list[str]:
    records = instance.get_run_records(RunsFilter(tags={PARENT_RUN_TAG: run_id}), limit=100)
    return [r.dagster_run.run_id for r in records]


def retry_requests(
    failed: FailedRun, tenants: list[str], attempt: int, job_names: set[str], order: list[str]
) -> list[RunRequest]:
    """Run requests re-launching the failed run's days for `tenants` as attempt `attempt + 1`:
    one per group of tenants consecutive in registration order."""
    run = failed.run
    job_name = run.job_name if run.job_name in job_names else INGEST_JOB
    inherited = {
        k: v for k, v in run.tags.items() if not k.startswith(NOT_INHERITED_PREFIXES) and k not in NOT_INHERITED
    }
    requests = []
    for group in contiguous_chunks(order or tenants, {t: tuple(failed.days_of(t)) for t in tenants}, len(tenants)):
        partition = partition_request(group, failed.days_of(group[0]))
        requests.append(
            RunRequest(
                run_key=f"retry:{run.run_id}:{group[0]}",
                job_name=job_name,
                partition_key=partition.get(PARTITION_TAG),
                asset_selection=list(run.asset_selection) if run.asset_selection else None,
                asset_check_keys=list(run.asset_check_selection) if run.asset_check_selection is not None else None,
                tags={
                    **inherited,
                    **{k: v for k, v in partition.items() if k != PARTITION_TAG},
                    **tenant_tags(group),
                    TRIGGER_TAG: "retry",
                    ATTEMPT_TAG: str(attempt + 1),
                    PARENT_RUN_TAG: run.run_id,
                    ROOT_RUN_TAG: run.tags.get(ROOT_RUN_TAG, run.run_id),
                },
            )
        )
    return requests


def evaluate_retries(context: SensorEvaluationContext, job_names: set[str], now: float | None = None):
    """Run requests for the failed runs that are due; tags the failed runs with the decision."""
    now = time.time() if now is None else now
    policy = RetryPolicySettings.from_env()
    instance = context.instance
    records = instance.get_run_records(
        RunsFilter(statuses=[DagsterRunStatus.FAILURE], updated_after=_dt(now - LOOKBACK_SECONDS)),
        limit=MAX_FAILED_RUNS,
    )
    order: list[str] | None = None
    requests, notes = [], []
    for record in records:
        run = record.dagster_run
        state = run.tags.get(RETRY_STATE_TAG, "")
        if not partition_tags(run.tags) or (state and not state.startswith(REQUESTED)):
            continue
        label = f"run {run.run_id[:8]} ({', '.join(partition_tags(run.tags).values())})"
        if state.startswith(REQUESTED):
            children = _retry_children(instance, run.run_id)
            if children:  # the requested retries were launched: done with this run
                instance.add_run_tags(run.run_id, {RETRY_STATE_TAG: f"{RETRIED}:{','.join(children)}"})
                notes.append((logging.DEBUG, f"{label}: retried by run(s) {', '.join(c[:8] for c in children)}"))
                continue
        if order is None:
            order = list(instance.get_dynamic_partitions("tenant"))
        position = {t: i for i, t in enumerate(order)}
        failed = FailedRun(record, run_coverage(run.tags, position), run_failures(instance, run.run_id))
        decision, tenants = _decide_run(instance, failed, policy, now, position)
        if decision.action == "wait":
            notes.append((logging.DEBUG, f"{label}: {decision.reason}"))
            continue
        if decision.action in ("give_up", "skip"):
            outcome = GAVE_UP if decision.action == "give_up" else SKIPPED
            instance.add_run_tags(run.run_id, {RETRY_STATE_TAG: f"{outcome}:{decision.reason}"})
            # giving up is said once (the run is tagged), as a warning; a skip is bookkeeping
            level = logging.WARNING if decision.action == "give_up" else logging.DEBUG
            notes.append((level, f"{label}: {outcome} ({decision.reason})"))
            continue
        attempt = int(run.tags.get(ATTEMPT_TAG, "1"))
        requests.extend(retry_requests(failed, tenants, attempt, job_names, order))
        instance.add_run_tags(run.run_id, {RETRY_STATE_TAG: f"{REQUESTED}:attempt {attempt + 1}"})
        notes.append((logging.INFO, f"{label}: {decision.reason} requested for {', '.join(tenants)} "
                      f"(attempt {attempt + 1})"))
    # INFO only for the retries the tick requests: a tick that waits says it at DEBUG
    log = tick_log(context.log, sensor="retry_failed_runs")
    for level, note in notes:
        log.log(level, note)
    return requests or SkipReason("; ".join(note for _level, note in notes) or "no failed runs to retry")


def _decide_run(
    instance: DagsterInstance, failed: FailedRun, policy: RetryPolicySettings, now: float, order: dict[str, int]
) -> tuple[Decision, list[str]]:
    """The decision for a failed run, and the tenants to retry."""
    record = failed.record
    attempt = int(failed.run.tags.get(ATTEMPT_TAG, "1"))
    failed_at = record.end_time or record.update_timestamp.timestamp()
    created = record.create_timestamp.timestamp()
    tenants = failed.retryable_tenants()
    if not tenants:
        return decide(
            attempt=attempt, permanent=True, succeeded_since=False, failed_at=failed_at, now=now, policy=policy
        ), []
    succeeded = [t for t in tenants if _succeeded_since(instance, failed, t, created)]
    remaining = [t for t in tenants if t not in succeeded]
    newer = _newer_runs(instance, failed, created) if remaining else []
    superseded = {t: s for t in remaining if (s := superseded_by(newer, failed, t, order))}
    remaining = [t for t in remaining if t not in superseded]
    decision = decide(
        attempt=attempt,
        permanent=False,
        succeeded_since=not remaining and bool(succeeded) and not superseded,
        superseded_by=", ".join(sorted(set(superseded.values()))) if not remaining and superseded else None,
        failed_at=failed_at,
        now=now,
        policy=policy,
    )
    return decision, remaining


def _dt(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)


def build_retry_sensor(jobs: list):
    names = {j.name for j in jobs}

    @sensor(
        name=SENSOR_NAME,
        jobs=jobs,
        minimum_interval_seconds=get_settings().retry_sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="Re-launches failed runs with exponential backoff, for the tenants whose failure was "
        "transient; never canceled runs, permanent failures, or partitions that succeeded since.",
    )
    def retry_failed_runs(context: SensorEvaluationContext):
        return evaluate_retries(context, names)

    return retry_failed_runs
