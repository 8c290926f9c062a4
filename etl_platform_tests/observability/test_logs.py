"""Structured logs. Invariant: with ETL_LOG_FORMAT=json what every process prints is JSON, one
line per event, and a run's lines say which run, tenant and partition they belong to (once: no
text copy). The platform's loggers, the jobs' `console` logger, the daemon and the code server
(their `--log-format json`) and the sensors' tick logs; without the variable, human-readable;
no secret in either; and the sensor daemon's per-tick chatter stays at DEBUG."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from etl_platform_tests.conftest import create_pg_database, drop_pg_database
from etl_platform_tests.support.dagster_daemon import bin_path, write_home

ROOT = Path(__file__).resolve().parents[2]

PLATFORM_SCRIPT = """
import logging
from etl_platform.observability.logs import configure_from_env, log_context
configure_from_env()  # as every entry point does (definitions.py, cli.py, the API's app factory)
log = logging.getLogger("etl_platform.sources.rest_api")
with log_context(tenant="acme", run_id="run-1", partition="2024-01-02|acme"):
    log.warning("page failed: http://api.example/items?token=tok-123456&page=2")
"""


def run_python(script: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_platform_logs_are_json_only_when_asked() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ETL_LOG_FORMAT"}
    human = run_python(PLATFORM_SCRIPT, env)
    assert human.returncode == 0, human.stderr
    assert "page failed" in human.stderr and json_lines(human.stderr) == []

    done = run_python(PLATFORM_SCRIPT, {**env, "ETL_LOG_FORMAT": "json"})
    assert done.returncode == 0, done.stderr
    (line,) = json_lines(done.stderr)
    assert line["level"] == "warning" and line["logger"] == "etl_platform.sources.rest_api"
    assert line["tenant"] == "acme" and line["run_id"] == "run-1" and line["partition"] == "2024-01-02|acme"
    assert "token=***" in line["msg"] and "tok-123456" not in done.stderr

    wrong = run_python("import etl_platform.definitions", {**env, "ETL_LOG_FORMAT": "xml"})
    assert wrong.returncode != 0 and "ETL_LOG_FORMAT must be json or text" in wrong.stderr


DAGSTER_SCRIPT = """
import logging
from dagster import DagsterInstance, Definitions, StaticPartitionsDefinition, asset, define_asset_job
from etl_platform.observability.logs import configure_from_env
from etl_platform.observability.run_logger import RUN_CONFIG, console_logger
configure_from_env()  # as definitions.py does in every run worker

@asset(partitions_def=StaticPartitionsDefinition(["2024-01-02|acme"]))
def probe(context):
    context.log.info("loading with http://api.example/x?api_key=k-999999")
    logging.getLogger("etl_platform.assets.raw").warning("platform line")

# as the platform's Definitions: its jobs name the `console` logger in their default run config
defs = Definitions(assets=[probe], jobs=[define_asset_job("probe_job", config=RUN_CONFIG)],
                   loggers={"console": console_logger})
with DagsterInstance.get() as instance:
    defs.resolve_job_def("probe_job").execute_in_process(
        instance=instance, partition_key="2024-01-02|acme", tags={"etl/tenant": "acme"})
"""


def test_dagster_run_logs_are_json_once_with_run_tenant_and_partition(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    deployed = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    (home / "dagster.yaml").write_text(yaml.safe_dump(
        {"telemetry": {"enabled": False}, "python_logs": deployed["python_logs"]}))
    env = {**os.environ, "DAGSTER_HOME": str(home), "ETL_LOG_FORMAT": "json"}
    done = run_python(DAGSTER_SCRIPT, env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = json_lines(done.stderr)
    mine = [line for line in lines if "loading with" in line["msg"]]
    assert len(mine) == 1, done.stderr[-3000:]
    line = mine[0]
    assert line["tenant"] == "acme" and line["partition"] == "2024-01-02|acme" and line["run_id"]
    assert line["step_key"] == "probe" and "api_key=***" in line["msg"]
    assert "k-999999" not in "\n".join(json.dumps(x) for x in lines)
    # the platform's own logger inside the step: the run's id, tenant and partition
    (platform,) = [x for x in lines if x["msg"] == "platform line"]
    assert platform["logger"] == "etl_platform.assets.raw" and platform["run_id"] == line["run_id"]
    assert platform["tenant"] == "acme" and platform["partition"] == "2024-01-02|acme"
    # Dagster's events of the run (RUN_START ... RUN_SUCCESS) are JSON lines too, and nothing is text
    assert {"PIPELINE_START", "STEP_SUCCESS", "PIPELINE_SUCCESS"} <= {x.get("event") for x in lines}
    assert not_json(done.stderr) == []


IMPLICIT_JOB_SCRIPT = """
import logging
from dagster import DagsterInstance, Definitions, StaticPartitionsDefinition, asset
from etl_platform.observability.logs import configure_from_env
configure_from_env()  # as definitions.py does in every run worker

@asset(partitions_def=StaticPartitionsDefinition(["2024-01-02|acme"]))
def probe(context):
    context.log.info("loading with http://api.example/x?api_key=k-999999")

# the UI's Materialize and backfills run Dagster's implicit asset job, with a run config that
# names no logger: Dagster then builds its own default console logger
defs = Definitions(assets=[probe])
with DagsterInstance.get() as instance:
    defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, partition_key="2024-01-02|acme", tags={"etl/tenant": "acme"})
"""


def test_runs_of_the_implicit_asset_job_log_json_only(tmp_path: Path) -> None:
    """A run launched from the UI (no logger in its config) prints JSON lines, each once, with its
    run id, tenant and partition, and no coloured text copy."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"telemetry": {"enabled": False}}))
    env = {**os.environ, "DAGSTER_HOME": str(home), "ETL_LOG_FORMAT": "json"}
    done = run_python(IMPLICIT_JOB_SCRIPT, env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not_json(done.stdout + done.stderr) == [], done.stderr[-3000:]
    lines = json_lines(done.stderr)
    (mine,) = [line for line in lines if "loading with" in line["msg"]]
    assert mine["tenant"] == "acme" and mine["partition"] == "2024-01-02|acme" and mine["run_id"]
    assert mine["job_name"] == "__ASSET_JOB" and "k-999999" not in done.stderr
    assert {"PIPELINE_START", "STEP_SUCCESS", "PIPELINE_SUCCESS"} <= {x.get("event") for x in lines}

    text = run_python(IMPLICIT_JOB_SCRIPT, {k: v for k, v in env.items() if k != "ETL_LOG_FORMAT"}, cwd=tmp_path)
    assert text.returncode == 0 and json_lines(text.stderr) == [] and "loading with" in text.stderr


def not_json(text: str) -> list[str]:
    """The non-empty lines of `text` that are not a JSON object."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            if isinstance(json.loads(line), dict):
                continue
        except ValueError:
            pass
        out.append(line)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(args: list[str], env: dict[str, str], cwd: Path, name: str) -> tuple[subprocess.Popen, Path, Path]:
    out, err = cwd / f"{name}.out", cwd / f"{name}.err"
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out.open("w"), stderr=err.open("w"),
                            start_new_session=True)
    return proc, out, err


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.daemon
@pytest.mark.postgres
@pytest.mark.timeout(400)
@pytest.mark.parametrize("daemon_flag", [True, False], ids=["compose", "helm"])
def test_the_daemon_and_the_code_server_write_only_json(tmp_path: Path, daemon_flag: bool) -> None:
    """The deployed pair (docker-compose.yml: `dagster api grpc` and `dagster-daemon run`, both
    with `--log-format json`, the daemon reading the code server over gRPC) on PostgreSQL: the
    onboarding sensor acts (registers the tenants, requests the partition status run, which runs
    in the code server's child process), then both are stopped. Every line either prints is JSON.
    `helm`: the daemon as Dagster's chart starts it, with no --log-format (the chart has no way
    to pass it): ETL_LOG_FORMAT=json alone must make its lines JSON."""
    storage = create_pg_database("etl_logs")
    port = _free_port()
    home = tmp_path / "home"
    write_home(home, storage)
    (home / "workspace.yaml").write_text(yaml.safe_dump(
        {"load_from": [{"grpc_server": {"host": "127.0.0.1", "port": port, "location_name": "etl_platform"}}]}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_")}, "DAGSTER_HOME": str(home),
           "ETL_LOG_FORMAT": "json", "ETL_TENANTS_FILE": str(ROOT / "tenants.yaml"),
           "ETL_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'warehouse.duckdb'}"}
    procs = []
    try:
        code = _start([bin_path("dagster"), "api", "grpc", "--host", "127.0.0.1", "--port", str(port),
                       "--module-name", "etl_platform.definitions", "--location-name", "etl_platform",
                       "--log-format", "json"], env, tmp_path, "code_server")
        procs.append(code)
        deadline = time.monotonic() + 120
        while "Started Dagster code server" not in code[1].read_text():
            assert code[0].poll() is None and time.monotonic() < deadline, code[2].read_text()[-3000:]
            time.sleep(0.5)
        daemon = _start([bin_path("dagster-daemon"), "run", "--workspace", str(home / "workspace.yaml"),
                         *(["--log-format", "json"] if daemon_flag else [])], env, tmp_path, "daemon")
        procs.append(daemon)
        # the onboarding sensor's run (refresh_partition_status) finishes in the code server's child
        deadline = time.monotonic() + 200
        while "PIPELINE_SUCCESS" not in code[2].read_text() + code[1].read_text():
            assert daemon[0].poll() is None and time.monotonic() < deadline, (
                daemon[1].read_text()[-2000:] + daemon[2].read_text()[-2000:] + code[2].read_text()[-3000:])
            time.sleep(1)
        time.sleep(3)
    finally:
        for proc in reversed(procs):
            _stop(proc[0])
        drop_pg_database(storage)
    outputs = {f"{name} {stream}": path.read_text() for name, proc in (("daemon", daemon), ("code server", code))
               for stream, path in (("stdout", proc[1]), ("stderr", proc[2]))}
    for where, text in outputs.items():
        assert not_json(text) == [], f"{where}: " + "\n".join(not_json(text)[:20])
    lines = [json.loads(line) for text in outputs.values() for line in text.splitlines() if line.strip()]
    # the sensor that acted says so (INFO, its tick's own log, with the sensor's name) ...
    assert any(x.get("sensor") == "tenant_onboarding" and x.get("msg", "").startswith("added 2")
               for x in lines), outputs
    # ... the daemon's per-tick lines ("Checking for new runs for sensor", "... skipped") are DEBUG
    def said(x: dict) -> str:  # Dagster's own JSON says "event", the platform's formatter "msg"
        return str(x.get("event") or x.get("msg") or "")

    assert not [x for x in lines if said(x).startswith("Checking for new runs for sensor")]
    assert not [x for x in lines if " skipped: " in said(x)]
    # the daemon's own lines are there, as JSON (with or without its --log-format)
    daemon_lines = [json.loads(line) for line in (outputs["daemon stdout"] + outputs["daemon stderr"]).splitlines()
                    if line.strip()]
    assert any(str(x.get("logger", "")).startswith("dagster.daemon") for x in daemon_lines), daemon_lines[:5]
    # the run's lines: its id, and as JSON only
    run_lines = [x for x in lines if x.get("job_name") == "refresh_partition_status"]
    assert run_lines and all(x.get("run_id") for x in run_lines)


@pytest.mark.timeout(400)
def test_a_demo_run_logs_json_with_run_tenant_and_partition_once(tmp_path: Path) -> None:
    """`etl-platform demo` (the ingest job of today's demo partition) with ETL_LOG_FORMAT=json:
    every log line on stderr is JSON; each line of the run carries its run id, tenant and
    partition; none is printed again as text (stdout holds the command's own report)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "ETL_"))},
           "DAGSTER_HOME": str(tmp_path), "ETL_LOG_FORMAT": "json", "ETL_TENANTS_FILE": str(ROOT / "tenants.yaml"),
           "ETL_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'warehouse.duckdb'}"}
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    done = subprocess.run([bin_path("etl-platform"), "demo", "--log-level", "DEBUG"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=360)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert not_json(done.stderr) == [], "\n".join(not_json(done.stderr)[:20])
    lines = json_lines(done.stderr)
    run_id = done.stdout.split("run ", 1)[1].split(":", 1)[0]
    run_lines = [x for x in lines if x.get("run_id") == run_id]
    assert len(run_lines) >= 5 and {"PIPELINE_START", "PIPELINE_SUCCESS"} <= {x.get("event") for x in run_lines}
    partition = next(x["partition"] for x in run_lines)
    assert partition.endswith("|demo")
    assert all(x.get("tenant") == "demo" and x.get("partition") == partition for x in run_lines), run_lines[:3]
    # one line per event: no message printed twice (as JSON and again as text, or twice as JSON)
    for text_line in done.stdout.splitlines():
        assert not any(x["msg"] and x["msg"] in text_line for x in run_lines if len(x["msg"]) > 20), text_line
    seen = [(x["msg"], x.get("event"), x.get("step_key")) for x in run_lines]
    assert len(seen) == len(set(seen)), [m for m in seen if seen.count(m) > 1][:5]
