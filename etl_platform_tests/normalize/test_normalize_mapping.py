"""Mapping rules per source kind, rendered to SQL and run on small raw tables (DuckDB and
PostgreSQL): trimming, UTC timestamps, case-insensitive categories, inactive rows, rejects."""

import datetime as dt
import json

import pytest

from etl_platform.normalize.drift import diff_schemas
from etl_platform.normalize.mapping import build_mapping
from etl_platform.normalize.run import STAGE, _stage
from etl_platform.normalize.sql import POSTGRES_FUNCTIONS, select_for, to_timestamp
from etl_platform.warehouse import Connection, Warehouse

DAY = dt.date(2024, 3, 1)
UTC = dt.timezone.utc


def _raw_table(conn: Connection, mapping, records: list[dict], extra_columns: dict | None = None) -> set[str]:
    """Create the raw table t.raw holding `records` (+ the functions); its columns."""
    extra_columns = extra_columns or {}
    json_type = "JSON" if conn.dialect == "duckdb" else "JSONB"
    conn.execute("CREATE SCHEMA IF NOT EXISTS t")
    conn.execute("DROP TABLE IF EXISTS t.raw")
    extra_ddl = "".join(f", {c} VARCHAR" for c in extra_columns)
    conn.execute(
        f"CREATE TABLE t.raw (_etl_record {json_type}, _etl_source VARCHAR, _etl_partition_date DATE, "
        f"_etl_row_key VARCHAR, _etl_event_time TIMESTAMPTZ, _dlt_load_id VARCHAR{extra_ddl})"
    )
    for i, rec in enumerate(records):
        values = [
            json.dumps(rec),
            mapping.source,
            DAY,
            f"row{i}",
            None,
            "1700000000.1",
            *[v[i] for v in extra_columns.values()],
        ]
        marks = ", ".join("?" for _ in values)
        conn.execute(f"INSERT INTO t.raw VALUES ({marks})", values)
    if conn.dialect == "postgres":
        conn.execute(POSTGRES_FUNCTIONS)
    return set(conn.columns("t", "raw"))


def _map(warehouse_url, mapping, records: list[dict], extra_columns: dict | None = None) -> list[dict]:
    """Create a raw table holding `records`, run the mapping's SELECT, return rows by source_id order."""
    with Warehouse(warehouse_url).connect(write=True) as conn:
        columns = _raw_table(conn, mapping, records, extra_columns)
        sql = select_for(conn.dialect, mapping, "t", "raw", "acme", f"DATE '{DAY}'", columns)
        rows = conn.query_dicts(sql)
    for row in rows:
        if isinstance(row["attributes"], str):
            row["attributes"] = json.loads(row["attributes"])
    return sorted(rows, key=lambda r: str(r["source_id"]))


def _utc(value):
    return value.astimezone(UTC) if value is not None else None


def test_rest_api_defaults_trim_utc_lowercase_and_attributes(warehouse_url):
    mapping = build_mapping("api", "rest_api", "posts", primary_key=["id"])
    (row,) = _map(
        warehouse_url,
        mapping,
        [
            {
                "id": 7,
                "title": "  Hello world  ",
                "body": "text",
                "userId": 3,
                "status": "In Progress",
                "category": "Billing",
                "amount": "12,50",
                "createdAt": "2024-03-01T10:00:00+02:00",
                "updated_at": "2024-03-02T00:00:00Z",
                "extra": {"nested": [1, 2]},
                "name": "unused alias",
            }
        ],
    )
    assert row["source_id"] == "7" and row["record_type"] == "posts" and row["source_kind"] == "rest_api"
    assert row["title"] == "Hello world" and row["description"] == "text" and row["author"] == "3"
    assert row["status"] == "in progress" and row["category"] == "billing"
    assert row["value"] == 12.5
    assert _utc(row["created_at"]) == dt.datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    assert _utc(row["updated_at"]) == dt.datetime(2024, 3, 2, 0, 0, tzinfo=UTC)
    assert row["is_active"] is True and row["reject_reason"] is None
    # fields taken by a column are not repeated; every other field is kept
    assert row["attributes"] == {"extra": {"nested": [1, 2]}, "name": "unused alias"}
    assert row["event_date"] == DAY and row["raw_row_key"] == "row0"


NUMBERS = {
    "12.5": 12.5,
    " -3 ": -3.0,
    "+4": 4.0,
    ".5": 0.5,
    "5.": 5.0,
    "9,50": 9.5,
    "-1,5": -1.5,
    "1,234.50": 1234.5,
    "1,234,567": 1234567.0,
    "1e3": 1000.0,
    7: 7.0,
    2.25: 2.25,
}
NOT_NUMBERS = ["abc", "1e999", "-1e999", "1.2.3", "NaN", "inf", "0x1A", "1_000", "12 EUR", "1,23,4"]


def test_value_is_a_finite_number_or_a_reject(warehouse_url):
    """A value that is no finite number ("abc", out of the double range) makes the record a reject
    with the text in its reason, never a silent NULL; DuckDB and PostgreSQL read numbers alike."""
    mapping = build_mapping("api", "rest_api", "items", primary_key=["id"])
    records = [{"id": f"n{i}", "amount": v} for i, v in enumerate([*NUMBERS, *NOT_NUMBERS])] + [{"id": "none"}]
    rows = {r["source_id"]: r for r in _map(warehouse_url, mapping, records)}
    assert {f"n{i}": rows[f"n{i}"]["value"] for i in range(len(NUMBERS))} == {
        f"n{i}": v for i, v in enumerate(NUMBERS.values())
    }
    assert all(rows[f"n{i}"]["reject_reason"] is None for i in range(len(NUMBERS)))
    reasons = {rows[f"n{i + len(NUMBERS)}"]["reject_reason"] for i in range(len(NOT_NUMBERS))}
    assert reasons == {f"unparseable number in value: {v}" for v in NOT_NUMBERS}
    assert rows["none"]["value"] is None and rows["none"]["reject_reason"] is None  # no value: no reject


def test_missing_id_and_bad_dates_are_rejects_with_reasons(warehouse_url):
    mapping = build_mapping("api", "rest_api", "items", primary_key=["id"])
    rows = _map(
        warehouse_url,
        mapping,
        [
            {"title": "no id"},
            {"id": "  ", "title": "blank id"},
            {"id": 2, "created_at": "31/02/2024"},
            {"id": 3, "updated_at": "yesterday"},
            {"id": 4, "created_at": "2024-03-01"},
        ],
    )
    reasons = {r["title"] or r["source_id"]: r["reject_reason"] for r in rows}
    assert reasons["no id"] == "missing id (id)" and reasons["blank id"] == "missing id (id)"
    assert reasons["2"] == "unparseable date in created_at: 31/02/2024"
    assert reasons["3"] == "unparseable date in updated_at: yesterday"
    assert reasons["4"] is None


@pytest.mark.parametrize(
    "record, active",
    [
        ({"id": 1, "status": "Deactivated"}, False),
        ({"id": 1, "status": "DELETED"}, False),
        ({"id": 1, "active": "no"}, False),
        ({"id": 1, "is_active": False}, False),
        ({"id": 1, "deleted": True}, False),
        ({"id": 1, "archived": "yes"}, False),
        ({"id": 1, "status": "Open", "active": "Yes"}, True),
        ({"id": 1}, True),
    ],
)
def test_deactivated_or_deleted_rows_are_kept_but_inactive(warehouse_url, record, active):
    (row,) = _map(warehouse_url, build_mapping("api", "rest_api", "items", primary_key=["id"]), [record])
    assert row["is_active"] is active and row["reject_reason"] is None


def test_field_mapping_overrides_defaults(warehouse_url):
    mapping = build_mapping(
        "tickets",
        "csv",
        "rows",
        {"source_id": "Ticket ID", "title": "Subject", "status": "State", "author": "customer.name"},
    )
    (row,) = _map(
        warehouse_url,
        mapping,
        [
            {
                "Ticket ID": "T-1",
                "Subject": " Broken ",
                "State": "OPEN",
                "title": "not this",
                "customer": {"name": "Ada"},
            }
        ],
    )
    assert (row["source_id"], row["title"], row["status"], row["author"]) == ("T-1", "Broken", "open", "Ada")
    assert row["attributes"] == {"title": "not this", "customer": {}}


def test_unknown_mapping_column_is_an_error():
    with pytest.raises(ValueError, match="field_mapping column 'headline' is not a unified column"):
        build_mapping("api", "rest_api", "items", {"headline": "title"})


def test_feed_entries_use_row_key_and_event_time(warehouse_url):
    mapping = build_mapping("news", "rss", "entries")
    (row,) = _map(
        warehouse_url,
        mapping,
        [
            {
                "title": "Hi",
                "summary": "s",
                "link": "https://x.test/1",
                "published_parsed": "2024-03-01T09:00:00+00:00",
                "tags": [{"term": "Release"}],
                "author": "Ann",
            }
        ],
    )
    assert row["record_type"] == "entry" and row["source_id"] == "row0"
    assert (row["title"], row["description"], row["url"], row["category"], row["author"]) == (
        "Hi",
        "s",
        "https://x.test/1",
        "release",
        "Ann",
    )
    assert _utc(row["created_at"]) == dt.datetime(2024, 3, 1, 9, tzinfo=UTC)


def test_composite_primary_key_uses_row_key(warehouse_url):
    mapping = build_mapping("f", "csv", "rows", primary_key=["a", "b"])
    (row,) = _map(warehouse_url, mapping, [{"a": "1", "b": "2"}])
    assert row["source_id"] == "row0"


def test_drift_diff():
    drift = diff_schemas(
        {"a": "string", "b": "number", "c": "string", "n": "null"},
        {"a": "string", "b": "string", "d": "number", "n": "number"},
    )
    assert drift.added == ["d"] and drift.removed == ["c"] and drift.retyped == {"b": ("number", "string")}
    assert drift.breaking and "retyped b: number -> string" in drift.describe()
    assert not diff_schemas({"a": "string"}, {"a": "string", "b": "number"}).breaking


# --- PostgreSQL: plain timestamp casts first, the exception-block function as the fallback -------

DATES = [
    "2024-03-01",
    "2024-03-01T10:00:00Z",
    "2024-03-01 10:00",
    "2024-02-29T23:59:59.123456+02:00",
    "2024-03-01T10:00:00-0530",
    "2024-03-01T10:00:00+05",
    "2024-03-01T10:00:00.000+0000",
    "Mar 1 2024 10:00",
]
NOT_DATES = ["yesterday", "now", "infinity", "", None]  # no digit: NULL without a cast
INVALID_DATES = ["2024-02-30", "2023-02-29T10:00:00Z", "2024-13-01", "2024-03-01T25:00:00Z", "31/02/2024", "12abc"]


@pytest.mark.postgres
def test_plain_timestamp_cast_matches_the_function_or_raises(pg_url):
    """Where the plain cast does not raise it equals `etl_try_timestamptz`; where the function
    returns NULL for a string with digits, the plain cast raises a data exception."""
    import psycopg

    safe, plain = to_timestamp("postgres", "v"), to_timestamp("postgres", "v", safe=False)
    with Warehouse(pg_url).connect(write=True) as conn:
        conn.execute(POSTGRES_FUNCTIONS)
        for value in DATES + NOT_DATES:
            ((expected, got),) = conn.query(f"SELECT {safe}, {plain} FROM (SELECT CAST(? AS TEXT) AS v) AS s", [value])
            assert got == expected and (expected is None) == (value in NOT_DATES), value
        for value in INVALID_DATES:
            assert conn.query(f"SELECT {safe} FROM (SELECT CAST(? AS TEXT) AS v) AS s", [value]) == [(None,)]
            with pytest.raises(psycopg.errors.DataError):
                conn.query(f"SELECT {plain} FROM (SELECT CAST(? AS TEXT) AS v) AS s", [value])


@pytest.mark.postgres
@pytest.mark.parametrize(
    "bad, reject",
    [
        (None, None),
        ({"updated_at": "2024-02-30T10:00:00Z"}, "unparseable date in updated_at: 2024-02-30T10:00:00Z"),
        ({"amount": "1e999"}, "unparseable number in value: 1e999"),  # out of range
    ],
)
def test_stage_falls_back_to_the_safe_functions_on_a_data_error(pg_url, bad, reject):
    """The stage is first built with plain casts; an invalid date or a number out of range rolls
    that back (savepoint) and the safe SELECT builds it: same rows either way."""
    mapping = build_mapping("api", "rest_api", "items", primary_key=["id"])
    records = [{"id": i, "created_at": d, "amount": str(i)} for i, d in enumerate(DATES + NOT_DATES)]
    if bad:
        records.append({"id": 99, **bad})
    with Warehouse(pg_url).connect(write=True) as conn:
        columns = _raw_table(conn, mapping, records)
        calls = []

        def selects(safe_casts: bool) -> list[str]:
            calls.append(safe_casts)
            return [select_for("postgres", mapping, "t", "raw", "acme", f"DATE '{DAY}'", columns, safe_casts)]

        expected = conn.query_dicts(selects(True)[0] + " ORDER BY raw_row_key")
        calls.clear()
        with conn.transaction():
            _stage(conn, selects)
            staged = conn.query_dicts(f"SELECT * FROM {STAGE} ORDER BY raw_row_key")
    assert calls == ([False, True] if bad else [False])
    assert staged == expected and len(staged) == len(records)
    assert [r["reject_reason"] for r in staged if r["source_id"] == "99"] == ([reject] if bad else [])
    values = {r["source_id"]: r["value"] for r in staged if r["source_id"] != "99"}
    assert values == {str(i): float(i) for i in range(len(DATES + NOT_DATES))}


@pytest.mark.postgres
def test_safe_cast_functions_survive_concurrent_runs_and_follow_their_version(pg_url):
    """Runs of many tenants prepare at once: the shared functions are created once (a concurrent
    CREATE OR REPLACE of one function fails with "tuple concurrently updated"), and re-created
    when their version differs."""
    import threading

    from etl_platform.normalize.run import FUNCTIONS_VERSION, ensure_postgres_functions

    wh = Warehouse(pg_url)
    errors, start = [], threading.Barrier(8)

    def prepare_many() -> None:
        try:
            with wh.connect(write=True) as conn:
                start.wait()
                for _ in range(10):
                    ensure_postgres_functions(conn)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=prepare_many) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with wh.connect(write=True) as conn:
        comment = "SELECT obj_description('public.etl_try_float8(text)'::regprocedure, 'pg_proc')"
        assert conn.query(comment) == [(FUNCTIONS_VERSION,)]
        conn.execute("COMMENT ON FUNCTION public.etl_try_float8(TEXT) IS 'an older version'")
        ensure_postgres_functions(conn)
        assert conn.query(comment) == [(FUNCTIONS_VERSION,)]
        assert conn.query("SELECT etl_try_float8('1.5'), etl_try_float8('x')") == [(1.5, None)]
