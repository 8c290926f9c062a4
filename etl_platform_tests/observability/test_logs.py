"""Structured logs: the platform's loggers write JSON lines with ETL_LOG_FORMAT=json (and stay
human-readable without it); Dagster's run logs become JSON with deploy/dagster.yaml's
`python_logs`, carrying run id, tenant and partition; no secret in either."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

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
from dagster import DagsterInstance, StaticPartitionsDefinition, asset, materialize
from etl_platform.observability.logs import configure_from_env
configure_from_env()  # as definitions.py does in every run worker

@asset(partitions_def=StaticPartitionsDefinition(["2024-01-02|acme"]))
def probe(context):
    context.log.info("loading with http://api.example/x?api_key=k-999999")
    logging.getLogger("etl_platform.assets.raw").warning("platform line")

with DagsterInstance.get() as instance:
    materialize([probe], instance=instance, partition_key="2024-01-02|acme", tags={"etl/tenant": "acme"})
"""


def test_dagster_run_logs_are_json_with_the_deploy_config(tmp_path: Path) -> None:
    deployed = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    home = tmp_path / "home"
    home.mkdir()
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
