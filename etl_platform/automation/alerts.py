"""Failure alerts: one message when a (tenant, source) fails for good, one when it next succeeds.

A polling sensor over Dagster's run status events (RUN_FAILURE, RUN_SUCCESS), in the order
they were stored. For a failed run it reads what failed with `failures.run_failures`:
- permanent failures alert at once (the retry sensor never retries them);
- transient failures wait for the retry sensor's decision on the run (`etl/retry`):
  `gave_up:` alerts, `retried:`/`skipped:` (a retry or a newer run carries on, or the
  partition succeeded since) do not. A run the retry sensor cannot retry (no partition), or
  left undecided well past its retry delay, alerts too.
One alert per (tenant, source) chain: while a chain is open, further failures of it are
silent. A later run covering that tenant and source that did not fail for it closes the chain
with one "resolved" message.

The cursor holds everything (last event id, open chains, runs awaiting a retry decision,
undelivered messages), so a daemon restart sends nothing twice. A channel that is down is
logged and retried on the next tick; it never fails the tick.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    DagsterEventType,
    DefaultSensorStatus,
    RunsFilter,
    RunStatusChangeRecordsFilter,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from etl_platform.config.registry import load_registry
from etl_platform.config.settings import AlertSettings, get_settings
from etl_platform.loading.failures import TRANSIENT, TenantFailure, secrets_of
from etl_platform.observability.channels import (
    FAILURE,
    RESOLVED,
    Alert,
    DeliveryError,
    Target,
    deliver,
    platform_targets,
    run_url,
    tenant_targets,
    unique,
)
from etl_platform.observability.logs import tick_log
from etl_platform.runs.facts import RunFacts
from etl_platform.runs.failures import run_failures
from etl_platform.runs.history import failure_reason
from etl_platform.security.redaction import excerpt

SENSOR_NAME = "failure_alerts"
ALL = "*"  # a failure of the tenant as a whole, or a run loading every source
BATCH = 200  # run status events read per tick and event type
MAX_PENDING = 1000  # undelivered messages kept in the cursor
TICK_BUDGET_S = 30.0  # time for deliveries per tick; the rest waits for the next tick


def own_partitions(run: RunFacts, tenant: str) -> tuple[str, ...]:
    """The run's partitions as one tenant is told them: a range over several tenants becomes
    the tenant's own days, never naming another tenant."""
    if len(run.tenants) <= 1:
        return run.partitions
    out = []
    for key in run.partitions:
        start, _, end = key.partition("...")
        first, last = start.split("|", 1)[0], (end or start).split("|", 1)[0]
        out.append(f"{first}|{tenant}" if first == last else f"{first}|{tenant}...{last}|{tenant}")
    return tuple(out)


@dataclass
class AlertState:
    """What the sensor remembers between ticks (its cursor, JSON)."""

    last_id: int | None = None  # storage id of the last run status event handled
    open: dict[str, dict[str, Any]] = field(default_factory=dict)  # "tenant|source" -> failing run
    waiting: dict[str, float] = field(default_factory=dict)  # failed run id -> first seen
    pending: list[dict[str, Any]] = field(default_factory=list)  # undelivered {target, alert, since}

    def to_cursor(self) -> str:
        return json.dumps({"v": 1, "last_id": self.last_id, "open": self.open, "waiting": self.waiting,
                           "pending": self.pending}, separators=(",", ":"))

    @classmethod
    def from_cursor(cls, cursor: str | None) -> AlertState:
        if not cursor:
            return cls()
        data = json.loads(cursor)
        return cls(data.get("last_id"), data.get("open", {}), data.get("waiting", {}), data.get("pending", []))


class AlertTick:
    """One evaluation: read new run status events, decide, deliver, return the new state."""

    def __init__(self, context: SensorEvaluationContext, now: float | None = None) -> None:
        self.instance = context.instance
        self.log = tick_log(context.log, sensor="failure_alerts")
        self.now = time.time() if now is None else now
        self.state = AlertState.from_cursor(context.cursor)
        try:
            self.registry = load_registry()
        except Exception as exc:  # noqa: BLE001 - a broken tenants file must not stop the alerts
            self.registry = None
            self.log.warning(f"tenants file unreadable, alerting the platform's channels only: {exc}")
        self.notes: list[str] = []

    # --- reading ---------------------------------------------------------------------------

    def _events(self) -> list[tuple[int, str, str]]:
        """(storage id, FAILURE|SUCCESS, run id) of new run status events, in storage order."""
        storage = self.instance.event_log_storage
        lookback = AlertSettings.from_env().lookback_s
        found, horizon = [], None
        for event_type, status in ((DagsterEventType.RUN_FAILURE, FAILURE), (DagsterEventType.RUN_SUCCESS, "success")):
            filters = RunStatusChangeRecordsFilter(
                event_type=event_type,
                after_storage_id=self.state.last_id,
                after_timestamp=None if self.state.last_id is not None else self.now - lookback,
            )
            result = storage.fetch_run_status_changes(filters, limit=BATCH, ascending=True)
            records = list(result.records)
            found.extend((r.storage_id, status, r.event_log_entry.run_id) for r in records)
            if len(records) >= BATCH:  # more to read: stop at the smaller of the truncated batches
                horizon = min(horizon or records[-1].storage_id, records[-1].storage_id)
        found.sort()
        if horizon is not None:
            found = [e for e in found if e[0] <= horizon]
        if found:
            self.state.last_id = found[-1][0]
        elif self.state.last_id is None:
            self.state.last_id = self._newest_id()
        return found

    def _newest_id(self) -> int | None:
        """First tick with nothing to handle: start from the newest stored event."""
        storage = self.instance.event_log_storage
        ids = []
        for event_type in (DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_SUCCESS):
            result = storage.fetch_run_status_changes(RunStatusChangeRecordsFilter(event_type=event_type), limit=1)
            ids.extend(r.storage_id for r in result.records)
        return max(ids) if ids else None

    def _runs(self, run_ids: Iterable[str]) -> dict[str, RunFacts]:
        ids = list(dict.fromkeys(run_ids))
        if not ids:
            return {}
        records = self.instance.get_run_records(RunsFilter(run_ids=ids))
        return {r.dagster_run.run_id: RunFacts.of(r) for r in records}

    def _failures(self, run: RunFacts) -> list[TenantFailure]:
        """What the run failed for, each tenant's failure from its own entries; a run that failed
        outside the platform's steps (a crash, a run killed by monitoring) counts as a transient
        failure of each of its tenants (a shared run's run-level text is shown to none of them)."""
        listed = run_failures(self.instance, run.run_id)
        if listed:
            return listed
        # the run-level text of a run of several tenants may name any of them: never in one's alert
        shared = len(run.tenants) > 1
        reason = (None if shared else failure_reason(self.instance, run.run_id)) or (
            "the run of several tenants failed before recording this tenant's own failure" if shared
            else "the run failed"
        )
        source = run.sources[0] if run.sources and len(run.sources) == 1 else None
        return [TenantFailure(t, source, TRANSIENT, "RunFailure", reason) for t in run.tenants]

    # --- deciding --------------------------------------------------------------------------

    def on_success(self, run: RunFacts) -> None:
        for tenant in run.tenants:
            self._resolve(run, tenant, run.sources)

    def on_failure(self, run: RunFacts) -> None:
        if not run.tenants:
            return
        failures = self._failures(run)
        for tenant in run.tenants:  # a run spanning tenants: the others were loaded
            mine = [f for f in failures if f.tenant == tenant]
            if not mine:
                self._resolve(run, tenant, run.sources)
            elif all(f.source for f in mine):
                self._resolve(run, tenant, run.sources, exclude={f.source or ALL for f in mine} | {ALL})
        permanent = [f for f in failures if f.permanent]
        transient = [f for f in failures if not f.permanent]
        self._open(run, permanent, "permanent failure: not retried")
        if transient and run.retriable:
            self.state.waiting.setdefault(run.run_id, self.now)
        elif transient:
            self._open(run, transient, "not retried (the run has no partition)")

    def check_waiting(self) -> None:
        """Failed runs with transient failures: alert once the retry sensor has given up."""
        runs = self._runs(self.state.waiting)
        settings = get_settings()
        grace = AlertSettings.from_env().retry_grace_s
        for run_id in list(self.state.waiting):
            run = runs.get(run_id)
            if run is None:  # deleted
                del self.state.waiting[run_id]
                continue
            state = run.retry_state
            delay = min(settings.retry_base_delay_s * 2 ** (run.attempt - 1), settings.retry_max_delay_s)
            if state.startswith("gave_up"):
                note = "retries given up: " + state.split(":", 1)[-1]
            elif state.startswith(("retried", "skipped")):
                del self.state.waiting[run_id]
                continue
            elif self.now > run.ended + delay + grace:  # undecided, or a retry requested but never launched
                note = "the retry sensor made no decision (is the daemon running?)"
            else:
                continue
            del self.state.waiting[run_id]
            self._open(run, [f for f in self._failures(run) if not f.permanent], note)

    def _open(self, run: RunFacts, failures: list[TenantFailure], note: str) -> None:
        for failure in failures:
            key = f"{failure.tenant}|{failure.source or ALL}"
            if key in self.state.open:
                continue  # this chain has alerted already
            self.state.open[key] = {"run_id": run.run_id, "created": run.created}
            days = tuple(f"{d}|{failure.tenant}" for d in failure.days)
            alert = Alert(
                kind=FAILURE,
                tenant=failure.tenant,
                sources=(failure.source or ALL,),
                partitions=days or own_partitions(run, failure.tenant),
                run_id=run.run_id,
                run_url=run_url(run.run_id),
                error_class=failure.error,
                error_kind=failure.kind,
                message=excerpt(failure.message, 2000, self._secrets(failure.tenant)),
                http_status=failure.http_status,
                attempt=run.attempt,
                note=note,
                at=_iso(run.ended),
            )
            self._enqueue(alert)

    def _resolve(
        self, run: RunFacts, tenant: str, sources: tuple[str, ...] | None, exclude: set[str] = frozenset()
    ) -> None:
        for key, chain in list(self.state.open.items()):
            chain_tenant, source = key.split("|", 1)
            if chain_tenant != tenant or source in exclude or run.created <= chain["created"]:
                continue
            if sources is not None and source != ALL and source not in sources:
                continue
            del self.state.open[key]
            self._enqueue(Alert(RESOLVED, tenant, (source,), own_partitions(run, tenant), run.run_id,
                                run_url(run.run_id), attempt=run.attempt, at=_iso(run.ended)))

    def _secrets(self, tenant: str) -> list[str]:
        try:
            return secrets_of(self.registry.tenant(tenant)) if self.registry else []
        except Exception:  # noqa: BLE001 - a tenant removed from the file, or invalid: nothing to scrub
            return []

    def _targets(self, tenant: str) -> list[Target]:
        try:
            return unique(tenant_targets(self.registry.tenant(tenant))) if self.registry else platform_targets()
        except Exception:  # noqa: BLE001 - removed from the tenants file, or invalid: the platform's channels
            return platform_targets()

    def _enqueue(self, alert: Alert) -> None:
        targets = self._targets(alert.tenant)
        self.notes.append(f"{alert.kind} of {alert.tenant}/{','.join(alert.sources)} ({len(targets)} channels)")
        if not targets:
            self.log.warning(f"no alert channel for tenant {alert.tenant!r}: {alert.title()}")
        for target in targets:
            self.state.pending.append({"target": target.to_json(), "alert": alert.to_json(), "since": self.now})

    # --- delivering ------------------------------------------------------------------------

    def deliver_pending(self) -> None:
        """Send what is pending; a channel that fails is skipped for the rest of the tick."""
        max_age = AlertSettings.from_env().max_pending_s
        started, down, keep, sent = time.monotonic(), set(), [], 0
        for item in self.state.pending:
            target, alert = Target.from_json(item["target"]), Alert.from_json(item["alert"])
            if target.key in down or time.monotonic() - started > TICK_BUDGET_S:
                keep.append(item)
                continue
            try:
                deliver(target, alert)
                sent += 1
                self.log.info(f"alert sent to {target.describe()}: {alert.title()}")
            except Exception as exc:  # noqa: BLE001 - a channel that is down never fails the tick
                down.add(target.key)
                error = str(exc) if isinstance(exc, DeliveryError) else f"{target.describe()}: {type(exc).__name__}"
                item = {**item, "attempts": item.get("attempts", 0) + 1, "error": error}
                if self.now - item["since"] > max_age:
                    self.log.error(f"alert dropped after {item['attempts']} attempts: {error}: {alert.title()}")
                else:
                    self.log.warning(f"alert not delivered, retried next tick: {error}: {alert.title()}")
                    keep.append(item)
        if len(keep) > MAX_PENDING:
            self.log.error(f"{len(keep) - MAX_PENDING} undelivered alerts dropped (more than {MAX_PENDING} pending)")
            keep = keep[-MAX_PENDING:]
        self.state.pending = keep
        if sent or keep:
            self.notes.append(f"{sent} sent, {len(keep)} pending")

    def run(self) -> SensorResult:
        events = self._events()
        runs = self._runs(run_id for _, _, run_id in events)
        for _, status, run_id in events:
            run = runs.get(run_id)
            try:
                if run is not None:
                    self.on_failure(run) if status == FAILURE else self.on_success(run)
            except Exception as exc:  # noqa: BLE001 - one unreadable run must not stop the alerts
                self.log.exception(f"run {run_id}: could not decide on alerts ({type(exc).__name__}); skipped")
        self.check_waiting()
        self.deliver_pending()
        summary = "; ".join(self.notes) or f"{len(events)} finished runs, nothing to send"
        return SensorResult(skip_reason=summary, cursor=self.state.to_cursor())


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def evaluate_alerts(context: SensorEvaluationContext, now: float | None = None) -> SensorResult:
    """One tick of the alerts sensor (tests call it with `build_sensor_context`)."""
    return AlertTick(context, now).run()


@sensor(
    name=SENSOR_NAME,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Alerts (webhook, Slack, e-mail) when a tenant's source fails for good, once per failure chain, "
    "and once more when it succeeds again.",
)
def failure_alerts_sensor(context: SensorEvaluationContext):
    return evaluate_alerts(context)
