"""What keeps per-partition work O(partition) on PostgreSQL: an index on every raw table's
(source, day) slice, and planner statistics refreshed after a write that changed a table much.

PostgreSQL servers often run with autovacuum off or behind a fresh load; a table that was never
analyzed is planned as if it had a few rows, and a join over it becomes a nested loop over the
partition. The platform therefore never relies on statistics existing after its own writes: it
analyzes what it wrote (only the columns its queries filter on, so it stays cheap) when the
table has no statistics or the write was a large share of it.
"""

from __future__ import annotations

from collections.abc import Sequence

from etl_platform.sources import lineage
from etl_platform.warehouse import Connection, quote

# re-analyze when a write changed more than this share of a table's rows
STALE_SHARE = 0.1
STALE_MIN_ROWS = 1000
SLICE_COLUMNS = (lineage.SOURCE, lineage.PARTITION_DATE)


def ensure_slice_index(conn: Connection, schema: str, table: str) -> None:
    """PostgreSQL: an index on (source, partition day) of a raw table (sweeps, normalization
    reads, per-day counts and checks find a slice through it)."""
    name = quote(f"{table}_etl_slice"[:63])
    columns = ", ".join(quote(c) for c in SLICE_COLUMNS)
    conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {quote(schema)}.{quote(table)} ({columns})")


def analyze_if_stale(
    conn: Connection, schema: str, table: str, columns: Sequence[str] = SLICE_COLUMNS, written: int = 0
) -> bool:
    """PostgreSQL: ANALYZE `columns` of the table when it was never analyzed, or when the rows
    written since (counted by the server, or `written` by the caller) exceed a tenth of it.
    True when it analyzed."""
    if conn.dialect != "postgres":
        return False
    row = conn.query(
        "SELECT c.reltuples, COALESCE(s.n_mod_since_analyze, 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE n.nspname = ? AND c.relname = ?",
        [schema, table],
    )
    if not row:
        return False
    tuples, modified = float(row[0][0]), int(row[0][1])
    changed = max(modified, written)
    if tuples >= 0 and changed <= max(STALE_SHARE * tuples, STALE_MIN_ROWS):
        return False
    cols = ", ".join(quote(c) for c in columns)
    conn.execute(f"ANALYZE {quote(schema)}.{quote(table)} ({cols})")
    return True
