"""Mapping rules per source kind, rendered to SQL and run on small raw tables (DuckDB and
PostgreSQL): trimming, UTC timestamps, case-insensitive categories, inactive rows, rejects."""

import datetime as dt
import json

import pytest

from etl_platform.normalize.drift import diff_schemas
from etl_platform.normalize.mapping import build_mapping
from etl_platform.normalize.sql import POSTGRES_FUNCTIONS, select_for
from etl_platform.warehouse import Warehouse

DAY = dt.date(2024, 3, 1)
UTC = dt.timezone.utc


def _map(warehouse_url, mapping, records: list[dict], extra_columns: dict | None = None) -> list[dict]:
    """Create a raw table holding `records`, run the mapping's SELECT, return rows by source_id order."""
    extra_columns = extra_columns or {}
    with Warehouse(warehouse_url).connect(write=True) as conn:
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
        columns = set(conn.columns("t", "raw"))
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
