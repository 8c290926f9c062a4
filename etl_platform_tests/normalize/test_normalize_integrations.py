"""Jira and GitHub rows through the mapping layer: the template candidate syntax, the kind
defaults naming real raw columns, and the sources' raw tables normalized into `records` with
parent links (one record per child row, whatever the number of partitions it appears in)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import dlt
import duckdb
import pytest

from etl_platform.config.models import TenantConfig
from etl_platform.normalize.mapping import KIND_DEFAULTS, RECORD_TYPES, build_mapping
from etl_platform.normalize.run import mappings_for, normalize_tenant
from etl_platform.normalize.sql import candidate_text, is_record_path, raw_columns, select_for, template_parts
from etl_platform.sources import lineage
from etl_platform.sources.build import build_source
from etl_platform.warehouse import Warehouse
from etl_platform_tests.conftest import PG_ADMIN_URL
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
    tenant_config,
)

UTC = dt.timezone.utc
TEMPLATE = "={repository}#{pull_number}"

# --- the template candidate ---------------------------------------------------------------------


def test_template_parts_and_raw_columns() -> None:
    assert template_parts(TEMPLATE) == [("repository", True), ("#", False), ("pull_number", True)]
    assert template_parts("=pr:{a}") == [("pr:", False), ("a", True)]
    assert template_parts("={a}{b}") == [("a", True), ("b", True)]
    assert template_parts("=no fields {1x}") == [("no fields {1x}", False)]  # not a column name: literal
    assert raw_columns(TEMPLATE) == ["repository", "pull_number"]
    assert raw_columns("@" + lineage.ROW_KEY) == [lineage.ROW_KEY]
    assert raw_columns("fields.status.name") == []
    assert [is_record_path(n) for n in (TEMPLATE, "@issue_key", "user.login")] == [False, False, True]


SAMPLE_ROWS = "(VALUES ('o/r', 31), ('  o/r2 ', 7), (NULL, 8), ('', 9), ('o/r', NULL)) AS t(repository, pull_number)"
EXPECTED = ["o/r#31", "o/r2#7", None, None, None]  # trimmed parts; NULL when any column is empty


def test_template_renders_as_concatenation_on_duckdb() -> None:
    sql = f"SELECT {candidate_text('duckdb', TEMPLATE)} FROM {SAMPLE_ROWS}"
    with duckdb.connect() as conn:
        assert [r[0] for r in conn.execute(sql).fetchall()] == EXPECTED


@pytest.mark.postgres
def test_template_renders_as_concatenation_on_postgres() -> None:
    import psycopg

    sql = f"SELECT {candidate_text('postgres', TEMPLATE)} FROM {SAMPLE_ROWS}"
    with psycopg.connect(PG_ADMIN_URL, connect_timeout=5) as conn:
        assert [r[0] for r in conn.execute(sql).fetchall()] == EXPECTED


def test_a_template_on_a_missing_column_is_dropped() -> None:
    """As with '@col': a raw table without the column gives NULL for that candidate, not an SQL error."""
    mapping = build_mapping("github", "github", "reviews")
    with duckdb.connect() as conn:
        conn.execute("CREATE SCHEMA s")
        conn.execute(
            'CREATE TABLE s.t ("_etl_record" JSON, "_etl_row_key" VARCHAR, "_etl_source" VARCHAR, '
            '"_etl_partition_date" DATE, "_dlt_load_id" VARCHAR, repository VARCHAR)'
        )
        conn.execute(
            """INSERT INTO s.t VALUES ('{"state": "APPROVED"}', '81', 'github', DATE '2024-03-05', '1', 'o/r')"""
        )
        columns = {"_etl_record", "_etl_row_key", "_etl_source", "_etl_partition_date", "_dlt_load_id", "repository"}
        sql = select_for("duckdb", mapping, "s", "t", "t1", "DATE '2024-03-05'", columns)
        row = conn.execute(f"SELECT source_id, parent_id, status, reject_reason FROM ({sql})").fetchone()
    assert row == ("81", None, "approved", None)


# --- the jira/github defaults --------------------------------------------------------------------


RESOURCES = {
    "jira": {"issues": "jira_issue", "issue_transitions": "jira_transition", "statuses": "jira_status",
             "issue_types": "jira_issue_type"},
    "github": {"pull_requests": "pull_request", "reviews": "review", "commits": "commit", "releases": "release",
               "deployments": "deployment"},
}


@pytest.mark.parametrize("kind", ["jira", "github"])
def test_every_resource_has_defaults_and_a_record_type(kind: str) -> None:
    for resource, record_type in RESOURCES[kind].items():
        assert (kind, resource) in KIND_DEFAULTS
        assert RECORD_TYPES[(kind, resource)] == record_type
        mapping = build_mapping(kind, kind, resource)
        assert mapping.record_type == record_type and mapping.candidates["source_id"]
    assert build_mapping("gh", "github", "reviews").candidates["parent_id"] == [TEMPLATE]
    assert build_mapping("gh", "github", "commits").candidates["parent_id"] == [TEMPLATE]
    assert build_mapping("j", "jira", "issue_transitions").candidates["parent_id"][0] == "@issue_key"
    # the tenants file still overrides one column
    assert build_mapping("j", "jira", "issues", {"author": "fields.assignee.displayName"}).candidates["author"] == [
        "fields.assignee.displayName"
    ]


# --- real rows through dlt, then normalize -------------------------------------------------------


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


def load(tenant: TenantConfig, warehouse: Warehouse, tmp_path: Path, day: dt.date, run_id: str) -> None:
    for source in tenant.sources:
        ctx = lineage.RunContext(tenant.id, source.name, run_id, lineage.Window((day,)))
        pipeline = dlt.pipeline(
            pipeline_name=f"t_{source.name}",
            destination=warehouse.dlt_destination(),
            dataset_name=tenant.dataset,
            pipelines_dir=str(tmp_path / "pipelines"),
        )
        pipeline.run(build_source(source, None, ctx))  # type: ignore[arg-type]


def records(warehouse: Warehouse, schema: str) -> dict[tuple[str, str], dict[str, Any]]:
    with warehouse.connect() as conn:
        rows = conn.query_dicts(f'SELECT * FROM "{schema}".records')
    return {(r["record_type"], r["source_id"]): r for r in rows}


def by_type(recs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for record_type, _ in recs:
        out[record_type] = out.get(record_type, 0) + 1
    return out


@pytest.mark.fixtures
def test_jira_and_github_rows_normalize(fixtures_dir: Path, tmp_path: Path, secrets: None) -> None:
    warehouse = Warehouse(f"duckdb:///{tmp_path / 'w.duckdb'}")
    github = GithubApi(fixtures_dir)
    with LocalServer() as jira_server, LocalServer() as github_server:
        JiraApi(fixtures_dir).install(jira_server)
        github.install(github_server)
        tenant = TenantConfig.model_validate(tenant_config(jira_server.url, github_server.url, "t1"))
        load(tenant, warehouse, tmp_path, DAY, "run-1")
        result = normalize_tenant(warehouse, tenant, [DAY])

        # the raw columns each default reads first exist in the loaded tables (later candidates
        # are fallbacks, e.g. @issue_id: jira-cli's issues have no id)
        with warehouse.connect() as conn:
            for source in tenant.sources:
                for table, mapping in mappings_for(source):
                    columns = set(conn.columns(tenant.dataset, table))
                    assert columns, table
                    for column, names in mapping.candidates.items():
                        assert set(raw_columns(names[0])) <= columns, (table, column, names[0])

        assert result.rejects == 0 and result.ingest_rejects == 0
        recs = records(warehouse, tenant.dataset)
        assert by_type(recs) == RECORDS

        # Jira: issues by key, transitions under their issue's key
        issue = recs[("jira_issue", "TEST-2")]
        assert (issue["title"], issue["status"], issue["category"], issue["author"]) == (
            "Story summary", "in progress", "story", "Person B"
        )
        assert issue["created_at"] == dt.datetime(DAY.year, DAY.month, DAY.day - 2, 8, tzinfo=UTC)
        assert issue["updated_at"] == dt.datetime(DAY.year, DAY.month, DAY.day, 13, 5, tzinfo=UTC)
        first = recs[("jira_transition", "TEST-3|3001|0")]
        assert (first["parent_id"], first["category"], first["status"], first["author"]) == (
            "TEST-3", "to do", "in progress", "Person A"
        )
        assert first["created_at"] == dt.datetime(DAY.year, DAY.month, DAY.day - 1, 10, tzinfo=UTC)
        assert json.loads(first["attributes"])["items"][0]["toString"] == "In Progress"  # the history stays
        transitions = [r for (t, _), r in recs.items() if t == "jira_transition"]
        assert sorted({r["parent_id"] for r in transitions}) == ["TEST-1", "TEST-2", "TEST-3"]
        idea = recs[("jira_status", "1")]
        assert (idea["title"], idea["category"], idea["is_active"]) == ("Idea", "new", True)
        assert recs[("jira_issue_type", "5")]["title"] == "Sub-task"

        # GitHub: pull requests by owner/name#number, reviews and commits point at them
        pr = recs[("pull_request", f"{REPO_A}#31")]
        assert (pr["title"], pr["author"], pr["status"], pr["category"]) == (
            "Title edited by PyGithub", "jacquev6", "closed", "topic/rewritewithgeneratedcode"  # base branch
        )
        assert pr["url"] == "https://github.com/PyGithub/PyGithub/pull/31"
        attributes = json.loads(pr["attributes"])
        assert attributes["merged_at"] == at(0, "10:00")
        assert attributes["head"]["ref"] == "master"
        assert "title" not in attributes and "login" not in attributes["user"]
        reviews = sorted((r for (t, _), r in recs.items() if t == "review"), key=lambda r: r["source_id"])
        assert [(r["source_id"], r["parent_id"], r["author"], r["status"]) for r in reviews] == [
            ("105368184", f"{REPO_A}#31", "sfdye", "commented"),
            ("28482091", f"{REPO_A}#31", "jzelinskie", "approved"),
        ]
        commits = {k: r for (t, k), r in recs.items() if t == "commit"}
        assert {k: r["parent_id"] for k, r in commits.items()} == {
            f"{REPO_A}#31@{'a1' * 20}": f"{REPO_A}#31",
            f"{REPO_A}#31@{'b2' * 20}": f"{REPO_A}#31",
            f"{REPO_B}#2@{'c3' * 20}": f"{REPO_B}#2",
        }
        assert commits[f"{REPO_B}#2@{'c3' * 20}"]["title"] == "Hotfix: target_commitish"
        assert recs[("release", "9002")]["status"] == "true"  # the draft flag
        assert recs[("deployment", "7002")]["category"] == "production"
        assert all(r["parent_id"] is None for (t, _), r in recs.items() if t in ("pull_request", "release"))

        # the next day PR 31 is updated again and gets a third review: its reviews and commits
        # are re-read into that day's partition, and still give one record each
        pr31 = github.pulls[REPO_A][0]
        pr31["updated_at"] = at(1, "09:00")
        third = dict(github.reviews[(REPO_A, 31)][0], id=30000001, submitted_at=at(1, "08:00"))
        github.reviews[(REPO_A, 31)].append(third)
        load(tenant, warehouse, tmp_path, DAY + dt.timedelta(days=1), "run-2")

    with warehouse.connect() as conn:
        raw = conn.query(f'SELECT count(*), count(DISTINCT _etl_row_key) FROM "{tenant.dataset}".github_reviews')[0]
    assert raw == (5, 3)  # two days' copies
    for days in ([DAY + dt.timedelta(days=1)], [DAY, DAY + dt.timedelta(days=1)]):
        normalize_tenant(warehouse, tenant, days)
        recs = records(warehouse, tenant.dataset)
        assert by_type(recs)["review"] == 3 and by_type(recs)["commit"] == 3 and by_type(recs)["pull_request"] == 4
        assert recs[("review", "30000001")]["parent_id"] == f"{REPO_A}#31"
        assert recs[("pull_request", f"{REPO_A}#31")]["event_date"] == DAY + dt.timedelta(days=1)
        assert recs[("commit", f"{REPO_A}#31@{'a1' * 20}")]["event_date"] == DAY + dt.timedelta(days=1)
    with warehouse.connect() as conn:
        assert conn.query(f'SELECT count(*) FROM "{tenant.dataset}".record_rejects')[0][0] == 0
