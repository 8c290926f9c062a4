"""Retention: runs and their events older than ETL_RETENTION_DAYS (30) are purged, daily
(`purge_history` schedule, ETL_RETENTION_CRON) or by hand (`etl-platform purge`).

What a purge keeps, so that the UI and the platform read the same before and after it:
- each partition's latest materialization, and a later attempt (failed or in progress): the
  UI's partition status (Dagster's status cache, `get_materialized_partitions`, the failed
  subset) and each partition's metadata;
- each check's latest result per partition: the asset checks' status and history head;
- the runs that hold those events (their status tells failed from in progress);
- for /stats (window up to STATS_MAX_WINDOW_DAYS): every run record in that window, and per
  tenant and source its newest success and newest failure with the failure's error events
  (`last_success`, `last_failure` and its reason, whatever their age);
- everything younger than the retention: the retry sensor (2 days back), the dead-run sensor
  (runs in progress: never purged), the failure alerts (run status events after their cursor,
  runs awaiting a retry decision) and the exporter (events after its stored position).

A run older than the retention loses its other events (logs, step events, superseded
materializations and check results); the tag `etl/history` says so on the run. Its record goes
when it is also older than the /stats window and holds nothing the purge keeps. Deletes run one
bounded statement at a time (ETL_RETENTION_BATCH_SIZE rows), each its own transaction, so no
lock is held for long; a purge can be stopped and started again.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRecord,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    job,
    op,
    schedule,
)

from etl_platform.automation.retries import LOOKBACK_SECONDS as RETRY_LOOKBACK_SECONDS
from etl_platform.config.settings import get_settings
from etl_platform.observability.run_logger import RUN_CONFIG
from etl_platform.runs.facts import RunFacts
from etl_platform.runs.history import STATS_MAX_WINDOW_DAYS, sources_of_run, tenant_status
from etl_platform.runs.purge import HistoryStore
from etl_platform.runs.tags import TRIGGER_TAG

JOB_NAME = "purge_history"
HISTORY_TAG = "etl/history"  # on a run whose events were purged: what is left of them
THINNED = "purged: only the latest materializations and check results of its partitions are kept"
FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
# the retry sensor reads failed runs of the last 2 days; a day's margin
MIN_RETENTION = dt.timedelta(seconds=RETRY_LOOKBACK_SECONDS) + dt.timedelta(days=1)
FAILURE_EVENTS = (DagsterEventType.STEP_FAILURE.value, DagsterEventType.RUN_FAILURE.value)  # a failure's reason
RUNS_PER_BATCH = 50  # runs whose keepers are computed together
PAGE = 1000


@dataclass
class PurgeReport:
    """What a purge did (or, in a dry run, would do)."""

    older_than_days: float
    dry_run: bool
    runs_scanned: int = 0
    runs_deleted: int = 0
    runs_thinned: int = 0  # events purged, record kept
    events_deleted: int = 0
    check_rows_deleted: int = 0
    statements: int = 0
    largest_batch: int = 0
    vacuum_seconds: float = 0.0
    seconds: float = 0.0
    deleted_run_ids: list[str] = field(default_factory=list)
    thinned_run_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("deleted_run_ids")
        out.pop("thinned_run_ids")
        return out

    def summary(self) -> str:
        delete, purge = ("would delete", "would purge") if self.dry_run else ("deleted", "purged")
        return (
            f"runs older than {self.older_than_days:g} days: {delete} {self.runs_deleted} runs; {purge} the events "
            f"of {self.runs_thinned} more (kept: their partitions' latest materializations and check results, the "
            f"records /stats reads); {self.events_deleted} event rows and {self.check_rows_deleted} check rows in "
            f"{self.statements} statements of at most {self.largest_batch} rows; {self.runs_scanned} runs read; "
            f"{self.seconds:.1f}s"
        )


def parse_age(text: str) -> dt.timedelta:
    """'30d', '12h', '90m' or a number of days."""
    value = text.strip().lower()
    units = {"d": "days", "h": "hours", "m": "minutes"}
    try:
        if value and value[-1] in units:
            return dt.timedelta(**{units[value[-1]]: float(value[:-1])})
        return dt.timedelta(days=float(value))
    except ValueError as exc:
        raise ValueError(f"--older-than {text!r}: expected a number of days, or a number with d, h or m") from exc


def check_retention(older_than: dt.timedelta, what: str = "the retention") -> None:
    if older_than < MIN_RETENTION:
        raise ValueError(
            f"{what} ({older_than.total_seconds() / 86400:g} days) is shorter than "
            f"{MIN_RETENTION.days} days: the retry sensor reads failed runs of the last "
            f"{RETRY_LOOKBACK_SECONDS // 86400} days"
        )


@dataclass
class Outcomes:
    """Which runs are some tenant's newest success or failure for some source (what /stats shows
    as `last_success` and `last_failure`), read from the newest run to the oldest."""

    every_source: set[tuple[str, str]] = field(default_factory=set)  # (tenant, outcome) seen for all sources
    sources: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def newest_for(self, record: RunRecord) -> set[str]:
        """The outcomes (SUCCESS, FAILURE) for which this run is newest for a tenant and source."""
        found = set()
        sources = sources_of_run(record)
        for tenant in RunFacts.of(record).tenants:
            outcome = tenant_status(record, tenant)
            if outcome not in ("SUCCESS", "FAILURE") or (tenant, outcome) in self.every_source:
                continue
            seen = self.sources.setdefault((tenant, outcome), set())
            if sources is None:
                found.add(outcome)
                self.every_source.add((tenant, outcome))
            elif not sources <= seen:
                found.add(outcome)
                seen.update(sources)
        return found


def _finished_runs(instance: DagsterInstance) -> Iterator[RunRecord]:
    """Every finished run, newest first, a page at a time."""
    cursor = None
    while True:
        page = instance.get_run_records(RunsFilter(statuses=FINISHED), limit=PAGE, cursor=cursor)
        yield from page
        if len(page) < PAGE:
            return
        cursor = page[-1].dagster_run.run_id


@dataclass
class Candidate:
    record: RunRecord
    delete_record: bool  # older than the /stats window
    keep_failure: bool  # some tenant's newest failure: keep its error events
    keep_record: bool  # some tenant's newest success or failure


def purge_history(
    instance: DagsterInstance,
    older_than: dt.timedelta | None = None,
    *,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
    log: Callable[[str], None] | None = None,
) -> PurgeReport:
    """Purge finished runs created more than `older_than` (default ETL_RETENTION_DAYS) before
    `now` (see the module docstring)."""
    settings = get_settings()
    older_than = older_than if older_than is not None else dt.timedelta(days=settings.retention_days)
    check_retention(older_than)
    now = now or dt.datetime.now(dt.timezone.utc)
    events_cutoff = (now - older_than).timestamp()
    records_cutoff = (now - max(older_than, dt.timedelta(days=STATS_MAX_WINDOW_DAYS))).timestamp()
    started = time.monotonic()
    report = PurgeReport(older_than.total_seconds() / 86400, dry_run)
    store = HistoryStore(instance, batch_size or settings.retention_batch_size, dry_run)
    if not dry_run:
        store.ensure_check_index()
    outcomes = Outcomes()
    batch: list[Candidate] = []
    with store.session():
        for record in _finished_runs(instance):
            report.runs_scanned += 1
            newest = outcomes.newest_for(record)
            created = record.create_timestamp.timestamp()
            if created >= events_cutoff:
                continue
            old = created < records_cutoff
            if not old and record.dagster_run.tags.get(HISTORY_TAG):
                continue  # its events were purged already; its record stays for /stats
            batch.append(Candidate(record, old, "FAILURE" in newest, bool(newest)))
            if len(batch) >= RUNS_PER_BATCH:
                _purge_batch(instance, store, batch, report, log)
                batch = []
        if batch:
            _purge_batch(instance, store, batch, report, log)
    report.events_deleted = store.deleted.events
    report.check_rows_deleted = store.deleted.check_rows
    report.statements = store.deleted.statements
    report.largest_batch = store.deleted.largest_statement
    if report.events_deleted or report.check_rows_deleted:
        vacuum_started = time.monotonic()
        store.vacuum()
        report.vacuum_seconds = time.monotonic() - vacuum_started
    report.seconds = time.monotonic() - started
    return report


def _purge_batch(
    instance: DagsterInstance,
    store: HistoryStore,
    batch: list[Candidate],
    report: PurgeReport,
    log: Callable[[str], None] | None,
) -> None:
    """Keepers are computed for the batch's runs together; deletes run in bounded statements
    across the batch."""
    run_ids = [c.record.dagster_run.run_id for c in batch]
    superseded_checks, check_events = store.check_rows(run_ids)
    keep = store.latest_asset_events(run_ids) | check_events
    events = store.events_of(run_ids)
    doomed: list[int] = []
    kept: dict[str, list[int]] = {}
    deleted: list[str] = []
    for candidate in batch:
        run_id = candidate.record.dagster_run.run_id
        keep_types = FAILURE_EVENTS if candidate.keep_failure else ()
        mine = [i for i, kind in events[run_id] if i in keep or kind in keep_types]
        if candidate.delete_record and not candidate.keep_record and not mine:
            deleted.append(run_id)
        kept[run_id] = mine
        doomed.extend(i for i, kind in events[run_id] if not (i in keep or kind in keep_types))
    store.delete_check_rows(superseded_checks)
    store.delete_events(doomed)
    for candidate in batch:
        run_id = candidate.record.dagster_run.run_id
        store.delete_run_shard(run_id, kept[run_id], FAILURE_EVENTS if candidate.keep_failure else ())
        if run_id in deleted:
            store.delete_run(run_id)
            report.runs_deleted += 1
            report.deleted_run_ids.append(run_id)
        elif not candidate.record.dagster_run.tags.get(HISTORY_TAG):
            if not store.dry_run:
                instance.add_run_tags(run_id, {HISTORY_TAG: THINNED})
            report.runs_thinned += 1
            report.thinned_run_ids.append(run_id)
    if log:
        log(f"{report.runs_scanned} runs read: {report.runs_deleted} deleted, {report.runs_thinned} purged so far")


# --- the daily schedule -----------------------------------------------------------------------


@op(description="Purge runs and events older than ETL_RETENTION_DAYS; keeps what the UI, the sensors and "
    "/stats read (etl_platform/automation/retention.py).")  # fmt: skip
def purge_history_op(context) -> None:  # noqa: ANN001 - Dagster reads the hint
    report = purge_history(context.instance, log=context.log.info)
    context.log.info(report.summary())


@job(name=JOB_NAME, config=RUN_CONFIG,
     description="Purge Dagster's history older than ETL_RETENTION_DAYS (30), keeping each "
     "partition's latest materialization and check result.")  # fmt: skip
def purge_history_job() -> None:
    purge_history_op()


def build_retention_schedule():
    settings = get_settings()

    @schedule(
        name=JOB_NAME,
        job=purge_history_job,
        cron_schedule=settings.retention_cron,
        execution_timezone=settings.timezone,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Daily: purge runs and events older than ETL_RETENTION_DAYS (0: keep everything).",
    )
    def purge_history_schedule(context: ScheduleEvaluationContext):
        days = get_settings().retention_days
        if days <= 0:
            return SkipReason("ETL_RETENTION_DAYS is 0: history is kept")
        return RunRequest(run_key=f"purge:{context.scheduled_execution_time:%Y-%m-%d}", tags={TRIGGER_TAG: "schedule"})

    return purge_history_schedule
