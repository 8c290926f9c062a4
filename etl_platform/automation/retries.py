"""Retry failed partition runs with exponential backoff (a polling sensor).

A failed run's attempt n (tag `etl/attempt`, 1 = the original run) is retried as attempt n+1
after base × 2^(n-1) seconds (ETL_RETRY_BASE_DELAY_SECONDS, default 300), capped at
ETL_RETRY_MAX_DELAY_SECONDS (default 1800), up to ETL_RETRY_MAX_ATTEMPTS retries (default 3).
The retry carries the partition (key or range), the asset selection, `etl/attempt`,
`etl/parent_run_id` (the failed run) and `etl/root_run_id` (the first run of the chain).

Never retried: canceled runs (only FAILURE runs are considered), permanent failures (bad config,
auth 401/403, schema contract: a step Failure tagged `etl/error_kind=permanent`), runs whose
partition has succeeded since, and runs superseded by a newer run of their partition (the next
hourly run failing too continues alone: one retry chain per partition). The sensor records its
decision on the failed run (`etl/retry`): `requested:<n>` → `retried:<retry run id>`,
`gave_up:<why>` (permanent, or the last attempt failed), `skipped:<why>`. Dagster's own run
retries stay off (dagster.yaml).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)
from dagster._core.storage.dagster_run import DagsterRun, RunRecord

from etl_platform.automation.jobs import INGEST_JOB
from etl_platform.automation.tags import (
    ATTEMPT_TAG,
    PARENT_RUN_TAG,
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    RETRY_STATE_TAG,
    ROOT_RUN_TAG,
    TRIGGER_TAG,
)
from etl_platform.config.settings import get_settings
from etl_platform.failures import ERROR_KIND_KEY, PERMANENT

SENSOR_NAME = "retry_failed_runs"
LOOKBACK_SECONDS = 2 * 24 * 3600
MAX_FAILED_RUNS = 500
PARTITION_TAGS = (PARTITION_TAG, RANGE_START_TAG, RANGE_END_TAG)
PERMANENT_MARKERS = ("[permanent]", "TenantsFileError", "DataValidationError", "PermanentSourceError")
# tags of the failed run that its retry does not inherit
NOT_INHERITED_PREFIXES = ("dagster/", "etl/retry", "etl/attempt", "etl/parent_run_id", "etl/trigger", "etl/root_run_id")
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


def is_permanent_failure(instance: DagsterInstance, run_id: str) -> bool:
    """A step failed with a Failure tagged permanent, or the run failed on bad configuration."""
    records = instance.get_records_for_run(
        run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        data = event.event_specific_data
        user = getattr(data, "user_failure_data", None)
        if user is not None and getattr(user.metadata.get(ERROR_KIND_KEY), "value", None) == PERMANENT:
            return True
        error = getattr(data, "error", None)
        text = " ".join(filter(None, [error.to_string() if error is not None else "", event.message or ""]))
        if any(marker in text for marker in PERMANENT_MARKERS):
            return True
    return False


def partition_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k in PARTITION_TAGS}


def _covers(newer: DagsterRun, run: DagsterRun) -> bool:
    """`newer` loads at least what `run` loads: the same job or `ingest` (every asset), and all
    of the job's assets or a superset of `run`'s selection."""
    if newer.job_name not in (run.job_name, INGEST_JOB):
        return False
    if newer.asset_selection is None:
        return newer.job_name == INGEST_JOB or newer.job_name == run.job_name
    return run.asset_selection is not None and set(newer.asset_selection) >= set(run.asset_selection)


def _newer_runs(instance: DagsterInstance, run: DagsterRun, since: float, statuses=None) -> list[DagsterRun]:
    """Runs of the same partition (or range) created after `since` that cover `run`."""
    partition = partition_tags(run.tags)
    if not partition:
        return []
    records = instance.get_run_records(
        RunsFilter(tags=partition, created_after=_dt(since), statuses=statuses), limit=50
    )
    return [r.dagster_run for r in records if r.dagster_run.run_id != run.run_id and _covers(r.dagster_run, run)]


def partition_succeeded_since(instance: DagsterInstance, run: DagsterRun, since: float) -> bool:
    """A run covering `run`'s assets on the same partition or range succeeded after `since`."""
    return bool(_newer_runs(instance, run, since, [DagsterRunStatus.SUCCESS]))


def superseded_by(instance: DagsterInstance, run: DagsterRun, since: float) -> str | None:
    """A newer run of the partition (queued, running or failed, e.g. the next hourly run) that
    covers `run`: that one carries on, so that a failing source gets one retry chain, not one
    per tick. Canceled runs and `run`'s own retries do not count."""
    for newer in _newer_runs(instance, run, since):
        if newer.status != DagsterRunStatus.CANCELED and newer.tags.get(PARENT_RUN_TAG) != run.run_id:
            return newer.run_id
    return None


def _retry_child(instance: DagsterInstance, run_id: str) -> str | None:
    records = instance.get_run_records(RunsFilter(tags={PARENT_RUN_TAG: run_id}), limit=1)
    return records[0].dagster_run.run_id if records else None


def retry_request(record: RunRecord, attempt: int, job_names: set[str]) -> RunRequest:
    """The run request re-launching `record`'s run as attempt `attempt + 1`."""
    run = record.dagster_run
    job_name = run.job_name if run.job_name in job_names else INGEST_JOB
    inherited = {k: v for k, v in run.tags.items() if not k.startswith(NOT_INHERITED_PREFIXES)}
    range_tags = {k: v for k, v in run.tags.items() if k in (RANGE_START_TAG, RANGE_END_TAG)}
    return RunRequest(
        run_key=f"retry:{run.run_id}",
        job_name=job_name,
        partition_key=run.tags.get(PARTITION_TAG) if not range_tags else None,
        asset_selection=list(run.asset_selection) if run.asset_selection else None,
        asset_check_keys=list(run.asset_check_selection) if run.asset_check_selection is not None else None,
        tags={
            **inherited,
            **range_tags,
            TRIGGER_TAG: "retry",
            ATTEMPT_TAG: str(attempt + 1),
            PARENT_RUN_TAG: run.run_id,
            ROOT_RUN_TAG: run.tags.get(ROOT_RUN_TAG, run.run_id),
        },
    )


def evaluate_retries(context: SensorEvaluationContext, job_names: set[str], now: float | None = None):
    """Run requests for the failed runs that are due; tags the failed runs with the decision."""
    now = time.time() if now is None else now
    policy = RetryPolicySettings.from_env()
    instance = context.instance
    records = instance.get_run_records(
        RunsFilter(statuses=[DagsterRunStatus.FAILURE], updated_after=_dt(now - LOOKBACK_SECONDS)),
        limit=MAX_FAILED_RUNS,
    )
    requests, notes = [], []
    for record in records:
        run = record.dagster_run
        state = run.tags.get(RETRY_STATE_TAG, "")
        if not partition_tags(run.tags) or (state and not state.startswith(REQUESTED)):
            continue
        label = f"run {run.run_id[:8]} ({', '.join(partition_tags(run.tags).values())})"
        if state.startswith(REQUESTED):
            child = _retry_child(instance, run.run_id)
            if child:  # the requested retry was launched: done with this run
                instance.add_run_tags(run.run_id, {RETRY_STATE_TAG: f"{RETRIED}:{child}"})
                notes.append(f"{label}: retried by run {child[:8]}")
                continue
        attempt = int(run.tags.get(ATTEMPT_TAG, "1"))
        failed_at = record.end_time or record.update_timestamp.timestamp()
        permanent = is_permanent_failure(instance, run.run_id)
        created = record.create_timestamp.timestamp()
        succeeded = not permanent and partition_succeeded_since(instance, run, created)
        decision = decide(
            attempt=attempt,
            permanent=permanent,
            succeeded_since=succeeded,
            superseded_by=None if permanent or succeeded else superseded_by(instance, run, created),
            failed_at=failed_at,
            now=now,
            policy=policy,
        )
        if decision.action == "wait":
            notes.append(f"{label}: {decision.reason}")
            continue
        if decision.action in ("give_up", "skip"):
            outcome = GAVE_UP if decision.action == "give_up" else SKIPPED
            instance.add_run_tags(run.run_id, {RETRY_STATE_TAG: f"{outcome}:{decision.reason}"})
            notes.append(f"{label}: {outcome} ({decision.reason})")
            continue
        requests.append(retry_request(record, attempt, job_names))
        instance.add_run_tags(run.run_id, {RETRY_STATE_TAG: f"{REQUESTED}:attempt {attempt + 1}"})
        notes.append(f"{label}: {decision.reason} requested (attempt {attempt + 1})")
    for note in notes:
        context.log.info(note)
    return requests or SkipReason("; ".join(notes) or "no failed runs to retry")


def _dt(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)


def build_retry_sensor(jobs: list):
    names = {j.name for j in jobs}

    @sensor(
        name=SENSOR_NAME,
        jobs=jobs,
        minimum_interval_seconds=get_settings().retry_sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING,
        description="Re-launches failed partition runs with exponential backoff; never canceled runs, "
        "permanent failures, or partitions that succeeded since.",
    )
    def retry_failed_runs(context: SensorEvaluationContext):
        return evaluate_retries(context, names)

    return retry_failed_runs
