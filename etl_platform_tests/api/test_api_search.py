"""GET /data?q=: the PostgreSQL search index (pg_trgm GIN over title and description) serves q on a
fresh, never-analyzed table; pages that probe the newest rows then turn to an index are exact; a q
without 3 letters or digits in a row is refused on both warehouses."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
import pytest

from etl_platform.api import queries
from etl_platform.api.db import pg_sql
from etl_platform.normalize.schema import SEARCH_INDEX, ensure_tables
from etl_platform.warehouse import Connection, Warehouse
from etl_platform_tests.support.read_api import T0, auth, client, insert, row, walk

FRESH_ROWS = 40_000


def fill_fresh(url: str, rows: int = FRESH_ROWS) -> None:
    """acme's records, `rows` of them by SQL (record n: sort_at T0 + n minutes; titles 'item n alpha',
    'needle' in records 7, 20007 and 39001 only), never analyzed nor vacuumed."""
    with psycopg.connect(url, autocommit=True) as raw:
        ensure_tables(Connection(raw, "postgres"), "tenant_acme")
        raw.execute(
            "INSERT INTO tenant_acme.records (record_id, tenant_id, source, source_kind, record_type, source_id, "
            "title, description, sort_at, is_active) "
            "SELECT 'github/pull_request/' || lpad(n::text, 6, '0'), 'acme', 'github', 'github', 'pull_request', "
            "lpad(n::text, 6, '0'), 'item ' || n || CASE WHEN n IN (7, 20007, 39001) THEN ' Needle' ELSE ' alpha' END, "
            "'words ' || md5(n::text), %s + n * interval '1 minute', true FROM generate_series(0, %s - 1) n",
            (T0, rows),
        )


def plan_nodes(conn: psycopg.Connection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    """Every node of the statement's plan (EXPLAIN, no execution)."""
    (plan,) = conn.execute("EXPLAIN (FORMAT JSON) " + pg_sql(sql), params).fetchone()
    plan = plan if isinstance(plan, list) else json.loads(plan)
    nodes, todo = [], [plan[0]["Plan"]]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo += node.get("Plans", [])
    return nodes


def scans(nodes: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(node type, index name or relation) of the plan's scans of `records`."""
    return {(n["Node Type"], n.get("Index Name", n.get("Relation Name", ""))) for n in nodes
            if n["Node Type"].endswith("Scan") and n["Node Type"] not in ("CTE Scan", "Subquery Scan")}


@pytest.mark.postgres
def test_search_index_serves_q_on_a_fresh_table(pg_url: str) -> None:
    fill_fresh(pg_url)
    query = queries.DataQuery(q="needle", limit=50)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        (reltuples,) = conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'tenant_acme.records'::regclass"
                                    ).fetchone()
        assert reltuples == -1  # never analyzed: the planner has no statistics
        (indexdef,) = conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'tenant_acme' "
                                   "AND indexname = %s", (SEARCH_INDEX,)).fetchone()
        assert "USING gin (title" in indexdef and "description" in indexdef and "gin_trgm_ops" in indexdef

        # the probe walks the page index (bounded: LIMIT), never the table, as the API plans /data:
        # without statistics a top-N sort of a whole 40,000-row table looks cheaper to the planner
        assert ("Seq Scan", "records") in scans(plan_nodes(conn, *queries.probe_sql("acme", query)))
        conn.execute("SET enable_seqscan = off")
        probe = scans(plan_nodes(conn, *queries.probe_sql("acme", query)))
        assert ("Index Scan", "records_page_idx") in probe and not any(t == "Seq Scan" for t, _ in probe)
        conn.execute("RESET enable_seqscan")

        edge = (T0 + dt.timedelta(minutes=FRESH_ROWS - 2000), "github/pull_request/038000")
        beyond = queries.beyond_sql("acme", query, edge, 51)
        found = scans(plan_nodes(conn, *beyond))
        assert ("Bitmap Index Scan", SEARCH_INDEX) in found
        assert not any(t == "Seq Scan" for t, _ in found)
        assert not any(name in ("records_pkey", "records_page_idx") for t, name in found if t.startswith("Bitmap"))

        # the table is big enough that without the index the same statement scans it, as the API plans it too
        conn.execute("SET enable_seqscan = off")
        assert scans(plan_nodes(conn, *beyond)) == found
        with conn.transaction():
            conn.execute(f"DROP INDEX tenant_acme.{SEARCH_INDEX}")
            assert ("Seq Scan", "records") in scans(plan_nodes(conn, *beyond))
            raise_rollback(conn)

    api = client(Warehouse(pg_url))
    response = api.get("/data", params={"q": "NEEDLE"}, headers=auth("acme"))
    assert response.status_code == 200
    assert [r["record_id"] for r in response.json()["data"]] == [
        "github/pull_request/039001", "github/pull_request/020007", "github/pull_request/000007"]
    assert api.get("/data", params={"q": "no such text"}, headers=auth("acme")).json()["data"] == []


def raise_rollback(conn: psycopg.Connection) -> None:
    raise psycopg.Rollback()


@pytest.fixture
def spread(warehouse_url: str, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    """acme: 120 github rows and 40 tickets rows; 'match' in the titles of rows spread over the whole
    order (some inactive). PostgreSQL probes only 10 rows, so pages cross from probe to index often."""
    monkeypatch.setattr(queries, "PROBE_MIN", 10)
    monkeypatch.setattr(queries, "PROBE_FACTOR", 1)
    monkeypatch.setattr(queries, "PROBE_MAX", 10)
    wh = Warehouse(warehouse_url)
    rows = [row("acme", n, is_active=n % 17 != 0) for n in range(120)]
    rows += [row("acme", n * 3 + 1, source="tickets", record_type="ticket") for n in range(40)]
    for r in rows:
        n = int(r["source_id"])
        if n in (0, 1, 2, 3, 34, 35, 36, 37, 38, 50, 51, 85, 100, 117, 118, 119) or (n > 60 and n % 11 == 0):
            r["title"] = f"{r['title']} MATCH here"
    insert(wh, "acme", rows)
    return wh


def expected(wh: Warehouse, where: str) -> list[str]:
    """record_ids newest first, as a plain scan finds them."""
    with wh.connect() as conn:
        return [r[0] for r in conn.query(
            f"SELECT record_id FROM tenant_acme.records WHERE {where} ORDER BY sort_at DESC, record_id DESC")]


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"q": "match"}, "is_active AND lower(title) LIKE '%match%'"),
        ({"q": "match", "include_inactive": True}, "lower(title) LIKE '%match%'"),
        ({"q": "match", "source": "tickets"}, "is_active AND source = 'tickets' AND lower(title) LIKE '%match%'"),
        ({"q": "match", "updated_since": "2024-03-01T00:30:00Z"},
         "is_active AND sort_at >= TIMESTAMPTZ '2024-03-01 00:30:00+00' AND lower(title) LIKE '%match%'"),
        ({"source": "tickets"}, "is_active AND source = 'tickets'"),
        ({"category": "bug", "status": "closed"}, "is_active AND category = 'bug' AND lower(status) = 'closed'"),
    ],
)
@pytest.mark.parametrize("limit", [1, 4, 500])
def test_filtered_pages_are_exact_across_the_probe_edge(spread: Warehouse, params: dict, where: str, limit: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    beyond_sql, calls = queries.beyond_sql, []
    monkeypatch.setattr(queries, "beyond_sql", lambda *a, **k: calls.append(a) or beyond_sql(*a, **k))
    api = client(spread)
    want = expected(spread, where)
    assert want  # the case tests something
    assert walk(api, "acme", {**params, "limit": limit}) == want
    if spread.kind == "duckdb":
        assert not calls  # one query per page
    elif limit == 500:
        assert calls  # 10 rows probed cannot fill the page: it went on through an index


@pytest.mark.parametrize("q", ["ab", "a b c", "%%%", "_ab_", "x%y", "12"])
def test_q_without_three_letters_or_digits_in_a_row_is_422(warehouse_url: str, q: str) -> None:
    wh = Warehouse(warehouse_url)
    insert(wh, "acme", [row("acme", 1)])
    response = client(wh).get("/data", params={"q": q}, headers=auth("acme"))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "q"] and "at least 3 letters or digits in a row" in error["msg"]


def test_short_words_search_with_a_longer_neighbour(warehouse_url: str) -> None:
    """A q with one run of 3 (here '100') may hold shorter words and symbols around it."""
    wh = Warehouse(warehouse_url)
    insert(wh, "acme", [row("acme", 1, title="CPU at 100% (a b)"), row("acme", 2, title="CPU at 1000")])
    api = client(wh)
    ids = [r["record_id"] for r in api.get("/data", params={"q": "at 100% (a"}, headers=auth("acme")).json()["data"]]
    assert ids == ["github/pull_request/000001"]


@pytest.mark.postgres
def test_an_app_role_that_is_not_superuser_nor_owner_creates_the_search_index(pg_url: str) -> None:
    """pg_trgm is a trusted extension: the CREATE right on the database, which the platform needs for
    its schemas anyway, is enough (a managed database's usual application role)."""
    import uuid

    role = f"etl_test_{uuid.uuid4().hex[:8]}"
    database = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f'GRANT CREATE ON DATABASE "{database}" TO {role}')
    try:
        with psycopg.connect(pg_url.replace("postgres@", f"{role}@"), autocommit=True) as raw:
            ensure_tables(Connection(raw, "postgres"), "tenant_acme")
            names = {r[0] for r in raw.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'tenant_acme'")}
            superuser = raw.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        assert SEARCH_INDEX in names and superuser is False
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("DROP SCHEMA tenant_acme CASCADE")
            admin.execute("DROP EXTENSION pg_trgm")
            admin.execute(f'REVOKE CREATE ON DATABASE "{database}" FROM {role}')
            admin.execute(f"DROP ROLE {role}")
