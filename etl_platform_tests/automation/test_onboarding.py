"""Tenant onboarding: the sensor and `etl-platform tenants sync|list` on a real instance."""

import os
import subprocess
import sys
import time
from pathlib import Path

from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context

from etl_platform.automation.onboarding import registered_tenants, sync_tenants
from etl_platform.automation.sensors import tenant_onboarding_sensor
from etl_platform.config.registry import load_registry
from etl_platform_tests.support.platform_runs import write_tenants


def _tenants(tmp_path, ids):
    return write_tenants(tmp_path / "tenants.yaml", [{"id": i} for i in ids])


def test_sync_is_idempotent(tmp_path, dagster_home):
    path = _tenants(tmp_path, ["acme", "globex"])
    with DagsterInstance.get() as instance:
        first = sync_tenants(instance, load_registry(path))
        second = sync_tenants(instance, load_registry(path))
        assert first.to_add == ["acme", "globex"]
        assert second.to_add == [] and second.registered == ["acme", "globex"]
        assert registered_tenants(instance) == ["acme", "globex"]


def test_removed_tenant_is_reported_not_deleted(tmp_path, dagster_home):
    with DagsterInstance.get() as instance:
        sync_tenants(instance, load_registry(_tenants(tmp_path, ["acme", "globex"])))
        plan = sync_tenants(instance, load_registry(_tenants(tmp_path, ["acme"])))
        assert plan.removed_from_file == ["globex"]
        assert "globex" in plan.summary() and "data kept" in plan.summary()
        assert registered_tenants(instance) == ["acme", "globex"]


def test_sensor_adds_new_tenants_then_skips(tmp_path, dagster_home, monkeypatch):
    path = _tenants(tmp_path, ["acme", "globex"])
    monkeypatch.setenv("ETL_TENANTS_FILE", str(path))
    with DagsterInstance.get() as instance:
        result = tenant_onboarding_sensor(build_sensor_context(instance=instance))
        assert isinstance(result, SensorResult)
        (request,) = result.dynamic_partitions_requests
        assert request.partitions_def_name == "tenant" and list(request.partition_keys) == ["acme", "globex"]
        (status_run,) = result.run_requests  # new tenants invalidate the UI's partition status: rebuilt in a run
        assert status_run.job_name == "refresh_partition_status"
        instance.add_dynamic_partitions("tenant", list(request.partition_keys))  # what the daemon does
        # the file has not changed since: nothing is read from Dagster's storage at all
        unchanged = tenant_onboarding_sensor(build_sensor_context(instance=instance, cursor=result.cursor))
        assert isinstance(unchanged, SkipReason) and "has not changed" in unchanged.skip_message
        again = tenant_onboarding_sensor(build_sensor_context(instance=instance))  # no cursor: compares
        assert again.skip_reason and "2 already registered" in again.skip_reason.skip_message
        assert again.cursor == result.cursor and not again.dynamic_partitions_requests
        time.sleep(0.01)
        _tenants(tmp_path, ["acme"])
        removed = tenant_onboarding_sensor(build_sensor_context(instance=instance, cursor=result.cursor))
        assert removed.skip_reason and "globex" in removed.skip_reason.skip_message
        assert removed.cursor != result.cursor


def test_cli_sync_and_list(tmp_path, dagster_home):
    path = _tenants(tmp_path, ["acme"])
    env = {**os.environ, "ETL_TENANTS_FILE": str(path), "DAGSTER_HOME": str(dagster_home)}
    cli = [sys.executable, "-m", "etl_platform.cli"]
    out = subprocess.run([*cli, "tenants", "list"], env=env, capture_output=True, text=True, check=True).stdout
    assert "acme" in out and " no " in out
    out = subprocess.run([*cli, "tenants", "sync"], env=env, capture_output=True, text=True, check=True).stdout
    assert "added 1: acme" in out
    out = subprocess.run([*cli, "tenants", "sync"], env=env, capture_output=True, text=True, check=True).stdout
    assert "no new tenants" in out
    out = subprocess.run([*cli, "tenants", "list"], env=env, capture_output=True, text=True, check=True).stdout
    assert " yes " in out


def test_cli_reports_invalid_file(tmp_path, dagster_home):
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  - id: Bad-Id\n")
    env = {**os.environ, "ETL_TENANTS_FILE": str(path), "DAGSTER_HOME": str(dagster_home)}
    proc = subprocess.run(
        [sys.executable, "-m", "etl_platform.cli", "tenants", "sync"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "tenant 'Bad-Id', field 'id'" in proc.stderr


def test_new_tenants_get_their_partition_status_rebuilt_in_a_run(platform_env, tmp_path, dagster_home) -> None:
    """A new tenant changes the partitions definition, so Dagster's status cache no longer
    matches; the run the onboarding sensor requests rebuilds it for the current definition, and
    the UI's Partitions tab then reads it as it is (what it shows: the same partitions)."""
    from dagster import AssetKey
    from dagster._core.definitions.partitions.context import partition_loading_context

    from etl_platform.definitions import build_definitions
    from etl_platform.runs.partitions import tenant_date_partitions
    from etl_platform_tests.support.orchestration import launch
    from etl_platform_tests.support.platform_runs import materialize

    records = AssetKey(["normalized", "records"])
    samples = Path(__file__).resolve().parents[2] / "etl_platform" / "samples"
    tenant = {"id": "acme", "sources": [{"name": "notes", "kind": "rss", "url": str(samples / "release_notes.xml"),
                                         "snapshot": True}]}  # fmt: skip
    platform_env([tenant], f"duckdb:///{tmp_path / 'wh.duckdb'}")
    with DagsterInstance.get() as instance:
        assert materialize(instance, "acme", "2024-03-01").success
        platform_env([tenant, {**tenant, "id": "globex"}], f"duckdb:///{tmp_path / 'wh.duckdb'}")
        result = tenant_onboarding_sensor(build_sensor_context(instance=instance))
        instance.add_dynamic_partitions("tenant", list(result.dynamic_partitions_requests[0].partition_keys))
        with partition_loading_context(dynamic_partitions_store=instance):  # the dynamic dimension's keys
            current = tenant_date_partitions().get_serializable_unique_identifier()
        cached = next(iter(instance.get_asset_records([records]))).asset_entry.cached_status
        assert cached is None or cached.partitions_def_id != current  # what the UI would rebuild on its next view

        assert launch(instance, result.run_requests[0]).success
        for key in build_definitions().resolve_asset_graph().get_all_asset_keys():
            if key.path[0] not in ("raw", "normalized"):
                continue
            cached = next(iter(instance.get_asset_records([key]))).asset_entry.cached_status
            assert cached is not None and cached.partitions_def_id == current, key
        cached = next(iter(instance.get_asset_records([records]))).asset_entry.cached_status
        cached_partitions = set(cached.deserialize_materialized_partition_subsets(tenant_date_partitions())
                                .get_partition_keys())  # fmt: skip
        materialized = instance.get_materialized_partitions(records)
        assert cached_partitions == materialized == {"2024-03-01|acme"}
