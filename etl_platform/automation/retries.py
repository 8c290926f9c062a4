"""Retry failed partition runs with exponential backoff (a polling sensor).

A failed run's attempt n (tag `etl/attempt`, 1 = the original run) is retried as attempt n+1
after base × 2^(n-1) seconds (ETL_RETRY_BASE_DELAY_SECONDS, default 300), capped at
ETL_RETRY_MAX_DELAY_SECONDS (default 1800), up to ETL_RETRY_MAX_ATTEMPTS retries (default 3).
The retry carries the partition (key or range), the asset selection, `etl/attempt`,
`etl/parent_run_id` (the failed run) and `etl/root_run_id` (the first run of the chain).

Never retried: canceled runs (only FAILURE runs are considered), permanent failures (bad config,
auth 401/403, schema contract: a step Failure tagged `etl/error_kind=permanent`), and runs whose
partition has succeeded since. The sensor records its decision on the failed run
(`etl/retry`): `requested:<n>` → `retried:<retry run id>`, `gave_up:<why>` (permanent, or the
last attempt failed), `skipped:<why>`. Dagster's own run retries stay off (dagster.yaml).
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
from dagster._core.storage.dagster_run import RunRecord

from etl_platform.assets.errors import ERROR_KIND_KEY, PERMANENT
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
    *, attempt: int, permanent: bool, succeeded_since: bool, failed_at: float, now: float, policy: RetryPolicySettings
) -> Decision:
    """What to do with one failed run (pure; the sensor supplies the facts)."""
    if permanent:
        return Decision("give_up", "permanent failure, not retried")
    if succeeded_since:
        return Decision("skip", "partition succeeded since")
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


def partition_succeeded_since(instance: DagsterInstance, job_name: str, tags: dict[str, str], since: float) -> bool:
    """A run of the same job (or of `ingest`, which loads everything) on the same partition or
    range succeeded after `since`."""
    partition = partition_tags(tags)
    if not partition:
        return False
    jobs = {job_name, INGEST_JOB}
    records = instance.get_run_records(
        RunsFilter(statuses=[DagsterRunStatus.SUCCESS], tags=partition, created_after=_dt(since)), limit=20
    )
    return any(r.dagster_run.job_name in jobs for r in records)


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
        decision = decide(
            attempt=attempt,
            permanent=permanent,
            succeeded_since=not permanent
            and partition_succeeded_since(instance, run.job_name, run.tags, record.create_timestamp.timestamp()),
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
