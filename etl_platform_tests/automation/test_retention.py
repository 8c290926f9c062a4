"""Retention (issue 24): a purge deletes old runs and events and keeps what the UI, the asset
checks, the sensors and /stats read, on SQLite and PostgreSQL storage; its deletes are bounded;
the daily schedule requests it.

Invariant protected: what the UI shows is what happened. The UI's partition status (Dagster's
status cache, rebuilt from the events as on a first view), the checks' latest results and the
tenants' last success and failure read the same before and after a purge.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import AssetCheckKey, AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, build_schedule_context
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value
from dagster._core.storage.runs.schema import RunsTable

from etl_platform.automation.retention import HISTORY_TAG, purge_history
from etl_platform.runs.failures import run_failures
from etl_platform.runs.history import failure_reason, source_stats
from etl_platform.runs.partitions import tenant_date_partitions
from etl_platform_tests.support.dagster_storages import STORAGES, dagster_storage
from etl_platform_tests.support.http_servers import LocalServer
from etl_platform_tests.support.orchestration import Switch, create_run, launch, rest_tenant
from etl_platform_tests.support.platform_runs import materialize

D1, D2 = "2024-03-01", "2024-03-02"
RECORDS = AssetKey(["normalized", "records"])
RAW = AssetKey(["raw", "api", "api_items"])
CHECKS = [
    AssetCheckKey(RECORDS, name)
    for name in ("unique_upsert_key", "required_columns_not_null", "raw_reconciles_with_records_and_rejects")
] + [AssetCheckKey(RAW, "schema_drift")]
LATER = dt.timedelta(days=40)  # older than the retention (30 days), inside /stats' 90-day window
MUCH_LATER = dt.timedelta(days=100)  # older than /stats' window too


@pytest.fixture
def source() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        srv.route("/items", Switch(200))
        srv.flaky = Switch(200)
        srv.route("/flaky", srv.flaky)
        yield srv


@pytest.fixture(params=STORAGES)
def instance(request, platform_env, dagster_home: Path, source: LocalServer, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ETL_STEP_RETRIES", "0")
    platform_env([rest_tenant("good", source, "/items"), rest_tenant("flaky", source, "/flaky")],
                 f"duckdb:///{tmp_path / 'wh.duckdb'}")  # fmt: skip
    storage = dagster_storage(request.param, dagster_home)
    next(storage)
    with DagsterInstance.get() as inst:
        yield inst
    next(storage, None)


@pytest.fixture
def history(instance: DagsterInstance, source: LocalServer) -> dict[str, str]:
    """good: D1 twice, D2 once; flaky: D1 loaded, then failing (its latest attempt failed);
    a run still in progress."""
    runs = {
        "good_d1_first": materialize(instance, "good", D1).run_id,
        "good_d1_again": materialize(instance, "good", D1).run_id,
        "good_d2": materialize(instance, "good", D2).run_id,
        "flaky_d1_ok": materialize(instance, "flaky", D1).run_id,
    }
    source.flaky.status = 500
    result = materialize(instance, "flaky", D1, raise_on_error=False)
    assert not result.success
    runs["flaky_d1_failed"] = result.run_id
    runs["in_progress"] = create_run(instance, {"etl/tenant": "good"}, DagsterRunStatus.STARTED).run_id
    return runs


def partition_status(instance: DagsterInstance) -> dict:
    """Per asset: what the UI's partitions tab reads, the status cache rebuilt from the events
    (as on a first view) and as kept, and `get_materialized_partitions`."""
    out = {}
    for key in (RECORDS, RAW):
        cached = get_and_update_asset_status_cache_value(instance, key, tenant_date_partitions())
        instance.wipe_asset_cached_status([key])
        rebuilt = get_and_update_asset_status_cache_value(instance, key, tenant_date_partitions())
        for name, value in (("cached", cached), ("rebuilt", rebuilt)):
            out[(key.to_user_string(), name)] = (
                sorted(value.deserialize_materialized_partition_subsets(tenant_date_partitions()).get_partition_keys()),
                sorted(value.deserialize_failed_partition_subsets(tenant_date_partitions()).get_partition_keys()),
                sorted(value.deserialize_in_progress_partition_subsets(tenant_date_partitions()).get_partition_keys()),
            )
        out[(key.to_user_string(), "materialized")] = sorted(instance.get_materialized_partitions(key))
    return out


def check_results(instance: DagsterInstance) -> dict:
    """The checks' latest result per partition and overall, with the metadata a person reads."""
    storage = instance.event_log_storage
    infos = storage.get_asset_check_partition_info(CHECKS)
    latest = storage.get_latest_asset_check_execution_by_key(CHECKS)
    out = {
        "per_partition": sorted(
            (i.check_key.to_user_string(), i.partition_key, i.latest_execution_status.value,
             i.latest_check_event_storage_id, i.latest_materialization_storage_id)
            for i in infos
        ),  # fmt: skip
        "latest": {k.to_user_string(): (r.status.value, r.run_id, r.id) for k, r in latest.items()},
    }
    for key in CHECKS:
        for record in storage.get_asset_check_execution_history(key, limit=1):
            data = record.event.dagster_event.event_specific_data  # an evaluation, or a plan never evaluated
            out[key.to_user_string()] = (record.status.value, type(data).__name__, getattr(data, "passed", None),
                                         dict(getattr(data, "metadata", {})))  # fmt: skip
    return out


def sensor_inputs(instance: DagsterInstance, runs: dict[str, str], now: dt.datetime) -> dict:
    """What the retry and alert sensors read of the newest failure, and /stats' figures."""
    failed = runs["flaky_d1_failed"]
    return {
        "run_failures": run_failures(instance, failed),
        "failure_reason": failure_reason(instance, failed),
        "stats": {t: source_stats(instance, t, 24 * 90, now=now, sources=["api"]) for t in ("good", "flaky")},
        "in_progress": instance.get_run_by_id(runs["in_progress"]).status,
    }


def event_count(instance: DagsterInstance, run_id: str) -> int:
    return len(instance.all_logs(run_id))


def test_purge_keeps_what_the_ui_checks_sensors_and_stats_read(instance: DagsterInstance, history: dict) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    status, checks = partition_status(instance), check_results(instance)
    assert status[("normalized/records", "rebuilt")][1] == [f"{D1}|flaky"]  # the failed attempt shows
    inputs = sensor_inputs(instance, history, now + LATER)
    assert inputs["run_failures"] and inputs["stats"]["flaky"][0]["last_failure"]
    counts = {name: event_count(instance, run_id) for name, run_id in history.items()}

    # today: nothing is older than the retention
    report = purge_history(instance, dt.timedelta(days=30), now=now)
    assert (report.runs_deleted, report.runs_thinned, report.events_deleted) == (0, 0, 0)
    assert {name: event_count(instance, run_id) for name, run_id in history.items()} == counts

    # 40 days later: every finished run loses its superseded events; records stay for /stats
    report = purge_history(instance, dt.timedelta(days=30), now=now + LATER)
    assert report.runs_deleted == 0 and report.runs_thinned == 5 and report.events_deleted > 0
    assert partition_status(instance) == status
    assert check_results(instance) == checks
    assert sensor_inputs(instance, history, now + LATER) == inputs
    assert event_count(instance, history["good_d1_first"]) == 0  # every event superseded by the reload
    assert event_count(instance, history["in_progress"]) == counts["in_progress"]
    run = instance.get_run_by_id(history["good_d1_first"])
    assert run.status == DagsterRunStatus.SUCCESS and HISTORY_TAG in run.tags

    # 100 days later: runs holding nothing the purge keeps are deleted, the others stay
    inputs = sensor_inputs(instance, history, now + MUCH_LATER)  # /stats' window then holds none of these runs
    report = purge_history(instance, dt.timedelta(days=30), now=now + MUCH_LATER)
    assert report.runs_deleted == 1 and history["good_d1_first"] in report.deleted_run_ids
    assert instance.get_run_by_id(history["good_d1_first"]) is None
    for name in ("good_d1_again", "good_d2", "flaky_d1_ok", "flaky_d1_failed", "in_progress"):
        assert instance.get_run_by_id(history[name]) is not None, name
    assert partition_status(instance) == status
    assert check_results(instance) == checks
    assert sensor_inputs(instance, history, now + MUCH_LATER) == inputs
    assert inputs["stats"]["good"][0]["last_success"]["run_id"] == history["good_d2"]


def test_purge_deletes_in_bounded_statements_and_dry_run_deletes_nothing(
    instance: DagsterInstance, history: dict, capsys: pytest.CaptureFixture
) -> None:
    later = dt.datetime.now(dt.timezone.utc) + LATER
    counts = {name: event_count(instance, run_id) for name, run_id in history.items()}
    dry = purge_history(instance, dt.timedelta(days=30), now=later, dry_run=True, batch_size=3)
    assert {name: event_count(instance, run_id) for name, run_id in history.items()} == counts
    assert not any(HISTORY_TAG in instance.get_run_by_id(r).tags for r in history.values())

    report = purge_history(instance, dt.timedelta(days=30), now=later, batch_size=3)
    assert (report.events_deleted, report.check_rows_deleted, report.runs_thinned) == (
        dry.events_deleted, dry.check_rows_deleted, dry.runs_thinned)  # fmt: skip
    assert report.largest_batch <= 3
    assert report.statements >= (report.events_deleted + report.check_rows_deleted) / 3
    assert report.events_deleted > 3 * 10  # many statements, none larger than the batch


def test_purge_refuses_a_retention_shorter_than_the_retry_sensor_reads(instance: DagsterInstance) -> None:
    with pytest.raises(ValueError, match="retry sensor"):
        purge_history(instance, dt.timedelta(days=1))
    cli = [sys.executable, "-m", "etl_platform.cli", "purge", "--older-than", "1d"]
    result = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "retry sensor" in result.stderr


def test_cli_dry_run_prints_what_it_would_delete(instance: DagsterInstance, history: dict) -> None:
    _backdate(instance, [history["good_d1_first"]], days=45)
    cli = [sys.executable, "-m", "etl_platform.cli", "purge", "--older-than", "30d", "--dry-run"]
    result = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"would purge the events of run {history['good_d1_first']}" in result.stdout
    assert "would delete 0 runs" in result.stdout and "would purge the events of 1 more" in result.stdout
    assert event_count(instance, history["good_d1_first"]) > 0


def _backdate(instance: DagsterInstance, run_ids: list[str], days: int) -> None:
    """Make runs look `days` old (the purge judges a run's age by its creation time)."""
    when = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(days=days)
    with instance.run_storage.connect() as conn:
        conn.execute(RunsTable.update().where(RunsTable.c.run_id.in_(run_ids)).values(create_timestamp=when))


def test_the_daily_schedule_requests_the_purge(instance: DagsterInstance, history: dict, monkeypatch) -> None:
    from etl_platform.definitions import build_definitions

    monkeypatch.setenv("ETL_RETENTION_DAYS", "30")
    _backdate(instance, [history["good_d1_first"], history["good_d1_again"]], days=45)
    defs = build_definitions()
    schedule = defs.resolve_schedule_def("purge_history")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.default_status.value == "RUNNING"
    at = dt.datetime.now(dt.timezone.utc)
    tick = schedule.evaluate_tick(build_schedule_context(instance=instance, scheduled_execution_time=at))
    assert len(tick.run_requests) == 1
    result = launch(instance, tick.run_requests[0], job="purge_history")
    assert result.success
    assert event_count(instance, history["good_d1_first"]) == 0
    assert HISTORY_TAG in instance.get_run_by_id(history["good_d1_again"]).tags
    assert event_count(instance, history["good_d2"]) > 0  # young: untouched

    monkeypatch.setenv("ETL_RETENTION_DAYS", "0")
    tick = schedule.evaluate_tick(build_schedule_context(instance=instance))
    assert not tick.run_requests and "kept" in tick.skip_message


def test_purge_materialization_types_cover_dagsters_asset_events() -> None:
    """Every asset event type Dagster stores per partition has a rule for what supersedes it."""
    from dagster._core.events import ASSET_EVENTS

    from etl_platform.runs.purge import SUPERSEDED_BY

    assert {t.value for t in ASSET_EVENTS} == set(SUPERSEDED_BY)
    assert DagsterEventType.ASSET_MATERIALIZATION.value in SUPERSEDED_BY


@pytest.mark.parametrize("path", ["dagster.yaml", "deploy/dagster.yaml"])
def test_every_tick_type_and_status_has_a_retention(path: str) -> None:
    """Dagster keeps schedule ticks and successful sensor ticks forever by default: both instance
    files give every tick type and status a number of days."""
    import yaml
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.instance.config import get_default_tick_retention_settings, get_tick_retention_settings

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / path).read_text())
    for kind, key in ((InstigatorType.SCHEDULE, "schedule"), (InstigatorType.SENSOR, "sensor"),
                      (InstigatorType.AUTO_MATERIALIZE, "auto_materialize")):  # fmt: skip
        settings = get_tick_retention_settings(config["retention"].get(key), get_default_tick_retention_settings(kind))
        assert settings and all(0 < days <= 30 for days in settings.values()), (path, key, settings)


def test_the_purge_keeps_run_records_for_the_longest_stats_window() -> None:
    """/stats counts runs over up to STATS_MAX_WINDOW_DAYS: the purge keeps the records that long."""
    from etl_platform.api.routes import WINDOW
    from etl_platform.runs.history import STATS_MAX_WINDOW_DAYS

    longest_hours = next(m.le for m in WINDOW.metadata if hasattr(m, "le"))
    assert longest_hours == STATS_MAX_WINDOW_DAYS * 24
