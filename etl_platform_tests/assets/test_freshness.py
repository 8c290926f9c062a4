"""The tenant freshness check: every active tenant, on its own hourly job; never in the runs
that load partitions (their cost stays their own)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from dagster import AssetKey, AssetSelection, DagsterEventType, DagsterInstance, define_asset_job

from etl_platform.definitions import build_definitions
from etl_platform_tests.support.orchestration import csv_tenant
from etl_platform_tests.support.platform_runs import materialize

DAY = dt.date.today()


def _freshness(instance: DagsterInstance, run_id: str):
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    found = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    return next(e for e in found if e.check_name == "tenant_freshness")


def test_freshness_names_stale_tenants_and_stays_in_a_runs_scope(platform_env, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ETL_START_DATE", (DAY - dt.timedelta(days=5)).isoformat())
    tenants = [
        csv_tenant("fresh", tmp_path / "data", DAY, 1),
        csv_tenant("idle", tmp_path / "data", DAY, 1),
        {**csv_tenant("paused", tmp_path / "data", DAY, 1), "paused": True},
    ]
    platform_env(tenants, f"duckdb:///{tmp_path / 'wh.duckdb'}")
    with DagsterInstance.get() as instance:
        assert materialize(instance, "fresh", DAY).success
        defs = build_definitions()
        # its own job: every active tenant; `idle` never loaded, `paused` is not judged
        result = defs.resolve_job_def("tenant_freshness").execute_in_process(instance=instance)
        check = _freshness(instance, result.run_id)
        assert not check.passed and check.metadata["stale_tenants"].value == ["idle"]
        assert check.metadata["tenants"].value == 2 and check.metadata["age_hours"].value["fresh"] < 1
        # selected with every asset for one partition (as `--select '*'` does): the run's one step
        # judges the run's own tenant (no step of its own that the run would skip)
        everything = AssetSelection.all(include_sources=False) | AssetSelection.all_asset_checks()
        job = define_asset_job("everything", selection=everything).resolve(asset_graph=defs.resolve_asset_graph())
        run = job.execute_in_process(instance=instance, partition_key=f"{DAY}|fresh")
        assert run.success
        checks = [e for e in run.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        freshness = [e.event_specific_data for e in checks if e.event_specific_data.check_name == "tenant_freshness"]
        assert len(freshness) == 1 and freshness[0].passed
        assert freshness[0].metadata["tenants"].value == 1
        assert list(freshness[0].metadata["age_hours"].value) == ["fresh"]
        assert not [e for e in run.all_events if e.event_type_value == "STEP_SKIPPED"]
        assert AssetKey(["normalized", "records"]) in {m.asset_key for m in run.get_asset_materialization_events()}
