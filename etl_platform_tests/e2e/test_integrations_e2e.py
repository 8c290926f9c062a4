"""A tenant configured with a Jira project and two GitHub repositories, served by local test
servers (replaying the real fixture shapes), materializes raw, normalized and metric assets for
a day through Dagster (job `ingest`), on DuckDB and PostgreSQL; re-running changes nothing; the
next day's run re-reads a PR's reviews and commits without duplicating their records."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetCheckSeverity, AssetKey, DagsterEventType, DagsterInstance

from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.http_servers import LocalServer
from etl_platform_tests.support.integration_apis import (
    DAY,
    RECORDS,
    REPO_A,
    REPO_B,
    SECRETS,
    GithubApi,
    JiraApi,
    at,
    expected_metrics,
    tenant_config,
)
from etl_platform_tests.support.platform_runs import materialize

SCHEMA = "tenant_acme"
NEXT = DAY + dt.timedelta(days=1)
# lineage that differs between two runs loading the same data (dlt's row ids included)
RUN_SPECIFIC = {
    "_etl_run_id",
    "_etl_extracted_at",
    "_dlt_load_id",
    "_dlt_id",
    "_dlt_parent_id",
    "_dlt_root_id",
    "normalized_at",
    "raw_load_id",
}
RAW_TABLES = {
    "jira_issues": 3,
    "jira_issue_transitions": 8,
    "jira_statuses": 37,
    "jira_issue_types": 2,
    "github_pull_requests": 4,
    "github_reviews": 2,
    "github_commits": 3,
    "github_releases": 2,
    "github_deployments": 2,
}


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with Warehouse(url).connect() as conn:
        return conn.query(sql)


def contents(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """table -> sorted rows as text, without run-specific lineage columns."""
    out = {}
    with Warehouse(url).connect() as conn:
        tables = [
            r[0]
            for r in conn.query("SELECT table_name FROM information_schema.tables WHERE table_schema = ?", [SCHEMA])
            if not r[0].startswith("_dlt")
        ]
        for table in sorted(tables):
            columns = sorted(c for c in conn.columns(SCHEMA, table) if c not in RUN_SPECIFIC)
            select = ", ".join(f'CAST("{c}" AS VARCHAR)' for c in columns)
            out[table] = sorted(tuple(r) for r in conn.query(f'SELECT {select} FROM "{SCHEMA}"."{table}"'))
    return out


def metrics(url: str, day: dt.date) -> dict[tuple[str, str], float]:
    rows = query(
        url,
        f"SELECT metric, repository, value FROM {SCHEMA}.engineering_metrics "
        f"WHERE tenant_id = 'acme' AND metric_date = DATE '{day.isoformat()}'",
    )
    return {(m, r): v for m, r, v in rows}


def checks(instance: DagsterInstance, run_id: str) -> dict[str, Any]:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    return {
        (e := r.event_log_entry.dagster_event.event_specific_data).check_name: e  # type: ignore[union-attr]
        for r in records
    }


@pytest.mark.fixtures
def test_jira_and_github_tenant_end_to_end(
    warehouse_url: str, platform_env, fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    github = GithubApi(fixtures_dir)
    with LocalServer() as jira_server, LocalServer() as github_server:
        JiraApi(fixtures_dir).install(jira_server)
        github.install(github_server)
        platform_env([tenant_config(jira_server.url, github_server.url)], warehouse_url)
        with DagsterInstance.get() as instance:
            first = materialize(instance, "acme", DAY)
            assert first.success
            materialized = {e.asset_key for e in first.get_asset_materialization_events()}
            assert {
                AssetKey(["raw", "jira", "jira_issue_transitions"]),
                AssetKey(["raw", "github", "github_reviews"]),
                AssetKey(["normalized", "records"]),
                AssetKey(["metrics", "engineering"]),
            } <= materialized

            # raw rows, then one record per raw row, children linked to their parents
            for table, count in RAW_TABLES.items():
                assert query(warehouse_url, f"SELECT count(*) FROM {SCHEMA}.{table}")[0][0] == count, table
            by_type = dict(query(warehouse_url, f"SELECT record_type, count(*) FROM {SCHEMA}.records GROUP BY 1"))
            assert by_type == RECORDS
            assert query(warehouse_url, f"SELECT count(*) FROM {SCHEMA}.record_rejects")[0][0] == 0
            links = query(
                warehouse_url,
                f"SELECT record_type, parent_id, count(*) FROM {SCHEMA}.records WHERE parent_id IS NOT NULL "
                "GROUP BY 1, 2 ORDER BY 1, 2",
            )
            assert links == [
                ("commit", f"{REPO_A}#31", 2),
                ("commit", f"{REPO_B}#2", 1),
                ("jira_transition", "TEST-1", 1),
                ("jira_transition", "TEST-2", 1),
                ("jira_transition", "TEST-3", 6),
                ("review", f"{REPO_A}#31", 2),
            ]
            parents = query(
                warehouse_url,
                f"SELECT count(*) FROM {SCHEMA}.records AS c WHERE c.parent_id IS NOT NULL AND NOT EXISTS ("
                f"SELECT 1 FROM {SCHEMA}.records AS p WHERE p.source = c.source AND p.source_id = c.parent_id "
                "AND p.record_type IN ('pull_request', 'jira_issue'))",
            )
            assert parents == [(0,)]  # every parent_id is a parent's source_id

            # metrics of the day, per repository and tenant-wide
            got = metrics(warehouse_url, DAY)
            expected = expected_metrics()
            assert set(got) == set(expected)
            for key, value in expected.items():
                assert got[key] == pytest.approx(value), key

            evaluations = checks(instance, first.run_id)
            unmapped = evaluations["unmapped_jira_statuses"]
            assert not unmapped.passed and unmapped.severity == AssetCheckSeverity.WARN
            assert unmapped.metadata["unmapped_statuses"].value == {"qa": 2}
            assert unmapped.partition == f"{DAY}|acme"
            for name in ("unique_upsert_key", "required_columns_not_null", "raw_reconciles_with_records_and_rejects"):
                assert evaluations[name].passed, name
            event = instance.get_latest_materialization_event(AssetKey(["metrics", "engineering"]))
            meta = event.asset_materialization.metadata  # type: ignore[union-attr]
            assert meta["rows_written"].value == len(expected)  # zero counts included
            values = meta["values"].value  # the partition's tenant-wide values
            assert values["prs_merged"] == 3 and values["jira_cycle_time_hours_median"] == 22

            # re-running the day changes nothing
            before = contents(warehouse_url)
            assert materialize(instance, "acme", DAY).success
            assert contents(warehouse_url) == before
            day_metrics = metrics(warehouse_url, DAY)

            # the next day PR 31 is updated again and reviewed a third time: its reviews and commits
            # are re-read into the next day's partition and still give one record each
            github.pulls[REPO_A][0]["updated_at"] = at(1, "09:00")
            third = dict(github.reviews[(REPO_A, 31)][0], id=30000001, submitted_at=at(1, "08:00"))
            github.reviews[(REPO_A, 31)].append(third)
            assert materialize(instance, "acme", NEXT).success

    assert query(warehouse_url, f"SELECT count(*), count(DISTINCT _etl_row_key) FROM {SCHEMA}.github_reviews") == [
        (5, 3)
    ]
    by_type = dict(query(warehouse_url, f"SELECT record_type, count(*) FROM {SCHEMA}.records GROUP BY 1"))
    assert by_type == dict(RECORDS, review=3)
    moved = query(
        warehouse_url,
        f"SELECT DISTINCT CAST(event_date AS VARCHAR) FROM {SCHEMA}.records WHERE source_id LIKE '{REPO_A}#31%' "
        "OR parent_id = 'PyGithub/PyGithub#31'",
    )
    assert moved == [(NEXT.isoformat(),)]
    assert metrics(warehouse_url, DAY) == day_metrics
    later = metrics(warehouse_url, NEXT)
    assert later[("review_count", REPO_A)] == 1 and later[("prs_merged", "")] == 0
    assert later[("jira_issues_completed", "")] == 0 and ("time_to_first_review_hours_median", "") not in later

