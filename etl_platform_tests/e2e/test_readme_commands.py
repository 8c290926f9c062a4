"""Every command in the README runs: the README's bash blocks (parsed from README.md itself, see
support/readme_commands.py) run in README order in one shell, as a reader pastes them into a terminal of an
activated venv, in a temporary copy of the project folder (so `export DAGSTER_HOME=$PWD` is a
temporary Dagster instance and `data/` a temporary warehouse).

What the test changes, and why:
- the project folder is a temporary folder of links to the repository's files, `.venv` links to
  the virtualenv running pytest, and `tenants.yaml` is a copy whose JSONPlaceholder URL points
  at a local replay of JSONPlaceholder (ETL_FIXTURES): tests never call the internet;
- fixed ports (8000) become free ports; a step ending in `&` runs in the background and the
  next step waits until its port answers;
- `curl` fails on HTTP errors (`--fail-with-body`), as a reader notices an error answer;
- every step must exit 0, and no step may print a Python warning (a quiet CLI).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml

from etl_platform_tests.conftest import PG_ADMIN_URL, drop_pg_database
from etl_platform_tests.support.http_servers import LocalServer
from etl_platform_tests.support.jsonplaceholder import serve_jsonplaceholder
from etl_platform_tests.support.readme_commands import BLOCK_NOT_RUN, NOT_RUN, README, Step, readme_steps

REPO = README.parent
# runtime state of the repository's own instance, never linked into the temporary project
LOCAL_STATE = {".git", ".venv", "history", "schedules", "storage", "logs", "data", ".logs_queue", ".telemetry",
               ".nux", ".dlt_pipelines", ".dagster-pg", ".pytest_cache", ".ruff_cache", ".env", "tenants.yaml"}
FIXED_PORTS = ("8000",)
WARNING = re.compile(r"\b\w*Warning: ")

PREAMBLE = r"""
set -eo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null' EXIT  # no background step: nothing to kill
curl() { command curl --fail-with-body --max-time 60 "$@" && echo; }
readme_wait_port() {  # the background step $2 answers on port $1 (at most 120 s)
  for _ in $(seq 1 1200); do
    command curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" && return 0
    kill -0 "$2" 2>/dev/null || { echo "background step exited before port $1 answered" >&2; return 1; }
    sleep 0.1
  done
  echo "port $1 did not answer" >&2; return 1
}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _project(tmp_path: Path, jsonplaceholder_url: str) -> Path:
    """A temporary project folder: links to the repository's files, the venv, a tenants file copy."""
    project = tmp_path / "project"
    project.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in LOCAL_STATE:
            (project / entry.name).symlink_to(entry)
    (project / ".venv").symlink_to(Path(sys.prefix))
    tenants = (REPO / "tenants.yaml").read_text()
    assert "https://jsonplaceholder.typicode.com" in tenants
    (project / "tenants.yaml").write_text(tenants.replace("https://jsonplaceholder.typicode.com", jsonplaceholder_url))
    return project


def _script(steps: list[Step], ports: dict[str, str]) -> str:
    lines = [PREAMBLE]
    for step in steps:
        if step.not_run:
            continue
        command = step.command
        for fixed, free in ports.items():
            command = re.sub(rf"(--port |127\.0\.0\.1:|localhost:){fixed}\b", rf"\g<1>{free}", command)
        marker = f"README.md:{step.line} ({step.section}): {step.command}"
        lines.append(f"printf '\\n::: %s (at %s s)\\n' {shlex.quote(marker)} \"$SECONDS\"")
        if step.background:
            port = re.search(r"--port (\d+)", command)
            assert port, f"README.md:{step.line}: a background step without --port: the test cannot wait for it"
            lines.append(f"{command} &")
            lines.append(f"readme_wait_port {port.group(1)} $!")
        else:
            lines.append(command)
    return "\n".join(lines) + "\n"


def _env(project: Path) -> dict[str, str]:
    """The user's environment in an activated venv: no platform settings, the venv's bin first."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ETL_", "DAGSTER_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{project / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(project / ".venv")
    return env


def test_the_readme_is_extracted_faithfully() -> None:
    """The extract holds the README's commands, and runs all but the few NOT_RUN explains."""
    steps = readme_steps()
    commands = [s.command for s in steps]
    assert ".venv/bin/etl-platform demo" in commands
    assert any("--partition-range" in c for c in commands) and any(c.startswith("curl ") for c in commands)
    reasons = {why for _p, why in NOT_RUN + BLOCK_NOT_RUN}
    skipped = [s for s in steps if s.not_run]
    assert all(s.not_run in reasons for s in skipped)
    assert len([s for s in skipped if s.not_run not in dict(BLOCK_NOT_RUN).values()]) <= 10
    assert len([s for s in steps if not s.not_run]) >= 10
    # the parser itself: comments, continuations, && chains, quotes and background steps
    sample = "```bash\nexport A=1 && echo 'a && b' \\\n  \"# not a comment\"  # a comment\nserve --port 1 &\n```\n"
    assert [(s.line, s.command, s.background) for s in readme_steps("# T\n" + sample)] == [
        (3, "export A=1", False), (3, "echo 'a && b' \"# not a comment\"", False), (5, "serve --port 1", True)
    ]


@pytest.mark.readme
@pytest.mark.timeout(1500)
def test_every_readme_command_runs(tmp_path: Path, fixtures_dir: Path) -> None:
    steps = readme_steps()
    for step in steps:
        if step.not_run:
            print(f"not run: README.md:{step.line} {step.command!r}: {step.not_run}")
    with LocalServer() as server:
        serve_jsonplaceholder(server, fixtures_dir / "jsonplaceholder")
        project = _project(tmp_path, server.url)
        script = project / "readme_commands.sh"
        script.write_text(_script(steps, {port: str(_free_port()) for port in FIXED_PORTS}))
        log = tmp_path / "readme_commands.log"
        with log.open("w") as out:
            proc = subprocess.Popen(["bash", str(script)], cwd=project, env=_env(project), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout=1400)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
        output = log.read_text()
    print("\n".join(line for line in output.splitlines() if line.startswith("::: ")))  # steps, with times
    last = output.rsplit("\n::: ", 1)[-1].split("\n", 1)[0]
    assert code == 0, f"failed at {last}\n...{output[-6000:]}"
    ran = output.count("\n::: ")
    assert ran == len([s for s in steps if not s.not_run])
    warnings = [line for line in output.splitlines() if WARNING.search(line)]
    assert not warnings, "\n".join(warnings)
    assert (project / "data" / "tenants" / "demo.duckdb").is_file()  # the README's instance, in the temporary folder


LOCAL_PG_SECTION = "On a local PostgreSQL"
LOCAL_PG_DATABASES = ("etl_dagster", "etl_warehouse")  # the README's names, made unique per test run
BATCH_FALLBACK = ("Falling back", "Exception while storing event batch")


def _run(script_text: str, project: Path, log: Path, timeout: int) -> tuple[int, str]:
    script = project / "readme_commands.sh"
    script.write_text(script_text)
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", str(script)], cwd=project, env=_env(project), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return code, log.read_text()


@pytest.mark.readme
@pytest.mark.postgres
@pytest.mark.timeout(900)
def test_the_local_postgres_recipe_runs(tmp_path: Path) -> None:
    """README "On a local PostgreSQL", as written, against the machine's PostgreSQL (127.0.0.1:5432,
    as the README says) with fresh databases, dropped afterwards. Invariant: what the run reports
    is what happened: the demo's records are in the warehouse database, the run is listed as
    SUCCESS, and no event batch fell back (the events went to dagster-postgres as written)."""
    steps = [s for s in readme_steps() if s.section == LOCAL_PG_SECTION]
    assert steps and all(s.not_run for s in steps), "the recipe runs here only (not in the other test)"
    names = {name: f"{name}_{uuid.uuid4().hex[:8]}" for name in LOCAL_PG_DATABASES}
    pattern = re.compile(r"\b(" + "|".join(LOCAL_PG_DATABASES) + r")\b")
    run = [Step(s.line, s.section, pattern.sub(lambda m: names[m.group(1)], s.command), s.background) for s in steps]
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    project = _project(tmp_path, "http://127.0.0.1:9")  # the demo tenant only: nothing fetched
    try:
        code, output = _run(_script(run, {}), project, tmp_path / "local_postgres.log", 800)
        records = None
        if code == 0:
            with psycopg.connect(f"{base}/{names['etl_warehouse']}", connect_timeout=10) as conn:
                records = conn.execute("SELECT count(*) FROM tenant_demo.records").fetchone()[0]
    finally:
        for name in names.values():
            drop_pg_database(f"{base}/{name}")
    print("\n".join(line for line in output.splitlines() if line.startswith("::: ")))
    last = output.rsplit("\n::: ", 1)[-1].split("\n", 1)[0]
    assert code == 0, f"failed at {last}\n...{output[-6000:]}"
    assert records and records > 0
    listed = output.rsplit("etl-platform runs", 1)[1]
    assert "SUCCESS" in listed and "|demo" in listed and "FAILURE" not in listed, listed
    assert not [line for line in output.splitlines() if any(b in line for b in BATCH_FALLBACK)]
    assert not [line for line in output.splitlines() if WARNING.search(line)]
    # the recipe's instance: the repository's run queue, Dagster's default (local) run launcher
    local = yaml.safe_load((REPO / "deploy" / "dagster.local-postgres.yaml").read_text())
    assert local["run_coordinator"] == yaml.safe_load((REPO / "dagster.yaml").read_text())["run_coordinator"]
    assert "run_launcher" not in local
