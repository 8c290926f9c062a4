"""The GitHub source against local servers replaying real GitHub recordings (octokit's 5-page
paginate-issues fixture with its Link headers, PyGithub's pulls and reviews), loaded through real
dlt pipelines; rate limits, permanent errors and paging guards on scripted servers."""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dlt
import pytest

from etl_platform.config.models import GithubSource
from etl_platform.config.settings import GITHUB_MAX_WAIT_ENV
from etl_platform.loading.failures import tenant_failure
from etl_platform.sources.github import build_github_source
from etl_platform.sources.guard import ForeignHostError
from etl_platform.sources.lineage import RunContext, Window
from etl_platform_tests.support import dlt_loads
from etl_platform_tests.support.http_servers import LocalServer, Request, Response

DATASET = "tenant_t1"
UTC = dt.timezone.utc
DAY = dt.date(2024, 1, 2)
NOON = "2024-01-02T12:00:00Z"
TOKEN = "ghp_test0000secret1111token"
RESOURCES = ["pull_requests", "reviews", "commits", "releases", "deployments"]
SKIP_HEADERS = {"transfer-encoding", "content-length", "content-encoding", "connection", "status"}


# --- helpers ------------------------------------------------------------------------------------


def context(*days: dt.date, run_id: str = "run-1") -> RunContext:
    return RunContext(tenant_id="t1", source="github", run_id=run_id, window=Window(days or (DAY,)))


def config(server: LocalServer, repositories: list[str], **kw: Any) -> GithubSource:
    return GithubSource(
        name="github", kind="github", base_url=server.url, repositories=repositories, token_env="GH_TEST_TOKEN", **kw
    )


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GH_TEST_TOKEN", TOKEN)
    monkeypatch.setenv(GITHUB_MAX_WAIT_ENV, "10")


def pipeline(tmp_path: Path, name: str = "github", destination: Any = None) -> Any:
    return dlt_loads.pipeline(tmp_path, name, destination)


table = dlt_loads.table


def empty_lists(server: LocalServer) -> None:
    """Every other GitHub list is empty; deployments are not there (404)."""

    def handle(req: Request) -> Response:
        if req.path.endswith("/deployments"):
            return Response(404, {"message": "Not Found"})
        return Response(200, [])

    server.route("*", handle)


def pr(number: int, updated: str, repo: str = "o/r") -> dict[str, Any]:
    return {
        "id": 5000 + number,
        "number": number,
        "state": "open",
        "title": f"PR {number}",
        "updated_at": updated,
        "base": {"repo": {"full_name": repo}},
    }


def commit(sha: str, date: str) -> dict[str, Any]:
    person = {"name": "Ann", "email": "ann@example.com", "date": date}
    return {"sha": sha, "commit": {"author": person, "committer": person, "message": f"commit {sha}"}, "parents": []}


def release(rid: int, tag: str, created: str, published: str | None) -> dict[str, Any]:
    return {"id": rid, "tag_name": tag, "draft": published is None, "created_at": created, "published_at": published}


def link(server: LocalServer, path: str) -> dict[str, str]:
    return {"Link": f'<{server.url}{path}>; rel="next"'}


# --- building -----------------------------------------------------------------------------------


def test_building_the_source_reads_no_secret_and_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GH_TEST_TOKEN")
    cfg = GithubSource(
        name="github", kind="github", base_url="http://127.0.0.1:9", repositories=["o/r"], token_env="GH_TEST_TOKEN"
    )
    source = build_github_source(cfg, context())
    assert source.name == "github" and list(source.resources) == RESOURCES == cfg.resource_names
    with pytest.raises(Exception) as excinfo:
        list(source.with_resources("releases"))
    assert "GH_TEST_TOKEN is not set" in repr(excinfo.value) or "GH_TEST_TOKEN" in str(excinfo.value)


# --- the real recordings ------------------------------------------------------------------------


@pytest.mark.fixtures
def test_link_header_pagination_of_octokit_paginate_issues(fixtures_dir: Path, tmp_path: Path) -> None:
    """octokit's 5 pages: the first request goes to /repos/{o}/{r}/..., the next links point to
    /repositories/1000/issues?per_page=3&page=N and are followed exactly as given."""
    recording = json.loads((fixtures_dir / "api/github/paginate-issues.normalized-fixture.json").read_text())
    repo = "octokit-fixture-org/paginate-issues"

    with LocalServer() as server:

        def replay(index: int) -> Response:
            exchange = recording[index]
            headers = {k: str(v) for k, v in exchange["headers"].items() if k.lower() not in SKIP_HEADERS}
            headers["link"] = headers["link"].replace("https://api.github.com", server.url)
            return Response(exchange["status"], exchange["response"], headers)

        server.route(f"/repos/{repo}/pulls", lambda r: replay(0))
        server.route("/repositories/1000/issues", lambda r: replay(int(r.arg("page")) - 1))
        empty_lists(server)
        source = build_github_source(config(server, [repo], page_size=3), context(dt.date(2017, 10, 10)))
        pipeline(tmp_path).run(source)
        first = server.hits(f"/repos/{repo}/pulls")
        followed = server.hits("/repositories/1000/issues")
        reviews = [r for r in server.requests if r.path.endswith("/reviews")]

    assert len(first) == 1
    assert first[0].query == {"state": ["all"], "sort": ["updated"], "direction": ["desc"], "per_page": ["3"]}
    assert first[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert first[0].headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert [r.query for r in followed] == [{"per_page": ["3"], "page": [str(n)]} for n in range(2, 6)]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in followed)

    rows = table(tmp_path, "pull_requests")
    expected = [issue for exchange in recording for issue in exchange["response"]]
    assert len(rows) == 13
    by_key = {r["_etl_row_key"]: r for r in rows}
    for index, issue in enumerate(expected):
        row = by_key[f"{repo}#{issue['number']}"]
        assert row["_etl_record"] == issue
        assert row["repository"] == repo and row["number"] == issue["number"]
        assert row["_etl_event_time"] == dt.datetime(2017, 10, 10, 16, tzinfo=UTC)
        assert row["_etl_partition_date"] == dt.date(2017, 10, 10)
        page = index // 3 + 1
        assert row["_etl_position"] == (
            f"{server.url}/repos/{repo}/pulls?state=all&sort=updated&direction=desc&per_page=3"
            if page == 1
            else f"{server.url}/repositories/1000/issues?per_page=3&page={page}"
        )
    assert sorted(int(r.path.split("/")[-2]) for r in reviews) == list(range(1, 14))  # one per PR in the window
    assert table(tmp_path, "deployments") == [] and table(tmp_path, "releases") == []


def recorded(fixtures_dir: Path, name: str) -> list[dict[str, Any]]:
    return json.loads((fixtures_dir / "api/github" / name).read_text())


def as_response(exchange: dict[str, Any], body: Any = None) -> Response:
    answer = exchange["response"]
    headers = {k: v for k, v in answer["headers"] if k.lower() not in SKIP_HEADERS}
    return Response(answer["status"], copy.deepcopy(answer["body"] if body is None else body), headers)


@pytest.mark.fixtures
def test_pulls_and_reviews_from_pygithub_recordings(fixtures_dir: Path, tmp_path: Path) -> None:
    """PR 31 (PullRequest.setUp) updated in the window, PR 32 (Repository.testGetPulls) older:
    paging stops there; PR 31's reviews are PyGithub's two recorded reviews."""
    pull_31 = next(e for e in recorded(fixtures_dir, "PullRequest.setUp.json") if e["request"]["url"].endswith("/31"))
    pulls = recorded(fixtures_dir, "Repository.testGetPulls.json")[0]
    reviews = [e["response"]["body"] for e in recorded(fixtures_dir, "PullRequestReview.setUp.json")]
    day = dt.date(2018, 6, 25)
    repo = "PyGithub/PyGithub"

    with LocalServer() as server:
        page = [pull_31["response"]["body"], *pulls["response"]["body"]]
        answer = as_response(pulls, page)
        answer.headers["Link"] = f'<{server.url}/repositories/3544490/pulls?page=2>; rel="next"'
        server.route(f"/repos/{repo}/pulls", lambda r: answer)
        server.route(f"/repos/{repo}/pulls/31/reviews", lambda r: as_response(pull_31, reviews))
        server.route(
            f"/repos/{repo}/pulls/31/commits", lambda r: Response(200, [commit("8a4f306d", "2012-05-27T10:00:00Z")])
        )
        empty_lists(server)
        pipeline(tmp_path).run(build_github_source(config(server, [repo]), context(day)))
        paths = [r.path for r in server.requests]

    assert "/repositories/3544490/pulls" not in paths  # PR 32 is older than the window: no next page
    assert f"/repos/{repo}/pulls/32/reviews" not in paths
    (row,) = table(tmp_path, "pull_requests")
    assert row["_etl_row_key"] == f"{repo}#31" and row["_etl_record"] == pull_31["response"]["body"]
    assert row["merged"] is True and row["base__repo__full_name"] == repo

    review_rows = table(tmp_path, "reviews")
    assert [r["_etl_row_key"] for r in review_rows] == ["105368184", "28482091"]
    for got, review in zip(review_rows, reviews):
        assert got["_etl_record"] == review
        assert (got["repository"], got["pull_number"]) == (repo, 31)
        assert got["_etl_event_time"] == dt.datetime.fromisoformat(review["submitted_at"].replace("Z", "+00:00"))
        assert got["_etl_partition_date"] == day  # the PR's day
        assert got["_etl_position"] == f"{server.url}/repos/{repo}/pulls/31/reviews?per_page=100"
    assert review_rows[0]["state"] == "COMMENTED" and review_rows[1]["user__login"] == "jzelinskie"

    (commit_row,) = table(tmp_path, "commits")
    assert commit_row["_etl_row_key"] == f"{repo}#31@8a4f306d"
    assert (commit_row["repository"], commit_row["pull_number"], commit_row["sha"]) == (repo, 31, "8a4f306d")
    assert commit_row["_etl_event_time"] == dt.datetime(2012, 5, 27, 10, tzinfo=UTC)
    assert commit_row["_etl_partition_date"] == day


# --- window, releases, reloads ------------------------------------------------------------------


def scripted_repo(server: LocalServer) -> None:
    """o/r: PRs newest first over two pages (the second one must never be requested), reviews,
    releases over two pages (the second one older than the window), deployments."""
    server.route(
        "/repos/o/r/pulls",
        lambda r: Response(
            200,
            [
                pr(9, "2024-01-03T00:00:01Z"),  # after the window: skipped
                pr(8, "2024-01-02T23:59:59Z"),
                pr(7, "2024-01-02T00:00:00Z"),
                pr(6, "2024-01-01T23:59:59Z"),  # older: stop
                pr(5, "2024-01-01T12:00:00Z"),
            ],
            link(server, "/repos/o/r/pulls/page2"),
        ),
    )
    server.route("/repos/o/r/pulls/page2", lambda r: Response(200, [pr(1, "2023-01-01T00:00:00Z")]))
    server.route(
        "/repos/o/r/pulls/8/reviews",
        lambda r: Response(200, [{"id": 81, "state": "APPROVED", "submitted_at": "2023-12-30T10:00:00Z"}]),
    )
    server.route(
        "/repos/o/r/releases",
        lambda r: Response(
            200,
            [
                release(3, "v3", "2024-01-02T09:00:00Z", "2024-01-02T10:00:00Z"),
                release(2, "v2", "2024-01-01T09:00:00Z", "2024-01-02T01:00:00Z"),  # created before, published in
                release(4, "v4-draft", "2024-01-02T11:00:00Z", None),  # a draft: its created_at
            ],
            link(server, "/repos/o/r/releases/page2"),
        ),
    )
    server.route(
        "/repos/o/r/releases/page2",
        lambda r: Response(
            200,
            [release(1, "v1", "2023-06-01T09:00:00Z", "2023-06-01T09:00:00Z")],
            link(server, "/repos/o/r/releases/page3"),
        ),
    )
    server.route(
        "/repos/o/r/deployments",
        lambda r: Response(200, [{"id": 70, "environment": "prod", "created_at": "2024-01-02T12:00:00Z"}]),
    )
    empty_lists(server)


def test_window_filtering_stops_at_older_pages(tmp_path: Path) -> None:
    with LocalServer() as server:
        scripted_repo(server)
        source = build_github_source(config(server, ["o/r"]), context())
        pipeline(tmp_path).run(source)
        paths = [r.path for r in server.requests]

    assert "/repos/o/r/pulls/page2" not in paths and "/repos/o/r/releases/page3" not in paths
    assert "/repos/o/r/releases/page2" in paths  # page 1 still had releases created in the window
    assert sorted(p for p in paths if p.endswith("/reviews")) == [
        "/repos/o/r/pulls/7/reviews",
        "/repos/o/r/pulls/8/reviews",
    ]
    assert [r["_etl_row_key"] for r in table(tmp_path, "pull_requests")] == ["o/r#7", "o/r#8"]
    (review,) = table(tmp_path, "reviews")
    assert (review["_etl_row_key"], review["pull_number"], review["_etl_partition_date"]) == ("81", 8, DAY)
    releases = table(tmp_path, "releases")
    assert [(r["tag_name"], r["_etl_event_time"].hour) for r in releases] == [("v2", 1), ("v3", 10), ("v4-draft", 11)]
    (deployment,) = table(tmp_path, "deployments")
    assert (deployment["_etl_row_key"], deployment["repository"], deployment["environment"]) == ("70", "o/r", "prod")
    # every row received and not loaded is counted: PR 9 (after), 6 and 5 (older, the page's rest); v1
    assert source.etl_stats.skipped_by_reason == {
        "pull_requests: outside the window": 3,
        "releases: outside the window": 1,
    }
    assert source.etl_stats.outside_window == 4


def test_reloading_a_partition_leaves_one_copy(tmp_path: Path) -> None:
    with LocalServer() as server:
        scripted_repo(server)
        pipe = pipeline(tmp_path)
        for run_id in ("run-1", "run-2"):
            pipe.run(build_github_source(config(server, ["o/r"]), context(run_id=run_id)))
    for name, count in (("pull_requests", 2), ("reviews", 1), ("releases", 3), ("deployments", 1)):
        rows = table(tmp_path, name)
        assert len(rows) == count, name
        assert {r["_etl_run_id"] for r in rows} == {"run-2"}


# --- paging guards and rate limits ---------------------------------------------------------------


def test_repeated_next_link_stops_without_duplicates(tmp_path: Path) -> None:
    with LocalServer() as server:
        server.route(
            "/repos/o/r/pulls",
            lambda r: Response(200, [pr(3, "2024-01-02T12:00:00Z")], link(server, "/p2?page=2")),
        )
        server.route(
            "/p2",
            lambda r: Response(200, [pr(3, NOON), pr(2, "2024-01-02T11:00:00Z")], link(server, "/p2?page=2")),
        )
        empty_lists(server)
        pipeline(tmp_path).run(build_github_source(config(server, ["o/r"]), context()).with_resources("pull_requests"))
        assert len(server.hits("/p2")) == 1
    assert [r["_etl_row_key"] for r in table(tmp_path, "pull_requests")] == ["o/r#2", "o/r#3"]


def two_pages(server: LocalServer, first: list[Response]) -> list[float]:
    """PR pages: scripted answers for page 1 (one per request), then page 2; returns request times."""
    times: list[float] = []

    def page1(req: Request) -> Response:
        times.append(time.monotonic())
        answer = first[min(len(times), len(first)) - 1]
        if answer.status == 200:
            answer.body = [pr(2, "2024-01-02T12:00:00Z")]
            answer.headers.update(link(server, "/p2"))
        return answer

    def page2(req: Request) -> Response:
        times.append(time.monotonic())
        return Response(200, [pr(1, "2024-01-02T11:00:00Z")])

    server.route("/repos/o/r/pulls", page1)
    server.route("/p2", page2)
    empty_lists(server)
    return times


@pytest.mark.parametrize(
    "answers, min_wait",
    [
        # primary limit exhausted on a good page: wait for the reset, then the next page
        (lambda reset: [Response(200, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset})], 1.0),
        # primary limit hit: 403 with Remaining 0 and a reset an hour away, the wait capped at 1 s
        (
            lambda reset: [
                Response(
                    403,
                    {"message": "API rate limit exceeded"},
                    {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()) + 3600)},
                ),
                Response(200, headers={"X-RateLimit-Remaining": "4999"}),
            ],
            1.0,
        ),
        # secondary limit: 403 with Retry-After
        (
            lambda reset: [
                Response(403, {"message": "You have exceeded a secondary rate limit."}, {"Retry-After": "1"}),
                Response(200),
            ],
            1.0,
        ),
    ],
    ids=["remaining-0-then-reset", "403-remaining-0-capped", "secondary-403-retry-after"],
)
def test_rate_limits_wait_then_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: Any, min_wait: float
) -> None:
    monkeypatch.setenv(GITHUB_MAX_WAIT_ENV, "1")
    with LocalServer() as server:
        times = two_pages(server, answers(str(int(time.time()) + 2)))
        started = time.monotonic()
        pipeline(tmp_path).run(build_github_source(config(server, ["o/r"]), context()).with_resources("pull_requests"))
        elapsed = time.monotonic() - started
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) >= min_wait - 0.05, gaps
    assert elapsed < 8
    assert [r["_etl_row_key"] for r in table(tmp_path, "pull_requests")] == ["o/r#1", "o/r#2"]


def test_reset_wait_is_until_the_reset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GITHUB_MAX_WAIT_ENV, "10")
    with LocalServer() as server:
        reset = int(time.time()) + 2
        times = two_pages(
            server, [Response(200, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)})]
        )
        pipeline(tmp_path).run(build_github_source(config(server, ["o/r"]), context()).with_resources("pull_requests"))
    assert len(times) == 2
    assert time.time() >= reset  # the second page was asked for after the reset
    assert times[1] - times[0] < 5


@pytest.mark.parametrize(
    "status, body",
    [(401, {"message": "Bad credentials"}), (403, {"message": "Resource not accessible by integration"})],
)
def test_bad_credentials_are_permanent_at_once(tmp_path: Path, status: int, body: dict[str, Any]) -> None:
    def deny(req: Request) -> Response:
        return Response(status, body | {"echo": req.headers.get("Authorization")}, {"X-RateLimit-Remaining": "4999"})

    with LocalServer() as server:
        server.route("/repos/o/r/pulls", deny)
        source = build_github_source(config(server, ["o/r"]), context())
        with pytest.raises(Exception) as excinfo:
            pipeline(tmp_path).run(source)
        assert len(server.requests) == 1
    failure = tenant_failure(excinfo.value, "t1", "gh")  # how the platform reports it
    assert failure.permanent and failure.error == "PermanentSourceError" and failure.http_status == status
    assert f" for {server.url}/repos/o/r/pulls?state=all&sort=updated&direction=desc&per_page=100:" in failure.message
    assert body["message"] in failure.message
    assert TOKEN not in failure.message and TOKEN not in str(excinfo.value)


def test_a_next_link_to_another_host_fails_without_sending_the_token(tmp_path: Path) -> None:
    with LocalServer() as server, LocalServer() as other:
        other.route("/p2", lambda r: Response(200, [pr(1, "2024-01-02T11:00:00Z")]))
        server.route("/repos/o/r/pulls", lambda r: Response(200, [pr(2, "2024-01-02T12:00:00Z")], link(other, "/p2")))
        source = build_github_source(config(server, ["o/r"]), context()).with_resources("pull_requests")
        with pytest.raises(Exception) as excinfo:
            pipeline(tmp_path).run(source)
        assert server.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"
        assert other.requests == []
    failure = tenant_failure(excinfo.value, "t1", "gh")  # how the platform reports it
    assert failure.permanent and failure.error == ForeignHostError.__name__
    assert other.url in failure.message and "allowed_hosts" in failure.message


def test_allowed_hosts_receive_the_token(tmp_path: Path) -> None:
    with LocalServer() as server, LocalServer() as other:
        other.route("/p2", lambda r: Response(200, [pr(1, "2024-01-02T11:00:00Z")]))
        server.route("/repos/o/r/pulls", lambda r: Response(200, [pr(2, "2024-01-02T12:00:00Z")], link(other, "/p2")))
        allowed = config(server, ["o/r"], allowed_hosts=[other.url.removeprefix("http://")])
        pipeline(tmp_path).run(build_github_source(allowed, context()).with_resources("pull_requests"))
        assert other.hits("/p2")[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert len(table(tmp_path, "pull_requests")) == 2


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.mark.postgres
def test_loads_into_postgres(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    credentials = pg_url if urlsplit(pg_url).password else pg_url.replace("@", ":unused@", 1)
    with LocalServer() as server:
        scripted_repo(server)
        pipe = pipeline(tmp_path, "github_pg", dlt.destinations.postgres(credentials=credentials))
        for run_id in ("run-1", "run-2"):
            pipe.run(build_github_source(config(server, ["o/r"]), context(run_id=run_id)))
    with psycopg.connect(pg_url) as conn:
        pulls = conn.execute(
            f"SELECT _etl_row_key, _etl_run_id, _etl_record, repository FROM {DATASET}.pull_requests ORDER BY 1"
        ).fetchall()
        reviews = conn.execute(f"SELECT _etl_row_key, repository, pull_number FROM {DATASET}.reviews").fetchall()
    assert [(r[0], r[1], r[3]) for r in pulls] == [("o/r#7", "run-2", "o/r"), ("o/r#8", "run-2", "o/r")]
    assert pulls[0][2] == pr(7, "2024-01-02T00:00:00Z")
    assert reviews == [("81", "o/r", 8)]
