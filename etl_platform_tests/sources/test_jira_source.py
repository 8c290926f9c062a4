"""The Jira source against local servers replaying real Jira shapes (go-jira's v2 /search pages,
its statuses list, jira-cli's v3 /search/jql page), loaded through real dlt pipelines."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dlt
import duckdb
import pytest

from etl_platform.config.models import JiraSource, TenantsFileError
from etl_platform.loading.failures import tenant_failure
from etl_platform.sources.jira import build_jira_source, jira_time
from etl_platform.sources.lineage import WRITE_DISPOSITION, RunContext, Window, contract
from etl_platform_tests.support import dlt_loads
from etl_platform_tests.support.http_servers import LocalServer, Request, Response

DATASET = "tenant_t1"
UTC = dt.timezone.utc
DAY = dt.date(2024, 1, 2)
IN_WINDOW = "2024-01-02T10:00:00.000+0000"
TOKEN = "jira-token-s3cr3t-value"
RESOURCES = ["issues", "issue_transitions", "statuses", "issue_types"]
ISSUE_TYPES = [
    {"self": "https://x/rest/api/2/issuetype/1", "id": "1", "name": "Bug", "subtask": False},
    {"self": "https://x/rest/api/2/issuetype/5", "id": "5", "name": "Sub-task", "subtask": True},
]


# --- helpers ------------------------------------------------------------------------------------


def context(*days: dt.date, run_id: str = "run-1") -> RunContext:
    return RunContext(tenant_id="t1", source="jira", run_id=run_id, window=Window(days or (DAY,)))


def config(server: LocalServer, **kw: Any) -> JiraSource:
    kw.setdefault("email_env", "JIRA_TEST_EMAIL")
    kw.setdefault("api_token_env", "JIRA_TEST_TOKEN")
    return JiraSource(name="jira", kind="jira", base_url=server.url, projects=["BULK"], **kw)


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JIRA_TEST_EMAIL", "bot@example.com")
    monkeypatch.setenv("JIRA_TEST_TOKEN", TOKEN)


def pipeline(tmp_path: Path, name: str = "jira", destination: Any = None) -> Any:
    return dlt_loads.pipeline(tmp_path, name, destination)


table = dlt_loads.table


def tables(tmp_path: Path) -> set[str]:
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = ?", [DATASET])
        return {r[0] for r in rows.fetchall()}


def fixture(fixtures_dir: Path, name: str) -> Any:
    return json.loads((fixtures_dir / "api/jira" / name).read_text(encoding="utf-8"))


def updated(issue: dict[str, Any], when: str = IN_WINDOW) -> dict[str, Any]:
    """go-jira's issues as they come back when `updated` is among the requested fields."""
    issue = copy.deepcopy(issue)
    issue.setdefault("fields", {})["updated"] = when
    return issue


def snapshots(server: LocalServer, version: int, statuses: list[dict[str, Any]] | None = None) -> None:
    server.route(f"/rest/api/{version}/status", lambda r: Response(200, statuses or []))
    server.route(f"/rest/api/{version}/issuetype", lambda r: Response(200, ISSUE_TYPES))


def search_v2(pages: dict[int, dict[str, Any]]) -> Any:
    """A /rest/api/2/search answering by the requested startAt."""

    def handle(req: Request) -> Response:
        start = int(req.arg("startAt", "0"))
        return Response(200, pages[start]) if start in pages else Response(400, {"errorMessages": [f"startAt {start}"]})

    return handle


def basic(email: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode()


def history(hid: str, created: str, *items: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "id": hid,
        "author": {"accountId": "acc-1", "displayName": "Ann"},
        "created": created,
        "items": [
            {
                "field": f,
                "fieldtype": "jira",
                "from": a.split(":")[0],
                "fromString": a.split(":")[1],
                "to": b.split(":")[0],
                "toString": b.split(":")[1],
            }
            for f, a, b in items
        ],
    }


# --- building -----------------------------------------------------------------------------------


def test_building_the_source_reads_no_secret_and_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JIRA_TEST_TOKEN")
    cfg = JiraSource(
        name="jira",
        kind="jira",
        base_url="http://127.0.0.1:9",
        projects=["A"],
        email_env="JIRA_TEST_EMAIL",
        api_token_env="JIRA_TEST_TOKEN",
        schema_contract="freeze",
    )
    source = build_jira_source(cfg, context())
    assert source.name == "jira"
    assert list(source.resources) == RESOURCES
    assert set(cfg.resource_names) <= set(source.resources)
    for resource in source.resources.values():
        assert resource.write_disposition == WRITE_DISPOSITION
        assert resource.schema_contract == contract("freeze")
    with pytest.raises(Exception) as excinfo:
        list(source.with_resources("statuses"))
    assert "JIRA_TEST_TOKEN" in str(excinfo.value)
    assert isinstance(excinfo.value, TenantsFileError) or "JIRA_TEST_TOKEN is not set" in repr(excinfo.value)


def test_jql_widens_the_window_and_keeps_the_configured_order() -> None:
    from etl_platform.sources.jira import build_jql

    cfg = JiraSource(name="jira", kind="jira", base_url="http://x", jql="project = X ORDER BY rank")
    jql = build_jql(cfg, dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 1, 3, tzinfo=UTC))
    assert jql == '(project = X) AND updated >= "2024-01-01 10:00" AND updated < "2024-01-03 14:00" ORDER BY rank'
    cfg = JiraSource(name="jira", kind="jira", base_url="http://x", projects=["A", "B"])
    jql = build_jql(cfg, dt.datetime(2024, 1, 2, tzinfo=UTC), dt.datetime(2024, 1, 3, tzinfo=UTC))
    assert jql.startswith('(project in ("A", "B")) AND updated >= ') and jql.endswith("ORDER BY created ASC, key ASC")
    assert jira_time("2020-12-03T14:05:20.974+0100") == dt.datetime(2020, 12, 3, 13, 5, 20, 974000, tzinfo=UTC)


# --- the real fixture shapes --------------------------------------------------------------------


@pytest.mark.fixtures
def test_v2_search_pages_of_go_jira(fixtures_dir: Path, tmp_path: Path) -> None:
    """go-jira's 3-page sequence (startAt 1, 3, 5; total 6): the second page repeats the first one's
    issues, so paging stops there; the issues are loaded once with statuses and issue types."""
    sequence = fixture(fixtures_dir, "search_pages_sequence.json")["exchanges"]
    bodies = []
    for exchange in sequence:
        body = copy.deepcopy(exchange["response"]["body"])
        body["issues"] = [updated(i) for i in body["issues"]]
        bodies.append(body)
    statuses = fixture(fixtures_dir, "all_statuses.json")
    with LocalServer() as server:
        server.route("/rest/api/2/search", search_v2({0: bodies[0], 3: bodies[1], 5: bodies[2]}))
        snapshots(server, 2, statuses)
        source = build_jira_source(config(server, api_version=2, page_size=2), context(DAY, DAY + dt.timedelta(1)))
        pipeline(tmp_path).run(source)
        searches = server.hits("/rest/api/2/search")

    # startAt follows what the server answered (1 + 2 issues), not our own count
    assert [(r.arg("startAt"), r.arg("maxResults")) for r in searches] == [("0", "2"), ("3", "2")]
    first = searches[0]
    assert first.headers["Authorization"] == basic("bot@example.com", TOKEN)
    assert first.arg("expand") == "changelog"
    assert {"status", "issuetype", "summary", "assignee", "created", "updated", "resolutiondate", "labels"} <= set(
        first.arg("fields").split(",")
    )
    jql = first.arg("jql")
    assert re.fullmatch(
        r'\(project in \("BULK"\)\) AND updated >= "2024-01-01 10:00" AND updated < "2024-01-04 14:00" '
        r"ORDER BY created ASC, key ASC",
        jql,
    ), jql

    issues = table(tmp_path, "issues")
    assert [(r["_etl_row_key"], r["key"]) for r in issues] == [("10004", "BULK-47"), ("10230", "BULK-62")]
    original = {i["id"]: i for i in bodies[0]["issues"]}
    for row in issues:
        assert row["_etl_record"] == original[row["_etl_row_key"]]
        assert row["_etl_partition_date"] == DAY
        assert row["_etl_event_time"] == dt.datetime(2024, 1, 2, 10, tzinfo=UTC)
        assert (row["_etl_tenant_id"], row["_etl_source"], row["_etl_resource"]) == ("t1", "jira", "issues")
        assert row["_etl_position"].startswith(f"{server.url}/rest/api/2/search?") and TOKEN not in row["_etl_position"]
    assert issues[1]["fields__issuetype__name"] == "Sub-task"  # flattened beside the JSON record

    status_rows = table(tmp_path, "statuses")
    assert len(status_rows) == 2 * len(statuses)  # one snapshot per window day
    assert {r["_etl_partition_date"] for r in status_rows} == {DAY, DAY + dt.timedelta(1)}
    assert all(r["_etl_event_time"] is None for r in status_rows)
    idea = next(r for r in status_rows if r["_etl_row_key"] == "1")
    assert idea["name"] == "Idea" and idea["_etl_record"] == statuses[0]
    assert {r["name"] for r in table(tmp_path, "issue_types")} == {"Bug", "Sub-task"}
    assert table(tmp_path, "issue_transitions") == []


@pytest.mark.fixtures
def test_v3_search_jql_page_of_jira_cli(fixtures_dir: Path, tmp_path: Path) -> None:
    """jira-cli's page: isLast true, no nextPageToken, issues without ids (keys are the row keys),
    `updated` with a +0100 offset."""
    page = fixture(fixtures_dir, "jira_cli_search_v3.json")
    day = dt.date(2020, 12, 3)
    with LocalServer() as server:
        server.route("/rest/api/3/search/jql", lambda r: Response(200, page))
        snapshots(server, 3)
        source = build_jira_source(config(server, pat_env="JIRA_TEST_TOKEN"), context(day))
        pipeline(tmp_path).run(source)
        (search,) = server.hits("/rest/api/3/search/jql")

    assert search.headers["Authorization"] == f"Bearer {TOKEN}"  # a PAT wins over email + token
    assert search.arg("maxResults") == "50" and search.arg("nextPageToken") is None
    issues = table(tmp_path, "issues")
    assert [r["_etl_row_key"] for r in issues] == ["TEST-1", "TEST-2", "TEST-3"]
    assert [r["_etl_record"] for r in issues] == page["issues"]
    assert {r["_etl_event_time"] for r in issues} == {dt.datetime(2020, 12, 3, 13, 5, 20, 974000, tzinfo=UTC)}
    assert [r["fields__status__name"] for r in issues] == ["To Do", "In Progress", "Done"]


# --- paging guards ------------------------------------------------------------------------------


def make_issue(n: int, when: str = IN_WINDOW) -> dict[str, Any]:
    return {"id": str(10000 + n), "key": f"BULK-{n}", "fields": {"summary": f"issue {n}", "updated": when}}


def test_v2_short_pages_and_a_lying_total_stop_at_the_empty_page(tmp_path: Path) -> None:
    """The server caps maxResults at 2 and claims 100 issues; a short page is not the end, the
    empty page is."""
    issues = [make_issue(n) for n in range(5)]
    pages = {
        0: {"startAt": 0, "maxResults": 2, "total": 100, "issues": issues[0:2]},
        2: {"startAt": 2, "maxResults": 2, "total": 100, "issues": issues[2:4]},
        4: {"startAt": 4, "maxResults": 2, "total": 100, "issues": issues[4:5]},
        5: {"startAt": 5, "maxResults": 2, "total": 100, "issues": []},
    }
    with LocalServer() as server:
        server.route("/rest/api/2/search", search_v2(pages))
        snapshots(server, 2)
        pipeline(tmp_path).run(build_jira_source(config(server, api_version=2, page_size=50), context()))
        starts = [r.arg("startAt") for r in server.hits("/rest/api/2/search")]
    assert starts == ["0", "2", "4", "5"]
    assert [r["key"] for r in table(tmp_path, "issues")] == [f"BULK-{n}" for n in range(5)]


def test_v2_server_ignoring_start_at_stops_without_duplicates(tmp_path: Path) -> None:
    page = {"startAt": 0, "maxResults": 2, "total": 1000, "issues": [make_issue(1), make_issue(2)]}
    with LocalServer() as server:
        server.route("/rest/api/2/search", lambda r: Response(200, page))
        snapshots(server, 2)
        pipeline(tmp_path).run(build_jira_source(config(server, api_version=2, page_size=2), context()))
        assert len(server.hits("/rest/api/2/search")) == 2
    assert [r["key"] for r in table(tmp_path, "issues")] == ["BULK-1", "BULK-2"]


def v3_server(server: LocalServer, pages: dict[str | None, dict[str, Any]]) -> None:
    def handle(req: Request) -> Response:
        token = req.arg("nextPageToken")
        return Response(200, pages[token]) if token in pages else Response(400, {"errorMessages": ["bad token"]})

    server.route("/rest/api/3/search/jql", handle)
    snapshots(server, 3)


def test_v3_follows_next_page_tokens_until_is_last(tmp_path: Path) -> None:
    with LocalServer() as server:
        v3_server(
            server,
            {
                None: {"issues": [make_issue(1)], "nextPageToken": "t1", "isLast": False},
                "t1": {"issues": [make_issue(2)], "nextPageToken": "t2", "isLast": False},
                "t2": {"issues": [make_issue(3)], "nextPageToken": "t3", "isLast": True},
            },
        )
        pipeline(tmp_path).run(build_jira_source(config(server, page_size=1), context()))
        tokens = [r.arg("nextPageToken") for r in server.hits("/rest/api/3/search/jql")]
    assert tokens == [None, "t1", "t2"]
    rows = table(tmp_path, "issues")
    assert [r["key"] for r in rows] == ["BULK-1", "BULK-2", "BULK-3"]
    assert "nextPageToken=t2" in rows[2]["_etl_position"]


@pytest.mark.parametrize(
    "second, requests",
    [
        ({"issues": [make_issue(1), make_issue(2)], "nextPageToken": "t1", "isLast": False}, 2),  # repeated token
        ({"issues": [make_issue(2)], "isLast": False}, 2),  # no token but not last
    ],
)
def test_v3_repeated_or_missing_token_stops(tmp_path: Path, second: dict[str, Any], requests: int) -> None:
    with LocalServer() as server:
        v3_server(server, {None: {"issues": [make_issue(1)], "nextPageToken": "t1"}, "t1": second})
        pipeline(tmp_path).run(build_jira_source(config(server), context()))
        assert len(server.hits("/rest/api/3/search/jql")) == requests
    assert [r["key"] for r in table(tmp_path, "issues")] == ["BULK-1", "BULK-2"]


# --- window, transitions, reloads ---------------------------------------------------------------


def test_rows_outside_the_window_are_skipped_and_counted(tmp_path: Path) -> None:
    issues = [
        make_issue(1, "2024-01-01T23:59:59.000+0000"),  # before (fetched: the JQL range is widened)
        make_issue(2, "2024-01-02T00:30:00.000+0100"),  # 2024-01-01T23:30Z: before
        make_issue(3, "2024-01-02T23:30:00.000-0100"),  # 2024-01-03T00:30Z: after
        make_issue(4, "2024-01-02T00:00:00.000+0000"),
        make_issue(5, "2024-01-03T00:30:00.000+0100"),  # 2024-01-02T23:30Z
        {"id": "10006", "key": "BULK-6", "fields": {}},  # no updated, no created: the partition day
        {"id": "10007", "key": "BULK-7", "fields": {"created": "2024-01-02T08:00:00.000+0000"}},  # created
        {"id": "10008", "key": "BULK-8", "fields": {"created": "2023-12-02T08:00:00.000+0000"}},  # created, before
        make_issue(4, "2024-01-02T10:00:00.000+0000"),  # repeated
        {"fields": {"summary": "no id, no key"}},
    ]
    with LocalServer() as server:
        server.route("/rest/api/2/search", search_v2({0: {"startAt": 0, "total": 10, "issues": issues}}))
        snapshots(server, 2)
        source = build_jira_source(config(server, api_version=2), context())
        pipeline(tmp_path).run(source)
    rows = table(tmp_path, "issues")
    assert [r["key"] for r in rows] == ["BULK-4", "BULK-5", "BULK-6", "BULK-7"]
    assert {r["_etl_partition_date"] for r in rows} == {DAY}
    assert [r["_etl_event_time"] is None for r in rows] == [False, False, True, False]
    stats = source.etl_stats
    assert stats.skipped_by_reason == {
        "issues: outside the window": 4,
        "issues: repeated": 1,
        "issues: no id or key": 1,
    }
    assert stats.event_time_fallbacks == {"issues: created": 2, "issues: partition day": 1}
    assert stats.as_metadata()["skipped_by_reason"]["issues: outside the window"] == 4


def test_status_transitions_from_the_changelog(tmp_path: Path) -> None:
    """Status items of the changelog become transition rows; a truncated changelog is completed
    from /issue/{id}/changelog."""
    one = make_issue(1) | {
        "changelog": {
            "startAt": 0,
            "maxResults": 2,
            "total": 2,
            "histories": [
                history("100", "2024-01-01T09:00:00.000+0000", ("status", "1:To Do", "3:In Progress")),
                history(
                    "101",
                    "2024-01-02T09:00:00.000+0000",
                    ("assignee", ":", "u1:Ann"),
                    ("status", "3:In Progress", "10001:Done"),
                ),
            ],
        }
    }
    two = make_issue(2) | {
        "changelog": {
            "startAt": 0,
            "maxResults": 1,
            "total": 3,
            "histories": [history("200", "2024-01-02T08:00:00.000+0000", ("status", "1:To Do", "3:In Progress"))],
        }
    }
    full = [
        history("198", "2023-12-30T08:00:00.000+0000", ("labels", ":", ":x")),
        history("199", "2023-12-31T08:00:00.000+0000", ("status", "10000:Backlog", "1:To Do")),
        two["changelog"]["histories"][0],
    ]
    with LocalServer() as server:
        server.route("/rest/api/2/search", search_v2({0: {"startAt": 0, "total": 2, "issues": [one, two]}}))
        server.route(
            "/rest/api/2/issue/10002/changelog",
            lambda r: Response(200, {"startAt": 0, "maxResults": 100, "total": 3, "isLast": True, "values": full}),
        )
        snapshots(server, 2)
        pipeline(tmp_path).run(build_jira_source(config(server, api_version=2), context()))
    rows = table(tmp_path, "issue_transitions")
    got = [
        (r["_etl_row_key"], r["issue_id"], r["issue_key"], r["from_status"], r["to_status"], r["to_status_id"])
        for r in rows
    ]
    assert got == [
        ("10001|100|0", "10001", "BULK-1", "To Do", "In Progress", "3"),
        ("10001|101|1", "10001", "BULK-1", "In Progress", "Done", "10001"),
        ("10002|199|0", "10002", "BULK-2", "Backlog", "To Do", "1"),
        ("10002|200|0", "10002", "BULK-2", "To Do", "In Progress", "3"),
    ]
    assert all(r["_etl_partition_date"] == DAY for r in rows)  # the issue's day
    assert rows[0]["_etl_event_time"] == dt.datetime(2024, 1, 1, 9, tzinfo=UTC)
    assert rows[1]["_etl_record"] == one["changelog"]["histories"][1]
    assert rows[1]["author_id"] == "acc-1" and rows[1]["item_index"] == 1
    # histories stay JSON (_etl_record of issues and of transitions), not nested tables
    assert tables(tmp_path) & {"issue_transitions__items", "issues__changelog__histories"} == set()
    assert table(tmp_path, "issues")[0]["_etl_record"]["changelog"] == one["changelog"]


def test_reloading_a_partition_leaves_one_copy(tmp_path: Path) -> None:
    with LocalServer() as server:
        server.route(
            "/rest/api/2/search",
            search_v2({0: {"startAt": 0, "total": 2, "issues": [make_issue(1), make_issue(2)]}}),
        )
        snapshots(server, 2, [{"id": "1", "name": "Open"}])
        pipe = pipeline(tmp_path)
        for run_id in ("run-1", "run-2"):
            pipe.run(build_jira_source(config(server, api_version=2), context(run_id=run_id)))
    for name, count in (("issues", 2), ("statuses", 1), ("issue_types", 2)):
        rows = table(tmp_path, name)
        assert len(rows) == count, name
        assert {r["_etl_run_id"] for r in rows} == {"run-2"}


# --- errors and secrets -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403, 400])
def test_client_errors_are_permanent_at_once_and_redacted(tmp_path: Path, status: int) -> None:
    def deny(req: Request) -> Response:  # echoes the credential, as some proxies do
        return Response(status, {"errorMessages": [f"rejected {req.headers.get('Authorization')} {TOKEN}"]})

    with LocalServer() as server:
        server.route("/rest/api/2/search", deny)
        source = build_jira_source(config(server, api_version=2), context())
        with pytest.raises(Exception) as excinfo:
            pipeline(tmp_path).run(source.with_resources("issues"))
        assert len(server.requests) == 1
    text = str(excinfo.value)
    failure = tenant_failure(excinfo.value, "t1", "jira")  # how the platform reports it
    assert failure.permanent and failure.error == "PermanentSourceError" and failure.http_status == status
    assert f" for {server.url}/rest/api/2/search?" in failure.message
    text += failure.message
    assert TOKEN not in text and basic("bot@example.com", TOKEN).split()[1] not in text.replace("***", "")


def test_server_errors_are_retried(tmp_path: Path) -> None:
    calls: list[int] = []

    def flaky(req: Request) -> Response:
        calls.append(1)
        if len(calls) == 1:
            return Response(503, {"errorMessages": ["busy"]})
        return Response(200, {"startAt": 0, "total": 1, "issues": [make_issue(1)]})

    with LocalServer() as server:
        server.route("/rest/api/2/search", flaky)
        pipeline(tmp_path).run(build_jira_source(config(server, api_version=2), context()).with_resources("issues"))
    assert len(calls) == 2 and [r["key"] for r in table(tmp_path, "issues")] == ["BULK-1"]


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.fixtures
def test_loads_into_postgres(fixtures_dir: Path, pg_url: str, tmp_path: Path) -> None:
    import psycopg

    page = fixture(fixtures_dir, "jira_cli_search_v3.json")
    credentials = pg_url if urlsplit(pg_url).password else pg_url.replace("@", ":unused@", 1)
    with LocalServer() as server:
        server.route("/rest/api/3/search/jql", lambda r: Response(200, page))
        snapshots(server, 3, fixture(fixtures_dir, "all_statuses.json"))
        pipe = pipeline(tmp_path, "jira_pg", dlt.destinations.postgres(credentials=credentials))
        for run_id in ("run-1", "run-2"):
            pipe.run(build_jira_source(config(server), context(dt.date(2020, 12, 3), run_id=run_id)))
    with psycopg.connect(pg_url) as conn:
        issues = conn.execute(
            f"SELECT _etl_row_key, _etl_run_id, _etl_record, _etl_event_time, _etl_partition_date "
            f"FROM {DATASET}.issues ORDER BY _etl_row_key"
        ).fetchall()
        statuses = conn.execute(f"SELECT count(*) FROM {DATASET}.statuses").fetchone()[0]
    assert [(r[0], r[1]) for r in issues] == [("TEST-1", "run-2"), ("TEST-2", "run-2"), ("TEST-3", "run-2")]
    assert issues[1][2] == page["issues"][1]
    assert issues[0][3] == dt.datetime(2020, 12, 3, 13, 5, 20, 974000, tzinfo=UTC)
    assert issues[0][4] == dt.date(2020, 12, 3)
    assert statuses == 37
