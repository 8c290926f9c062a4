"""GET /data and /data/{record_id} on DuckDB and PostgreSQL: filters, keyset pages, isolation."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from etl_platform.api.cursor import decode_cursor, encode_cursor
from etl_platform.normalize.schema import RECORD_COLUMNS
from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.read_api import ADMIN_KEY, T0, auth, client, insert, row, walk


@pytest.fixture
def warehouse(warehouse_url: str) -> Warehouse:
    """acme: 60 github rows (n=0..59, #5 inactive), 10 tickets rows; globex: 5 feed rows."""
    wh = Warehouse(warehouse_url)
    acme = [row("acme", n, is_active=(n != 5)) for n in range(60)]
    acme += [row("acme", 100 + n, source="tickets", record_type="ticket") for n in range(10)]
    acme[7].update(title="Fix 100% CPU_spike", description=None)
    acme[8].update(title=None, description="the cpu is HOT")
    insert(wh, "acme", acme)
    insert(wh, "globex", [row("globex", n, source="feed", record_type="entry") for n in range(5)])
    return wh


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["record_id"] for r in response.json()["data"]]


def test_newest_first_shape_and_isolation(warehouse: Warehouse) -> None:
    api = client(warehouse)
    response = api.get("/data", headers=auth("acme"))
    body = response.json()
    assert response.status_code == 200
    assert len(body["data"]) == 50
    keys = [(r["sort_at"], r["record_id"]) for r in body["data"]]
    assert keys == sorted(keys, reverse=True)
    assert body["data"][0]["record_id"] == "tickets/ticket/000109"
    assert {r["tenant_id"] for r in body["data"]} == {"acme"}
    assert body["data"][0]["attributes"] == {"n": 109}
    assert body["data"][0]["sort_at"].endswith("Z") or body["data"][0]["sort_at"].endswith("+00:00")
    meta = body["metadata"]
    assert meta["request_id"] == response.headers["x-request-id"]
    assert meta["api_latency_ms"] >= 0
    assert meta["pagination"]["limit"] == 50 and meta["pagination"]["has_more"] is True
    globex = api.get("/data", headers=auth("globex")).json()
    assert {r["tenant_id"] for r in globex["data"]} == {"globex"}
    assert len(globex["data"]) == 5 and globex["metadata"]["pagination"]["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"source": "tickets"}, {f"tickets/ticket/{100 + n:06d}" for n in range(10)}),
        ({"record_type": "ticket", "limit": 500}, {f"tickets/ticket/{100 + n:06d}" for n in range(10)}),
        ({"source": "github", "category": "bug", "limit": 500},
         {f"github/pull_request/{n:06d}" for n in range(60) if n % 2 and n != 5}),
        ({"source": "github", "status": "cLoSeD", "limit": 500},
         {f"github/pull_request/{n:06d}" for n in range(60) if n % 3 == 0}),
        ({"source": "github", "updated_since": "2024-03-01T00:50:00Z", "limit": 500},
         {f"github/pull_request/{n:06d}" for n in range(50, 60)}),
        ({"source": "github", "updated_until": "2024-03-01T00:03:00", "limit": 500},
         {f"github/pull_request/{n:06d}" for n in range(3)}),
        ({"source": "github", "updated_since": "2024-03-01T01:10:00+01:00",
          "updated_until": "2024-03-01T00:13:00Z"},
         {f"github/pull_request/{n:06d}" for n in range(10, 13)}),
        ({"q": "cpu"}, {"github/pull_request/000007", "github/pull_request/000008"}),
        ({"q": "100%"}, {"github/pull_request/000007"}),
        ({"q": "cpu_s"}, {"github/pull_request/000007"}),
        ({"q": "item_1"}, set()),  # _ is literal too ("item 1..." would match)
        ({"q": "tem%"}, set()),  # % is literal, not a wildcard ("item 1..." would match)
        ({"source": "github", "include_inactive": "true", "limit": 500},
         {f"github/pull_request/{n:06d}" for n in range(60)}),
        ({"source": "feed"}, set()),  # globex's source: acme sees nothing
    ],
)
def test_filters(warehouse: Warehouse, params: dict, expected: set[str]) -> None:
    api = client(warehouse)
    assert set(ids(api.get("/data", params=params, headers=auth("acme")))) == expected


def test_inactive_excluded_by_default(warehouse: Warehouse) -> None:
    api = client(warehouse)
    assert "github/pull_request/000005" not in walk(api, "acme", {"limit": 7})
    assert "github/pull_request/000005" in walk(api, "acme", {"limit": 7, "include_inactive": True})


def test_pagination_walks_everything_while_rows_arrive(warehouse: Warehouse) -> None:
    """Rows newer than the cursor inserted between pages are not seen; none is missed or repeated."""
    api = client(warehouse)
    expected = [f"tickets/ticket/{100 + n:06d}" for n in reversed(range(10))]
    expected += [f"github/pull_request/{n:06d}" for n in reversed(range(60)) if n != 5]
    # same sort_at for a run of rows: the record_id tie-break must hold across page edges
    insert(warehouse, "acme", [row("acme", 30, source="tickets", record_type=f"t{k}") for k in range(5)])
    expected = sorted(
        expected + [f"tickets/t{k}/000030" for k in range(5)],
        key=lambda rid: (int(rid.rsplit("/", 1)[1]), rid),
        reverse=True,
    )
    seen: list[str] = []
    cursor = None
    newer = 1000
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        body = api.get("/data", params=params, headers=auth("acme")).json()
        seen += [r["record_id"] for r in body["data"]]
        # a writer adds newer rows and an older one between pages
        insert(warehouse, "acme", [row("acme", newer, source="tickets", record_type="late")])
        newer += 1
        cursor = body["metadata"]["pagination"]["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert seen == expected
    assert not any("/late/" in rid for rid in seen)
    assert len(walk(api, "acme", {"limit": 500})) == len(expected) + (newer - 1000)


def test_pagination_with_filters_and_limit_500(warehouse: Warehouse) -> None:
    api = client(warehouse)
    one_page = ids(api.get("/data", params={"limit": 500, "category": "bug"}, headers=auth("acme")))
    assert walk(api, "acme", {"limit": 3, "category": "bug"}) == one_page


def test_record_by_id_and_other_tenants_404(warehouse: Warehouse) -> None:
    api = client(warehouse)
    response = api.get("/data/github/pull_request/000005", headers=auth("acme"))
    assert response.status_code == 200
    assert response.json()["data"]["is_active"] is False
    other = api.get("/data/feed/entry/000001", headers=auth("acme"))
    missing = api.get("/data/feed/entry/999999", headers=auth("acme"))
    assert other.status_code == missing.status_code == 404
    assert other.json() == missing.json()
    assert api.get("/data/feed/entry/000001", headers=auth("globex")).status_code == 200


def test_auth_failures(warehouse: Warehouse) -> None:
    api = client(warehouse)
    assert api.get("/data").status_code == 401
    wrong = api.get("/data", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert api.get("/data", headers={"Authorization": "Basic YWNtZTprZXk="}).status_code == 401
    assert api.get("/data", headers={"Authorization": ("Bearer " + "é" * 10).encode("latin-1")}).status_code == 401
    assert api.get("/data", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 401
    assert api.get("/stats", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api.get("/admin/stats", headers=auth("acme")).status_code == 401


def test_tenant_without_table_gets_empty_page(warehouse_url: str) -> None:
    api = client(Warehouse(warehouse_url))
    body = api.get("/data", headers=auth("acme")).json()
    assert body["data"] == [] and body["metadata"]["pagination"]["has_more"] is False
    assert api.get("/data/x", headers=auth("acme")).status_code == 404


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not a cursor!"}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'{"a": 1}').decode()}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'["yesterday", "x"]').decode()}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'["2024-01-01T00:00:00", "x"]').decode()}, "cursor"),
        ({"updated_since": "last week"}, "updated_since"),
        ({"updated_since": "2024-02-01T00:00:00Z", "updated_until": "2024-01-01T00:00:00Z"}, "updated_until"),
        ({"include_inactive": "maybe"}, "include_inactive"),
        ({"q": "x" * 201}, "q"),
        ({"status": "a\x00b"}, "status"),
        ({"sourse": "github"}, "sourse"),  # unknown parameter: a typo must not widen the filter
    ],
)
def test_bad_parameters_422_name_the_field(warehouse_url: str, params: dict, field: str) -> None:
    api = client(Warehouse(warehouse_url))
    response = api.get("/data", params=params, headers=auth("acme"))
    assert response.status_code == 422, response.text
    assert ["query", field] in [e["loc"] for e in response.json()["detail"]]


def test_cursor_round_trip() -> None:
    at = dt.datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    cursor = encode_cursor(at, "github/pull_request/1")
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor
    assert decode_cursor(cursor) == (at, "github/pull_request/1")
    assert decode_cursor(cursor)[0].utcoffset() == dt.timedelta(0)


def test_constructed_cursor_starts_after_that_row(warehouse: Warehouse) -> None:
    api = client(warehouse)
    cursor = encode_cursor(T0 + dt.timedelta(minutes=20), "github/pull_request/000020")
    got = ids(api.get("/data", params={"cursor": cursor, "limit": 3}, headers=auth("acme")))
    assert got == [f"github/pull_request/{n:06d}" for n in (19, 18, 17)]


def test_row_json_is_the_same_on_both_backends(warehouse_url: str) -> None:
    """Every column, typed: timestamps in UTC, JSON attributes as objects, NaN as null."""
    wh = Warehouse(warehouse_url)
    insert(wh, "acme", [row("acme", 1, value=float("nan"), created_at=T0, attributes='{"labels": ["a"], "x": 1.5}')])
    api = client(wh)
    record = api.get("/data", headers=auth("acme")).json()["data"][0]
    single = api.get("/data/github/pull_request/000001", headers=auth("acme")).json()["data"]
    for got in (record, single):
        assert set(got) == set(RECORD_COLUMNS)
        assert got["value"] is None and got["attributes"] == {"labels": ["a"], "x": 1.5}
        assert got["event_date"] == "2024-03-01" and got["is_active"] is True and got["url"] is None
        for column in ("created_at", "updated_at", "sort_at", "normalized_at"):
            parsed = dt.datetime.fromisoformat(got[column].replace("Z", "+00:00"))
            assert parsed.utcoffset() == dt.timedelta(0)
        assert dt.datetime.fromisoformat(got["sort_at"].replace("Z", "+00:00")) == T0 + dt.timedelta(minutes=1)
