"""What a run writes to Dagster's storage, through the `dagster` CLI as CI runs it, on SQLite and on
dagster-postgres with the deployed event settings: every event through Dagster's public path
(no "Exception while storing event batch", no "did not yield expected outputs", no skipped step),
and a reload that changed nothing writes no materialization and no check result."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, RunsFilter

from etl_platform_tests.support.dagster_storages import STORAGES, dagster_storage

REPO = Path(__file__).resolve().parents[2]
DAGSTER = Path(sys.executable).with_name("dagster")
FORBIDDEN = ("Exception while storing event batch", "Falling back", "did not yield or return expected outputs")


@pytest.fixture(params=STORAGES)
def home(request: pytest.FixtureRequest, tmp_path: Path):
    home = tmp_path / "home"
    yield from (home for _ in dagster_storage(request.param, home))


def _dagster(home: Path, warehouse: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        ETL_TENANTS_FILE=str(REPO / "tenants.yaml"),
        ETL_WAREHOUSE_URL=f"duckdb:///{warehouse}",
        DAGSTER_EVENT_BATCH_SIZE="1000",
        DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS="true",
    )
    sync = subprocess.run([str(Path(sys.executable).with_name("etl-platform")), "tenants", "sync"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert sync.returncode == 0, sync.stderr
    done = subprocess.run([str(DAGSTER), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def test_runs_write_events_through_the_public_path_and_reloads_write_nothing(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    today = dt.datetime.now(dt.timezone.utc).date()
    first_day = today - dt.timedelta(days=2)
    warehouse = tmp_path / "warehouse.duckdb"
    first = _dagster(home, warehouse, "asset", "materialize", "-m", "etl_platform.definitions", "--select", "*",
                     "--partition-range", f"{first_day}|demo...{today}|demo")
    for text in FORBIDDEN:
        assert text not in first, text
    # the hourly schedule's reload of the same days (the demo's files did not change), in process
    from dagster import AssetKey, RunRequest

    from etl_platform_tests.support.orchestration import launch

    for name, value in {"DAGSTER_HOME": str(home), "ETL_TENANTS_FILE": str(REPO / "tenants.yaml"),
                        "ETL_WAREHOUSE_URL": f"duckdb:///{warehouse}", "DAGSTER_EVENT_BATCH_SIZE": "1000",
                        "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true"}.items():
        monkeypatch.setenv(name, value)
    with DagsterInstance.get() as instance:
        raw = [k for k in instance.get_asset_keys() if k.path[0] == "raw" and k.path[1] != "jsonplaceholder"]
        request = RunRequest(
            asset_selection=[*raw, AssetKey(["normalized", "records"])], asset_check_keys=[],
            tags={"etl/trigger": "schedule", "dagster/asset_partition_range_start": f"{first_day}|demo",
                  "dagster/asset_partition_range_end": f"{today}|demo"},
        )
        assert launch(instance, request).success
        captured = capfd.readouterr()
        for text in FORBIDDEN:
            assert text not in captured.out + captured.err, text
        runs = instance.get_runs(RunsFilter(), limit=2)  # newest first
        assert len(runs) == 2 and all(r.status.value == "SUCCESS" for r in runs)
        kinds = {DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_CHECK_EVALUATION,
                 DagsterEventType.STEP_SKIPPED}
        reload, load = (instance.get_records_for_run(r.run_id, of_type=kinds).records for r in runs)
        written = [r for r in load if r.event_log_entry.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION]
        assert len(written) >= 3 * 6  # every asset of the demo, each of the 3 days
        assert [r.event_log_entry.dagster_event_type for r in reload] == []
        assert not [r for r in load if r.event_log_entry.dagster_event_type == DagsterEventType.STEP_SKIPPED]
