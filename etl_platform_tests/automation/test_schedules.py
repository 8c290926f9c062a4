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


def summary(data, instance: DagsterInstance | None = None) -> list[str]:
    """Every partition the tick's runs cover, sorted ('2024-03-10|acme')."""
    from etl_platform.runs.coverage import run_coverage

    order = list(instance.get_dynamic_partitions("tenant")) if instance else []
    keys = []
    for request in data.run_requests:
        tags = dict(request.tags)
        if request.partition_key:
            tags["dagster/partition"] = request.partition_key
        coverage = run_coverage(tags, order)
        keys += [f"{d.isoformat()}|{t}" for t in coverage.tenants for d in coverage.days]
    return sorted(keys)


def test_hourly_runs_every_active_tenant_today_in_one_chunk(instance: DagsterInstance, capsys) -> None:
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 10, 0, tzinfo=UTC))
    assert summary(data, instance) == ["2024-03-10|acme", "2024-03-10|globex"]
    (request,) = data.run_requests  # two tenants with the same sources: one run
    assert request.tags["dagster/asset_partition_range_start"] == "2024-03-10|acme"
    assert request.tags["dagster/asset_partition_range_end"] == "2024-03-10|globex"
    assert request.tags["etl/tenants"] == "acme,globex" and request.tags["etl/multi_tenant"] == "true"
    assert request.tags["etl/trigger"] == "schedule" and request.tags["etl/attempt"] == "1"
    assert request.job_name in (None, "ingest")
    assert {k.to_user_string() for k in request.asset_selection} == {
        "raw/orders/orders_rows",
        "raw/orders/orders_rejects",
        "normalized/records",
    }
    # the paused tenant is named in the tick's log
    assert "initech (paused)" in capsys.readouterr().err


def test_chunk_size_and_single_partition_runs(instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_CHUNK_SIZE", "1")
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 10, 0, tzinfo=UTC))
    assert sorted(r.partition_key for r in data.run_requests) == ["2024-03-10|acme", "2024-03-10|globex"]
    assert sorted(r.tags["etl/tenant"] for r in data.run_requests) == ["acme", "globex"]


def test_hourly_includes_yesterday_in_the_first_hours(instance: DagsterInstance) -> None:
    for hour in (0, 1, 2):
        data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, hour, 0, tzinfo=UTC))
        assert summary(data, instance) == [
            "2024-03-09|acme",
            "2024-03-09|globex",
            "2024-03-10|acme",
            "2024-03-10|globex",
        ], hour
        assert len(data.run_requests) == 1  # one run over both days
    assert len(summary(evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 3, 0, tzinfo=UTC)))) == 2


def test_late_data_hours_configurable(instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_LATE_DATA_HOURS", "6")
    assert len(summary(evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 5, 0, tzinfo=UTC)), instance)) == 4
    monkeypatch.setenv("ETL_LATE_DATA_HOURS", "0")
    assert len(summary(evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 0, 0, tzinfo=UTC)), instance)) == 2


def test_no_yesterday_before_the_start_date(instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_START_DATE", "2024-01-01")
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 1, 1, 1, 0, tzinfo=UTC))
    assert summary(data, instance) == ["2024-01-01|acme", "2024-01-01|globex"]


def test_run_keys_make_a_tick_idempotent(instance: DagsterInstance) -> None:
    early = dt.datetime(2024, 3, 10, 1, 0, tzinfo=UTC)
    first = [r.run_key for r in evaluate(instance, "hourly_ingest", early).run_requests]
    again = [r.run_key for r in evaluate(instance, "hourly_ingest", early).run_requests]
    assert first == again  # the same tick evaluated twice asks for the same runs (the daemon dedups run keys)
    assert first == ["hourly:2024-03-10T01+0000:acme:globex"]
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
    assert "acme, globex (paused)" in data.skip_message
    assert "hooli (not registered yet" in data.skip_message
    assert "hooli (not registered yet" in capsys.readouterr().err
    # once registered, hooli runs; the paused ones still do not
    sync_tenants(instance, load_registry())
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 10, 0, tzinfo=UTC))
    assert summary(data, instance) == ["2024-03-10|hooli"]


def test_a_paused_tenant_splits_the_chunk_around_it(
    instance: DagsterInstance, platform_env, tmp_path: Path
) -> None:
    """Registration order acme, globex, initech, hooli: with globex paused no run's range may
    include it, so acme runs alone and initech..hooli together."""
    platform_env(
        [tenant("acme", tmp_path), tenant("globex", tmp_path, paused=True), tenant("initech", tmp_path),
         tenant("hooli", tmp_path)],
        f"duckdb:///{tmp_path / 'wh.duckdb'}",
    )
    sync_tenants(instance, load_registry())
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 10, 0, tzinfo=UTC))
    assert summary(data, instance) == ["2024-03-10|acme", "2024-03-10|hooli", "2024-03-10|initech"]
    assert sorted(r.partition_key or r.tags["etl/tenants"] for r in data.run_requests) == [
        "2024-03-10|acme",
        "initech,hooli",
    ]


def test_tenants_with_a_run_in_flight_wait_for_the_next_tick(instance: DagsterInstance, capsys) -> None:
    """The per-tenant limit: a tenant with a queued or running run of the same day gets no new run."""
    from dagster import DagsterRunStatus

    from etl_platform_tests.support.orchestration import create_run

    create_run(instance, {"dagster/partition": "2024-03-10|acme"}, DagsterRunStatus.STARTED)
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 10, 0, tzinfo=UTC))
    assert summary(data, instance) == ["2024-03-10|globex"]
    assert "acme (a run of these days is still queued or in progress)" in capsys.readouterr().err
    # a run of other days does not hold it back
    create_run(instance, {"dagster/partition": "2024-03-10|globex"}, DagsterRunStatus.CANCELED)
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 11, 10, 0, tzinfo=UTC))
    assert summary(data, instance) == ["2024-03-11|acme", "2024-03-11|globex"]


def test_tenants_with_different_sources_get_different_runs(
    instance: DagsterInstance, platform_env, tmp_path: Path
) -> None:
    other = {"id": "hooli", "sources": [{"name": "feed", "kind": "rss", "url": str(tmp_path / "f.xml")}]}
    platform_env([tenant("acme", tmp_path), tenant("globex", tmp_path), other], f"duckdb:///{tmp_path / 'wh.duckdb'}")
    sync_tenants(instance, load_registry())
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 10, 0, tzinfo=UTC))
    by_run = {r.partition_key or r.tags["etl/tenants"]: r for r in data.run_requests}
    assert set(by_run) == {"acme,globex", "2024-03-10|hooli"}
    assert {k.to_user_string() for k in by_run["2024-03-10|hooli"].asset_selection} == {
        "raw/feed/feed_entries",
        "normalized/records",
    }


def test_timezone(instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    """Days and 'the first hours after midnight' are local to ETL_TIMEZONE."""
    monkeypatch.setenv("ETL_TIMEZONE", "America/New_York")
    schedule = build_definitions().resolve_schedule_def("hourly_ingest")
    assert schedule.execution_timezone == "America/New_York"
    # 03:00 UTC on March 10 is 22:00 on March 9 in New York: only March 9
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 3, 0, tzinfo=UTC))
    assert summary(data, instance) == ["2024-03-09|acme", "2024-03-09|globex"]
    # 05:30 UTC is 00:30 local: March 10 and the late data of March 9 (in UTC it would be 05:30: only March 10)
    data = evaluate(instance, "hourly_ingest", dt.datetime(2024, 3, 10, 5, 30, tzinfo=UTC))
    assert [k for k in summary(data, instance) if k.endswith("acme")] == ["2024-03-09|acme", "2024-03-10|acme"]
    assert all(r.run_key.startswith("hourly:2024-03-10T00-0500") for r in data.run_requests)
    # the same instant given in local time evaluates the same
    local = dt.datetime(2024, 3, 10, 0, 30, tzinfo=ZoneInfo("America/New_York"))
    assert summary(evaluate(instance, "hourly_ingest", local), instance) == summary(data, instance)


def test_daily_rebackfill_requests(instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_REBACKFILL_DAYS", "7")
    data = evaluate(instance, "daily_rebackfill", dt.datetime(2024, 3, 10, 2, 30, tzinfo=UTC))
    (run,) = data.run_requests  # one single run for the chunk, not one per day or tenant
    assert run.partition_key is None
    assert run.tags["dagster/asset_partition_range_start"] == "2024-03-03|acme"
    assert run.tags["dagster/asset_partition_range_end"] == "2024-03-09|globex"
    assert run.tags["etl/trigger"] == "backfill"
    assert run.run_key == "rebackfill:2024-03-03:2024-03-09:acme:globex"
    assert len(summary(data, instance)) == 14
    # near the start date the window is shorter; on the start date there is nothing to re-load
    monkeypatch.setenv("ETL_START_DATE", "2024-03-08")
    data = evaluate(instance, "daily_rebackfill", dt.datetime(2024, 3, 10, 2, 30, tzinfo=UTC))
    assert data.run_requests[0].tags["dagster/asset_partition_range_start"].startswith("2024-03-08|")
    data = evaluate(instance, "daily_rebackfill", dt.datetime(2024, 3, 8, 2, 30, tzinfo=UTC))
    assert data.run_requests == [] and "no complete days" in data.skip_message
