"""With `dagster-daemon run` (PostgreSQL run storage, the repo's dagster.yaml run queue): a run
failing on a 500 is retried by the sensor with backoff, through the queue, until the source
recovers and the retry succeeds. Meanwhile three runs of another tenant, queued at once by
`dagster job backfill` and `dagster job launch` (a ranged run without platform tags), run one
at a time under the per-tenant limit."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from etl_platform.automation.onboarding import sync_tenants
from etl_platform.config.registry import load_registry
from etl_platform.config.settings import project_root
from etl_platform_tests.conftest import create_pg_database, drop_pg_database
from etl_platform_tests.support.dagster_daemon import bin_path, cli, write_home
from etl_platform_tests.support.http_servers import LocalServer
from etl_platform_tests.support.orchestration import Switch, rest_tenant, stop_process, wait_for
from etl_platform_tests.support.platform_runs import materialize, table_counts, write_tenants

DAY = "2024-01-02"
NEVER = "0 0 1 1 *"  # the schedules stay out of the way (January 1st, midnight)
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


@pytest.fixture
def storage_url() -> Iterator[str]:
    url = create_pg_database("etl_dagster")
    try:
        yield url
    finally:
        drop_pg_database(url)


def retries_of(instance: DagsterInstance, parent: str) -> list:
    return instance.get_runs(RunsFilter(tags={"etl/parent_run_id": parent}))


def finished(instance: DagsterInstance, tenant: str, count: int) -> list | None:
    """The run records of `tenant` once `count` of them exist and all are finished."""
    records = instance.get_run_records(RunsFilter(tags={"etl/tenant": tenant}))
    if len(records) >= count and all(r.dagster_run.status in FINISHED for r in records):
        return records
    return None


@pytest.mark.daemon
@pytest.mark.postgres
@pytest.mark.timeout(360)
def test_daemon_retries_until_the_source_recovers(
    tmp_path: Path, storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    write_home(home, storage_url)
    env = {
        "DAGSTER_HOME": str(home),
        "ETL_TENANTS_FILE": str(tmp_path / "tenants.yaml"),
        "ETL_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'wh.duckdb'}",
        "ETL_START_DATE": "2024-01-01",
        "ETL_RETRY_BASE_DELAY_SECONDS": "2",
        "ETL_RETRY_SENSOR_INTERVAL_SECONDS": "2",
        "ETL_STEP_RETRIES": "0",
        "ETL_HOURLY_CRON": NEVER,
        "ETL_REBACKFILL_CRON": NEVER,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert project_root() == home

    with LocalServer() as server:
        switch = Switch(500)
        server.route("/items", switch)
        server.route("/steady", Switch(200))
        tenants = [rest_tenant("flaky", server, "/items"), rest_tenant("steady", server, "/steady")]
        write_tenants(tmp_path / "tenants.yaml", tenants)
        log = (tmp_path / "daemon.log").open("w")
        workspace = str(home / "workspace.yaml")
        daemon = subprocess.Popen(
            [bin_path("dagster-daemon"), "run", "-w", workspace],
            cwd=tmp_path, env={**os.environ}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        clients: list[subprocess.Popen] = []
        try:
            with DagsterInstance.get() as instance:
                sync_tenants(instance, load_registry())
            # three runs of tenant `steady` queued at once: two partitions, and a range as a manual launch
            clients.append(cli(tmp_path, "job", "backfill", "-w", workspace, "-j", "ingest", "--noprompt",
                               "--partitions", "2024-01-03|steady,2024-01-04|steady"))  # fmt: skip
            ranged = {
                "dagster/asset_partition_range_start": "2024-01-05|steady",
                "dagster/asset_partition_range_end": "2024-01-06|steady",
            }
            clients.append(
                cli(tmp_path, "job", "launch", "-w", workspace, "-j", "ingest", "--tags", json.dumps(ranged))
            )
            with DagsterInstance.get() as instance:
                # the first run fails for real: the source answers 500
                first = materialize(instance, "flaky", DAY, raise_on_error=False, tags={"etl/trigger": "manual"})
                assert not first.success
                root = first.run_id

                # the daemon's sensor launches attempt 2 through the queue; the source still fails
                def finished_retry(parent: str):
                    runs = [r for r in retries_of(instance, parent) if r.status in FINISHED]
                    assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-5000:]
                    return runs[0] if runs else None

                second = wait_for(lambda: finished_retry(root), 150, 1, "the first retry to finish")
                assert second.status == DagsterRunStatus.FAILURE
                switch.status = 200  # the source recovers
                hits_before = switch.hits
                third = wait_for(lambda: finished_retry(second.run_id), 90, 1, "the second retry to finish")
                assert third.status == DagsterRunStatus.SUCCESS, (tmp_path / "daemon.log").read_text()[-5000:]
                assert switch.hits > hits_before

                for run, attempt, parent in ((second, "2", root), (third, "3", second.run_id)):
                    tags = run.tags
                    assert tags["etl/attempt"] == attempt and tags["etl/parent_run_id"] == parent
                    assert tags["etl/root_run_id"] == root and tags["etl/trigger"] == "retry"
                    assert tags["dagster/sensor_name"] == "retry_failed_runs"
                    # a partition run: Dagster sets the dimension tags the queue limits on
                    assert tags["dagster/partition"] == f"{DAY}|flaky"
                    assert tags["dagster/partition/tenant"] == "flaky" and tags["etl/tenant"] == "flaky"
                # backoff: attempt 3 was created at least 2 × base (4 s) after attempt 2 ended
                second_end = instance.get_run_record_by_id(second.run_id).end_time
                third_created = instance.get_run_record_by_id(third.run_id).create_timestamp.timestamp()
                assert third_created - second_end >= 4
                # the sensor recorded which run retried each failure, and asks for nothing more
                wait_for(
                    lambda: instance.get_run_by_id(second.run_id).tags.get("etl/retry") == f"retried:{third.run_id}",
                    30, 1, "the retry state on attempt 2",
                )  # fmt: skip
                assert instance.get_run_by_id(root).tags["etl/retry"] == f"retried:{second.run_id}"
                time.sleep(6)
                assert len(retries_of(instance, third.run_id)) == 0

                # tenant `steady`: its three runs ran one at a time, each tagged with the tenant
                for client in clients:
                    assert client.wait(timeout=60) == 0, client.stdout.read() if client.stdout else ""
                steady = wait_for(lambda: finished(instance, "steady", 3), 120, 1, "the steady tenant's runs")
                assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in steady)
                assert all(r.dagster_run.tags["etl/tenant"] == "steady" for r in steady)
                ranged_run = next(r for r in steady if "dagster/asset_partition_range_start" in r.dagster_run.tags)
                assert ranged_run.dagster_run.tags["etl/trigger"] == "backfill"  # set by the run coordinator
                spans = sorted((r.start_time, r.end_time) for r in steady)
                for (_, end), (start, _) in zip(spans, spans[1:]):
                    assert start >= end, f"runs of one tenant overlapped: {spans}"
            assert table_counts(env["ETL_WAREHOUSE_URL"], "tenant_flaky")["api_items"] == 3
            assert table_counts(env["ETL_WAREHOUSE_URL"], "tenant_steady")["api_items"] == 3 * 4  # a snapshot, 4 days
        finally:
            for client in clients:
                stop_process(client)
            stop_process(daemon)
            log.close()
