"""Dagster processes as deployed, for the tests that start them: an instance home with the
repository's dagster.yaml (the platform's run queue) on PostgreSQL storage, and `dagster` CLI
commands in the background."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def write_home(home: Path, storage_url: str) -> None:
    """The repo's dagster.yaml (run queue with the platform coordinator and its limits), on
    PostgreSQL storage, dequeuing every second."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    # psycopg2: dagster-postgres's NOTIFY with a bound parameter fails under psycopg 3 (SQLAlchemy 2.1's default)
    config["storage"] = {"postgres": {"postgres_url": storage_url.replace("postgresql://", "postgresql+psycopg2://")}}
    config["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    (home / "workspace.yaml").write_text(
        yaml.safe_dump(
            {"load_from": [{"python_module": {"module_name": "etl_platform.definitions", "location_name": "etl"}}]}
        )
    )


def bin_path(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def cli(cwd: Path, *args: str) -> subprocess.Popen:
    """A `dagster` CLI command in the background (its own session, stopped by PID)."""
    return subprocess.Popen(
        [bin_path("dagster"), *args], cwd=cwd, env={**os.environ}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
