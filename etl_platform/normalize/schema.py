"""The unified `records` table (one per tenant schema) and its rejects table."""

from __future__ import annotations

import logging

import psycopg

from etl_platform.warehouse import Connection, quote

log = logging.getLogger(__name__)

RECORDS_TABLE = "records"
SEARCH_INDEX = "records_search_idx"  # PostgreSQL: pg_trgm GIN over title and description, serves `q`
RECORD_REJECTS_TABLE = "record_rejects"

# column -> (duckdb type, postgres type); order is the table's column order
RECORD_COLUMNS: dict[str, tuple[str, str]] = {
    "record_id": ("VARCHAR", "TEXT"),  # source/record_type/source_id: unique within the tenant
    "tenant_id": ("VARCHAR", "TEXT"),
    "source": ("VARCHAR", "TEXT"),
    "source_kind": ("VARCHAR", "TEXT"),
    "record_type": ("VARCHAR", "TEXT"),
    "source_id": ("VARCHAR", "TEXT"),
    "title": ("VARCHAR", "TEXT"),
    "description": ("VARCHAR", "TEXT"),
    "url": ("VARCHAR", "TEXT"),
    "author": ("VARCHAR", "TEXT"),
    "category": ("VARCHAR", "TEXT"),
    "status": ("VARCHAR", "TEXT"),
    "value": ("DOUBLE", "DOUBLE PRECISION"),
    "created_at": ("TIMESTAMPTZ", "TIMESTAMPTZ"),
    "updated_at": ("TIMESTAMPTZ", "TIMESTAMPTZ"),
    "sort_at": ("TIMESTAMPTZ", "TIMESTAMPTZ"),  # coalesce(updated_at, created_at, event_date): newest-first order
    "event_date": ("DATE", "DATE"),
    "is_active": ("BOOLEAN", "BOOLEAN"),
    "attributes": ("JSON", "JSONB"),  # every source field not mapped to a column
    "parent_id": ("VARCHAR", "TEXT"),  # record_id of the parent (review -> pull request)
    "raw_table": ("VARCHAR", "TEXT"),
    "raw_row_key": ("VARCHAR", "TEXT"),
    "raw_load_id": ("VARCHAR", "TEXT"),
    "normalized_at": ("TIMESTAMPTZ", "TIMESTAMPTZ"),
}
UPSERT_KEY = ("tenant_id", "source", "record_type", "source_id")
NOT_NULL = ("record_id", "tenant_id", "source", "source_kind", "record_type", "source_id", "sort_at", "is_active")

REJECT_COLUMNS: dict[str, tuple[str, str]] = {
    "tenant_id": ("VARCHAR", "TEXT"),
    "source": ("VARCHAR", "TEXT"),
    "record_type": ("VARCHAR", "TEXT"),
    "event_date": ("DATE", "DATE"),
    "raw_table": ("VARCHAR", "TEXT"),
    "raw_row_key": ("VARCHAR", "TEXT"),
    "raw_load_id": ("VARCHAR", "TEXT"),
    "reason": ("VARCHAR", "TEXT"),
    "raw_record": ("JSON", "JSONB"),
    "rejected_at": ("TIMESTAMPTZ", "TIMESTAMPTZ"),
}


def _ddl(conn: Connection, schema: str, table: str, columns: dict[str, tuple[str, str]], tail: str) -> str:
    idx = 0 if conn.dialect == "duckdb" else 1
    cols = ",\n  ".join(
        f"{quote(name)} {types[idx]}{' NOT NULL' if name in NOT_NULL and table == RECORDS_TABLE else ''}"
        for name, types in columns.items()
    )
    return f"CREATE TABLE IF NOT EXISTS {quote(schema)}.{quote(table)} (\n  {cols}{tail}\n)"


def ensure_tables(conn: Connection, schema: str, *, search_index: bool = True) -> None:
    """Create the tenant schema, `records` (with its upsert key, page index and, on PostgreSQL, search
    index unless `search_index=False`: building it after a big first load, with ensure_search_index,
    costs about half of maintaining it row by row) and `record_rejects`."""
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
    pk = ", ".join(quote(c) for c in UPSERT_KEY)
    conn.execute(_ddl(conn, schema, RECORDS_TABLE, RECORD_COLUMNS, f",\n  PRIMARY KEY ({pk})"))
    conn.execute(_ddl(conn, schema, RECORD_REJECTS_TABLE, REJECT_COLUMNS, ""))
    if conn.dialect == "postgres":
        conn.execute(
            f"CREATE UNIQUE INDEX IF NOT EXISTS records_page_idx ON {quote(schema)}.{quote(RECORDS_TABLE)} "
            "(sort_at DESC, record_id DESC)"
        )
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS records_event_date_idx ON {quote(schema)}.{quote(RECORDS_TABLE)} (event_date)"
        )
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS record_rejects_day_idx ON {quote(schema)}.{quote(RECORD_REJECTS_TABLE)} "
            "(tenant_id, event_date)"
        )

        if search_index:
            ensure_search_index(conn, schema)


def _trgm_schema(conn: Connection) -> str | None:
    rows = conn.query(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
    )
    return rows[0][0] if rows else None


def ensure_search_index(conn: Connection, schema: str) -> bool:
    """PostgreSQL: the trigram GIN index that serves the API's `q` (a case-insensitive substring of title
    or description: `~*` on a literal pattern; it serves ILIKE too), creating the `pg_trgm` extension
    first if needed (trusted since PostgreSQL 13: the CREATE right on the database is enough). When that
    fails (no right, contrib not installed): a warning, no index (search then scans, bounded by the
    API's time limit).
    True when the index exists."""
    ext_schema = _trgm_schema(conn)
    if ext_schema is None:
        try:
            with conn.transaction():  # a savepoint when the caller is in a transaction
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFile,
                psycopg.errors.FeatureNotSupported) as exc:  # no CREATE right; contrib not installed
            log.warning("no search index on %s.%s: cannot create extension pg_trgm (%s); ask the database "
                        "administrator to run CREATE EXTENSION pg_trgm", schema, RECORDS_TABLE, str(exc).strip())
            return False
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
            pass  # created by a concurrent run
        ext_schema = _trgm_schema(conn)
    ops = f"{quote(ext_schema)}.gin_trgm_ops"
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS {SEARCH_INDEX} ON {quote(schema)}.{quote(RECORDS_TABLE)} "
        f"USING gin (title {ops}, description {ops})"
    )
    return True
