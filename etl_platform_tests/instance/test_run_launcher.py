"""PlatformDockerRunLauncher's additions to dagster-docker, without a Docker engine: what a run's
container would be created with (limits, volumes, environment). test_containers.py runs it."""

from __future__ import annotations

import os

import pytest
from dagster import DagsterRun

from etl_platform.instance.run_launcher import RUN_PREFIXES, PlatformDockerRunLauncher
from etl_platform_tests.support.platform_runs import SECRET_TENANTS, write_tenants

RUN = DagsterRun(job_name="ingest", run_id="0123abcd-0000-4000-8000-000000000000",
                 tags={"dagster/partition": "2026-12-01|acme"})


@pytest.fixture
def tenants(tmp_path, monkeypatch):
    acme = {"id": "acme", "api_key_env": "ACME_API_KEY", "warehouse_url_env": "ACME_WAREHOUSE_URL",
            "sources": [{"name": "gh", "kind": "github", "repositories": ["o/r"], "token_env": "ACME_GITHUB_TOKEN"}]}
    monkeypatch.setenv("ETL_TENANTS_FILE", str(write_tenants(tmp_path / "tenants.yaml", [acme])))
    monkeypatch.setenv("ETL_CACHE_DIR", str(tmp_path / "cache"))
    for name in list(os.environ):
        # every variable the launcher forwards (dlt's defaults, set by earlier tests of the process, too)
        if name.startswith(RUN_PREFIXES) and name not in ("ETL_TENANTS_FILE", "ETL_CACHE_DIR"):
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
    # the run's tenant's source secret, not its read-API key (the API serves it, not runs)
    assert set(env) == {"ACME_GITHUB_TOKEN", "ETL_WAREHOUSE_URL", "ETL_TENANTS_FILE",
                        "ETL_CACHE_DIR", "ETL_ROLE", "DAGSTER_PG_DB"}
    assert env["ETL_ROLE"] == "run"  # the instance's env_vars come last and win over the daemon's own


def test_explicit_container_kwargs_win_and_bad_cpus_are_refused(tenants) -> None:
    launcher = PlatformDockerRunLauncher(memory_limit="3g", container_kwargs={"mem_limit": "1g"})
    assert launcher.get_container_context(RUN).container_kwargs == {"mem_limit": "1g"}
    with pytest.raises(ValueError, match="'cpus': expected a positive number of CPUs, got 'two'"):
        PlatformDockerRunLauncher(cpus="two")


def test_a_broken_tenants_file_does_not_stop_the_launcher(tenants, tmp_path, monkeypatch) -> None:
    (tmp_path / "tenants.yaml").write_text("tenants: [{id: 'Not A Slug'}]\n")
    monkeypatch.setenv("ACME_GITHUB_TOKEN", "k")
    context = PlatformDockerRunLauncher().get_container_context(RUN)
    assert "ACME_GITHUB_TOKEN" not in context.env_vars and "ETL_TENANTS_FILE" in context.env_vars


TWO = SECRET_TENANTS
PLATFORM_SECRETS = ("ETL_ADMIN_API_KEY", "ETL_ALERT_WEBHOOK_URL", "ETL_ALERT_SLACK_WEBHOOK_URL", "ETL_ALERT_SMTP_URL")


@pytest.fixture
def two_tenants(tmp_path, monkeypatch):
    monkeypatch.setenv("ETL_TENANTS_FILE", str(write_tenants(tmp_path / "tenants.yaml", TWO)))
    monkeypatch.setenv("ETL_CACHE_DIR", str(tmp_path / "cache"))
    for name in list(os.environ):
        if name.startswith((*RUN_PREFIXES, "SOURCES__")) and name not in ("ETL_TENANTS_FILE", "ETL_CACHE_DIR"):
            monkeypatch.delenv(name)
    names = [n for t in ("ALPHA", "BETA") for n in (f"ETL_{t}_API_KEY", f"{t}_WAREHOUSE_URL", f"{t}_GITHUB_TOKEN")]
    for name in [*names, "ALPHA_ALERT_URL", "GAMMA_TOKEN", *PLATFORM_SECRETS, "ETL_WAREHOUSE_URL",
                 "RUNTIME__REQUEST_TIMEOUT", "RUNTIME__REQUEST_MAX_ATTEMPTS", "SOURCES__GH__TOKEN"]:
        monkeypatch.setenv(name, "v")


def env_of(tags: dict[str, str]) -> set[str]:
    run = DagsterRun(job_name="ingest", run_id="0123abcd-0000-4000-8000-000000000001", tags=tags)
    items = PlatformDockerRunLauncher().get_container_context(run).env_vars
    return {item.split("=", 1)[0] for item in items}


@pytest.mark.parametrize(
    "tags",
    [
        {"dagster/partition": "2026-12-01|alpha"},  # a partition's run
        {"dagster/partition/tenant": "alpha", "dagster/partition/date": "2026-12-01"},
        {"etl/tenant": "alpha"},
        {"dagster/asset_partition_range_start": "2026-12-01|alpha",  # a one-tenant range (UI backfill)
         "dagster/asset_partition_range_end": "2026-12-03|alpha"},
    ],
)
def test_a_tenants_run_holds_its_own_secrets_and_no_other_tenants(two_tenants, tags) -> None:
    """Invariant: no tenant's run ever holds another tenant's secret, nor the platform's."""
    env = env_of(tags)
    assert {"ALPHA_GITHUB_TOKEN", "ALPHA_WAREHOUSE_URL"} <= env
    assert not {"BETA_GITHUB_TOKEN", "BETA_WAREHOUSE_URL", "ETL_BETA_API_KEY", "GAMMA_TOKEN"} & env
    # its own read-API key and alert channel serve the API and the daemon's alert sensor, not runs
    assert not {"ETL_ALPHA_API_KEY", "ALPHA_ALERT_URL"} & env
    assert not set(PLATFORM_SECRETS) & env
    # the platform's settings: the warehouse and dlt's documented HTTP settings, not SOURCES__*
    assert {"ETL_WAREHOUSE_URL", "ETL_TENANTS_FILE", "RUNTIME__REQUEST_TIMEOUT", "RUNTIME__REQUEST_MAX_ATTEMPTS"} <= env
    assert "SOURCES__GH__TOKEN" not in env


def test_a_chunk_run_holds_the_secrets_of_its_tenants_only(two_tenants) -> None:
    env = env_of({"etl/tenants": "alpha,beta", "etl/multi_tenant": "true"})
    assert {"ALPHA_GITHUB_TOKEN", "ALPHA_WAREHOUSE_URL", "BETA_GITHUB_TOKEN", "BETA_WAREHOUSE_URL"} <= env
    assert not {"GAMMA_TOKEN", "ETL_ALPHA_API_KEY", "ETL_BETA_API_KEY", *PLATFORM_SECRETS} & env


def test_a_run_of_no_tenant_holds_no_tenant_secret(two_tenants) -> None:
    env = env_of({})
    assert not {n for n in env if n.startswith(("ALPHA", "BETA", "GAMMA", "ETL_ALPHA", "ETL_BETA"))}
    assert "ETL_WAREHOUSE_URL" in env
