"""Raw assets through Dagster: a tenant with the JSONPlaceholder API, the Titanic CSV and a feed
loads each record once into tenant_<id>, on DuckDB and PostgreSQL; re-materializing changes nothing."""

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from etl_platform_tests.support.http_servers import LocalServer, Response
from etl_platform_tests.support.jsonplaceholder import serve_jsonplaceholder
from etl_platform_tests.support.platform_runs import (
    materialize,
    metadata_values,
    partition_materialization,
    table_counts,
)

DAY = dt.date(2024, 6, 3)


def _tenant(server_url: str, fixtures_dir, feed_path: str) -> dict:
    return {
        "id": "acme",
        "sources": [
            {
                "name": "placeholder",
                "kind": "rest_api",
                "base_url": server_url,
                "paginator": {"type": "header_link"},
                "resources": [
                    {"name": n, "path": n, "params": {"_page": 1, "_limit": 50}, "primary_key": "id"}
                    for n in ("users", "posts", "comments", "todos")
                ],
            },
            {
                "name": "titanic",
                "kind": "csv",
                "location": str(fixtures_dir / "csv/titanic.csv"),
                "resource": "passengers",
                "primary_key": ["PassengerId"],
            },
            {"name": "news", "kind": "rss", "url": feed_path, "snapshot": True},
        ],
    }


EXPECTED = {
    "placeholder_users": 10,
    "placeholder_posts": 100,
    "placeholder_comments": 500,
    "placeholder_todos": 200,
    "titanic_passengers": 891,
    "news_entries": 2,
}


@pytest.fixture
def feed(tmp_path):
    path = tmp_path / "feed.xml"
    path.write_text(
        textwrap.dedent("""\
        <?xml version="1.0" encoding="utf-8"?>
        <rss version="2.0"><channel><title>t</title>
          <item><guid>a</guid><title>One</title><pubDate>Mon, 03 Jun 2024 10:00:00 GMT</pubDate></item>
          <item><guid>b</guid><title>Two</title></item>
        </channel></rss>""")
    )
    return str(path)


def test_one_partition_loads_each_record_once(warehouse_url, platform_env, fixtures_dir, feed):
    with LocalServer() as server:
        serve_jsonplaceholder(server, fixtures_dir / "jsonplaceholder")
        platform_env([_tenant(server.url, fixtures_dir, feed)], warehouse_url)
        with DagsterInstance.get() as instance:
            result = materialize(instance, "acme", DAY)
            assert result.success
            counts = table_counts(warehouse_url, "tenant_acme")
            assert {k: counts[k] for k in EXPECTED} == EXPECTED
            assert counts["records"] == sum(EXPECTED.values())
            assert counts.get("rejects", 0) == 0 and counts["record_rejects"] == 0

            comments = partition_materialization(instance, ["raw", "placeholder", "placeholder_comments"], "acme", DAY)
            metadata = metadata_values(comments)
            assert metadata["dagster/row_count"] == 500
            assert metadata["load"]["pages"] == 10
            assert "dagster/column_schema" in metadata
            records_meta = partition_materialization(instance, ["normalized", "records"], "acme", DAY)
            assert metadata_values(records_meta)["raw_rows"] == sum(EXPECTED.values())
            checks = {e.check_name: e.passed for e in _check_evaluations(instance, result.run_id)}
            assert checks["raw_reconciles_with_records_and_rejects"] and checks["unique_upsert_key"]

            again = materialize(instance, "acme", DAY)
            assert again.success
            assert table_counts(warehouse_url, "tenant_acme") == counts
            # the CSV rows are appended, then the first run's copy of the day is swept
            titanic = partition_materialization(instance, ["raw", "titanic", "titanic_passengers"], "acme", DAY)
            assert metadata_values(titanic)["load"]["swept"] == {"titanic_passengers": 891}
        # the lineage names this run and this partition
        from etl_platform.warehouse import Warehouse

        with Warehouse(warehouse_url).connect() as conn:
            rows = conn.query(
                'SELECT DISTINCT "_etl_run_id", CAST("_etl_partition_date" AS VARCHAR), "_etl_tenant_id" '
                'FROM "tenant_acme"."titanic_passengers"'
            )
        assert rows == [(again.run_id, DAY.isoformat(), "acme")]


def _check_evaluations(instance, run_id):
    from dagster import DagsterEventType

    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    return [r.event_log_entry.dagster_event.event_specific_data for r in records]


def test_two_tenants_are_isolated(duckdb_url, platform_env, tmp_path):
    csv_a = tmp_path / "a.csv"
    csv_a.write_text("id,name\n1,alpha\n2,beta\n")
    csv_b = tmp_path / "b.csv"
    csv_b.write_text("id,name\n1,gamma\n")
    platform_env(
        [
            {"id": "t_a", "sources": [{"name": "files", "kind": "csv", "location": str(csv_a), "primary_key": ["id"]}]},
            {"id": "t_b", "sources": [{"name": "files", "kind": "csv", "location": str(csv_b), "primary_key": ["id"]}]},
        ],
        duckdb_url,
    )
    with DagsterInstance.get() as instance:
        assert materialize(instance, "t_a", DAY).success
        assert materialize(instance, "t_b", DAY).success
    assert table_counts(duckdb_url, "tenant_t_a")["files_rows"] == 2
    assert table_counts(duckdb_url, "tenant_t_b")["files_rows"] == 1
    from etl_platform.warehouse import Warehouse

    with Warehouse(duckdb_url).connect() as conn:
        for schema, tenant in (("tenant_t_a", "t_a"), ("tenant_t_b", "t_b")):
            assert conn.query(f'SELECT DISTINCT "_etl_tenant_id" FROM "{schema}"."files_rows"') == [(tenant,)]
            assert conn.query(f'SELECT DISTINCT tenant_id FROM "{schema}"."records"') == [(tenant,)]


def test_a_source_the_tenant_does_not_have(duckdb_url, platform_env, tmp_path):
    """A source the tenant does not configure: the hourly runs never ask for it, so it stays
    missing for the tenant; a run a person launches for everything answers it as not applicable
    (materialized, `applies: false`, 0 rows), so that the run and a backfill end complete. The
    tenant's own sources and records are materialized either way."""
    from dagster import AssetKey, RunRequest

    from etl_platform.automation.onboarding import sync_tenants
    from etl_platform.config.registry import load_registry
    from etl_platform_tests.support.orchestration import launch

    csv_a = tmp_path / "a.csv"
    csv_a.write_text("id\n1\n")
    csv_b = tmp_path / "b.csv"
    csv_b.write_text("id\n1\n2\n")
    platform_env(
        [
            {"id": "t_a", "sources": [{"name": "files", "kind": "csv", "location": str(csv_a)}]},
            {"id": "t_b", "sources": [{"name": "other", "kind": "csv", "location": str(csv_b)}]},
        ],
        duckdb_url,
    )
    with DagsterInstance.get() as instance:
        sync_tenants(instance, load_registry())
        scheduled = RunRequest(
            partition_key=f"{DAY}|t_b",
            asset_selection=[AssetKey(["raw", "other", "other_rows"]), AssetKey(["raw", "other", "other_rejects"]),
                             AssetKey(["normalized", "records"])],
            asset_check_keys=[],
            tags={"etl/trigger": "schedule"},
        )
        assert launch(instance, scheduled).success
        assert partition_materialization(instance, ["raw", "files", "files_rows"], "t_b", DAY) is None
        other = partition_materialization(instance, ["raw", "other", "other_rows"], "t_b", DAY)
        assert metadata_values(other)["dagster/row_count"] == 2
        records = partition_materialization(instance, ["normalized", "records"], "t_b", DAY)
        assert metadata_values(records)["records_written"] == 2

        result = materialize(instance, "t_b", DAY)  # everything, as a person launches it
        assert result.success
        answered = metadata_values(partition_materialization(instance, ["raw", "files", "files_rows"], "t_b", DAY))
        assert answered["applies"] is False and answered["dagster/row_count"] == 0
        assert "has no source 'files'" in answered["note"]
        # no engineering metrics without Jira or GitHub: answered the same way
        metrics = partition_materialization(instance, ["metrics", "engineering"], "t_b", DAY)
        assert metadata_values(metrics)["applies"] is False


def test_permanent_source_error_fails_the_run_clearly(duckdb_url, platform_env, monkeypatch):
    monkeypatch.setenv("ACME_TOKEN", "secret-token-value")
    with LocalServer() as server:
        server.route("/items", lambda r: Response(401, {"message": "Bad credentials"}))
        platform_env(
            [
                {
                    "id": "acme",
                    "sources": [
                        {
                            "name": "api",
                            "kind": "rest_api",
                            "base_url": server.url,
                            "auth": {"type": "bearer", "token_env": "ACME_TOKEN"},
                            "resources": [{"name": "items", "path": "items", "paginator": {"type": "single_page"}}],
                        }
                    ],
                }
            ],
            duckdb_url,
        )
        with DagsterInstance.get() as instance:
            result = materialize(instance, "acme", DAY, raise_on_error=False)
            assert not result.success
            (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
            text = failure.step_failure_data.user_failure_data.description
            assert text.startswith("[permanent] tenant 'acme', source 'api'") and "401" in text
            assert instance.get_run_by_id(result.run_id).tags["etl/failed_tenants"] == "acme"
            # the failed partition is not materialized: the UI shows it failed, not stale data
            assert partition_materialization(instance, ["raw", "api", "api_items"], "acme", DAY) is None
            assert "secret-token-value" not in str(failure)
            assert len(server.hits("/items")) == 1  # neither dlt nor the step retried it


CRASH_SCRIPT = """
import datetime as dt, sys
from dagster import DagsterInstance
from etl_platform_tests.support.platform_runs import materialize
with DagsterInstance.get() as instance:
    materialize(instance, "acme", dt.date.fromisoformat(sys.argv[1]))
"""


@pytest.mark.postgres
def test_rerun_after_crash_mid_load_has_no_duplicates_and_no_loss(pg_url, platform_env, dagster_home, tmp_path):
    """Kill the run's process between pages; the re-run completes with each record once."""
    items = [{"id": i, "v": f"x{i}"} for i in range(1, 31)]
    state = {"slow": True}

    def page(req):
        n = int(req.arg("page") or 1)
        if n == 3 and state["slow"]:
            time.sleep(30)  # the crash happens while this page is awaited
        chunk = items[(n - 1) * 10 : n * 10]
        return Response(200, {"items": chunk})

    with LocalServer() as server:
        server.route("/items", page)
        tenants = platform_env(
            [
                {
                    "id": "acme",
                    "sources": [
                        {
                            "name": "api",
                            "kind": "rest_api",
                            "base_url": server.url,
                            "resources": [
                                {
                                    "name": "items",
                                    "path": "items",
                                    "data_selector": "items",
                                    "primary_key": "id",
                                    "paginator": {
                                        "type": "page_number",
                                        "page_param": "page",
                                        "base_page": 1,
                                        "total_path": None,
                                    },
                                }
                            ],
                        }
                    ],
                }
            ],
            pg_url,
        )
        env = {
            **os.environ,
            "ETL_TENANTS_FILE": str(tenants),
            "ETL_WAREHOUSE_URL": pg_url,
            "DAGSTER_HOME": str(dagster_home),
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASH_SCRIPT, DAY.isoformat()],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "crash.log", "w"),
        )
        try:
            deadline = time.time() + 120
            while not any(int(r.arg("page") or 1) == 3 for r in server.hits("/items")):
                assert time.time() < deadline and proc.poll() is None, (tmp_path / "crash.log").read_text()[-3000:]
                time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        state["slow"] = False
        with DagsterInstance.get() as instance:
            assert materialize(instance, "acme", DAY).success
            runs = instance.get_runs()
            assert runs[0].status == DagsterRunStatus.SUCCESS
    from etl_platform.warehouse import Warehouse

    with Warehouse(pg_url).connect() as conn:
        count, distinct = conn.query('SELECT count(*), count(DISTINCT id) FROM "tenant_acme"."api_items"')[0]
    assert (count, distinct) == (30, 30)
    assert table_counts(pg_url, "tenant_acme")["records"] == 30
