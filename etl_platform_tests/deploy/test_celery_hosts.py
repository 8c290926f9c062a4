"""The Celery engine for real, across hosts: runs execute on Celery workers of two other "machines"
(network namespaces with addresses and hostnames of their own, etl_platform_tests/hosts.py),
which reach PostgreSQL (Dagster's storage and the warehouse), RabbitMQ (the broker), Redis (task
states) and the tenants' sources only over their network link.

This machine is the control host: the gRPC code server and dagster-daemon with deploy/dagster.yaml
whose run launcher is deploy/celery/run_launcher.yaml's PlatformCeleryRunLauncher (polling made
faster: run monitoring every 2 s, the queue every 1 s, retries after 1 s). On each worker host
`dagster-celery worker start -y deploy/celery/worker.yaml` (one worker process) runs from the
platform's venv with a DAGSTER_HOME of its own. RabbitMQ gets a vhost for the test (removed after),
PostgreSQL two fresh databases (dropped after). Five REST tenants (6 users, 25 posts each) are
served by a local json-server look-alike on the bridge address.

1. The hourly schedule (its cron set to every minute, ETL_CHUNK_SIZE=1: one run per tenant) ticks
   in the daemon, and is stopped (`dagster schedule stop`) once its first tick's five runs exist;
   with a second run of t1 launched by hand (`dagster job launch`), every run succeeds; the first
   tick's runs executed on both worker hosts (each run's `etl/worker` tag names the host); runs of
   different tenants overlapped in time across the hosts while a tenant's runs did not (the
   per-tenant queue limit); every tenant has exactly 6 users, 25 posts and 31 records.
2. A run of t5 hangs mid-load (page 2 of posts); its worker host is powered off (every process
   killed, link down). Run monitoring's health check finds the worker gone: the run is FAILURE with
   the worker named; the retry sensor's retry executes on the other host and succeeds; t5 still
   has exactly 6 users, 25 posts and 31 records.
3. No run is left queued, starting or started.
Figures printed: run durations per host, and PostgreSQL and broker connections per worker host.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from etl_platform_tests.conftest import create_pg_database, drop_pg_database
from etl_platform_tests.support.deployed_stack import POSTS, USERS, free_port, run_messages, tenant_config, wait_for
from etl_platform_tests.support.hosts import Network, missing_tools
from etl_platform_tests.support.http_servers import LocalServer, Request, Response
from etl_platform_tests.support.jsonplaceholder import collection_handler
from etl_platform_tests.support.platform_runs import table_counts, write_tenants

pytestmark = [pytest.mark.celery, pytest.mark.postgres, pytest.mark.daemon, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
TENANTS = ("t1", "t2", "t3", "t4", "t5")
RECORDS = len(USERS) + len(POSTS)
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
WORKER_TAG = "etl/worker"  # host:pid:start:boot:pidns of the process executing the run (runs/worker.py)


class Sources:
    """Each tenant's json-server routes; a tenant's page 2 of posts hangs while it is held."""

    def __init__(self, server: LocalServer) -> None:
        self.held: set[str] = set()
        self.hanging = threading.Event()
        self.release = threading.Event()
        for tenant in TENANTS:
            server.route(f"/{tenant}/users", collection_handler(USERS, server.url, f"/{tenant}/users"))
            posts = collection_handler(POSTS, server.url, f"/{tenant}/posts")

            def handle(req: Request, tenant: str = tenant, posts=posts) -> Response:
                if req.arg("_page") == "2" and tenant in self.held:
                    self.hanging.set()
                    self.release.wait(120)
                return posts(req)

            server.route(f"/{tenant}/posts", handle)
        server.httpd.handle_error = lambda request, client_address: None  # a dead client's hung request

    def hold(self, tenant: str) -> None:
        self.release.clear()
        self.hanging.clear()
        self.held.add(tenant)

    def let_go(self) -> None:
        self.held.clear()
        self.release.set()


def _tool_problem() -> str | None:
    problem = missing_tools()
    if problem is None and subprocess.run(["rabbitmqctl", "list_vhosts"], capture_output=True, timeout=60).returncode:
        problem = "rabbitmqctl does not answer (RabbitMQ on 127.0.0.1:5672)"
    return problem


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _instance_yaml() -> str:
    """deploy/dagster.yaml with the Celery engine's run launcher, polling made faster."""
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    config.update(yaml.safe_load((DEPLOY / "celery" / "run_launcher.yaml").read_text()))
    config["run_monitoring"]["poll_interval_seconds"] = 2
    config["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1
    config["run_coordinator"]["config"]["user_code_failure_retry_delay"] = 2
    return yaml.safe_dump(config, sort_keys=False)


def _first_tick(instance) -> str | None:
    """The tick id of the hourly schedule's first tick, once all its runs exist."""
    from dagster import RunsFilter

    runs = instance.get_runs(RunsFilter(tags={"dagster/schedule_name": "hourly_ingest"}))
    ticks: dict[str, list] = {}
    for run in runs:
        ticks.setdefault(run.tags["dagster/tick"], []).append(run)
    if not ticks:
        return None
    first = min(ticks, key=lambda t: min(instance.get_run_record_by_id(r.run_id).create_timestamp for r in ticks[t]))
    return first if len(ticks[first]) == len(TENANTS) else None


def _host_of(run) -> str | None:
    worker = run.tags.get(WORKER_TAG)
    return worker.split(":", 1)[0] if worker else None


class ConnectionSampler(threading.Thread):
    """Peak established TCP connections from each worker host to the forwarders (PostgreSQL, the
    broker, the results backend), sampled every 0.2 s until stopped."""

    PORTS = {5432: "postgres", 5672: "broker", 6379: "results"}

    def __init__(self, addresses: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.addresses = addresses  # address -> hostname
        self.peak = {host: dict.fromkeys(self.PORTS.values(), 0) for host in addresses.values()}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            out = subprocess.run(["ss", "-Htn", "state", "established"], capture_output=True, text=True,
                                 timeout=30).stdout
            now: dict[tuple[str, str], int] = {}
            for line in out.splitlines():
                local, peer = line.split()[-2:]
                port, address = int(local.rsplit(":", 1)[1]), peer.rsplit(":", 1)[0]
                if port in self.PORTS and address in self.addresses:
                    key = (self.addresses[address], self.PORTS[port])
                    now[key] = now.get(key, 0) + 1
            for (host, service), count in now.items():
                self.peak[host][service] = max(self.peak[host][service], count)


def _sessions(*databases: str, column: str = "sessions") -> dict[str, int]:
    """Sessions ever opened to each database (PostgreSQL's pg_stat_database.sessions), or another
    of its columns (numbackends: sessions open now)."""
    import psycopg

    from etl_platform_tests.conftest import PG_ADMIN_URL

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        rows = conn.execute(f"SELECT datname, {column} FROM pg_stat_database WHERE datname = ANY(%s)",
                            [list(databases)]).fetchall()
    return dict(rows)


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 2**20


def test_celery_runs_span_worker_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = _tool_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    started = time.monotonic()
    dagster_url = create_pg_database("k8s_celery_dagster")
    warehouse_url = create_pg_database("k8s_celery_wh")
    vhost = f"k8s-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    network = Network()
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    instance = None
    try:
        with LocalServer(host=network.gateway) as server:
            sources = Sources(server)
            try:
                instance = _scenarios(tmp_path, monkeypatch, network, server, sources, dagster_url,
                                      warehouse_url, vhost, procs, logs, started)
            except BaseException:
                for log in logs:
                    print(f"\n===== {log.name} (tail) =====\n{log.read_text(errors='replace')[-3000:]}")
                raise
            finally:
                sources.let_go()
    finally:
        if instance is not None:
            instance.dispose()
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        network.close()
        _rabbitmqctl("delete_vhost", vhost)
        drop_pg_database(warehouse_url)
        drop_pg_database(dagster_url)
    print(f"celery across hosts took {time.monotonic() - started:.0f}s")


def _scenarios(tmp_path, monkeypatch, network, server, sources, dagster_url, warehouse_url, vhost, procs, logs,
               started):
    from celery import Celery
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    hosts = [network.add_host("w1"), network.add_host("w2")]
    for port in (5432, 5672, 6379):
        network.forward(port)
    tenants_file = write_tenants(
        tmp_path / "tenants.yaml",
        [tenant_config(f"{server.url}/{t}", tenant=t, api_key_env=f"ETL_{t.upper()}_API_KEY") for t in TENANTS],
    )
    grpc_port = free_port()
    day = dt.datetime.now(dt.timezone.utc).date().isoformat()
    wh_db = warehouse_url.rsplit("/", 1)[1]

    def env_for(address: str, home: Path) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        (home / "dagster.yaml").write_text(_instance_yaml())
        return {
            "PATH": f"{BIN}{os.pathsep}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8", "DAGSTER_HOME": str(home),
            "DAGSTER_PG_HOST": address, "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "unused", "DAGSTER_PG_DB": dagster_url.rsplit("/", 1)[1],  # trust auth
            "DAGSTER_MAX_CONCURRENT_RUNS": "4",
            "DAGSTER_CODE_SERVER_HOST": "127.0.0.1", "DAGSTER_CODE_SERVER_PORT": str(grpc_port),
            "DAGSTER_CELERY_BROKER_URL": f"pyamqp://guest:guest@{address}:5672/{vhost}",
            "DAGSTER_CELERY_BACKEND_URL": f"redis://{address}:6379/0",
            "ETL_WAREHOUSE_URL": f"postgresql://postgres@{address}:5432/{wh_db}",
            "ETL_TENANTS_FILE": str(tenants_file), "ETL_CHUNK_SIZE": "1", "ETL_LATE_DATA_HOURS": "0",
            # the schedule ticks every minute (the test stops it after its first tick)
            "ETL_HOURLY_CRON": "* * * * *", "ETL_TIMEZONE": "UTC",
            "ETL_REBACKFILL_CRON": "0 0 1 1 *", "ETL_FRESHNESS_CRON": "0 0 1 1 *",
            "ETL_RETRY_MAX_ATTEMPTS": "3", "ETL_RETRY_BASE_DELAY_SECONDS": "1",
            "ETL_RETRY_SENSOR_INTERVAL_SECONDS": "2",
            **{f"ETL_{t.upper()}_API_KEY": f"celery-test-{t}" for t in TENANTS},
            "DLT_TELEMETRY_DISABLED": "1", "RUNTIME__DLTHUB_TELEMETRY": "false",
        }

    control = env_for("127.0.0.1", tmp_path / "control")

    def start(name: str, cmd: list[str], env: dict[str, str], host=None) -> None:
        log = tmp_path / f"{name}.log"
        logs.append(log)
        if host is None:
            with open(log, "ab") as out:
                procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        else:
            host.spawn(cmd, env, log, tmp_path)

    def healthy(role: str) -> bool:
        done = subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py"), role], env=control,
                              capture_output=True, text=True, timeout=90)
        return done.returncode == 0

    sync = subprocess.run([str(BIN / "etl-platform"), "tenants", "sync"], env=control, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    start("user-code", [str(BIN / "dagster"), "api", "grpc", "--host", "127.0.0.1", "--port", str(grpc_port),
                        "--module-name", "etl_platform.definitions", "--location-name", "etl_platform"], control)
    for host in hosts:
        start(f"worker-{host.name}", [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                                      "-y", str(DEPLOY / "celery" / "worker.yaml"), "-n", host.name, "-q", "dagster",
                                      "--", "--concurrency", "1"],
              env_for(network.gateway, tmp_path / host.name), host=host)
    wait_for("the code server's health check", lambda: healthy("code-server"), 120, interval=1)
    start("daemon", [str(BIN / "dagster-daemon"), "run", "--workspace", str(DEPLOY / "workspace.yaml")], control)
    app = Celery(broker=control["DAGSTER_CELERY_BROKER_URL"], backend=control["DAGSTER_CELERY_BACKEND_URL"])
    names = {f"{h.name}@{h.hostname}" for h in hosts}
    wait_for("both workers to answer",
             lambda: names <= {name for reply in app.control.ping(timeout=1) for name in reply}, 120, interval=1)
    wait_for("the daemon's health check", lambda: healthy("daemon"), 120, interval=1)
    check = hosts[0].run([sys.executable, str(DEPLOY / "healthcheck.py"), "celery-worker"],
                         env_for(network.gateway, tmp_path / hosts[0].name))
    assert check.returncode == 0 and f"w1@{hosts[0].hostname}" in check.stdout, check.stdout + check.stderr
    print(f"control host, broker and 2 worker hosts up after {time.monotonic() - started:.0f}s")

    for key, value in control.items():
        monkeypatch.setenv(key, value)  # this process reads the control host's storage
    instance = DagsterInstance.get()
    hostnames = {h.hostname for h in hosts}

    # --- 1. the hourly schedule's runs, and a second run of t1, on both worker hosts ----------------
    first_tick = wait_for("the hourly schedule's first tick", lambda: _first_tick(instance), 150, interval=0.5)
    stopped = subprocess.run([str(BIN / "dagster"), "schedule", "stop", "hourly_ingest", "-w",
                              str(DEPLOY / "workspace.yaml")], env=control, cwd=tmp_path, capture_output=True,
                             text=True, timeout=180)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    tags = {"dagster/partition": f"{day}|t1", "dagster/partition/date": day, "dagster/partition/tenant": "t1",
            "etl/trigger": "manual"}
    launched = subprocess.run([str(BIN / "dagster"), "job", "launch", "-j", "ingest", "-w",
                               str(DEPLOY / "workspace.yaml"), "--tags", json.dumps(tags)],
                              env=control, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    databases = (dagster_url.rsplit("/", 1)[1], wh_db)
    sessions_before = _sessions(*databases)
    sampler = ConnectionSampler({h.address: h.hostname for h in hosts})
    sampler.start()
    rss = dict.fromkeys(hostnames, 0)

    def all_finished() -> bool:
        for h in hosts:  # memory of each worker host while runs execute
            rss[h.hostname] = round(max(rss[h.hostname], _rss_mb(h.pids())))
        runs = instance.get_runs(RunsFilter(job_name="ingest"))
        return len(runs) >= len(TENANTS) + 1 and all(r.status.value in FINISHED for r in runs)

    wait_for("the scheduled runs and t1's second run to finish", all_finished, 240, interval=0.5)
    sampler.done.set()
    time.sleep(1)  # sessions are counted when they end
    sessions = {db: n - sessions_before[db] for db, n in _sessions(*databases).items()}
    open_now = _sessions(*databases, column="numbackends")  # between runs: the workers' kept connections
    runs = instance.get_runs(RunsFilter(job_name="ingest"))
    for run in runs:
        assert run.status == DagsterRunStatus.SUCCESS, run_messages(instance, run.run_id)[-3000:]
    scheduled = [r for r in runs if r.tags.get("dagster/tick") == first_tick]
    assert len(scheduled) == len(TENANTS) and {r.tags["etl/tenant"] for r in scheduled} == set(TENANTS)
    assert {_host_of(r) for r in scheduled} == hostnames, [(r.tags["etl/tenant"], _host_of(r)) for r in scheduled]
    records = {r.run_id: instance.get_run_record_by_id(r.run_id) for r in runs}
    spans = {rid: (rec.start_time, rec.end_time) for rid, rec in records.items()}
    for tenant in TENANTS:  # a tenant's runs one after the other (t1: the tick's and the manual one)
        own = sorted(spans[r.run_id] for r in runs if r.tags.get("etl/tenant") == tenant)
        assert all(a[1] <= b[0] for a, b in zip(own, own[1:])), f"{tenant}'s runs overlapped: {own}"
    assert sum(r.tags.get("etl/tenant") == "t1" for r in runs) >= 2

    def overlap(a, b) -> bool:
        return spans[a.run_id][0] < spans[b.run_id][1] and spans[b.run_id][0] < spans[a.run_id][1]

    assert any(_host_of(a) != _host_of(b) and overlap(a, b) for a in runs for b in runs if a.run_id < b.run_id), (
        "no two runs executed at the same time on the two hosts")
    for tenant in TENANTS:
        counts = table_counts(warehouse_url, f"tenant_{tenant}")
        assert (counts["placeholder_users"], counts["placeholder_posts"], counts["records"]) == (
            len(USERS), len(POSTS), RECORDS), (tenant, counts)
    durations: dict[str, list[float]] = {}
    for run in runs:
        start_time, end_time = spans[run.run_id]
        durations.setdefault(_host_of(run), []).append(end_time - start_time)
    print("1. runs per worker host (seconds each): "
          + "; ".join(f"{h}: {', '.join(f'{d:.1f}' for d in sorted(ds))}" for h, ds in sorted(durations.items())))
    print(f"   per worker host (1 worker process each), peak connections: {sampler.peak}; "
          f"peak memory (RSS of all its processes, MB): {rss}")
    vhost_connections = len(_rabbitmqctl("list_connections", "-q", "-p", vhost, "name").split("\n")) - 2
    per_run = {("dagster" if db == databases[0] else "warehouse"): round(n / len(runs)) for db, n in sessions.items()}
    print(f"   PostgreSQL sessions opened per run (all processes, the daemon's included): {per_run}; open "
          f"between runs (2 worker processes, the daemon, the code server): dagster {open_now[databases[0]]}, "
          f"warehouse {open_now[wh_db]}")
    print(f"   broker connections of the test's vhost (control host and workers): {vhost_connections}")
    print(f"   scheduled runs and t1's second run done after {time.monotonic() - started:.0f}s")

    # --- 2. a worker host powered off mid-run: FAILURE, then the retry on the other host -------------
    sources.hold("t5")
    tags = {"dagster/partition": f"{day}|t5", "dagster/partition/date": day, "dagster/partition/tenant": "t5",
            "etl/trigger": "manual"}
    launched = subprocess.run([str(BIN / "dagster"), "job", "launch", "-j", "ingest", "-w",
                               str(DEPLOY / "workspace.yaml"), "--tags", json.dumps(tags)],
                              env=control, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert sources.hanging.wait(120), "the run of t5 never asked for page 2 of posts"
    doomed = wait_for("t5's hanging run and its worker", lambda: [
        r for r in instance.get_runs(RunsFilter(tags={"etl/tenant": "t5"}, statuses=[DagsterRunStatus.STARTED]))
        if _host_of(r)], 30)[0]
    # the launcher's health check of a run whose worker is alive: RUNNING, and how long it takes
    from dagster._core.launcher.base import WorkerStatus

    checked_at = time.monotonic()
    health = instance.run_launcher.check_run_worker_health(instance.get_run_by_id(doomed.run_id))
    check_ms = (time.monotonic() - checked_at) * 1000
    assert health.status == WorkerStatus.RUNNING, health
    (victim,) = [h for h in hosts if h.hostname == _host_of(doomed)]
    (survivor,) = [h for h in hosts if h is not victim]
    killed_at = time.monotonic()
    victim.power_off()
    sources.let_go()
    wait_for(f"run {doomed.run_id} to be marked FAILURE",
             lambda: instance.get_run_by_id(doomed.run_id).status == DagsterRunStatus.FAILURE, 90, interval=0.5)
    detected = time.monotonic() - killed_at
    messages = run_messages(instance, doomed.run_id)
    assert f"Celery worker {victim.name}@{victim.hostname}" in messages, messages[-3000:]
    retry = wait_for("its retry", lambda: instance.get_runs(RunsFilter(tags={"etl/parent_run_id": doomed.run_id})),
                     90, interval=0.5)[0]
    assert retry.tags["etl/attempt"] == "2" and retry.tags["dagster/partition"] == f"{day}|t5"
    wait_for(f"retry {retry.run_id} to finish",
             lambda: instance.get_run_by_id(retry.run_id).status.value in FINISHED, 180, interval=0.5)
    retry = instance.get_run_by_id(retry.run_id)
    assert retry.status == DagsterRunStatus.SUCCESS, run_messages(instance, retry.run_id)[-3000:]
    assert _host_of(retry) == survivor.hostname
    counts = table_counts(warehouse_url, "tenant_t5")
    assert (counts["placeholder_users"], counts["placeholder_posts"], counts["records"]) == (
        len(USERS), len(POSTS), RECORDS), counts
    print(f"2. health check of a live run: {check_ms:.0f} ms; {victim.hostname} powered off mid-run: "
          f"FAILURE after {detected:.1f}s, "
          f"retry succeeded on {survivor.hostname} after {time.monotonic() - killed_at:.1f}s")

    # --- 3. nothing left queued, starting or started ------------------------------------------------------
    left = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED,
                                                  DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]))
    assert not left, [(r.run_id, r.status) for r in left]
    # the task states this test left in Redis
    app.backend.client.delete(*[f"celery-task-meta-{r.tags['dagster-celery/task_id']}"
                                for r in instance.get_runs() if "dagster-celery/task_id" in r.tags])
    app.close()
    return instance

