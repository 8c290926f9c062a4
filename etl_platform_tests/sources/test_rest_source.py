"""The rest_api source against local servers: JSONPlaceholder, retries, lying pagination, auth."""

import datetime as dt
import email.utils
import json
import time
from pathlib import Path

import dlt
import duckdb
import pytest

from etl_platform.config.models import RestApiSource
from etl_platform.sources.lineage import RunContext, Window
from etl_platform.sources.rest_api import build_rest_api_source
from etl_platform_tests.support.http_servers import LocalServer, Request, Response
from etl_platform_tests.support.jsonplaceholder import serve_jsonplaceholder

DAY = dt.date(2024, 5, 1)


def _config(base_url: str, resources: list[dict], **extra) -> RestApiSource:
    return RestApiSource.model_validate(
        {"name": "api", "kind": "rest_api", "base_url": base_url, "resources": resources, **extra}
    )


def _ctx(days=(DAY,)) -> RunContext:
    return RunContext("acme", "api", "run-1", Window(tuple(days)))


def _load(tmp_path: Path, source, name="p") -> duckdb.DuckDBPyConnection:
    pipeline = dlt.pipeline(
        name,
        destination=dlt.destinations.duckdb(str(tmp_path / "w.duckdb")),
        dataset_name="tenant_acme",
        pipelines_dir=str(tmp_path / "pipelines"),
    )
    pipeline.run(source)
    return duckdb.connect(str(tmp_path / "w.duckdb"))


def _rows(conn, table, columns="*", tail=""):
    return conn.execute(f"SELECT {columns} FROM tenant_acme.{table} {tail}").fetchall()


@pytest.fixture
def server():
    with LocalServer() as srv:
        yield srv


def _pages(items: list, size: int):
    return [items[i : i + size] for i in range(0, len(items), size)]


def test_jsonplaceholder_header_link_pagination(tmp_path, server, fixtures_dir):
    serve_jsonplaceholder(server, fixtures_dir / "jsonplaceholder")
    resources = [
        {"name": n, "path": n, "params": {"_page": 1, "_limit": limit}, "primary_key": "id"}
        for n, limit in [("users", 3), ("posts", 30), ("comments", 100), ("todos", 50)]
    ]
    source = build_rest_api_source(_config(server.url, resources, paginator={"type": "header_link"}), _ctx())
    conn = _load(tmp_path, source)
    counts = {t: _rows(conn, t, "count(*)")[0][0] for t in ("users", "posts", "comments", "todos")}
    assert counts == {"users": 10, "posts": 100, "comments": 500, "todos": 200}
    assert source.etl_stats.pages_by_resource == {"users": 4, "posts": 4, "comments": 5, "todos": 4}
    # raw as received: original names and nesting kept in _etl_record
    record, position, key, day = _rows(conn, "users", "_etl_record, _etl_position, _etl_row_key, _etl_partition_date")[
        0
    ]
    original = json.loads(record)
    assert original["company"]["catchPhrase"] and original["address"]["geo"]["lat"]
    assert position.startswith(server.url + "/users?_page=") and key == str(original["id"]) and day == DAY
    expected = json.loads((fixtures_dir / "jsonplaceholder/users.json").read_text())
    by_id = {json.loads(r[0])["id"]: json.loads(r[0]) for r in _rows(conn, "users", "_etl_record")}
    assert by_id == {u["id"]: u for u in expected}
    lineage = _rows(conn, "posts", "DISTINCT _etl_tenant_id, _etl_source, _etl_resource, _etl_run_id")
    assert lineage == [("acme", "api", "posts", "run-1")]


def test_reload_same_partition_keeps_one_copy(tmp_path, server, fixtures_dir):
    serve_jsonplaceholder(server, fixtures_dir / "jsonplaceholder", resources=("posts",))
    cfg = _config(
        server.url, [{"name": "posts", "path": "posts", "params": {"_page": 1, "_limit": 40}, "primary_key": "id"}]
    )
    _load(tmp_path, build_rest_api_source(cfg, _ctx())).close()
    conn = _load(tmp_path, build_rest_api_source(cfg, _ctx()))
    assert _rows(conn, "posts", "count(*), count(DISTINCT _etl_row_key)") == [(100, 100)]


def test_snapshot_over_several_days_is_one_copy_per_day(tmp_path, server):
    server.route("/items", lambda r: Response(200, [{"id": 1}, {"id": 2}]))
    cfg = _config(
        server.url, [{"name": "items", "path": "items", "primary_key": "id", "paginator": {"type": "single_page"}}]
    )
    days = (DAY, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2))
    conn = _load(tmp_path, build_rest_api_source(cfg, _ctx(days)))
    per_day = _rows(conn, "items", "_etl_partition_date, count(*)", "GROUP BY 1 ORDER BY 1")
    assert per_day == [(d, 2) for d in days]
    assert len(server.hits("/items")) == 1  # fetched once for the three days


def _flaky(statuses: list[Response], final):
    calls = {"n": 0}

    def handle(req: Request) -> Response:
        calls["n"] += 1
        if calls["n"] <= len(statuses):
            item = statuses[calls["n"] - 1]
            if isinstance(item, Exception):
                raise item
            return item
        return final(req)

    return handle


@pytest.mark.parametrize(
    "failures",
    [
        [Response(429, "slow down", {"Retry-After": "1"})],
        [Response(500), Response(502), Response(503)],
        [ConnectionResetError()],
    ],
    ids=["429-retry-after-seconds", "5xx-burst", "connection-reset"],
)
def test_transient_errors_are_retried(tmp_path, server, failures):
    server.route("/items", _flaky(failures, lambda r: Response(200, [{"id": 1}])))
    cfg = _config(
        server.url, [{"name": "items", "path": "items", "primary_key": "id", "paginator": {"type": "single_page"}}]
    )
    started = time.monotonic()
    conn = _load(tmp_path, build_rest_api_source(cfg, _ctx()))
    assert _rows(conn, "items", "count(*)") == [(1,)]
    assert len(server.hits("/items")) == len(failures) + 1
    if failures[0].__class__ is Response and failures[0].status == 429:
        assert time.monotonic() - started >= 1.0  # waited as told


def test_retry_after_http_date(tmp_path, server):
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    server.route("/items", _flaky([Response(429, "", {"Retry-After": when})], lambda r: Response(200, [{"id": 1}])))
    cfg = _config(server.url, [{"name": "items", "path": "items", "paginator": {"type": "single_page"}}])
    started = time.monotonic()
    conn = _load(tmp_path, build_rest_api_source(cfg, _ctx()))
    assert _rows(conn, "items", "count(*)") == [(1,)]
    assert time.monotonic() - started >= 0.9


def test_persistent_failure_names_url_and_status_without_secret(tmp_path, server, monkeypatch):
    monkeypatch.setenv("ACME_API_KEY", "sk-very-secret-123")
    server.route("/items", lambda r: Response(503, "down"))
    cfg = _config(
        server.url,
        [{"name": "items", "path": "items", "paginator": {"type": "single_page"}}],
        auth={"type": "api_key", "name": "api_key", "location": "query", "api_key_env": "ACME_API_KEY"},
    )
    with pytest.raises(Exception) as err:
        _load(tmp_path, build_rest_api_source(cfg, _ctx()))
    from etl_platform.loading.failures import classify, tenant_failure
    from etl_platform.runs.failures import run_failure

    failure = run_failure([tenant_failure(err.value, "acme", "api", config=cfg)], 1)  # what a run step raises
    assert classify(err.value) == "transient"
    assert "503" in failure.description and f"{server.url}/items" in failure.description
    assert "sk-very-secret-123" not in failure.description
    assert len(server.hits("/items")) == 4  # RUNTIME__REQUEST_MAX_ATTEMPTS in conftest


def test_unauthorized_is_permanent(tmp_path, server, monkeypatch):
    monkeypatch.setenv("ACME_TOKEN", "tok-secret-999")
    server.route("/items", lambda r: Response(401, {"error": "bad token"}))
    cfg = _config(
        server.url,
        [{"name": "items", "path": "items", "paginator": {"type": "single_page"}}],
        auth={"type": "bearer", "token_env": "ACME_TOKEN"},
    )
    with pytest.raises(Exception) as err:
        _load(tmp_path, build_rest_api_source(cfg, _ctx()))
    from etl_platform.loading.failures import classify, tenant_failure
    from etl_platform.runs.failures import run_failure

    assert classify(err.value) == "permanent"
    failure = run_failure([tenant_failure(err.value, "acme", "api", config=cfg)], 1)  # what a run step raises
    assert "401" in failure.description and "tok-secret-999" not in failure.description
    assert len(server.hits("/items")) == 1  # not retried


def test_total_larger_than_data_stops_on_empty_page(tmp_path, server):
    data = [{"id": i} for i in range(7)]

    def handle(req: Request) -> Response:
        page = int(req.arg("page"))
        return Response(200, {"total": 1000, "items": data[(page - 1) * 3 : page * 3]})

    server.route("/items", handle)
    cfg = _config(
        server.url,
        [
            {
                "name": "items",
                "path": "items",
                "data_selector": "items",
                "primary_key": "id",
                "paginator": {"type": "page_number", "page_param": "page", "base_page": 1, "total_path": None},
            }
        ],
    )
    conn = _load(tmp_path, build_rest_api_source(cfg, _ctx()))
    assert _rows(conn, "items", "count(*)") == [(7,)]
    assert len(server.hits("/items")) == 4


def test_empty_page_before_the_end_and_next_link_to_another_path(tmp_path, server):
    pages = {
        "/v1/items": ([{"id": 1}, {"id": 2}], "/v1/items-page2"),
        "/v1/items-page2": ([], "/archive/items"),
        "/archive/items": ([{"id": 3}], None),
    }
    for path, (items, nxt) in pages.items():
        headers = {"Link": f'<{server.url}{nxt}>; rel="next"'} if nxt else {}
        server.route(path, lambda r, items=items, headers=headers: Response(200, items, headers))
    cfg = _config(
        server.url, [{"name": "items", "path": "v1/items", "primary_key": "id"}], paginator={"type": "header_link"}
    )
    conn = _load(tmp_path, build_rest_api_source(cfg, _ctx()))
    assert sorted(r[0] for r in _rows(conn, "items", "id")) == [1, 2, 3]
    positions = {r[0] for r in _rows(conn, "items", "_etl_position")}
    assert positions == {f"{server.url}/v1/items", f"{server.url}/archive/items"}


def test_repeated_cursor_stops(tmp_path, server):
    def handle(req: Request) -> Response:
        cursor = req.arg("cursor")
        if cursor is None:
            return Response(200, {"data": [{"id": 1}], "next": "abc"})
        return Response(200, {"data": [{"id": 2}], "next": "abc"})  # the same cursor forever

    server.route("/items", handle)
    cfg = _config(
        server.url,
        [
            {
                "name": "items",
                "path": "items",
                "data_selector": "data",
                "primary_key": "id",
                "paginator": {"type": "cursor", "cursor_path": "next", "cursor_param": "cursor"},
            }
        ],
    )
    source = build_rest_api_source(cfg, _ctx())
    conn = _load(tmp_path, source)
    assert sorted(r[0] for r in _rows(conn, "items", "id")) == [1, 2]
    assert len(server.hits("/items")) == 2  # the second "abc" is not followed
    assert source.etl_stats.repeated_pages_stopped == 1


def test_repeated_next_link_stops(tmp_path, server):
    server.route("/items", lambda r: Response(200, [{"id": 1}], {"Link": f'<{server.url}/items>; rel="next"'}))
    cfg = _config(
        server.url, [{"name": "items", "path": "items", "primary_key": "id"}], paginator={"type": "header_link"}
    )
    conn = _load(tmp_path, build_rest_api_source(cfg, _ctx()))
    assert _rows(conn, "items", "count(*)") == [(1,)]  # deduplicated on the row key
    assert len(server.hits("/items")) <= 3


def test_auth_bearer_basic_and_api_key_header(tmp_path, server, monkeypatch):
    monkeypatch.setenv("T_TOKEN", "tok1")
    monkeypatch.setenv("T_USER", "alice")
    monkeypatch.setenv("T_PASS", "pw")
    monkeypatch.setenv("T_KEY", "k1")
    server.route("/items", lambda r: Response(200, [{"id": 1}]))
    for auth, expect in [
        ({"type": "bearer", "token_env": "T_TOKEN"}, ("Authorization", "Bearer tok1")),
        (
            {"type": "http_basic", "username_env": "T_USER", "password_env": "T_PASS"},
            ("Authorization", "Basic YWxpY2U6cHc="),
        ),
        ({"type": "api_key", "name": "X-Key", "api_key_env": "T_KEY"}, ("X-Key", "k1")),
    ]:
        cfg = _config(server.url, [{"name": "items", "path": "items", "paginator": {"type": "single_page"}}], auth=auth)
        _load(tmp_path, build_rest_api_source(cfg, _ctx()), name=f"p_{auth['type']}").close()
        assert server.requests[-1].headers.get(expect[0]) == expect[1]


def test_oauth2_client_credentials(tmp_path, server, monkeypatch):
    monkeypatch.setenv("CID", "client-1")
    monkeypatch.setenv("CSECRET", "s3cret")
    server.route("/oauth/token", lambda r: Response(200, {"access_token": "granted", "expires_in": 3600}))
    server.route(
        "/items",
        lambda r: Response(200, [{"id": 1}]) if r.headers.get("Authorization") == "Bearer granted" else Response(401),
    )
    cfg = _config(
        server.url,
        [{"name": "items", "path": "items", "paginator": {"type": "single_page"}}],
        auth={
            "type": "oauth2_client_credentials",
            "token_url": f"{server.url}/oauth/token",
            "client_id_env": "CID",
            "client_secret_env": "CSECRET",
        },
    )
    conn = _load(tmp_path, build_rest_api_source(cfg, _ctx()))
    assert _rows(conn, "items", "count(*)") == [(1,)]
    assert b"s3cret" in server.hits("/oauth/token")[0].body or "Authorization" in server.hits("/oauth/token")[0].headers


def test_missing_secret_env_is_a_clear_error(server, monkeypatch):
    monkeypatch.delenv("NOPE_TOKEN", raising=False)
    cfg = _config(server.url, [{"name": "items", "path": "items"}], auth={"type": "bearer", "token_env": "NOPE_TOKEN"})
    with pytest.raises(Exception, match="NOPE_TOKEN is not set"):
        build_rest_api_source(cfg, _ctx())


def test_incremental_window_is_sent_and_enforced(tmp_path, server):
    rows = [
        {"id": 1, "updated_at": "2024-04-30T23:59:59Z"},
        {"id": 2, "updated_at": "2024-05-01T00:00:00Z"},
        {"id": 3, "updated_at": "2024-05-01T12:00:00Z"},
        {"id": 4, "updated_at": "2024-05-02T00:00:00Z"},
    ]
    server.route("/items", lambda r: Response(200, rows))  # ignores the filter: the client enforces it
    cfg = _config(
        server.url,
        [
            {
                "name": "items",
                "path": "items",
                "primary_key": "id",
                "paginator": {"type": "single_page"},
                "incremental": {"cursor_path": "updated_at", "start_param": "since", "end_param": "until"},
            }
        ],
    )
    conn = _load(tmp_path, build_rest_api_source(cfg, _ctx()))
    assert sorted(r[0] for r in _rows(conn, "items", "id")) == [2, 3]
    sent = server.hits("/items")[0]
    assert sent.arg("since") == "2024-05-01T00:00:00Z" and sent.arg("until") == "2024-05-02T00:00:00Z"
    event_days = {r[0] for r in _rows(conn, "items", "_etl_partition_date")}
    assert event_days == {DAY}
