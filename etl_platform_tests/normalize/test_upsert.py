"""The upsert of staged rows into `records` (DuckDB: MERGE in slices; PostgreSQL: ON CONFLICT):
one row per key, the newest version wins whatever the order of loads, and a staged row never
replaces a newer stored one."""

import datetime as dt

import pytest

from etl_platform.normalize import run
from etl_platform.normalize.run import STAGE, _upsert, prepare
from etl_platform.warehouse import Warehouse

D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)


def _stage(conn, rows: list[tuple[str, str, str, dt.date, str]]) -> None:
    """Stage (source_id, title, updated_at, event_date, raw_load_id) rows of tenant acme."""
    conn.execute(f"DROP TABLE IF EXISTS {STAGE}")
    values = ", ".join(
        f"('{sid}', '{title}', TIMESTAMPTZ '{updated}', DATE '{day}', '{load}')" for sid, title, updated, day, load in rows
    )
    conn.execute(
        f"CREATE TABLE {STAGE} AS SELECT 'acme' AS tenant_id, 'orders' AS source, 'csv' AS source_kind, "
        "'rows' AS record_type, CAST(v.sid AS VARCHAR) AS source_id, CAST(v.title AS VARCHAR) AS title, "
        "CAST(NULL AS VARCHAR) AS description, CAST(NULL AS VARCHAR) AS url, CAST(NULL AS VARCHAR) AS author, "
        "CAST(NULL AS VARCHAR) AS category, CAST(NULL AS VARCHAR) AS status, CAST(NULL AS DOUBLE PRECISION) AS value, "
        "CAST(NULL AS TIMESTAMPTZ) AS created_at, v.updated AS updated_at, v.day AS event_date, TRUE AS is_active, "
        f"CAST(NULL AS {'JSON' if conn.dialect == 'duckdb' else 'JSONB'}) AS attributes, "
        "CAST(NULL AS VARCHAR) AS parent_id, 'orders_rows' AS raw_table, CAST(v.sid AS VARCHAR) AS raw_row_key, "
        "CAST(v.load AS VARCHAR) AS raw_load_id, CAST(NULL AS VARCHAR) AS raw_record, "
        f"CAST(NULL AS VARCHAR) AS reject_reason FROM (VALUES {values}) AS v(sid, title, updated, day, load)"
    )


def _records(conn) -> dict[str, tuple]:
    rows = conn.query('SELECT source_id, title, raw_load_id FROM "tenant_acme"."records" ORDER BY 1')
    return {sid: (title, load) for sid, title, load in rows}


@pytest.mark.parametrize("sliced", [False, True], ids=["one-merge", "sliced"])
def test_newest_version_wins_per_key_in_any_order(warehouse_url, sliced, monkeypatch):
    if sliced:  # DuckDB: a MERGE per slice of keys, as under the memory cap at volume
        monkeypatch.setattr(run, "MERGE_ROWS_PER_MB", 0.001)
    with Warehouse(warehouse_url).connect(write=True) as conn:
        prepare(conn, "tenant_acme")
        with conn.transaction():
            _stage(conn, [("1", "one v2", "2024-03-02 10:00:00+00", D2, "200"),
                          ("2", "two v1", "2024-03-01 10:00:00+00", D1, "100")])
            assert _upsert(conn, "tenant_acme", 2) == 2
        assert _records(conn) == {"1": ("one v2", "200"), "2": ("two v1", "100")}

        # an older load of key 1 (stored stays), key 2 twice in one stage (the newer wins over the
        # stored one), a new key 3
        with conn.transaction():
            _stage(conn, [("1", "one v1", "2024-03-01 10:00:00+00", D1, "100"),
                          ("2", "two v3", "2024-03-03 10:00:00+00", D2, "300"),
                          ("2", "two v2", "2024-03-02 10:00:00+00", D2, "300"),
                          ("3", "three v1", "2024-03-01 10:00:00+00", D1, "300")])
            assert _upsert(conn, "tenant_acme", 4) == 3
        assert _records(conn) == {"1": ("one v2", "200"), "2": ("two v3", "300"), "3": ("three v1", "300")}

        # the same version again (a re-run) is written again, and nothing is duplicated
        with conn.transaction():
            _stage(conn, [("3", "three v1", "2024-03-01 10:00:00+00", D1, "300")])
            _upsert(conn, "tenant_acme", 1)
        assert _records(conn)["3"] == ("three v1", "300")
        assert conn.query('SELECT count(*) FROM "tenant_acme"."records"')[0][0] == 3
