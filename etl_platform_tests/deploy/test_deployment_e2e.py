"""The production deployment end to end, natively: the processes docker-compose.yml starts, with
deploy/dagster.yaml and deploy/workspace.yaml, on the real PostgreSQL (fresh databases for
Dagster's storage and for the warehouse).

Started as compose starts them (each in its own process group, killed with its children at the
end): the init step (deploy/init_stack.py: creates the warehouse database, `dagster instance
migrate`, `etl-platform tenants sync`), the gRPC code server (`dagster api grpc`), dagster-webserver
and dagster-daemon on the workspace pointing at it, and the read API (`etl-platform serve`).
DAGSTER_HOME holds deploy/dagster.yaml with the single-process run launcher (MonitoredRunLauncher:
runs are children of the code server; the Compose stack's own launcher, one container per run, is
tested in test_containers.py) and faster polling: run monitoring every 2 s, the queue every 1 s.
The tenant's REST source is a local json-server look-alike.

1. A partition run of `ingest` launched through the webserver's GraphQL API (as a client would)
   is dequeued by the daemon and succeeds: run storage and warehouse rows are checked.
2. The run worker of a second run is SIGKILLed mid-run (the source hangs on page 2): the run
   is marked FAILURE and the retry sensor launches a retry (etl/parent_run_id) that succeeds.
3. The whole code server is SIGKILLed mid-run (a crashed container) and started again: run
   monitoring's worker health check (etl_platform/instance/run_launcher.py) marks the orphaned run
   FAILURE, and the retry sensor re-launches it on the new code server (the retry is seen
   started, not waited for: a run takes ~30-50 s here, spawning a process per step).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from etl_platform_tests.conftest import PG_ADMIN_URL, create_pg_database, drop_pg_database
from etl_platform_tests.support.deployed_stack import (
    API_KEY,
    DAY,
    POSTS,
    TENANT,
    USERS,
    SlowSource,
    free_port,
    graphql_launcher,
    http_json,
    run_messages,
    tenant_config,
    wait_finished,
    wait_for,
    wait_retry_of,
)
from etl_platform_tests.support.http_servers import LocalServer
from etl_platform_tests.support.platform_runs import table_counts, write_tenants

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.daemon, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


class Proc:
    """One service process in its own session; stop() kills its whole process group."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            cmd, env=env, cwd=log_dir, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill(signal.SIGKILL)  # and whatever is left in the group (run workers, steps)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def _descendants(pid: int) -> list[int]:
    """Child processes (recursively) of pid, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _render_instance(home: Path) -> None:
    """deploy/dagster.yaml with the single-process run launcher and faster polling."""
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    config["run_launcher"] = {"module": "etl_platform.instance.run_launcher", "class": "MonitoredRunLauncher"}
    config["run_monitoring"]["poll_interval_seconds"] = 2
    config["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1
    config["run_coordinator"]["config"]["user_code_failure_retry_delay"] = 2
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _worker_pid(instance, run_id: str) -> int:
    from dagster import DagsterEventType

    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records:
        entry = record.event_log_entry
        pid = entry.dagster_event.event_specific_data.metadata.get("pid") if entry.dagster_event else None
        if pid is not None and "Started process for run" in (entry.message or ""):
            return int(pid.value)
    raise LookupError(f"no 'Started process for run' event for {run_id} yet")


def test_compose_stack_natively(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    dagster_url = create_pg_database("etl_e2e_dagster")
    warehouse_url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/etl_e2e_wh_{uuid.uuid4().hex[:10]}"  # init creates it
    procs: dict[str, Proc] = {}
    instance = None
    with LocalServer() as server:
        source = SlowSource(server)
        try:
            instance = _run_scenarios(tmp_path, monkeypatch, server, source, dagster_url, warehouse_url, procs, started)
        except BaseException:
            for proc in procs.values():
                print(f"\n===== {proc.name} log (tail) =====\n{proc.tail()}")
            raise
        finally:
            source.recover()
            if instance is not None:
                instance.dispose()
            for proc in procs.values():
                proc.stop()
            drop_pg_database(warehouse_url)
            drop_pg_database(dagster_url)
    print(f"deployment e2e took {time.monotonic() - started:.1f}s")


def _run_scenarios(tmp_path, monkeypatch, server, source, dagster_url, warehouse_url, procs, started):
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster_graphql import DagsterGraphQLClient

    pg = urlsplit(dagster_url)
    home = tmp_path / "dagster_home"
    _render_instance(home)
    tenants = write_tenants(tmp_path / "tenants.yaml", [tenant_config(server.url)])
    grpc_port, web_port, api_port = free_port(), free_port(), free_port()
    stack_env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": pg.hostname or "127.0.0.1",
        "DAGSTER_PG_PORT": str(pg.port or 5432),
        "DAGSTER_PG_USER": pg.username or "postgres",
        "DAGSTER_PG_PASSWORD": pg.password or "unused",  # trust auth ignores it
        "DAGSTER_PG_DB": pg.path.lstrip("/"),
        "DAGSTER_MAX_CONCURRENT_RUNS": "4",
        "DAGSTER_CODE_SERVER_HOST": "127.0.0.1",
        "DAGSTER_CODE_SERVER_PORT": str(grpc_port),
        "DAGSTER_WEBSERVER_PORT": str(web_port),
        "ETL_API_PORT": str(api_port),
        "ETL_WAREHOUSE_URL": warehouse_url,
        "ETL_TENANTS_FILE": str(tenants),
        "ETL_E2E_API_KEY": API_KEY,
        "ETL_RETRY_MAX_ATTEMPTS": "3",
        "ETL_RETRY_BASE_DELAY_SECONDS": "1",
        "ETL_RETRY_SENSOR_INTERVAL_SECONDS": "2",
        # no scheduled runs in the middle of the test
        "ETL_HOURLY_CRON": "0 0 1 1 *",
        "ETL_REBACKFILL_CRON": "0 0 1 1 *",
    }
    for key, value in stack_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env = dict(os.environ)
    workspace = str(DEPLOY / "workspace.yaml")

    def start(name: str, cmd: list[str]) -> Proc:
        procs[name] = Proc(name, cmd, env, tmp_path)
        return procs[name]

    def healthy(role: str) -> bool:
        done = subprocess.run(
            [sys.executable, str(DEPLOY / "healthcheck.py"), role], env=env, capture_output=True, text=True, timeout=90
        )
        return done.returncode == 0

    def start_code_server() -> None:
        start(
            "user-code",
            [str(BIN / "dagster"), "api", "grpc", "--host", "127.0.0.1", "--port", str(grpc_port),
             "--module-name", "etl_platform.definitions", "--location-name", "etl_platform"],
        )
        wait_for("the code server's health check", lambda: healthy("code-server"), 120, interval=1)

    # --- init (compose service `init`), then the long-running services --------------------------
    init = subprocess.run(
        [sys.executable, str(DEPLOY / "init_stack.py")], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=180,
    )
    assert init.returncode == 0, init.stdout + init.stderr
    assert "created the warehouse database" in init.stdout, init.stdout
    assert re.search(rf"added .*\b{TENANT}\b", init.stdout), init.stdout
    start_code_server()
    start("webserver", [str(BIN / "dagster-webserver"), "--host", "127.0.0.1", "--port", str(web_port),
                        "--workspace", workspace])
    start("daemon", [str(BIN / "dagster-daemon"), "run", "--workspace", workspace])
    start("api", [str(BIN / "etl-platform"), "serve", "--host", "127.0.0.1", "--port", str(api_port)])
    for role in ("webserver", "api", "daemon"):
        wait_for(f"the {role}'s health check", lambda role=role: healthy(role), 120, interval=1)
    print(f"stack up after {time.monotonic() - started:.1f}s")

    instance = DagsterInstance.get()  # the same PostgreSQL storage, from DAGSTER_HOME
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    client = DagsterGraphQLClient("127.0.0.1", port_number=web_port, timeout=60)

    launch = graphql_launcher(client)

    # --- 1. a partition run through GraphQL, dequeued and run by the daemon ----------------------
    first = launch()
    assert wait_finished(client, first, 120) == "SUCCESS", run_messages(instance, first)[-3000:]
    run = instance.get_run_by_id(first)
    assert run.status == DagsterRunStatus.SUCCESS
    assert run.tags["dagster/partition"] == f"{DAY}|{TENANT}" and run.tags["dagster/partition/tenant"] == TENANT
    counts = table_counts(warehouse_url, f"tenant_{TENANT}")
    assert (counts["placeholder_users"], counts["placeholder_posts"]) == (len(USERS), len(POSTS)), counts
    assert counts["records"] == len(USERS) + len(POSTS), counts
    status, body = http_json(f"http://127.0.0.1:{api_port}/health", {"Authorization": f"Bearer {API_KEY}"})
    assert status == 200 and body["components"]["daemon"]["ok"], body
    assert body["last_runs"][TENANT]["status"] == "SUCCESS", body
    status, page = http_json(
        f"http://127.0.0.1:{api_port}/data?limit=500", {"Authorization": f"Bearer {API_KEY}"}
    )
    assert status == 200 and len(page["data"]) == len(USERS) + len(POSTS), page
    print(f"run 1 ok after {time.monotonic() - started:.1f}s")

    # --- 2. the run worker dies (SIGKILL) mid-run: FAILURE, then a retry ------------------------
    source.hang()
    second = launch()
    assert source.hanging.wait(120), "the second run never asked for page 2"
    worker = wait_for("the run worker's pid", lambda: _worker_pid(instance, second), 30)
    assert instance.get_run_by_id(second).status == DagsterRunStatus.STARTED
    tree = _descendants(worker)  # the step processes of the multiprocess executor
    for pid in [worker, *tree]:  # the worker first: it must not see its steps fail
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    source.recover()
    assert wait_finished(client, second, 60) == "FAILURE"
    assert f"Run execution process for {second} was terminated by signal 9 (SIGKILL)" in run_messages(
        instance, second
    )
    retry = wait_retry_of(instance, second, 90)
    assert retry.tags["etl/attempt"] == "2" and retry.tags["etl/trigger"] == "retry"
    assert retry.tags["dagster/partition"] == f"{DAY}|{TENANT}"
    assert wait_finished(client, retry.run_id, 120) == "SUCCESS", run_messages(instance, retry.run_id)[-3000:]
    # the retry sensor notes the launched retry on the failed run at its next tick
    wait_for("the failed run to name its retry", lambda: instance.get_run_by_id(second).tags.get(
        "etl/retry", "").startswith("retried"), 60)
    print(f"run 2 (worker killed) retried after {time.monotonic() - started:.1f}s")

    # --- 3. the code server dies with its runs (a crashed container) and comes back -------------
    source.hang()
    third = launch()
    assert source.hanging.wait(120), "the third run never asked for page 2"
    wait_for("the run worker's pid", lambda: _worker_pid(instance, third), 30)
    procs["user-code"].kill(signal.SIGKILL)  # the server, the run worker and its steps at once
    procs["user-code"].popen.wait(timeout=10)
    source.recover()
    time.sleep(3)  # monitoring cannot reach the server: the run is left alone (assumed alive)
    assert instance.get_run_by_id(third).status == DagsterRunStatus.STARTED
    procs.pop("user-code").stop()
    start_code_server()  # compose's restart policy
    assert wait_finished(client, third, 60) == "FAILURE"
    assert "has no process for this run" in run_messages(instance, third)
    retry = wait_retry_of(instance, third, 90)
    assert retry.tags["etl/attempt"] == "2" and retry.tags["dagster/partition"] == f"{DAY}|{TENANT}"
    # the restarted code server runs it (its success was shown in scenario 2; not waited for here)
    wait_for(
        f"retry {retry.run_id} to start",
        lambda: instance.get_run_by_id(retry.run_id).status
        in (DagsterRunStatus.STARTED, DagsterRunStatus.SUCCESS),
        60,
    )
    print(f"run 3 (code server killed) retried after {time.monotonic() - started:.1f}s")
    return instance

