"""Both Dagster storage modes record a partitioned materialization: SQLite (embedded) and
dagster-postgres on the real server."""

import pytest
from dagster import DagsterInstance, DagsterRunStatus, asset, materialize

from etl_platform.runs.partitions import partition_key, tenant_date_partitions, tenant_partitions
from etl_platform_tests.conftest import create_pg_database, drop_pg_database


@asset(partitions_def=tenant_date_partitions())
def trivial(context) -> int:
    return len(context.partition_key)


def _materialize_and_read_back(instance: DagsterInstance) -> None:
    instance.add_dynamic_partitions(tenant_partitions.name, ["acme"])
    key = partition_key("acme", "2024-01-02")
    assert str(key) == "2024-01-02|acme"
    result = materialize([trivial], partition_key=str(key), instance=instance)
    assert result.success
    run = instance.get_run_by_id(result.run_id)
    assert run.status == DagsterRunStatus.SUCCESS
    assert run.tags["dagster/partition"] == "2024-01-02|acme"
    assert run.tags["dagster/partition/tenant"] == "acme"
    records = instance.fetch_materializations(trivial.key, limit=5).records
    assert [r.partition_key for r in records] == ["2024-01-02|acme"]


def test_sqlite_storage(dagster_home):
    with DagsterInstance.get() as instance:
        assert "Sqlite" in type(instance.run_storage).__name__
        _materialize_and_read_back(instance)
    assert (dagster_home / "history" / "runs.db").exists()


@pytest.mark.postgres
def test_postgres_storage(tmp_path, monkeypatch):
    url = create_pg_database("etl_dagster")
    try:
        home = tmp_path / "home"
        home.mkdir()
        (home / "dagster.yaml").write_text(
            "storage:\n  postgres:\n    postgres_url:\n      env: ETL_DAGSTER_PG_URL\n"
            "telemetry:\n  enabled: false\n"
        )
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        # dagster-postgres binds NOTIFY parameters client-side: it needs the psycopg2 driver
        monkeypatch.setenv("ETL_DAGSTER_PG_URL", url.replace("postgresql://", "postgresql+psycopg2://"))
        with DagsterInstance.get() as instance:
            assert "Postgres" in type(instance.run_storage).__name__
            _materialize_and_read_back(instance)
        # a second instance reads the run back from the server
        with DagsterInstance.get() as instance:
            runs = instance.get_runs()
            assert len(runs) == 1 and runs[0].status == DagsterRunStatus.SUCCESS
    finally:
        drop_pg_database(url)
