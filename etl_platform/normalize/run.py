"""Normalize one tenant's partition days: raw tables → `records` (upsert) + `record_rejects`.

Everything runs as set-based SQL inside one transaction:
1. stage every raw row of the days, mapped to unified columns, with a reject reason or none;
2. replace the days' rejects;
3. upsert the valid rows, newest version per key (last `updated_at` wins, then the later
   partition day, then the later load), so partitions may run in any order, any number of times.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from etl_platform.config.models import SourceConfig, TenantConfig
from etl_platform.config.names import REJECTS_TABLE, raw_table
from etl_platform.config.settings import get_settings
from etl_platform.normalize.checks import DayChecks, check_days
from etl_platform.normalize.mapping import Mapping, build_mapping
from etl_platform.normalize.schema import (
    RECORD_COLUMNS,
    RECORD_REJECTS_TABLE,
    RECORDS_TABLE,
    UPSERT_KEY,
    ensure_search_index,
    ensure_tables,
)
from etl_platform.normalize.sql import POSTGRES_FUNCTIONS, literal, select_for
from etl_platform.sources import lineage
from etl_platform.warehouse import Connection, Warehouse, quote
from etl_platform.warehouse.indexes import analyze_if_stale

STAGE = "etl_stage_records"
# the columns the checks' and the upsert's queries filter or join on
RECORD_STAT_COLUMNS = ("tenant_id", "source", "record_type", "source_id", "event_date")
MIN_TS = "TIMESTAMPTZ '0001-01-01 00:00:00+00'"


@dataclass
class DayFigures:
    """One partition day of a tenant after normalization."""

    raw_rows: int = 0
    records_written: int = 0  # valid raw rows (each is now a record, or an older version of one)
    rejects: int = 0  # raw rows that could not become a record (table `record_rejects`)
    ingest_rejects: int = 0  # rows the loaders could not parse (table `rejects`)
    by_table: dict[str, dict[str, int]] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)
    checks: DayChecks = field(default_factory=DayChecks)


@dataclass
class NormalizeResult:
    tenant_id: str
    days: list[dt.date]
    raw_rows: int = 0
    records_written: int = 0  # valid raw rows (each is now a record, or an older version of one)
    records_upserted: int = 0  # distinct records inserted or replaced
    rejects: int = 0
    ingest_rejects: int = 0  # rows the loaders could not parse (table `rejects`)
    by_table: dict[str, dict[str, int]] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)
    by_day: dict[dt.date, DayFigures] = field(default_factory=dict)
    normalize_s: float = 0.0  # staging, rejects and upsert
    checks_s: float = 0.0  # the checks' queries


def mappings_for(source: SourceConfig) -> list[tuple[str, Mapping]]:
    """(raw table, mapping) for each data resource of a source."""
    primary_key = getattr(source, "primary_key", None) or None
    out = []
    for resource in source.resource_names:
        if resource == REJECTS_TABLE:
            continue
        pk = primary_key
        if source.kind == "rest_api":
            spec = next(r for r in source.resources if r.name == resource)
            pk = [spec.primary_key] if isinstance(spec.primary_key, str) else spec.primary_key
        mapping = build_mapping(source.name, source.kind, resource, source.field_mapping, pk)
        out.append((raw_table(source.name, resource), mapping))
    return out


def normalize_tenant(warehouse: Warehouse, tenant: TenantConfig, days: list[dt.date]) -> NormalizeResult:
    """Normalize the given days of one tenant; idempotent. The result carries each day's figures
    and the checks evaluated on what was staged and written (`DayFigures.checks`)."""
    result = NormalizeResult(tenant.id, sorted(days))
    result.by_day = {d: DayFigures() for d in result.days}
    schema = tenant.dataset
    days_sql = _days_sql(result.days)
    # capped: DuckDB spills the stage and the upsert's hash tables instead of growing (ETL_NORMALIZE_MEMORY_MB)
    with warehouse.connect(write=True, memory_mb=get_settings().normalize_memory_mb) as conn:
        prepare(conn, schema)
        _ingest_rejects(conn, schema, days_sql, result)
        with conn.transaction():
            started = time.perf_counter()
            _delete_rejects(conn, schema, tenant, days_sql)
            staged = stage_tenant(conn, tenant, result.days)
            if staged:
                _count(conn, result)
                _insert_rejects(conn, schema)
                result.records_upserted = _upsert(conn, schema, result.records_written)
                if conn.dialect == "postgres":
                    # the search index: built in one pass after a tenant's first (often large) load,
                    # maintained row by row afterwards
                    ensure_search_index(conn, schema)
                analyze_if_stale(conn, schema, RECORDS_TABLE, RECORD_STAT_COLUMNS, written=result.records_upserted)
            checked = time.perf_counter()
            checks = check_days(conn, schema, tenant.id, result.days, STAGE if staged else None)
            result.normalize_s = round(checked - started, 3)
            result.checks_s = round(time.perf_counter() - checked, 3)
            for day, figures in checks.items():
                result.by_day[day].checks = figures
            conn.execute(f"DROP TABLE IF EXISTS {STAGE}")
    return result


def _days_sql(days: list[dt.date]) -> str:
    return ", ".join(f"DATE {literal(d.isoformat())}" for d in days)


def prepare(conn: Connection, schema: str) -> None:
    """The tenant's `records` and `record_rejects` tables (the search index comes after the first
    upsert), and PostgreSQL's safe-cast functions."""
    ensure_tables(conn, schema, search_index=False)
    if conn.dialect == "postgres":
        ensure_postgres_functions(conn)


FUNCTIONS_VERSION = "etl-platform " + hashlib.sha256(POSTGRES_FUNCTIONS.encode()).hexdigest()[:16]


def ensure_postgres_functions(conn: Connection) -> None:
    """The safe-cast functions in `public`, (re)created only when missing or of another version
    (their comment), under an advisory lock: concurrent `CREATE OR REPLACE FUNCTION`s of one
    function fail with "tuple concurrently updated"."""

    def current() -> bool:
        rows = conn.query(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'public' AND p.proname IN ('etl_try_timestamptz', 'etl_try_float8') "
            "AND obj_description(p.oid, 'pg_proc') = ?",
            [FUNCTIONS_VERSION],
        )
        return rows[0][0] == 2

    if current():
        return
    conn.execute("SELECT pg_advisory_lock(hashtext('etl_platform.safe_cast_functions'))")
    try:
        if not current():
            conn.execute(POSTGRES_FUNCTIONS)
            for name in ("etl_try_timestamptz", "etl_try_float8"):
                conn.execute(f"COMMENT ON FUNCTION public.{name}(TEXT) IS {literal(FUNCTIONS_VERSION)}")
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtext('etl_platform.safe_cast_functions'))")


def stage_tenant(conn: Connection, tenant: TenantConfig, days: list[dt.date]) -> bool:
    """Stage every raw row of the tenant's days, mapped, in the temp table `STAGE` (inside the
    caller's transaction); False when the tenant has no raw table yet."""
    schema, days_sql = tenant.dataset, _days_sql(sorted(days))
    tables = []
    for source in tenant.sources:
        for table, mapping in mappings_for(source):
            columns = conn.columns(schema, table)
            if columns:
                tables.append((mapping, table, set(columns)))
    if not tables:
        return False

    def selects(safe_casts: bool) -> list[str]:
        return [
            select_for(conn.dialect, mapping, schema, table, tenant.id, days_sql, columns, safe_casts)
            for mapping, table, columns in tables
        ]

    _stage(conn, selects)
    return True


def _stage(conn: Connection, selects: Callable[[bool], list[str]]) -> None:
    """Create the stage from `selects(safe_casts)`. PostgreSQL: first with plain timestamp and number casts
    (no exception block per value, parallel scan) in a savepoint; only when one of them raises
    (a value is not a date, a number out of range) with the safe functions, so the stage is the same either way."""
    conn.execute(f"DROP TABLE IF EXISTS {STAGE}")
    if conn.dialect != "postgres":
        _create_stage(conn, selects(True))
        return
    conn.execute("SET LOCAL jit = off")  # compiling the wide generated expressions costs more than it saves
    conn.execute("SET LOCAL work_mem = '64MB'")  # the upsert's key count hashes in memory
    if not _try_create_stage(conn, selects(False)):
        _create_stage(conn, selects(True))
    # a new table has no statistics: the planner would sort the keys to count them, not hash them
    conn.execute(f"ANALYZE {STAGE} (reject_reason, source, record_type, source_id)")


def _create_stage(conn: Connection, selects: list[str]) -> None:
    # DuckDB: a table of the database (dropped in the same transaction), not a temp table: a large
    # insert goes to the file compressed, row group by row group, where a temp table stays in
    # memory uncompressed and spills whole to the temp folder beyond the connection's memory cap
    kind = "TABLE" if conn.dialect == "duckdb" else "TEMP TABLE"
    conn.execute(f"CREATE {kind} {STAGE} AS " + "\nUNION ALL\n".join(selects))


def _try_create_stage(conn: Connection, selects: list[str]) -> bool:
    """Create the stage in a savepoint (PostgreSQL); False, and no stage, on a data exception."""
    try:
        with conn.transaction():
            _create_stage(conn, selects)
    except psycopg.errors.DataError:  # SQLSTATE class 22, e.g. 22008 for '2024-02-30'
        return False
    return True


def _count(conn: Connection, result: NormalizeResult) -> None:
    rows = conn.query(
        f"SELECT event_date, raw_table, split_part(reject_reason, ':', 1), count(*) FROM {STAGE} GROUP BY 1, 2, 3"
    )
    for day, table, reason, count in rows:
        day_figures = result.by_day.setdefault(_date(day), DayFigures())
        for target in (result, day_figures):
            entry = target.by_table.setdefault(table, {"raw_rows": 0, "records": 0, "rejects": 0})
            entry["raw_rows"] += count
            entry["records" if reason is None else "rejects"] += count
            target.raw_rows += count
            if reason is None:
                target.records_written += count
            else:
                target.rejects += count
                target.reject_reasons[reason] = target.reject_reasons.get(reason, 0) + count


def _date(value: object) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def _delete_rejects(conn: Connection, schema: str, tenant: TenantConfig, days_sql: str) -> None:
    target = f"{quote(schema)}.{quote(RECORD_REJECTS_TABLE)}"
    conn.execute(f"DELETE FROM {target} WHERE tenant_id = {literal(tenant.id)} AND event_date IN ({days_sql})")


def _insert_rejects(conn: Connection, schema: str) -> None:
    target = f"{quote(schema)}.{quote(RECORD_REJECTS_TABLE)}"
    conn.execute(
        f"INSERT INTO {target} (tenant_id, source, record_type, event_date, raw_table, raw_row_key, raw_load_id, "
        f"reason, raw_record, rejected_at) SELECT tenant_id, source, record_type, event_date, raw_table, raw_row_key, "
        f"raw_load_id, reject_reason, raw_record, now() FROM {STAGE} WHERE reject_reason IS NOT NULL"
    )


def _upsert(conn: Connection, schema: str, valid: int) -> int:
    """Upsert the `valid` staged rows; the number of distinct keys among them."""
    target = f"{quote(schema)}.{quote(RECORDS_TABLE)}"
    columns = list(RECORD_COLUMNS)
    computed = {
        "record_id": "source || '/' || record_type || '/' || source_id",
        "sort_at": "COALESCE(updated_at, created_at, CAST(event_date AS TIMESTAMPTZ))",
        "normalized_at": "now()",
    }
    select_cols = ", ".join(f"{computed.get(c, quote(c))} AS {quote(c)}" for c in columns)
    order = f"COALESCE(updated_at, {MIN_TS}) DESC, event_date DESC, raw_load_id DESC, raw_row_key DESC"
    keys = ", ".join(quote(k) for k in UPSERT_KEY if k != "tenant_id")
    # one row per key: the newest version. Usually every key occurs once: then the rows are
    # inserted as they are, without sorting the whole stage (and the count is that of the keys)
    distinct = conn.query(
        f"SELECT count(*) FROM (SELECT 1 FROM {STAGE} WHERE reject_reason IS NULL GROUP BY {keys}) AS k"
    )[0][0]

    def newest(where: str = "") -> str:
        if valid == distinct:
            return f"SELECT {select_cols} FROM {STAGE} WHERE reject_reason IS NULL{where}"
        return (
            f"SELECT {select_cols} FROM (SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY {order}) AS rn "
            f"FROM {STAGE} WHERE reject_reason IS NULL{where}) AS s WHERE rn = 1"
        )

    names = ", ".join(quote(c) for c in columns)
    if conn.dialect == "duckdb":
        if conn.query(f"SELECT count(*) FROM (SELECT 1 FROM {target} LIMIT 1) AS t")[0][0] == 0:
            conn.execute(f"INSERT INTO {target} ({names}) {newest()}")  # the first load: no key to match
        else:
            _merge(conn, target, names, newest, int(distinct))
        return int(distinct)
    updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in columns if c not in UPSERT_KEY)
    conn.execute(
        f"INSERT INTO {target} ({names}) {newest()} ON CONFLICT ({', '.join(quote(k) for k in UPSERT_KEY)}) "
        f"DO UPDATE SET {updates} WHERE {_wins('excluded', target)}"
    )
    return int(distinct)


# DuckDB: rows per MERGE under the normalization's memory cap. Its hash join holds a slice's
# staged rows; measured at 1M rows and 448 MB (bench_normalize.py): one MERGE spilled (10 s),
# two slices did not (3.6-4 s), more slices re-scan `records` once each (4: 5.8 s, 8: 9.6 s)
MERGE_ROWS_PER_MB = 1200


def _merge(conn: Connection, target: str, names: str, newest: Callable[[str], str], rows: int) -> None:
    """DuckDB's upsert: MERGE (a hash join, where ON CONFLICT probes the key index row by row,
    twice as slow) in slices of the keys that fit the connection's memory cap."""
    memory_mb = get_settings().normalize_memory_mb
    slices = max(1, math.ceil(rows / (memory_mb * MERGE_ROWS_PER_MB))) if memory_mb else 1
    columns = list(RECORD_COLUMNS)
    on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in UPSERT_KEY)
    updates = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in columns if c not in UPSERT_KEY)
    for i in range(slices):
        where = f" AND hash(source_id) % {slices} = {i}" if slices > 1 else ""
        conn.execute(
            f"MERGE INTO {target} AS t USING ({newest(where)}) AS s ON ({on}) "
            f"WHEN MATCHED AND {_wins('s', 't')} THEN UPDATE SET {updates} "
            f"WHEN NOT MATCHED THEN INSERT ({names}) "
            f"VALUES ({', '.join('s.' + quote(c) for c in columns)})"
        )


def _wins(new: str, old: str) -> str:
    """The staged version `new` replaces the stored `old`: a later `updated_at`, then a later
    partition day, then a later load (ties go to the stage: a re-run writes its rows again)."""
    return (
        f"(COALESCE({new}.updated_at, {MIN_TS}), {new}.event_date, {new}.raw_load_id) >= "
        f"(COALESCE({old}.updated_at, {MIN_TS}), {old}.event_date, {old}.raw_load_id)"
    )


def _ingest_rejects(conn: Connection, schema: str, days_sql: str, result: NormalizeResult) -> None:
    """Rows the loaders rejected in the days, per day (every source of the tenant)."""
    if not conn.table_exists(schema, REJECTS_TABLE):
        return
    rows = conn.query(
        f"SELECT {quote(lineage.PARTITION_DATE)}, count(*) FROM {quote(schema)}.{quote(REJECTS_TABLE)} "
        f"WHERE {quote(lineage.PARTITION_DATE)} IN ({days_sql}) GROUP BY 1"
    )
    for day, count in rows:
        result.by_day.setdefault(_date(day), DayFigures()).ingest_rejects = int(count)
        result.ingest_rejects += int(count)
