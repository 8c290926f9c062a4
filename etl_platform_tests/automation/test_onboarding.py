"""Tenant onboarding: the sensor and `etl-platform tenants sync|list` on a real instance."""

import os
import subprocess
import sys
import time

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
