"""What normalization verifies per partition day, on what it staged and wrote (no second pass
over the raw tables, and every query bounded by the days: the stage, or `records` and
`record_rejects` through their `event_date` indexes and the upsert key):

- reconciliation: the day's raw rows (all staged) = its staged rows now in `records` under their
  key + its record rejects;
- unique upsert key among the day's records;
- required columns of the day's records not null.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from etl_platform.normalize.schema import NOT_NULL, RECORD_REJECTS_TABLE, RECORDS_TABLE, UPSERT_KEY
from etl_platform.warehouse import Connection, quote


@dataclass
class DayChecks:
    """One day's check figures."""

    raw_rows: int = 0
    records: int = 0  # staged valid rows present in `records` under their key
    rejects: int = 0  # the day's rows in `record_rejects`
    duplicate_keys: int = 0
    null_counts: dict[str, int] = field(default_factory=dict)

    @property
    def reconciled(self) -> bool:
        return self.raw_rows == self.records + self.rejects

    @property
    def mismatches(self) -> int:
        return abs(self.raw_rows - self.records - self.rejects)


def _day(value: object) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def check_queries(
    schema: str, tenant_id: str, days: list[dt.date], stage: str | None
) -> dict[str, str]:
    """The SQL of each figure (each returns `event_date, n...` rows). `stage`: the temp table
    normalization staged the days' raw rows in (None: the tenant has no raw table yet)."""
    days_sql = ", ".join(f"DATE '{d.isoformat()}'" for d in days)
    records = f"{quote(schema)}.{quote(RECORDS_TABLE)}"
    tenant = "'" + tenant_id.replace("'", "''") + "'"
    keys = ", ".join(quote(k) for k in UPSERT_KEY)
    nulls = ", ".join(f"count(*) - count({quote(c)})" for c in NOT_NULL)
    queries = {
        "rejects": f"SELECT event_date, count(*) FROM {quote(schema)}.{quote(RECORD_REJECTS_TABLE)} "
        f"WHERE tenant_id = {tenant} AND event_date IN ({days_sql}) GROUP BY 1",
        "duplicate_keys": f"SELECT event_date, count(*) FROM (SELECT event_date, {keys} FROM {records} "
        f"WHERE event_date IN ({days_sql}) GROUP BY event_date, {keys} HAVING count(*) > 1) AS d GROUP BY 1",
        "null_counts": f"SELECT event_date, {nulls} FROM {records} WHERE event_date IN ({days_sql}) GROUP BY 1",
    }
    if stage is not None:
        queries["raw_rows"] = f"SELECT event_date, count(*) FROM {stage} GROUP BY 1"
        queries["records"] = (
            f"SELECT s.event_date, count(*) FROM {stage} AS s WHERE s.reject_reason IS NULL AND EXISTS ("
            f"SELECT 1 FROM {records} AS r WHERE r.tenant_id = {tenant} AND r.source = s.source "
            "AND r.record_type = s.record_type AND r.source_id = s.source_id) GROUP BY 1"
        )
    return queries


# a partition smaller than this share of `records` is read through indexes whatever the planner
# thinks; a larger one (a year's backfill) is left to the planner, with the statistics the
# normalization has just refreshed (a hash join then beats a million index lookups)
INDEX_SHARE = 0.2


def plan_by_index(conn: Connection) -> None:
    """PostgreSQL, for the rest of the transaction: reach rows through indexes and join by index
    lookups, whatever the statistics say, so that a check reads the partition's rows and not the
    table (the stage, the partition itself, is still scanned)."""
    if conn.dialect == "postgres":
        for setting in ("enable_seqscan", "enable_hashjoin", "enable_mergejoin"):
            conn.execute(f"SET LOCAL {setting} = off")


def _small_partition(conn: Connection, schema: str, stage: str | None) -> bool:
    """True when the staged partition is a small share of the tenant's `records`."""
    if conn.dialect != "postgres" or stage is None:
        return True
    staged = conn.query(f"SELECT count(*) FROM {stage}")[0][0]
    rows = conn.query(
        "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ? AND c.relname = ?",
        [schema, RECORDS_TABLE],
    )
    total = float(rows[0][0]) if rows else -1.0
    return total < 0 or staged < INDEX_SHARE * total


def check_days(
    conn: Connection, schema: str, tenant_id: str, days: list[dt.date], stage: str | None
) -> dict[dt.date, DayChecks]:
    """Check figures per day (see `check_queries`); call inside a transaction."""
    if _small_partition(conn, schema, stage):
        plan_by_index(conn)
    out = {d: DayChecks() for d in days}
    for name, sql in check_queries(schema, tenant_id, days, stage).items():
        for row in conn.query(sql):
            figures = out.setdefault(_day(row[0]), DayChecks())
            if name == "null_counts":
                figures.null_counts = {c: int(n) for c, n in zip(NOT_NULL, row[1:]) if n}
            else:
                setattr(figures, name, int(row[1]))
    return out
