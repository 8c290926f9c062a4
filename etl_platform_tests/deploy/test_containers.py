"""The Compose stack for real, in Docker: the image built from the project's Dockerfile, the
services of docker-compose.yml, every run in a container of its own (PlatformDockerRunLauncher).

A test override (written here) puts every container on the host's network (all traffic on
127.0.0.1, free ports), names a fresh project (so fresh volumes: a new PostgreSQL cluster) and
mounts deploy/dagster.yaml with faster polling and a label on the runs' containers; a .env
file holds the stack's settings and the tenant's secret. Then:

1. `docker compose build` of the Dockerfile (offline: no frontend from Docker Hub); `docker
   compose up -d`: every service's own HEALTHCHECK (Prometheus's too) reports healthy, `init`
   exits 0.
2. A partition run launched through the webserver's GraphQL API runs in its own container
   (limits, network, the code server's volumes): run storage, warehouse rows, the read API's
   /health and /data are checked; the container is gone afterwards. A run that lives well past
   the dead-run sweep's grace period (about 70 s, on the host network, where every container has
   the host's name) succeeds in exactly one container, and run storage never shows it FAILURE.
3. The run's container is killed mid-run: run monitoring fails the run, the retry sensor
   re-launches it, and the retry succeeds. Before that, the container's environment holds its
   tenant's source secret and no other tenant's, no read-API key, admin key or alert channel
   (which the daemon holds).
4. The code server's container crashes mid-run (its processes are killed, Docker restarts it):
   the run, in its own container, carries on and succeeds; the code server comes back healthy.
Along the way: Prometheus (deploy/compose.observability.yaml, the shipped configuration and rules)
scrapes the read API and the exporter.
5. `docker compose down` and `up` again: runs, the warehouse and the API's answers are still
   there (the PostgreSQL volume), and a new run succeeds.
The stack, its volumes and any run container are removed at the end.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from etl_platform_tests.support.compose_stack import ROOT, ComposeStack, docker, engine_problem
from etl_platform_tests.support.deployed_stack import (
    API_KEY,
    DAY,
    FINISHED,
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
from etl_platform_tests.support.http_servers import LocalServer, Response
from etl_platform_tests.support.platform_runs import table_counts, write_tenants

pytestmark = [pytest.mark.docker, pytest.mark.e2e, pytest.mark.timeout(2400)]

IMAGE = "etl-platform:container-test"
SERVICES = ("postgres", "user-code", "webserver", "daemon", "api", "exporter", "prometheus")
RUN_MEMORY, RUN_CPUS = "3g", "1.5"
STACK_DIR = "/opt/dagster"
RECORDS = len(USERS) + len(POSTS)
# secrets in the stack's .env: the test tenant's source token, and what a run must never hold
SOURCE_TOKEN = secrets.token_hex(8)
FOREIGN = {  # another tenant's source token and read key, the platform's admin key and alert channel
    "OTHER_SOURCE_TOKEN": secrets.token_hex(8), "ETL_OTHER_API_KEY": secrets.token_hex(8),
    "ETL_ADMIN_API_KEY": secrets.token_hex(8),
}


class Tagged:
    """A YAML node with a Compose merge tag (!reset, !override)."""

    def __init__(self, tag: str, value: list) -> None:
        self.tag, self.value = tag, value


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Tagged, lambda dumper, node: dumper.represent_sequence(node.tag, node.value))


@pytest.fixture(scope="module")
def engine() -> None:
    problem = engine_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)


def _instance_config(project: str) -> dict[str, Any]:
    """deploy/dagster.yaml with faster polling; the runs' containers labelled with the project."""
    config = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    config["run_monitoring"]["poll_interval_seconds"] = 2
    config["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1
    config["run_coordinator"]["config"]["user_code_failure_retry_delay"] = 2
    config["run_launcher"]["config"]["container_kwargs"]["labels"]["etl-ctest"] = project
    return config


def _write_stack(
    tmp: Path, project: str, tenants: Path, ports: dict[str, int], password: str, alert_url: str
) -> tuple[Path, Path]:
    """The .env and the override file of the test stack."""
    instance = tmp / "dagster.yaml"
    instance.write_text(yaml.safe_dump(_instance_config(project), sort_keys=False))
    settings = {
        "POSTGRES_USER": "etl", "POSTGRES_PASSWORD": password, "DAGSTER_PG_DB": "dagster",
        "ETL_WAREHOUSE_DB": "etl_warehouse", "ETL_IMAGE": IMAGE, "ETL_TENANTS_FILE_HOST": str(tenants),
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        "ETL_RUN_MEMORY_LIMIT": RUN_MEMORY, "ETL_RUN_CPUS": RUN_CPUS, "DAGSTER_MAX_CONCURRENT_RUNS": "4",
        "ETL_RETRY_MAX_ATTEMPTS": "3", "ETL_RETRY_BASE_DELAY_SECONDS": "1", "ETL_RETRY_SENSOR_INTERVAL_SECONDS": "2",
        # no scheduled runs in the middle of the test
        "ETL_HOURLY_CRON": '"0 0 1 1 *"', "ETL_REBACKFILL_CRON": '"0 0 1 1 *"',
        "ETL_E2E_API_KEY": API_KEY,  # the tenant's secret (api_key_env), as a user's .env holds it
        "E2E_SOURCE_TOKEN": SOURCE_TOKEN, **FOREIGN, "ETL_ALERT_WEBHOOK_URL": alert_url,
        # the dead-run sweep looks often: a live run it took for dead would be failed within seconds
        "ETL_DEAD_RUN_GRACE_SECONDS": "5", "ETL_DEAD_RUN_SENSOR_INTERVAL_SECONDS": "5",
    }
    env_file = tmp / "stack.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    host = {
        "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(ports["pg"]),
        "DAGSTER_CODE_SERVER_HOST": "127.0.0.1", "DAGSTER_CODE_SERVER_PORT": str(ports["grpc"]),
        "ETL_WAREHOUSE_URL": f"postgresql://etl:{password}@127.0.0.1:{ports['pg']}/etl_warehouse",
        "ETL_RUN_NETWORK": "host",
    }

    def platform(interval: str = "10s", environment: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        return {"network_mode": "host", "env_file": Tagged("!override", [str(env_file)]),
                "environment": {**host, **(environment or {})},
                # a loaded CI machine (load 25 on 2 cores) takes over 30 s to start a liveness check
                "healthcheck": {"interval": interval, "timeout": "120s"},
                "volumes": [f"{instance}:{STACK_DIR}/dagster_home/dagster.yaml:ro"], **extra}

    # Prometheus of the stack, on the host network: the shipped configuration and rules, with its
    # targets at the test's ports
    prometheus = tmp / "prometheus"
    prometheus.mkdir()
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="2s", evaluation_interval="2s")
    targets = {"etl-api": ports["api"], "etl-exporter": ports["exporter"]}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{targets[job['job_name']]}"]}]
    (prometheus / "prometheus.yml").write_text(yaml.safe_dump(config))
    (prometheus / "rules.yml").write_text((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    shutil.copytree(ROOT / "deploy" / "prometheus" / "tokens", prometheus / "tokens")  # the (empty) bearer tokens

    workspace = f"{STACK_DIR}/app/deploy/workspace.yaml"
    exporter_url = f"http://127.0.0.1:{ports['exporter']}/metrics"
    services = {
        "postgres": {"network_mode": "host", "environment": {"PGPORT": str(ports["pg"])},
                     "healthcheck": {"interval": "2s"}},
        "init": platform(),
        "user-code": platform(
            "5s", command=["dagster", "api", "grpc", "--host", "127.0.0.1", "--port", str(ports["grpc"]),
                           "--module-name", "etl_platform.definitions", "--location-name", "etl_platform"]),
        "webserver": platform(
            environment={"DAGSTER_WEBSERVER_PORT": str(ports["web"])}, ports=Tagged("!reset", []),
            command=["dagster-webserver", "--host", "127.0.0.1", "--port", str(ports["web"]),
                     "--workspace", workspace]),
        "daemon": platform(),
        "api": platform(
            environment={"ETL_API_PORT": str(ports["api"])}, ports=Tagged("!reset", []),
            command=["etl-platform", "serve", "--host", "127.0.0.1", "--port", str(ports["api"])]),
        "exporter": platform(
            command=["etl-platform", "exporter", "--host", "127.0.0.1", "--port", str(ports["exporter"])],
            healthcheck={"interval": "5s", "test": Tagged("!override", [
                "CMD", "python", "-c", f"import urllib.request as u; u.urlopen('{exporter_url}', timeout=5)"])}),
        "prometheus": {
            "network_mode": "host", "ports": Tagged("!reset", []),
            "command": Tagged("!override", [
                "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
                f"--web.listen-address=127.0.0.1:{ports['prom']}"]),
            "volumes": Tagged("!override", [f"{prometheus}:/etc/prometheus:ro", "prometheus-data:/prometheus"]),
            "healthcheck": {"interval": "2s", "test": Tagged("!override", [
                "CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{ports['prom']}/-/healthy"])},
        },
    }
    override = tmp / "docker-compose.test.yml"
    override.write_text(yaml.dump({"services": services}, Dumper=_Dumper, sort_keys=False))
    return env_file, override


def _tenants(base_url: str) -> list[dict[str, Any]]:
    """The test tenant, its source behind a bearer token; and another (paused) tenant with its own."""
    ours = tenant_config(base_url)
    ours["sources"][0]["auth"] = {"type": "bearer", "token_env": "E2E_SOURCE_TOKEN"}
    other = tenant_config(base_url, "other_org", paused=True)
    other["api_key_env"] = "ETL_OTHER_API_KEY"
    other["sources"][0]["auth"] = {"type": "bearer", "token_env": "OTHER_SOURCE_TOKEN"}
    return [ours, other]


def _wait_healthy(stack: ComposeStack, timeout: float = 420) -> None:
    try:
        wait_for("every service healthy", lambda: set(stack.healths(SERVICES).values()) == {"healthy"}, timeout, 2)
    except AssertionError as exc:  # which one, and what its last healthchecks said
        healths = stack.healths(SERVICES)
        checks = {s: (stack.inspect(stack.container(s))["State"].get("Health") or {}).get("Log", [])[-2:]
                  for s, h in healths.items() if h != "healthy"}  # fmt: skip
        raise AssertionError(f"{exc}: {healths}; last checks: {checks}") from None
    assert stack.health("init") == "exited(0)"


def test_compose_stack_in_docker(engine: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    timings: dict[str, float] = {}

    def mark(step: str) -> None:
        timings[step] = round(time.monotonic() - started, 1)
        print(f"{step}: {timings[step]}s", flush=True)

    project = f"etl-ctest-{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in ("pg", "grpc", "web", "api", "exporter", "prom")}
    password = secrets.token_hex(12)
    tmp_path.chmod(0o755)
    with LocalServer() as server:
        source = SlowSource(server)
        server.route("/alerts", lambda request: Response(200, {}))
        tenants = write_tenants(tmp_path / "tenants.yaml", _tenants(server.url))
        env_file, override = _write_stack(tmp_path, project, tenants, ports, password, f"{server.url}/alerts")
        stack = ComposeStack(project, override, env_file)
        # as the README builds it (`docker compose up -d --build`): BuildKit through Compose, which
        # would first pull a `# syntax=` frontend from Docker Hub
        stack.compose("build", "user-code", timeout=1800)
        mark("image built")
        instance = None
        try:
            instance = _scenarios(stack, source, tmp_path, ports, password, monkeypatch, mark, project,
                                  f"{server.url}/alerts")
        except BaseException:
            print(f"\n===== compose logs (tail) =====\n{stack.logs(120)}")
            raise
        finally:
            source.recover()
            if instance is not None:
                instance.dispose()
            stack.down(volumes=True)
            leftovers = docker("ps", "-aq", "--filter", f"label=etl-ctest={project}").split()
            if leftovers:
                docker("rm", "-f", *leftovers)
            assert not leftovers, f"run containers left behind: {leftovers}"
    mark("done")


def _scenarios(stack, source, tmp, ports, password, monkeypatch, mark, project, alert_url):
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster_graphql import DagsterGraphQLClient

    warehouse_url = f"postgresql://etl:{password}@127.0.0.1:{ports['pg']}/etl_warehouse"
    home = tmp / "home"  # the test's view of the stack's Dagster storage
    home.mkdir()
    (home / "dagster.yaml").write_text((tmp / "dagster.yaml").read_text())
    for key, value in {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(ports["pg"]), "DAGSTER_PG_USER": "etl",
                       "DAGSTER_PG_PASSWORD": password, "DAGSTER_PG_DB": "dagster",
                       "DAGSTER_MAX_CONCURRENT_RUNS": "4"}.items():
        monkeypatch.setenv(key, value)
    api = f"http://127.0.0.1:{ports['api']}"
    auth = {"Authorization": f"Bearer {API_KEY}"}

    # --- 1. up: every service healthy by its image's HEALTHCHECK -------------------------------
    stack.compose("up", "-d", "--no-build", timeout=900)
    _wait_healthy(stack)
    init_log = stack.compose("logs", "--no-color", "init").stdout
    assert "created the warehouse database" in init_log and re.search(rf"added .*\b{TENANT}\b", init_log), init_log
    mark("stack up and healthy")

    def targets_up() -> bool:
        status, body = http_json(f"http://127.0.0.1:{ports['prom']}/api/v1/targets")
        active = body["data"]["activeTargets"] if status == 200 else []
        return len(active) == 2 and all(t["health"] == "up" for t in active)

    wait_for("Prometheus scraping the read API and the exporter", targets_up, 120)
    status, rules = http_json(f"http://127.0.0.1:{ports['prom']}/api/v1/rules")
    assert status == 200 and sum(len(g["rules"]) for g in rules["data"]["groups"]) >= 4, rules
    mark("Prometheus scrapes the stack and evaluates the rules")
    instance = DagsterInstance.from_config(str(home))
    client = DagsterGraphQLClient("127.0.0.1", port_number=ports["web"], timeout=60)
    launch = graphql_launcher(client)

    def container_of(run_id: str) -> str:
        return wait_for(f"run {run_id}'s container", lambda: instance.get_run_by_id(run_id).tags.get(
            "docker/container_id"), 120)

    def gone(container: str) -> bool:
        return not docker("ps", "-aq", "--no-trunc", "--filter", f"id={container}")

    # --- 2. a partition run, in its own container ---------------------------------------------------
    first = launch()
    assert wait_finished(client, first, 600) == "SUCCESS", run_messages(instance, first)[-3000:]
    run = instance.get_run_by_id(first)
    assert run.tags["dagster/image"] == IMAGE and run.tags["dagster/partition"] == f"{DAY}|{TENANT}"
    assert "Launching run in a new container" in run_messages(instance, first)
    wait_for("the finished run's container to be removed", lambda: gone(run.tags["docker/container_id"]), 60)
    counts = table_counts(warehouse_url, f"tenant_{TENANT}")
    assert (counts["placeholder_users"], counts["placeholder_posts"], counts["records"]) == (
        len(USERS), len(POSTS), RECORDS), counts
    status, body = http_json(f"{api}/health", auth)  # the tenant's key: its own last run
    assert status == 200 and body["components"]["daemon"]["ok"], body
    assert body["last_runs"][TENANT]["status"] == "SUCCESS", body
    status, page = http_json(f"{api}/data?limit=500", auth)
    assert status == 200 and len(page["data"]) == RECORDS, page
    mark("run 1 succeeded in its own container")

    # --- 2b. a run that lives well past the dead-run grace period, on the host network ----------
    from dagster import DagsterEventType, RunsFilter

    source.hang()
    long_run = launch()
    statuses: set[str] = set()
    containers: dict[str, str] = {}  # every container of the stack's runs seen meanwhile: id -> run id

    def look() -> None:
        statuses.add(instance.get_run_by_id(long_run).status.value)
        listed = docker("ps", "-a", "--no-trunc", "--filter", f"label=etl-ctest={project}",
                        "--format", '{{.ID}} {{.Label "dagster/run_id"}}')
        containers.update(line.split(" ", 1) for line in listed.splitlines() if " " in line)

    assert source.hanging.wait(300), "the long run never asked for page 2"
    held = time.monotonic()
    while time.monotonic() - held < 50:  # the request hangs 50 s (under dlt's 60 s timeout)
        look()
        time.sleep(1)
    source.recover()
    wait_for(f"run {long_run} to finish", lambda: (look(), client.get_run_status(long_run).value in FINISHED)[1],
             600, 1)
    look()
    record = instance.get_run_record_by_id(long_run)
    lived = record.end_time - record.start_time
    assert record.dagster_run.status == DagsterRunStatus.SUCCESS, run_messages(instance, long_run)[-3000:]
    assert lived > 50, lived  # the 50 s hang: far past the sweep's 5 s grace, which it ran against every 5 s
    assert "FAILURE" not in statuses, statuses
    failures = [e for e in instance.all_logs(long_run) if e.is_dagster_event
                and e.dagster_event.event_type == DagsterEventType.RUN_FAILURE]  # fmt: skip
    assert not failures, [e.message for e in failures]
    assert list(containers.values()) == [long_run], containers  # exactly one container, no other attempt
    assert not instance.get_run_records(RunsFilter(tags={"etl/parent_run_id": long_run}))
    mark(f"a {lived:.0f} s run on the host network succeeded in one container")

    # --- 3. the run's container is killed mid-run: FAILURE, then a retry ------------------------
    source.hang()
    second = launch()
    assert source.hanging.wait(300), "the second run never asked for page 2"
    container = container_of(second)
    info = stack.inspect(container)
    assert info["HostConfig"]["Memory"] == 3 * 1024**3 and info["HostConfig"]["NanoCpus"] == 1_500_000_000, info
    assert info["HostConfig"]["NetworkMode"] == "host"
    mounts = {m["Destination"] for m in info["Mounts"]}
    assert {f"{STACK_DIR}/app/tenants.yaml", f"{STACK_DIR}/dagster_home/storage",
            f"{STACK_DIR}/dagster_home/data"} <= mounts, mounts
    env = dict(item.split("=", 1) for item in info["Config"]["Env"])
    assert env["E2E_SOURCE_TOKEN"] == SOURCE_TOKEN and env["ETL_ROLE"] == "run", sorted(env)
    assert env["ETL_WAREHOUSE_URL"] == warehouse_url and env["DAGSTER_PG_PORT"] == str(ports["pg"])
    # least privilege: no other tenant's secret, no read-API key (its own neither: the API serves
    # it), no admin key, no alert channel (the daemon's sensors send alerts), by name and by value
    withheld = {**FOREIGN, "ETL_E2E_API_KEY": API_KEY, "ETL_ALERT_WEBHOOK_URL": alert_url}
    assert not set(withheld) & set(env) and not set(withheld.values()) & set(env.values()), sorted(env)
    daemon_env = dict(i.split("=", 1) for i in stack.inspect(stack.container("daemon"))["Config"]["Env"])
    assert all(daemon_env.get(name) == value for name, value in withheld.items())  # the launcher had them
    docker("kill", container)
    source.recover()
    assert wait_finished(client, second, 120) == "FAILURE"
    assert f"Could not find container with ID {container}" in run_messages(instance, second) or (
        "Container status is " in run_messages(instance, second))
    retry = wait_retry_of(instance, second, 120)
    assert retry.tags["etl/attempt"] == "2" and retry.tags["etl/trigger"] == "retry"
    assert retry.tags["dagster/partition"] == f"{DAY}|{TENANT}"
    assert wait_finished(client, retry.run_id, 600) == "SUCCESS", run_messages(instance, retry.run_id)[-3000:]
    # the retry sensor notes the launched retry on the failed run at its next tick
    wait_for("the failed run to name its retry", lambda: instance.get_run_by_id(second).tags.get(
        "etl/retry", "").startswith("retried"), 60)
    mark("run 2 (container killed) retried")

    # --- 4. the code server crashes mid-run: the run, in its own container, carries on ----------
    source.hang()
    third = launch()
    assert source.hanging.wait(300), "the third run never asked for page 2"
    container = container_of(third)
    code_server = stack.container("user-code")
    restarts = stack.inspect(code_server)["RestartCount"]
    # every process of the container but its init (tini), which then exits: a crash, not a stop
    docker("exec", code_server, "python", "-c", "import os, signal; os.kill(-1, signal.SIGKILL)", check=False)
    wait_for("Docker to restart the code server", lambda: stack.inspect(code_server)["RestartCount"] > restarts, 60)
    assert stack.inspect(container)["State"]["Running"], "the run's container died with the code server"
    assert instance.get_run_by_id(third).status == DagsterRunStatus.STARTED
    source.recover()
    assert wait_finished(client, third, 600) == "SUCCESS", run_messages(instance, third)[-3000:]
    wait_for("the code server healthy again", lambda: stack.health("user-code") == "healthy", 300, 2)
    mark("run 3 survived the code server's crash")

    # --- 5. down and up again: nothing lost ------------------------------------------------------------
    before = {r.run_id: r.status for r in instance.get_runs()}
    assert len(before) == 5, before
    instance.dispose()
    stack.down()
    assert not stack.compose("ps", "-aq").stdout.strip()
    stack.compose("up", "-d", "--no-build", timeout=900)
    _wait_healthy(stack)
    assert "warehouse database 'etl_warehouse' exists" in stack.compose("logs", "--no-color", "init").stdout
    mark("stack down and up again")
    instance = DagsterInstance.from_config(str(home))
    assert {r.run_id: r.status for r in instance.get_runs()} == before
    assert table_counts(warehouse_url, f"tenant_{TENANT}")["records"] == RECORDS
    status, page = wait_for("the read API", lambda: (r := http_json(f"{api}/data?limit=500", auth))[0] == 200 and r,
                            60)
    assert len(page["data"]) == RECORDS, page
    fourth = launch()
    assert wait_finished(client, fourth, 600) == "SUCCESS", run_messages(instance, fourth)[-3000:]
    assert table_counts(warehouse_url, f"tenant_{TENANT}")["records"] == RECORDS  # merged, not duplicated
    mark("run 4 succeeded after the restart")
    for record in instance.get_run_records():  # for sizing (README): a run's container, start to end
        run = record.dagster_run
        waited = (record.start_time or 0) - record.create_timestamp.timestamp()
        print(f"run {run.run_id[:8]} {run.status.value}: {(record.end_time or 0) - (record.start_time or 0):.1f}s "
              f"from start to end, {waited:.1f}s from submission to start", flush=True)
    return instance
