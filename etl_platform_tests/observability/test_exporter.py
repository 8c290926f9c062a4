"""The platform exporter over real runs: a REST tenant that loads, one whose source answers
500, a queued run, a failed asset check; counted once each, by tenant and source, across
refreshes and after a restart; served by `etl-platform exporter`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dagster import AssetCheckResult, DagsterInstance, DagsterRunStatus, EventRecordsFilter, asset, asset_check
from dagster import materialize as dagster_materialize
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.utils import make_new_run_id
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from etl_platform.observability.exporter import PlatformCollector
from etl_platform_tests.support.dagster_storages import STORAGES, dagster_storage
from etl_platform_tests.support.http_servers import LocalServer
from etl_platform_tests.support.orchestration import Switch, rest_tenant, stop_process, wait_for
from etl_platform_tests.support.platform_runs import materialize

DAY = "2024-01-02"


def parse(text: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def render(collector: PlatformCollector) -> dict[tuple, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return parse(generate_latest(registry).decode())


def get(metrics: dict, name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def source() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        srv.route("/items", Switch(200))
        srv.route("/broken", Switch(500))
        yield srv


@pytest.fixture(params=STORAGES)
def instance(request, platform_env, dagster_home: Path, source: LocalServer, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ETL_STEP_RETRIES", "0")
    platform_env(
        [rest_tenant("good", source, "/items", freshness_hours=12), rest_tenant("flaky", source, "/broken"),
         rest_tenant("idle", source, "/items", paused=True)],
        f"duckdb:///{tmp_path / 'wh.duckdb'}",
    )
    storage = dagster_storage(request.param, dagster_home)
    next(storage)
    with DagsterInstance.get() as inst:
        yield inst
    next(storage, None)


def queued_run(instance: DagsterInstance, tenant: str) -> None:
    """A run waiting in the queue (as the queued run coordinator stores it)."""
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="etl_platform.definitions")), "__repository__"), "ingest")
    instance.add_run(DagsterRun(job_name="ingest", run_id=make_new_run_id(), status=DagsterRunStatus.QUEUED,
                                tags={"etl/tenant": tenant}, remote_job_origin=origin))


def failing_check_run(instance: DagsterInstance, tenant: str) -> None:
    @asset(name="probe")
    def probe() -> None:
        return None

    @asset_check(asset=probe, name="probe_is_fine")
    def probe_is_fine() -> AssetCheckResult:
        return AssetCheckResult(passed=False)

    dagster_materialize([probe, probe_is_fine], instance=instance, tags={"etl/tenant": tenant})


def test_exporter_counts_by_tenant_and_source(instance: DagsterInstance) -> None:
    assert materialize(instance, "good", DAY).success
    assert not materialize(instance, "flaky", DAY, raise_on_error=False).success
    queued_run(instance, "flaky")
    failing_check_run(instance, "good")

    collector = PlatformCollector(instance)
    collector.refresh()
    m = render(collector)
    # the ingest run and the check's run (tagged with the tenant too)
    assert get(m, "etl_runs_total", tenant="good", source="*", status="SUCCESS") == 2
    assert get(m, "etl_runs_total", tenant="flaky", source="*", status="FAILURE") == 1
    assert get(m, "etl_run_failures_total", tenant="flaky", source="api", kind="transient") == 1
    assert get(m, "etl_rows_loaded_total", tenant="good", source="api") == 3
    assert get(m, "etl_rows_loaded_total", tenant="flaky", source="api") is None
    assert get(m, "etl_check_failures_total", tenant="good", check="probe_is_fine") == 1
    assert get(m, "etl_tenant_freshness_hours", tenant="good") == 12
    assert get(m, "etl_tenant_freshness_hours", tenant="flaky") == 48
    assert get(m, "etl_tenant_freshness_hours", tenant="idle") is None  # paused: never stale
    assert get(m, "etl_tenant_last_success_timestamp_seconds", tenant="good") > 0
    assert get(m, "etl_tenant_last_success_timestamp_seconds", tenant="flaky") == 0
    assert get(m, "etl_source_last_loaded_timestamp_seconds", tenant="good", source="api") > 0
    assert get(m, "etl_runs_queued", tenant="flaky") == 1 and get(m, "etl_queue_length") == 1
    assert get(m, "etl_dagster_storage_up") == 1 and get(m, "etl_warehouse_up") == 1
    # no run ids, partitions or messages in labels
    labels = {v for key in m for _, v in key[1]}
    assert not any("|" in v or "500" in v or len(v) > 48 for v in labels)

    # the next refresh reads only what is new: one more run, counted once
    assert materialize(instance, "good", DAY).success
    collector.refresh()
    collector.refresh()
    m = render(collector)
    assert get(m, "etl_runs_total", tenant="good", source="*", status="SUCCESS") == 3
    assert get(m, "etl_rows_loaded_total", tenant="good", source="api") == 6
    assert get(m, "etl_run_failures_total", tenant="flaky", source="api", kind="transient") == 1

    # a restarted exporter reads its lookback back: the same totals
    restarted = PlatformCollector(instance)
    restarted.refresh()
    again = render(restarted)
    for name in ("etl_runs_total", "etl_rows_loaded_total", "etl_run_failures_total", "etl_check_failures_total"):
        assert {k: v for k, v in again.items() if k[0] == name} == {k: v for k, v in m.items() if k[0] == name}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_exporter_command_serves_metrics(instance: DagsterInstance, tmp_path: Path) -> None:
    assert materialize(instance, "good", DAY).success
    port = _free_port()
    env = {**os.environ, "ETL_EXPORTER_REFRESH_SECONDS": "1"}
    with open(tmp_path / "exporter.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "etl_platform.cli", "exporter", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        def scrape():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            except httpx.TransportError:
                assert proc.poll() is None, (tmp_path / "exporter.log").read_text()
                return None

        response = wait_for(scrape, 60, what="the exporter")
        m = parse(response.text)
        assert get(m, "etl_runs_total", tenant="good", source="*", status="SUCCESS") == 1
        assert materialize(instance, "good", DAY).success
        wait_for(lambda: get(parse(scrape().text), "etl_runs_total", tenant="good", source="*", status="SUCCESS") == 2,
                 30, what="the next refresh")
    finally:
        stop_process(proc)


def test_first_refresh_starts_at_its_lookback(instance: DagsterInstance) -> None:
    """The first refresh's position comes from bisecting storage ids: events older than the
    lookback are not read; a later event is counted once."""
    import time

    from dagster import DagsterEventType

    from etl_platform.observability.platform_state import PlatformState, start_position

    assert materialize(instance, "good", DAY).success
    ids = [r.storage_id for r in instance.event_log_storage.get_event_records(
        EventRecordsFilter(event_type=DagsterEventType.ASSET_MATERIALIZATION), limit=100, ascending=True)]
    later = time.time() + 3 * 86400
    assert start_position(instance, DagsterEventType.ASSET_MATERIALIZATION, later, False) == ids[-1]
    assert start_position(instance, DagsterEventType.ASSET_MATERIALIZATION, 0, False) == ids[0] - 1

    state = PlatformState(lookback_s=25 * 3600)
    state.refresh(instance, now=later)  # a day after the lookback: nothing is that recent
    assert sum(state.rows.values()) == 0 and sum(state.runs.values()) == 0
    assert materialize(instance, "good", DAY).success
    state.refresh(instance, now=later)
    assert state.rows[("good", "api")] == 3 and state.runs[("good", "*", "SUCCESS")] == 1


def test_exporter_needs_its_token_when_one_is_set() -> None:
    """ETL_EXPORTER_TOKEN set: a scrape without `Authorization: Bearer <token>` gets 401 and no
    metric (tenant ids are labels); unset, the exporter answers everyone, as before."""
    from prometheus_client import Gauge

    from etl_platform.observability.exporter import start_server

    registry = CollectorRegistry()
    Gauge("etl_tenant_freshness_hours", "test", ["tenant"], registry=registry).labels("acme").set(1)
    token = "exporter-token-0123456789abcdef"
    for configured in (token, None):
        port = _free_port()
        server, thread = start_server(registry, "127.0.0.1", port, configured)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            open_scrape = httpx.get(url, timeout=5)
            if configured:
                assert open_scrape.status_code == 401 and "acme" not in open_scrape.text
                assert open_scrape.headers["www-authenticate"].startswith("Bearer")
                wrong = httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=5)
                assert wrong.status_code == 401 and "acme" not in wrong.text
                scrape = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
            else:
                scrape = open_scrape
            assert scrape.status_code == 200 and 'tenant="acme"' in scrape.text
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
