"""PlatformDockerRunLauncher's additions to dagster-docker, without a Docker engine: what a run's
container would be created with (limits, volumes, environment). test_containers.py runs it."""

from __future__ import annotations

import os

import pytest
from dagster import DagsterRun

from etl_platform.instance.run_launcher import PlatformDockerRunLauncher
from etl_platform_tests.support.platform_runs import write_tenants

RUN = DagsterRun(job_name="ingest", run_id="0123abcd-0000-4000-8000-000000000000")


@pytest.fixture
def tenants(tmp_path, monkeypatch):
    acme = {"id": "acme", "api_key_env": "ACME_API_KEY", "warehouse_url_env": "ACME_WAREHOUSE_URL",
            "sources": [{"name": "gh", "kind": "github", "repositories": ["o/r"], "token_env": "ACME_GITHUB_TOKEN"}]}
    monkeypatch.setenv("ETL_TENANTS_FILE", str(write_tenants(tmp_path / "tenants.yaml", [acme])))
    monkeypatch.setenv("ETL_CACHE_DIR", str(tmp_path / "cache"))
    for name in list(os.environ):
        if name.startswith("ETL_") and name not in ("ETL_TENANTS_FILE", "ETL_CACHE_DIR"):
            monkeypatch.delenv(name)


def test_container_gets_limits_volumes_and_the_platform_environment(tenants, monkeypatch) -> None:
    for name, value in {"ACME_API_KEY": "k", "ACME_GITHUB_TOKEN": "t", "ETL_WAREHOUSE_URL": "postgresql://w/db",
                        "ETL_ROLE": "daemon", "ETL_API_PORT": "8000", "UNRELATED_SECRET": "x"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ACME_WAREHOUSE_URL", raising=False)  # named by the file but unset: not forwarded
    launcher = PlatformDockerRunLauncher(
        memory_limit="3g", cpus="1.5", volumes_from="stack-user-code-1", network="host",
        env_vars=["ETL_ROLE=run", "DAGSTER_PG_DB=dagster"], container_kwargs={"auto_remove": True},
    )
    context = launcher.get_container_context(RUN)
    assert context.container_kwargs == {
        "volumes_from": ["stack-user-code-1"], "mem_limit": "3g", "nano_cpus": 1_500_000_000, "auto_remove": True,
    }
    assert context.networks == ["host"]
    env = dict(item.split("=", 1) if "=" in item else (item, None) for item in context.env_vars)
    assert set(env) == {"ACME_API_KEY", "ACME_GITHUB_TOKEN", "ETL_WAREHOUSE_URL", "ETL_TENANTS_FILE",
                        "ETL_CACHE_DIR", "ETL_ROLE", "DAGSTER_PG_DB"}
    assert env["ETL_ROLE"] == "run"  # the instance's env_vars come last and win over the daemon's own


def test_explicit_container_kwargs_win_and_bad_cpus_are_refused(tenants) -> None:
    launcher = PlatformDockerRunLauncher(memory_limit="3g", container_kwargs={"mem_limit": "1g"})
    assert launcher.get_container_context(RUN).container_kwargs == {"mem_limit": "1g"}
    with pytest.raises(ValueError, match="'cpus': expected a positive number of CPUs, got 'two'"):
        PlatformDockerRunLauncher(cpus="two")


def test_a_broken_tenants_file_does_not_stop_the_launcher(tenants, tmp_path, monkeypatch) -> None:
    (tmp_path / "tenants.yaml").write_text("tenants: [{id: 'Not A Slug'}]\n")
    monkeypatch.setenv("ACME_API_KEY", "k")
    context = PlatformDockerRunLauncher().get_container_context(RUN)
    assert "ACME_API_KEY" not in context.env_vars and "ETL_TENANTS_FILE" in context.env_vars
