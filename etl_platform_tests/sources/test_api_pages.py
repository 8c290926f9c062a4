"""API pages as the platform reads them (`sources.pages`): empty answers are empty pages, deep
records load with their siblings, large pages are parsed as a stream with the same result as
small ones. REST, Jira and GitHub sources against local servers, loaded into DuckDB."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from etl_platform.config.models import GithubSource, JiraSource, RestApiSource
from etl_platform.sources import pages
from etl_platform.sources.github import build_github_source
from etl_platform.sources.jira import build_jira_source
from etl_platform.sources.lineage import RunContext, Window
from etl_platform.sources.pages import MAX_DEPTH, limit_depth
from etl_platform.sources.rest_api import build_rest_api_source
from etl_platform_tests.support import dlt_loads
from etl_platform_tests.support.http_servers import LocalServer, Request, Response

DAY = dt.date(2024, 1, 2)
CTX = RunContext("t1", "api", "run-1", Window((DAY,)))
# what api.github.com sends with a 204 (no body, no Content-Type)
GITHUB_204 = {"Server": "GitHub.com", "X-GitHub-Media-Type": "github.v3; format=json", "X-RateLimit-Remaining": "4999"}


def rest(server: LocalServer, **resource: Any) -> Any:
    config = RestApiSource.model_validate(
        {
            "name": "api",
            "kind": "rest_api",
            "base_url": server.url,
            "resources": [{"name": "items", "path": "items", "primary_key": "id", **resource}],
        }
    )
    return build_rest_api_source(config, CTX)


def load(tmp_path: Path, source: Any, name: str = "api") -> Any:
    dlt_loads.pipeline(tmp_path, name).run(source)
    return source.etl_stats


def deep(levels: int) -> str:
    """A JSON object `levels` deep (written as text: Python's json cannot write it)."""
    return '{"level": 0, "child": ' * (levels - 1) + '{"leaf": "bottom"}' + "}" * (levels - 1)


# --- empty answers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [Response(204, b"", GITHUB_204), Response(200, b""), Response(200, b" \r\n")],
    ids=["204", "empty 200", "blank 200"],
)
def test_an_empty_rest_answer_is_an_empty_page(answer: Response, tmp_path: Path) -> None:
    with LocalServer() as server:
        server.route("/items", lambda req: answer)
        stats = load(tmp_path, rest(server, paginator={"type": "json_link", "next_url_path": "next"}))
    assert dlt_loads.table(tmp_path, "items") == []
    assert (stats.pages, stats.empty_pages, stats.rows) == (1, 1, 0)


def test_a_204_ends_a_paginated_rest_resource(tmp_path: Path) -> None:
    with LocalServer() as server:
        server.route(
            "/items",
            lambda req: Response(200, [{"id": 1}, {"id": 2}], {"Link": f'<{server.url}/items/2>; rel="next"'}),
        )
        server.route("/items/2", lambda req: Response(204, b"", GITHUB_204))
        stats = load(tmp_path, rest(server))
    assert [r["id"] for r in dlt_loads.table(tmp_path, "items")] == [1, 2]
    assert (stats.pages, stats.empty_pages) == (2, 1)


def test_github_204_no_content_is_an_empty_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GH_TEST_TOKEN", "t")

    def answer(req: Request) -> Response:
        if req.path == "/repos/o/r/pulls":
            pr = {"id": 1, "number": 1, "title": "one", "updated_at": "2024-01-02T12:00:00Z"}
            return Response(200, [pr])
        return Response(204, b"", GITHUB_204)  # reviews, commits, releases, deployments

    with LocalServer() as server:
        server.route("*", answer)
        config = GithubSource(
            name="gh", kind="github", base_url=server.url, repositories=["o/r"], token_env="GH_TEST_TOKEN"
        )
        source = build_github_source(config, CTX)
        load(tmp_path, source, "gh")
    assert [r["_etl_row_key"] for r in dlt_loads.table(tmp_path, "pull_requests")] == ["o/r#1"]
    assert dlt_loads.table(tmp_path, "reviews") == [] and dlt_loads.table(tmp_path, "releases") == []
    assert source.etl_stats.empty_pages == 4


def test_jira_empty_search_answer_is_no_issues(tmp_path: Path) -> None:
    with LocalServer() as server:
        server.route("/rest/api/3/search/jql", lambda req: Response(204, b""))
        server.route("/rest/api/3/status", lambda req: Response(200, [{"id": "1", "name": "Open"}]))
        server.route("/rest/api/3/issuetype", lambda req: Response(200, b""))
        config = JiraSource(name="jira", kind="jira", base_url=server.url, projects=["P"], api_version=3)
        source = build_jira_source(config, CTX)
        load(tmp_path, source, "jira")
    assert dlt_loads.table(tmp_path, "issues") == [] and len(dlt_loads.table(tmp_path, "statuses")) == 1


# --- deep records ---------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [500])  # deeper than ETL_MAX_JSON_DEPTH: refused (test_bounded_input.py)
def test_a_deep_record_loads_with_its_siblings_and_loses_nothing(levels: int, tmp_path: Path) -> None:
    body = '[{"id": 1, "name": "before"}, {"id": 2, "tree": ' + deep(levels) + '}, {"id": 3, "name": "after"}]'
    with LocalServer() as server:
        server.route("/items", lambda req: Response(200, body, {"Content-Type": "application/json"}))
        stats = load(tmp_path, rest(server, paginator={"type": "single_page"}))
    rows = {r["id"]: r for r in dlt_loads.table(tmp_path, "items")}
    assert sorted(rows) == [1, 2, 3] and rows[3]["_etl_record"] == {"id": 3, "name": "after"}
    assert stats.deep_records == 1
    # the record is JSON for MAX_DEPTH levels; below, the subtree is its JSON text, intact
    node, depth = rows[2]["_etl_record"]["tree"], 2
    while isinstance(node["child"], dict):
        node, depth = node["child"], depth + 1
    assert depth == MAX_DEPTH and node["level"] == 0
    text = node["child"]
    assert text == deep(levels - MAX_DEPTH + 1).replace(": ", ":").replace(", ", ",")
    assert text.count("{") == levels + 1 - MAX_DEPTH  # the tree starts at level 2 of the record


def test_limit_depth_keeps_lists_and_shallow_records() -> None:
    shallow = {"a": [1, {"b": [2, 3]}], "c": {}}
    assert limit_depth(shallow, 4) == 0 and shallow == {"a": [1, {"b": [2, 3]}], "c": {}}
    record = {"a": [[["x", {"y": 1}]]]}
    assert limit_depth(record, 3) == 1 and record == {"a": [['["x",{"y":1}]']]}


# --- large pages ----------------------------------------------------------------------------------


def large_and_small(server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **resource: Any) -> list:
    """The rows of the same pages read whole and as a stream (SMALL_BODY lowered)."""
    out = []
    for small in (pages.SMALL_BODY, 10):
        monkeypatch.setattr(pages, "SMALL_BODY", small)
        folder = tmp_path / str(small)
        stats = load(folder, rest(server, **resource))
        rows = dlt_loads.table(folder, "items")
        out.append(([(r["id"], r["_etl_record"]) for r in rows], stats.pages, stats.bytes))
    assert out[0] == out[1] and out[0][0]
    return out[0][0]


def test_a_json_cursor_after_the_items_reaches_the_paginator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def answer(req: Request) -> Response:
        start = int(req.arg("cursor") or 0)
        items = [{"id": i, "n": [i, {"x": i}]} for i in range(start, start + 3)]
        return Response(200, {"data": items, "meta": {"next": str(start + 3) if start < 6 else None}})

    with LocalServer() as server:
        server.route("/items", answer)
        rows = large_and_small(
            server,
            tmp_path,
            monkeypatch,
            data_selector="data",
            paginator={"type": "cursor", "cursor_path": "meta.next", "cursor_param": "cursor"},
        )
    assert [i for i, _ in rows] == list(range(9)) and rows[1][1] == {"id": 1, "n": [1, {"x": 1}]}


def test_yajl_integer_overflow_is_read_by_the_python_backend(tmp_path: Path) -> None:
    path = tmp_path / "body.json"
    path.write_bytes(b'[{"id": 1}, {"id": 2, "big": 1180591620717411303424}, {"id": 3}]')
    with open(path, "rb") as handle:
        items = list(pages._items(lambda: handle.seek(0) or handle, "item"))
    assert items == [{"id": 1}, {"id": 2, "big": 2**70}, {"id": 3}]


@pytest.mark.parametrize(
    "body",
    [
        {"meta": {"count": 2}, "results": [{"id": 1}, {"id": 2}]},  # found by dlt's detector
        [{"id": 1}, {"id": 2}],
        {"id": 1, "only": "one"},  # a single record
    ],
    ids=["detected key", "top-level list", "one record"],
)
def test_without_a_selector_large_pages_read_as_small_ones(
    body: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalServer() as server:
        server.route("/items", lambda req: Response(200, body))
        large_and_small(server, tmp_path, monkeypatch, paginator={"type": "single_page"})


def test_a_single_record_selected_from_a_large_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalServer() as server:
        server.route("/items", lambda req: Response(200, {"result": {"id": 7, "deep": {"a": [1]}}, "ok": True}))
        rows = large_and_small(server, tmp_path, monkeypatch, data_selector="result", paginator={"type": "single_page"})
    assert rows == [(7, {"id": 7, "deep": {"a": [1]}})]
