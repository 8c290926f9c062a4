"""`etl-platform` as a user meets it: help for every option, a clear refusal outside a Dagster
instance (nothing created), and job names a person can read."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from etl_platform.cli import build_parser, main
from etl_platform.runs.labels import job_label

BIN = Path(sys.executable).parent


def _parsers(parser: argparse.ArgumentParser, path: str = "etl-platform"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_command_and_option_has_help_text() -> None:
    seen = []
    for path, parser in _parsers(build_parser()):
        assert parser.description, f"{path} has no description"
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                assert all(a.help for a in action._choices_actions), f"{path}: a command without help"
                continue
            assert action.help, f"{path} {'/'.join(action.option_strings) or action.dest} has no help text"
            seen.append(f"{path} {action.option_strings[0]}")
    assert "etl-platform runs --limit" in seen and "etl-platform serve --port" in seen


def test_help_runs_for_every_command() -> None:
    for args in (["--help"], ["tenants", "sync", "--help"], ["demo", "--help"], ["runs", "--help"],
                 ["serve", "--help"]):
        proc = subprocess.run([str(BIN / "etl-platform"), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage: etl-platform" in proc.stdout, proc.stderr
        assert "Warning" not in proc.stderr


@pytest.mark.parametrize("command", [["runs"], ["tenants", "list"], ["tenants", "sync"], ["demo"]])
def test_outside_an_instance_the_cli_says_so_and_creates_nothing(tmp_path: Path, command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "ETL_TENANTS_FILE", "ETL_WAREHOUSE_URL")}
    proc = subprocess.run(
        [str(BIN / "etl-platform"), *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no Dagster instance here" in proc.stderr and "DAGSTER_HOME" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no history/, schedules/, storage/, data/


def test_a_missing_dagster_home_is_not_created(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "nowhere"))
    assert main(["runs"]) == 2
    assert "is not a folder" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()


def test_the_project_folder_is_found_from_a_subfolder(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    monkeypatch.setenv("DAGSTER_HOME", "")  # unset for the CLI; restored after the test
    assert main(["runs"]) == 0
    out = capsys.readouterr()
    assert f"using {tmp_path}" in out.err and out.out.startswith("RUN")
    assert os.environ["DAGSTER_HOME"] == str(tmp_path) and not list((tmp_path / "sub").iterdir())


def test_job_labels() -> None:
    assert job_label("__ASSET_JOB") == "assets (launched from the UI or CLI)"
    assert job_label("__ASSET_JOB_0") == "assets (launched from the UI or CLI)"
    assert job_label("ingest") == "ingest (every source)"
    assert job_label("ingest_csv") == "ingest (csv sources)"
    assert job_label("my_job") == "my_job" and job_label(None) == "-"


def test_quiet_filters_the_known_dagster_warnings_and_no_others() -> None:
    code = (
        "import warnings\nfrom etl_platform.observability.warnings import install\ninstall()\n"
        "from dagster import BetaWarning, PreviewWarning\n"
        "warnings.warn('Parameter `backfill_policy` of function `asset` is currently in beta, and may change', "
        "BetaWarning)\n"
        "warnings.warn('Specifying a partitions_def on an AssetCheckSpec is currently in preview', PreviewWarning)\n"
        "warnings.warn('Parameter `owners` of function `job` is currently in beta', BetaWarning)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "owners" in proc.stderr  # a warning the platform does not know of still shows
    assert "backfill_policy" not in proc.stderr and "AssetCheckSpec" not in proc.stderr
