"""A run whose process is killed (`kill -9` of `dagster asset materialize`) is marked failed, and
never holds its tenant's queue slot: the tenant's next queued run starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from etl_platform.automation.dead_runs import mark_dead_runs
from etl_platform.automation.onboarding import sync_tenants
from etl_platform.config.registry import load_registry
from etl_platform.runs.worker import WORKER_TAG, this_worker, worker_alive
from etl_platform_tests.support.http_servers import LocalServer, Response
from etl_platform_tests.support.orchestration import ITEMS, rest_tenant, stop_process, wait_for
from etl_platform_tests.support.platform_runs import write_tenants

DAY = "2024-01-02"
REPO = Path(__file__).resolve().parents[2]
RUN_ONE = """
import sys
from dagster import DagsterInstance
from etl_platform_tests.support.platform_runs import materialize
with DagsterInstance.get() as instance:
    materialize(instance, "slow", sys.argv[1], raise_on_error=False)
"""


def test_worker_liveness() -> None:
    me = this_worker()
    assert worker_alive(me) is True
    host, pid, ticks = me.rsplit(":", 2)
    assert worker_alive(f"{host}:{pid}:{int(ticks) + 1}") is False  # the pid was reused by another process
    assert worker_alive(f"{host}:999999999:1") is False
    assert worker_alive(f"another-host:{pid}:{ticks}") is None  # cannot tell: left to run monitoring


def _start_hanging_run(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen:
    script = tmp_path / "run_one.py"
    script.write_text(RUN_ONE)
    return subprocess.Popen(
        [sys.executable, str(script), DAY], cwd=REPO,
        env={**os.environ, **env, "RUNTIME__REQUEST_TIMEOUT": "300", "PYTHONPATH": str(REPO)},
        stdout=(tmp_path / "run.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _started_run(instance: DagsterInstance):
    records = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    return records[0].dagster_run if records and WORKER_TAG in records[0].dagster_run.tags else None


def _hanging(release: threading.Event):
    """A route that answers only once `release` is set (at most after two minutes)."""
    return lambda r: (release.wait(120), Response(200, ITEMS))[1]


def test_a_killed_run_is_marked_failed(platform_env, dagster_home: Path, tmp_path: Path) -> None:
    release = threading.Event()
    with LocalServer() as server:
        server.route("/items", _hanging(release))
        platform_env([rest_tenant("slow", server, "/items")], f"duckdb:///{tmp_path / 'wh.duckdb'}")
        with DagsterInstance.get() as instance:
            sync_tenants(instance, load_registry())
            proc = _start_hanging_run(tmp_path, {})
            try:
                run = wait_for(lambda: _started_run(instance), timeout=120)
                assert mark_dead_runs(instance) == []  # alive: left alone
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
                assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
                assert mark_dead_runs(instance, now=time.time() + 60) == [run.run_id]
            finally:
                stop_process(proc)
                release.set()
            failed = instance.get_run_by_id(run.run_id)
            assert failed.status == DagsterRunStatus.FAILURE
            messages = [
                f"{e.user_message} {e.dagster_event.message if e.dagster_event else ''}"
                for e in instance.all_logs(run.run_id)
            ]
            assert any("no longer exists" in m for m in messages)


@pytest.mark.daemon
@pytest.mark.postgres
@pytest.mark.timeout(420)
def test_the_tenants_next_queued_run_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_platform_tests.conftest import create_pg_database, drop_pg_database
    from etl_platform_tests.support.dagster_daemon import bin_path, cli, write_home

    storage = create_pg_database("etl_dagster")
    home = tmp_path / "home"
    write_home(home, storage)
    env = {
        "DAGSTER_HOME": str(home),
        "ETL_TENANTS_FILE": str(tmp_path / "tenants.yaml"),
        "ETL_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'wh.duckdb'}",
        "ETL_START_DATE": "2024-01-01",
        "ETL_RETRY_MAX_ATTEMPTS": "0",
        "ETL_HOURLY_CRON": "0 0 1 1 *",
        "ETL_REBACKFILL_CRON": "0 0 1 1 *",
        "ETL_FRESHNESS_CRON": "0 0 1 1 *",
        "ETL_DEAD_RUN_GRACE_SECONDS": "2",
        "ETL_DEAD_RUN_SENSOR_INTERVAL_SECONDS": "2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    release = threading.Event()
    with LocalServer() as server:
        server.route("/items", _hanging(release))
        write_tenants(tmp_path / "tenants.yaml", [rest_tenant("slow", server, "/items")])
        daemon = subprocess.Popen(
            [bin_path("dagster-daemon"), "run", "-w", str(home / "workspace.yaml")], cwd=tmp_path,
            env={**os.environ}, stdout=(tmp_path / "daemon.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        proc = launcher = None
        try:
            with DagsterInstance.get() as instance:
                sync_tenants(instance, load_registry())
                proc = _start_hanging_run(tmp_path, {})
                dead = wait_for(lambda: _started_run(instance), timeout=120)
                os.killpg(proc.pid, signal.SIGKILL)
                release.set()
                # the tenant's next run, through the queue (one run at a time per tenant)
                launcher = cli(tmp_path, "job", "launch", "-w", str(home / "workspace.yaml"), "-j", "ingest",
                               "--tags", f'{{"dagster/partition": "{DAY}|slow"}}')  # fmt: skip
                assert launcher.wait(120) == 0, launcher.stdout.read()

                def next_run_done():
                    runs = [r for r in instance.get_runs() if r.run_id != dead.run_id]
                    return runs[0] if runs and runs[0].status == DagsterRunStatus.SUCCESS else None

                done = wait_for(next_run_done, timeout=240)
                assert instance.get_run_by_id(dead.run_id).status == DagsterRunStatus.FAILURE
                assert done.tags["etl/tenant"] == "slow"
        finally:
            release.set()
            for p in (proc, launcher, daemon):
                if p is not None:
                    stop_process(p)
            drop_pg_database(storage)
