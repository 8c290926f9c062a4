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


def check_days(
    conn: Connection, schema: str, tenant_id: str, days: list[dt.date], stage: str | None
) -> dict[dt.date, DayChecks]:
    """Check figures per day. `stage`: the temp table normalization staged the days' raw rows in
    (None when the tenant has no raw table yet: every figure is zero)."""
    out = {d: DayChecks() for d in days}
    days_sql = ", ".join(f"DATE '{d.isoformat()}'" for d in days)
    records = f"{quote(schema)}.{quote(RECORDS_TABLE)}"
    tenant = "'" + tenant_id.replace("'", "''") + "'"
    if stage is not None:
        for day, n in conn.query(f"SELECT event_date, count(*) FROM {stage} GROUP BY 1"):
            out.setdefault(_day(day), DayChecks()).raw_rows = int(n)
        matched = conn.query(
            f"SELECT s.event_date, count(*) FROM {stage} AS s WHERE s.reject_reason IS NULL AND EXISTS ("
            f"SELECT 1 FROM {records} AS r WHERE r.tenant_id = {tenant} AND r.source = s.source "
            "AND r.record_type = s.record_type AND r.source_id = s.source_id) GROUP BY 1"
        )
        for day, n in matched:
            out.setdefault(_day(day), DayChecks()).records = int(n)
    rejects = conn.query(
        f"SELECT event_date, count(*) FROM {quote(schema)}.{quote(RECORD_REJECTS_TABLE)} "
        f"WHERE tenant_id = {tenant} AND event_date IN ({days_sql}) GROUP BY 1"
    )
    for day, n in rejects:
        out.setdefault(_day(day), DayChecks()).rejects = int(n)
    keys = ", ".join(quote(k) for k in UPSERT_KEY)
    duplicates = conn.query(
        f"SELECT event_date, count(*) FROM (SELECT event_date, {keys} FROM {records} "
        f"WHERE event_date IN ({days_sql}) GROUP BY event_date, {keys} HAVING count(*) > 1) AS d GROUP BY 1"
    )
    for day, n in duplicates:
        out.setdefault(_day(day), DayChecks()).duplicate_keys = int(n)
    nulls = ", ".join(f"count(*) - count({quote(c)})" for c in NOT_NULL)
    for row in conn.query(f"SELECT event_date, {nulls} FROM {records} WHERE event_date IN ({days_sql}) GROUP BY 1"):
        out.setdefault(_day(row[0]), DayChecks()).null_counts = {c: int(n) for c, n in zip(NOT_NULL, row[1:]) if n}
    return out
