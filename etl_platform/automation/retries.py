"""Retry failed partition runs with exponential backoff (a polling sensor).

Delay before retry k (k = 1..N): base × 2^(k-1), capped. A run is never retried when it
was canceled (only FAILURE runs are considered), when its failure is permanent (bad config,
auth 401/403, schema contract), or when its partition has succeeded since. After the last
attempt the run is tagged `etl/retry=gave_up:...`. Dagster's own run retries stay off.
"""


import os
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
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

from etl_platform.assets.errors import ERROR_KIND_KEY, PERMANENT
from etl_platform.automation.tags import (
    ATTEMPT_TAG,
    PARENT_RUN_TAG,
    RETRY_STATE_TAG,
    ROOT_RUN_TAG,
    TENANT_TAG,
    TRIGGER_TAG,
)
from etl_platform.config.settings import get_settings

LOOKBACK_SECONDS = 2 * 24 * 3600
PARTITION_TAGS = (PARTITION_NAME_TAG, ASSET_PARTITION_RANGE_START_TAG, ASSET_PARTITION_RANGE_END_TAG)
PERMANENT_MARKERS = ("[permanent]", "TenantsFileError", "DataValidationError", "PermanentSourceError")


@dataclass(frozen=True)
class RetryPolicySettings:
    max_attempts: int  # retries after the first run
    base_delay_s: int
    max_delay_s: int

    def delay(self, attempt: int) -> int:
        """Seconds to wait after failed attempt `attempt` (1 = the original run)."""
        return min(self.base_delay_s * 2 ** (attempt - 1), self.max_delay_s)

    @classmethod
    def from_env(cls) -> "RetryPolicySettings":
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
        return Decision("give_up", "permanent failure")
    if succeeded_since:
        return Decision("skip", "partition succeeded since")
    if attempt > policy.max_attempts:
        return Decision("give_up", f"attempts exhausted ({policy.max_attempts} retries)")
    due = failed_at + policy.delay(attempt)
    if now < due:
        return Decision("wait", f"retry {attempt} due in {int(due - now)}s", due)
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
        text = " ".join(
            filter(None, [getattr(getattr(data, "error", None), "to_string", lambda: "")(), event.message or ""])
        )
        if any(marker in text for marker in PERMANENT_MARKERS):
            return True
    return False


def _partition_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k in PARTITION_TAGS}


def partition_succeeded_since(instance: DagsterInstance, job_name: str, tags: dict[str, str], since: float) -> bool:
    partition = _partition_tags(tags)
    if not partition:
        return False
    records = instance.get_run_records(
        RunsFilter(job_name=job_name, statuses=[DagsterRunStatus.SUCCESS], tags=partition), limit=5
    )
    return any((r.create_timestamp.timestamp() if r.create_timestamp else 0) > since for r in records)


def evaluate_retries(context: SensorEvaluationContext, job_names: set[str], now: float | None = None):
    """Run requests for the failed runs that are due; tags runs that are given up or skipped."""
    now = time.time() if now is None else now
    policy = RetryPolicySettings.from_env()
    instance = context.instance
    records = instance.get_run_records(
        RunsFilter(statuses=[DagsterRunStatus.FAILURE], updated_after=_dt(now - LOOKBACK_SECONDS)), limit=500
    )
    requests, notes = [], []
    for record in records:
        run = record.dagster_run
        if run.tags.get(RETRY_STATE_TAG) or not _partition_tags(run.tags):
            continue
        attempt = int(run.tags.get(ATTEMPT_TAG, "1"))
        failed_at = record.end_time or record.update_timestamp.timestamp()
        decision = decide(
            attempt=attempt,
            permanent=is_permanent_failure(instance, run.run_id),
            succeeded_since=partition_succeeded_since(instance, run.job_name, run.tags, record.create_timestamp.timestamp()),
            failed_at=failed_at,
            now=now,
            policy=policy,
        )
        label = f"run {run.run_id[:8]} ({_partition_tags(run.tags)})"
        if decision.action == "wait":
            notes.append(f"{label}: {decision.reason}")
            continue
        if decision.action in ("give_up", "skip"):
            instance.add_run_tags(run.run_id, {RETRY_STATE_TAG: f"{decision.action}:{decision.reason}"})
            notes.append(f"{label}: {decision.action} ({decision.reason})")
            continue
        job_name = run.job_name if run.job_name in job_names else sorted(job_names)[0]
        requests.append(
            RunRequest(
                run_key=f"retry:{run.run_id}",
                job_name=job_name,
                asset_selection=list(run.asset_selection) if run.asset_selection else None,
                tags={
                    **_partition_tags(run.tags),
                    **({TENANT_TAG: run.tags[TENANT_TAG]} if TENANT_TAG in run.tags else {}),
                    TRIGGER_TAG: "retry",
                    ATTEMPT_TAG: str(attempt + 1),
                    PARENT_RUN_TAG: run.run_id,
                    ROOT_RUN_TAG: run.tags.get(ROOT_RUN_TAG, run.run_id),
                },
            )
        )
        instance.add_run_tags(run.run_id, {RETRY_STATE_TAG: f"retried:attempt {attempt + 1}"})
        notes.append(f"{label}: {decision.reason}")
    for note in notes:
        context.log.info(note)
    return requests or SkipReason("; ".join(notes) or "no failed runs to retry")


def _dt(ts: float):
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)


def build_retry_sensor(jobs: list):
    names = {j.name for j in jobs}

    @sensor(
        name="retry_failed_runs",
        jobs=jobs,
        minimum_interval_seconds=int(os.environ.get("ETL_RETRY_SENSOR_INTERVAL_SECONDS", "30")),
        default_status=DefaultSensorStatus.RUNNING,
        description="Re-launches failed partition runs with exponential backoff; never canceled runs, "
        "permanent failures, or partitions that succeeded since.",
    )
    def retry_failed_runs(context: SensorEvaluationContext):
        return evaluate_retries(context, names)

    return retry_failed_runs
