"""The platform's figures by tenant and source, read incrementally from Dagster's storage.

Every refresh reads only what was stored since the previous one, from its position (the last
event storage id read, per event type): run
status changes (runs by status, failures by kind, last success) and asset materializations (a
raw asset's partition `<day>|<tenant>` carries `dagster/row_count` and `rejects`; `normalized/records`
its `rejects`); a finished run's failed asset checks come from its own events. So its cost
follows the platform's activity, not the number of tenants: one query per event type and page,
one run lookup per page, one check query per finished run, one `run_failures` per failed run.
The first refresh reads back `lookback_s` only: its position is found by bisecting storage ids
(`start_position`), never by a scan of history by time. The queue is read whole (one query).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    EventRecordsFilter,
    RunsFilter,
    RunStatusChangeRecordsFilter,
)

from etl_platform.runs.facts import RunFacts
from etl_platform.runs.failures import run_failures

ALL = "*"  # a run loading every source of its tenants, or a failure of the tenant as a whole
PAGE = 1000
MAX_PAGES = 20  # per event type and refresh: a backlog is caught up over several refreshes
RUN_STATUSES = {
    DagsterEventType.RUN_SUCCESS: "SUCCESS",
    DagsterEventType.RUN_FAILURE: "FAILURE",
    DagsterEventType.RUN_CANCELED: "CANCELED",
}
NORMALIZED = ("normalized", "records")
QUEUE_LIMIT = 100_000


def _number(metadata: Any, key: str) -> float:
    value = getattr(metadata.get(key), "value", metadata.get(key))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _newest_before(
    instance: DagsterInstance, event_type: DagsterEventType, before: int | None, run_status: bool
) -> tuple[int, float] | None:
    """(storage id, time) of the newest event of `event_type` stored before id `before`."""
    storage = instance.event_log_storage
    if run_status:
        records = storage.fetch_run_status_changes(
            RunStatusChangeRecordsFilter(event_type=event_type, before_storage_id=before), limit=1, ascending=False
        ).records
    else:
        records = storage.get_event_records(EventRecordsFilter(event_type=event_type, before_cursor=before), limit=1,
                                            ascending=False)  # fmt: skip
    return (records[0].storage_id, records[0].timestamp) if records else None


def start_position(
    instance: DagsterInstance, event_type: DagsterEventType, since: float, run_status: bool
) -> int | None:
    """The storage id after which the events of `event_type` stored since `since` begin: found by
    bisecting storage ids (ids grow with time), one indexed lookup of the newest event below an id
    per step, so a first refresh reads the lookback's events only, never older history."""
    newest = _newest_before(instance, event_type, None, run_status)
    if newest is None:
        return None
    if newest[1] < since:
        return newest[0]  # nothing in the lookback: start after the newest
    low, high = 0, newest[0]  # events up to `low` are older than `since`; `high` is not
    while high - low > 1:
        middle = (low + high) // 2
        found = _newest_before(instance, event_type, middle + 1, run_status)
        if found is None or found[0] <= low or found[1] < since:
            low = middle
        else:
            high = found[0]
    return low


def _tenant_of(partition: str | None) -> str | None:
    parts = (partition or "").split("|")
    return parts[-1] if len(parts) == 2 and parts[-1] else None


@dataclass
class PlatformState:
    """Running tallies since the exporter started (plus the lookback it read first)."""

    lookback_s: float = 49 * 3600
    runs: Counter = field(default_factory=Counter)  # (tenant, source, status)
    failures: Counter = field(default_factory=Counter)  # (tenant, source, kind)
    rows: Counter = field(default_factory=Counter)  # (tenant, source)
    rejects: Counter = field(default_factory=Counter)  # (tenant, source, stage)
    check_failures: Counter = field(default_factory=Counter)  # (tenant, check)
    last_success: dict[str, float] = field(default_factory=dict)  # tenant -> run end
    last_loaded: dict[tuple[str, str], float] = field(default_factory=dict)  # (tenant, source) -> time
    queued: Counter = field(default_factory=Counter)  # tenant -> queued runs
    queue_oldest_s: float = 0.0
    in_progress: int = 0
    cursors: dict[str, int | None] = field(default_factory=dict)  # event type -> last storage id read
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # --- reading --------------------------------------------------------------------------------

    def refresh(self, instance: DagsterInstance, now: float | None = None) -> None:
        """Read what was stored since the last refresh (raises when Dagster storage fails)."""
        now = time.time() if now is None else now
        for event_type, status in RUN_STATUSES.items():
            for records in self._pages(instance, event_type, now, run_status=True):
                self._count_runs(instance, records, status)
        for records in self._pages(instance, DagsterEventType.ASSET_MATERIALIZATION, now):
            self._count_materializations(records)
        self._read_queue(instance, now)

    def _pages(self, instance: DagsterInstance, event_type: DagsterEventType, now: float, run_status: bool = False):
        storage = instance.event_log_storage
        if event_type.value not in self.cursors:
            self.cursors[event_type.value] = start_position(instance, event_type, now - self.lookback_s, run_status)
        for _ in range(MAX_PAGES):
            after = self.cursors[event_type.value]
            if run_status:
                records = list(storage.fetch_run_status_changes(
                    RunStatusChangeRecordsFilter(event_type=event_type, after_storage_id=after),
                    limit=PAGE, ascending=True,
                ).records)
            else:
                records = list(storage.get_event_records(
                    EventRecordsFilter(event_type=event_type, after_cursor=after),
                    limit=PAGE, ascending=True,
                ))
            if not records:
                return
            yield records
            self.cursors[event_type.value] = records[-1].storage_id
            if len(records) < PAGE:
                return

    def _runs(self, instance: DagsterInstance, run_ids: list[str]) -> dict[str, RunFacts]:
        ids = list(dict.fromkeys(run_ids))
        if not ids:
            return {}
        return {r.dagster_run.run_id: RunFacts.of(r) for r in instance.get_run_records(RunsFilter(run_ids=ids))}

    def _count_runs(self, instance: DagsterInstance, records: list, status: str) -> None:
        runs = self._runs(instance, [r.event_log_entry.run_id for r in records])
        failures = {run_id: run_failures(instance, run_id) for run_id in runs} if status == "FAILURE" else {}
        checks = Counter()
        for run in runs.values():
            checks.update(self._failed_checks(instance, run))
        with self.lock:
            self.check_failures.update(checks)
            for record in records:
                run = runs.get(record.event_log_entry.run_id)
                if run is None:
                    continue
                source = run.sources[0] if run.sources and len(run.sources) == 1 else ALL
                failed = set(run.failed_tenants or run.tenants)
                for f in failures.get(run.run_id, []):
                    self.failures[(f.tenant, f.source or ALL, f.kind)] += 1
                for tenant in run.tenants:
                    outcome = status if status != "FAILURE" or tenant in failed else "SUCCESS"
                    self.runs[(tenant, source, outcome)] += 1
                    if outcome == "SUCCESS":
                        self.last_success[tenant] = max(self.last_success.get(tenant, 0.0), run.ended)

    def _count_materializations(self, records: list) -> None:
        with self.lock:
            for record in records:
                entry = record.event_log_entry
                event = entry.dagster_event
                if event is None or event.asset_key is None:
                    continue
                tenant = _tenant_of(event.partition)
                if tenant is None:
                    continue
                path = tuple(event.asset_key.path)
                metadata = event.step_materialization_data.materialization.metadata or {}
                if path[0] == "raw" and len(path) >= 3:
                    source = path[1]
                    self.rows[(tenant, source)] += _number(metadata, "dagster/row_count")
                    self.rejects[(tenant, source, "ingest")] += _number(metadata, "rejects")
                    key = (tenant, source)
                    self.last_loaded[key] = max(self.last_loaded.get(key, 0.0), entry.timestamp)
                elif path == NORMALIZED:
                    self.rejects[(tenant, ALL, "normalize")] += _number(metadata, "rejects")

    def _failed_checks(self, instance: DagsterInstance, run: RunFacts) -> Counter:
        """(tenant, check) -> failed evaluations in one finished run (check events are stored per run)."""
        out: Counter = Counter()
        records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
        for record in records:
            evaluation = getattr(record.event_log_entry.dagster_event, "event_specific_data", None)
            if evaluation is None or evaluation.passed:
                continue
            tenant = _tenant_of(evaluation.partition)
            for t in [tenant] if tenant else run.tenants:
                out[(t, evaluation.check_name)] += 1
        return out

    def _read_queue(self, instance: DagsterInstance, now: float) -> None:
        queued = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.QUEUED]), limit=QUEUE_LIMIT)
        in_progress = instance.get_runs_count(RunsFilter(statuses=[
            DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]))
        by_tenant: Counter = Counter()
        oldest = now
        for record in queued:
            facts = RunFacts.of(record)
            for tenant in facts.tenants or ("",):
                by_tenant[tenant] += 1
            oldest = min(oldest, facts.created)
        with self.lock:
            self.queued = by_tenant
            self.queue_oldest_s = now - oldest if queued else 0.0
            self.in_progress = in_progress
