"""Runs over many tenants: one tenant's failure isolated, retried alone; tenants leased across
runs; the tenants file parsed once per process; ticks and sensors correct at 1,000 tenants."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, build_schedule_context, build_sensor_context

from etl_platform.automation.onboarding import sync_tenants
from etl_platform.automation.retries import SENSOR_NAME, evaluate_retries
from etl_platform.config.registry import ParseCounter, load_registry
from etl_platform.definitions import build_definitions
from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.http_servers import LocalServer
from etl_platform_tests.support.orchestration import ITEMS, Switch, launch, quiet_home, rest_tenant
from etl_platform_tests.support.platform_runs import materialize_range, partition_materialization

DAY = "2024-01-02"


@pytest.fixture
def chunk(platform_env, dagster_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Tenants good1, bad, good2 (registered in that order) on one REST source; `bad` answers 503."""
    monkeypatch.setenv("ETL_STEP_RETRIES", "0")
    monkeypatch.setenv("ETL_RETRY_BASE_DELAY_SECONDS", "0")
    with LocalServer() as server:
        server.route("/good", Switch(200))
        bad = Switch(503)
        server.route("/bad", bad)
        url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
        platform_env(
            [
                rest_tenant("good1", server, "/good"),
                rest_tenant("bad", server, "/bad"),
                rest_tenant("good2", server, "/good"),
            ],
            url,
        )
        quiet_home(dagster_home)
        with DagsterInstance.get() as instance:
            sync_tenants(instance, load_registry())
            yield instance, bad, url


def _items(url: str, tenant: str) -> int:
    with Warehouse(url).connect() as conn:
        if not conn.table_exists(f"tenant_{tenant}", "api_items"):
            return 0
        return conn.query(f'SELECT count(*) FROM "tenant_{tenant}"."api_items"')[0][0]


def test_a_failing_tenant_in_a_chunk_fails_alone_and_is_retried_alone(chunk) -> None:
    instance, bad, url = chunk
    result = materialize_range(instance, f"{DAY}|good1", f"{DAY}|good2", raise_on_error=False)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    assert run.tags["etl/failed_tenants"] == "bad"
    # the other tenants' data landed and their partitions are materialized; bad's are not
    assert _items(url, "good1") == _items(url, "good2") == len(ITEMS) and _items(url, "bad") == 0
    for tenant in ("good1", "good2"):
        assert partition_materialization(instance, ["normalized", "records"], tenant, DAY) is not None
    assert partition_materialization(instance, ["normalized", "records"], "bad", DAY) is None
    assert partition_materialization(instance, ["raw", "api", "api_items"], "bad", DAY) is None
    # the failure names the tenant and the source
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith("[transient] tenant 'bad', source 'api'") and "503" in description

    # the retry sensor retries bad only
    record = instance.get_run_record_by_id(result.run_id)
    [request] = evaluate_retries(
        build_sensor_context(instance=instance, sensor_name=SENSOR_NAME), {"ingest"}, now=record.end_time + 1
    )
    assert request.partition_key == f"{DAY}|bad" and request.tags["etl/tenant"] == "bad"
    assert request.tags["etl/parent_run_id"] == result.run_id and request.tags["etl/attempt"] == "2"
    bad.status = 200
    assert launch(instance, request).success
    assert _items(url, "bad") == len(ITEMS)


def test_a_tenant_busy_in_another_run_is_not_worked_on_concurrently(chunk, monkeypatch) -> None:
    """While another run holds `good1`'s lease, a chunk run does the other tenants, then waits for
    good1 (here: gives up after the lease timeout, a transient failure for good1 alone)."""
    instance, bad, url = chunk
    bad.status = 200
    monkeypatch.setenv("ETL_TENANT_LEASE_TIMEOUT_SECONDS", "1")
    lease = Warehouse(url).lock(write=True, name="tenant_good1")
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with lease:
            held.set()
            release.wait(120)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        result = materialize_range(instance, f"{DAY}|good1", f"{DAY}|good2", raise_on_error=False)
    finally:
        release.set()
        thread.join()
    assert instance.get_run_by_id(result.run_id).tags["etl/failed_tenants"] == "good1"
    assert _items(url, "good1") == 0 and _items(url, "bad") == _items(url, "good2") == len(ITEMS)
    logs = " ".join(e.user_message for e in instance.all_logs(result.run_id))
    assert "tenant good1: busy in another run; waiting for it" in logs


def test_tenants_file_is_parsed_once_per_process_and_once_per_change(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ETL_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": [{"id": f"t{i}"} for i in range(50)]}))
    before = ParseCounter.count
    first = load_registry(path)
    again = load_registry(path)
    assert again is first and ParseCounter.count == before + 1
    assert first.tenant("t7").id == "t7"
    # another process reads the compiled file: it parses nothing, and validates only what it touches
    probe = (
        "from etl_platform.config.registry import ParseCounter, load_registry;"
        f"r = load_registry({str(path)!r}); r.tenant('t3'); print(ParseCounter.count, len(r.tenant_ids))"
    )
    env = {**os.environ, "ETL_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "50"]
    # a change is read once more
    path.write_text(yaml.safe_dump({"tenants": [{"id": f"t{i}"} for i in range(51)]}))
    changed = load_registry(path)
    assert len(changed.tenant_ids) == 51 and ParseCounter.count == before + 2
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "51"]


def test_ticks_and_sensors_at_a_thousand_tenants(platform_env, dagster_home: Path, tmp_path: Path) -> None:
    """1,000 demo-like tenants, every 100th paused: the hourly tick asks for chunks of at most
    50 consecutive active tenants that cover each active tenant exactly once."""
    csv = tmp_path / "rows.csv"
    csv.write_text("id\n1\n")
    tenants = [
        {"id": f"t{i:04d}", "paused": i % 100 == 99, "sources": [{"name": "rows", "kind": "csv", "location": str(csv)}]}
        for i in range(1000)
    ]
    platform_env(tenants, f"duckdb:///{tmp_path / 'wh.duckdb'}")
    defs = build_definitions()
    with DagsterInstance.get() as instance:
        onboarding = defs.resolve_sensor_def("tenant_onboarding")
        first = onboarding.evaluate_tick(build_sensor_context(instance=instance))
        (request,) = first.dynamic_partitions_requests
        assert len(request.partition_keys) == 1000
        instance.add_dynamic_partitions("tenant", list(request.partition_keys))
        second = onboarding.evaluate_tick(build_sensor_context(instance=instance, cursor=first.cursor))
        assert not second.dynamic_partitions_requests and "has not changed" in second.skip_message

        context = build_schedule_context(
            instance=instance,
            scheduled_execution_time=dt.datetime(2024, 3, 10, 10, 0, tzinfo=dt.timezone.utc),
            repository_def=defs.get_repository_def(),
        )
        tick = defs.resolve_schedule_def("hourly_ingest").evaluate_tick(context)
        covered: list[str] = []
        for run in tick.run_requests:
            assert run.tags["dagster/asset_partition_range_start"].startswith("2024-03-10|")
            chunk = run.tags["etl/tenants"].split(",")
            assert 1 <= len(chunk) <= 50
            assert run.tags["dagster/asset_partition_range_start"] == f"2024-03-10|{chunk[0]}"
            assert run.tags["dagster/asset_partition_range_end"] == f"2024-03-10|{chunk[-1]}"
            covered += chunk
        active = [t["id"] for t in tenants if not t["paused"]]
        assert covered == active  # each active tenant once, in registration order, no paused one
        assert len(tick.run_requests) == 20  # 10 stretches of 99 active tenants: chunks of 50 and 49

        retry = defs.resolve_sensor_def(SENSOR_NAME).evaluate_tick(build_sensor_context(instance=instance))
        assert not retry.run_requests
