"""Content versions: what a partition holds, as a short string that changes when its data does.

A raw slice's version is its row count and an order-independent sum of row hashes (the row key
and the original record, never the lineage a reload changes: run id, extraction time), computed
by the database in the query that counts the slice. Normalized records and metrics are versions
of their inputs: the day's raw versions and the rules that map them. A reload whose versions are
unchanged changes nothing, so the run writes nothing for it (`assets/events.py`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from etl_platform.sources import lineage
from etl_platform.warehouse import Connection, quote

# Bump when the mapping to records (normalize/) or the metrics' computation changes meaning, so
# that every partition is rebuilt by its next run even where its raw data did not change.
NORMALIZE_RULES = "records-1"
METRICS_RULES = "metrics-1"
EMPTY = "0-0"


def _row_hash(conn: Connection, columns: set[str]) -> str:
    parts = [c for c in (lineage.ROW_KEY, lineage.RECORD, "reason", "raw_text") if c in columns]
    if conn.dialect == "duckdb":
        return "hash(" + ", ".join(f"CAST({quote(c)} AS VARCHAR)" for c in parts) + ")"
    text = " || chr(31) || ".join(f"COALESCE(CAST({quote(c)} AS TEXT), '')" for c in parts)
    return f"hashtextextended({text}, 0)"


def slice_figures(
    conn: Connection, schema: str, table: str, source: str, days: list[dt.date]
) -> tuple[dict[dt.date, int], dict[dt.date, str]]:
    """Rows and version of the source's slice of each day in the table (absent table or day:
    0 rows, version `EMPTY`)."""
    rows = {d: 0 for d in days}
    versions = {d: EMPTY for d in days}
    columns = set(conn.columns(schema, table))
    if not columns:
        return rows, versions
    in_days = ", ".join("CAST(? AS DATE)" for _ in days)
    found = conn.query(
        f"SELECT {quote(lineage.PARTITION_DATE)}, count(*), CAST(sum({_row_hash(conn, columns)}) AS VARCHAR) "
        f"FROM {quote(schema)}.{quote(table)} "
        f"WHERE {quote(lineage.SOURCE)} = ? AND {quote(lineage.PARTITION_DATE)} IN ({in_days}) GROUP BY 1",
        [source, *[d.isoformat() for d in days]],
    )
    for day, count, digest in found:
        day = day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day))
        rows[day] = int(count)
        versions[day] = f"{int(count)}-{digest}"
    return rows, versions


def combine(*parts: Any) -> str:
    """One version of several inputs (versions, rules, configuration): a short digest."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def records_version(raw_versions: Iterable[tuple[str, str]], mapping_config: Any) -> str:
    """The version of a day's records: its raw tables' versions and how they are mapped."""
    return combine(NORMALIZE_RULES, sorted(raw_versions), mapping_config)
