"""A run whose process is killed (`kill -9` of `dagster asset materialize`) is marked failed, and
never holds its tenant's queue slot: the tenant's next queued run starts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from etl_platform.automation.dead_runs import mark_dead_runs
from etl_platform.automation.onboarding import sync_tenants
from etl_platform.config.registry import load_registry
from etl_platform.runs.worker import WORKER_TAG, boot_id, pid_namespace, this_worker, worker_alive
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
    host, pid, ticks, boot, ns = me.split(":")
    assert boot == boot_id() and ns == pid_namespace() and boot and ns.isdigit()
    assert worker_alive(f"{host}:{pid}:{int(ticks) + 1}:{boot}:{ns}") is False  # the pid was reused
    assert worker_alive(f"{host}:999999999:1:{boot}:{ns}") is False
    # cannot tell: another PID namespace (a container, whatever its host name), another boot or
    # machine, or a tag without them; left to run monitoring
    assert worker_alive(f"{host}:{pid}:{ticks}:{boot}:1") is None
    assert worker_alive(f"{host}:999999999:1:{boot}:1") is None
    assert worker_alive(f"{host}:{pid}:{ticks}:00000000-0000-0000-0000-000000000000:{ns}") is None
    assert worker_alive(f"{host}:{pid}:{ticks}") is None


def _started(instance: DagsterInstance, worker: str) -> str:
    run = DagsterRun(job_name="ingest", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                     tags={WORKER_TAG: worker, "etl/tenant": "acme"})  # fmt: skip
    instance.add_run(run)
    return run.run_id


@pytest.fixture
def in_other_pid_namespace(tmp_path: Path):
    """A live process in a PID namespace of its own (as in a container on the host network: same
    host name, own pids); yields its `etl/worker` value."""
    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed")
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
         "import time; from etl_platform.runs.worker import this_worker; print(this_worker(), flush=True); "
         "time.sleep(120)"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        worker = proc.stdout.readline().strip()
        if not worker:
            pytest.skip("cannot create a PID namespace here (unshare --pid needs privileges)")
        yield worker
    finally:
        stop_process(proc)


def test_a_live_worker_of_another_pid_namespace_is_never_marked_dead(dagster_home, in_other_pid_namespace) -> None:
    """Invariant: run monitoring never kills a live run. The worker's pid (1 in its namespace)
    names another, older process here, which the old `host:pid:start` check took for a reused pid."""
    host, pid, _ticks, boot, ns = in_other_pid_namespace.split(":")
    assert host == this_worker().split(":")[0] and ns != pid_namespace() and boot == boot_id()
    with DagsterInstance.get() as instance:
        live = _started(instance, in_other_pid_namespace)
        dead_here = _started(instance, f"{host}:999999999:1:{boot_id()}:{pid_namespace()}")
        assert mark_dead_runs(instance, now=time.time() + 3600) == [dead_here]  # a dead local worker still is
        assert instance.get_run_by_id(live).status == DagsterRunStatus.STARTED
        assert instance.get_run_by_id(dead_here).status == DagsterRunStatus.FAILURE


def test_runs_that_dagsters_run_monitoring_checks_are_left_to_it(dagster_home: Path) -> None:
    (dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_monitoring:\n  enabled: true\n"
        "run_launcher:\n  module: etl_platform.instance.run_launcher\n  class: MonitoredRunLauncher\n"
    )
    with DagsterInstance.get() as instance:
        dead = _started(instance, f"h:999999999:1:{boot_id()}:{pid_namespace()}")
        assert mark_dead_runs(instance, now=time.time() + 3600) == []
        assert instance.get_run_by_id(dead).status == DagsterRunStatus.STARTED


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
