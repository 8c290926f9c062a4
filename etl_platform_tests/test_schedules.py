"""The hourly and daily schedules of `build_definitions()`, evaluated at fixed times against a
real Dagster instance (SQLite) with registered tenant partitions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from dagster import DagsterInstance, build_schedule_context

from etl_platform.automation.onboarding import sync_tenants
from etl_platform.config.registry import load_registry
from etl_platform.definitions import build_definitions

UTC = dt.timezone.utc


def tenant(tenant_id: str, folder: Path, **extra) -> dict:
    return {
        "id": tenant_id,
        **extra,
        "sources": [{"name": "orders", "kind": "csv", "location": str(folder / "orders.csv"), "event_time": "at"}],
    }


@pytest.fixture
def instance(platform_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DagsterInstance]:
    """Tenants acme and globex (active), initech (paused); hooli is in the file but registered
    only where a test says so."""
    monkeypatch.setenv("ETL_LATE_DATA_HOURS", "3")
    monkeypatch.delenv("ETL_TIMEZONE", raising=False)
    platform_env(
        [tenant("acme", tmp_path), tenant("globex", tmp_path), tenant("initech", tmp_path, paused=True)],
        f"duckdb:///{tmp_path / 'wh.duckdb'}",
    )
    with DagsterInstance.get() as inst:
        sync_tenants(inst, load_registry())
        yield inst


def evaluate(instance: DagsterInstance, name: str, when: dt.datetime):
    """The schedule of the definitions the current environment builds, evaluated at `when`."""
    defs = build_definitions()
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
    )
    return defs.resolve_schedule_def(name).evaluate_tick(context)


def summary(data) -> list[tuple[str, str]]:
    return sorted((r.tags["etl/tenant"], r.partition_key) for r in data.run_requests)


def test_hourly_runs_every_active_tenant_today(instance: DagsterInstance, capsys) -> None:
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 10, 0, tzinfo=UTC))
    assert summary(data) == [("acme", "2024-03-10|acme"), ("globex", "2024-03-10|globex")]
    for request in data.run_requests:
        tenant_id = request.tags["etl/tenant"]
        # Dagster itself tags a multi-partition run with each dimension (the queue limits on it)
        assert request.tags["dagster/partition/tenant"] == tenant_id
        assert request.tags["dagster/partition/date"] == "2024-03-10"
        assert request.tags["dagster/partition"] == f"2024-03-10|{tenant_id}"
        assert request.tags["etl/trigger"] == "schedule" and request.tags["etl/attempt"] == "1"
        assert request.job_name in (None, "ingest")
    # the paused tenant is named in the tick's log
    assert "skipped: initech (paused)" in capsys.readouterr().err


def test_hourly_includes_yesterday_in_the_first_hours(instance: DagsterInstance) -> None:
    for hour in (0, 1, 2):
        data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, hour, 0, tzinfo=UTC))
        assert summary(data) == [
            ("acme", "2024-03-09|acme"),
            ("acme", "2024-03-10|acme"),
            ("globex", "2024-03-09|globex"),
            ("globex", "2024-03-10|globex"),
        ], hour
    assert len(evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 3, 0, tzinfo=UTC)).run_requests) == 2


def test_late_data_hours_configurable(instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_LATE_DATA_HOURS", "6")
    assert len(evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 5, 0, tzinfo=UTC)).run_requests) == 4
    monkeypatch.setenv("ETL_LATE_DATA_HOURS", "0")
    assert len(evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 0, 0, tzinfo=UTC)).run_requests) == 2


def test_no_yesterday_before_the_start_date(instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_START_DATE", "2024-01-01")
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 1, 1, 1, 0, tzinfo=UTC))
    assert summary(data) == [("acme", "2024-01-01|acme"), ("globex", "2024-01-01|globex")]


def test_run_keys_make_a_tick_idempotent(instance: DagsterInstance) -> None:
    early = dt.datetime(2024, 3, 10, 1, 0, tzinfo=UTC)
    first = [r.run_key for r in evaluate(instance, "hourly_ingest", early).run_requests]
    again = [r.run_key for r in evaluate(instance, "hourly_ingest", early).run_requests]
    assert first == again  # the same tick evaluated twice asks for the same runs (the daemon dedups run keys)
    assert len(set(first)) == len(first) == 4  # one key per tenant and day
    assert "hourly:acme:2024-03-09:2024-03-10T01+0000" in first
    later = [r.run_key for r in evaluate(instance, "hourly_ingest", early + dt.timedelta(hours=1)).run_requests]
    assert not set(later) & set(first)  # the next tick runs again


def test_paused_and_unregistered_tenants_skipped_and_named(
    instance: DagsterInstance, platform_env, tmp_path: Path, capsys
) -> None:
    # every tenant paused, or in the file but not registered as a partition yet
    platform_env(
        [tenant("acme", tmp_path, paused=True), tenant("globex", tmp_path, paused=True), tenant("hooli", tmp_path)],
        f"duckdb:///{tmp_path / 'wh.duckdb'}",
    )
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 10, 0, tzinfo=UTC))
    assert data.run_requests == []
    assert "acme (paused)" in data.skip_message and "globex (paused)" in data.skip_message
    assert "hooli (not registered yet" in data.skip_message
    assert "hooli (not registered yet" in capsys.readouterr().err
    # once registered, hooli runs; the paused ones still do not
    sync_tenants(instance, load_registry())
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 10, 0, tzinfo=UTC))
    assert summary(data) == [("hooli", "2024-03-10|hooli")]


def test_timezone(instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    """Days and 'the first hours after midnight' are local to ETL_TIMEZONE."""
    monkeypatch.setenv("ETL_TIMEZONE", "America/New_York")
    schedule = build_definitions().resolve_schedule_def("hourly_ingest")
    assert schedule.execution_timezone == "America/New_York"
    # 03:00 UTC on March 10 is 22:00 on March 9 in New York: only March 9
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 3, 0, tzinfo=UTC))
    assert summary(data) == [("acme", "2024-03-09|acme"), ("globex", "2024-03-09|globex")]
    # 05:30 UTC is 00:30 local: March 10 and the late data of March 9 (in UTC it would be 05:30: only March 10)
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 5, 30, tzinfo=UTC))
    assert [k for _, k in summary(data) if k.endswith("acme")] == ["2024-03-09|acme", "2024-03-10|acme"]
    assert all(r.run_key.endswith("2024-03-10T00-0500") for r in data.run_requests)
    # the same instant given in local time evaluates the same
    local = dt.datetime(2024, 3, 10, 0, 30, tzinfo=ZoneInfo("America/New_York"))
    assert summary(evaluate(instance, "hourly_ingest", local)) == summary(data)


def test_daily_rebackfill_requests(instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_REBACKFILL_DAYS", "7")
    data = evaluate(instance, "daily_rebackfill", dt.datetime(2024, 3, 10, 2, 30, tzinfo=UTC))
    assert len(data.run_requests) == 2  # one single run per active tenant, not one per day
    by_tenant = {r.tags["etl/tenant"]: r for r in data.run_requests}
    assert set(by_tenant) == {"acme", "globex"}
    acme = by_tenant["acme"]
    assert acme.partition_key is None
    assert acme.tags["dagster/asset_partition_range_start"] == "2024-03-03|acme"
    assert acme.tags["dagster/asset_partition_range_end"] == "2024-03-09|acme"
    assert acme.tags["etl/trigger"] == "backfill"
    assert acme.run_key == "rebackfill:acme:2024-03-03:2024-03-09"
    # near the start date the window is shorter; on the start date there is nothing to re-load
    monkeypatch.setenv("ETL_START_DATE", "2024-03-08")
    data = evaluate(instance, "daily_rebackfill", dt.datetime(2024, 3, 10, 2, 30, tzinfo=UTC))
    assert data.run_requests[0].tags["dagster/asset_partition_range_start"].startswith("2024-03-08|")
    data = evaluate(instance, "daily_rebackfill", dt.datetime(2024, 3, 8, 2, 30, tzinfo=UTC))
    assert data.run_requests == [] and "no complete days" in data.skip_message
