"""SQL over a tenant's `records` table (both dialects, `?` placeholders): keyset pages,
one record, and active-record counts. Every query runs in the tenant's share of the reader."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from etl_platform.api.db import Reader, Row
from etl_platform.config.names import tenant_schema
from etl_platform.normalize.schema import RECORD_COLUMNS, RECORDS_TABLE
from etl_platform.warehouse import quote

COLUMNS = tuple(RECORD_COLUMNS)
ORDER = "ORDER BY sort_at DESC, record_id DESC"
MIN_SEARCH_RUN = 3  # q needs this many letters or digits in a row: a trigram
PROBE_MIN, PROBE_FACTOR, PROBE_MAX = 2000, 100, 20000  # see probe_rows()
_SELECT = ", ".join(quote(c) for c in COLUMNS)
# PostgreSQL builds each row's JSON itself (no per-field work in Python); non-finite floats,
# which JSON cannot hold, become null as they do on DuckDB's path.
_SELECT_PG = _SELECT.replace(
    '"value"', """CASE WHEN "value" IN ('NaN', 'Infinity', '-Infinity') THEN NULL ELSE "value" END AS "value\""""
)


@dataclass(frozen=True)
class DataQuery:
    """Filters and page of GET /data (already validated)."""

    source: str | None = None
    record_type: str | None = None
    category: str | None = None
    status: str | None = None  # case-insensitive
    updated_since: dt.datetime | None = None  # sort_at >= (inclusive)
    updated_until: dt.datetime | None = None  # sort_at < (exclusive)
    q: str | None = None  # case-insensitive substring of title or description (see search_problem)
    include_inactive: bool = False
    limit: int = 50
    after: tuple[dt.datetime, str] | None = None  # (sort_at, record_id) of the previous page's last row


@dataclass(frozen=True)
class Page:
    """One page: each row as JSON bytes, and the (sort_at, record_id) to continue after."""

    rows: list[bytes]
    next_after: tuple[dt.datetime, str] | None


def is_missing_table(exc: BaseException) -> bool:
    """True when `exc` says the tenant's schema or table does not exist (nothing loaded yet)."""
    return type(exc).__name__ in ("CatalogException", "UndefinedTable", "InvalidSchemaName")


async def _rows(reader: Reader, sql: str, params: list[Any], tenant: str, timeout_ms: int | None, *,
                indexes_only: bool = True) -> list[Row]:
    """The query's rows, in the tenant's share of the reader; none when the tenant has no table yet.
    `indexes_only` (PostgreSQL): no sequential scan, see AsyncPgPool.fetch; the queries here are built
    around the page index, the trigram index or the upsert key."""
    try:
        return await reader.query(sql, params, tenant=tenant, timeout_ms=timeout_ms, indexes_only=indexes_only)
    except Exception as exc:
        if is_missing_table(exc):
            return []
        raise


def _table(tenant: str) -> str:
    return f"{quote(tenant_schema(tenant))}.{quote(RECORDS_TABLE)}"


def search_problem(q: str) -> str | None:
    """Why `q` cannot be searched, or None. The PostgreSQL search index holds trigrams (3 letters or
    digits in a row), so a q without such a run could only be answered by a scan: refused on every
    warehouse alike."""
    run = longest = 0
    for char in q:
        run = run + 1 if char.isalnum() else 0
        longest = max(longest, run)
    if longest >= MIN_SEARCH_RUN:
        return None
    return f"must contain at least {MIN_SEARCH_RUN} letters or digits in a row (the search index needs them)"


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _regex(text: str) -> str:
    """`text` as a PostgreSQL regular expression matching itself literally: `\\` before every
    character that is not a letter, digit or space (in ARE syntax that makes it literal)."""
    return "".join(c if c.isalnum() or c == " " else "\\" + c for c in text)


@dataclass
class _Where:
    """A page's conditions: `bounds` on (sort_at, record_id) walk the page index; `filters` test rows."""

    bounds: list[str] = field(default_factory=list)
    bound_params: list[Any] = field(default_factory=list)
    filters: list[str] = field(default_factory=list)
    filter_params: list[Any] = field(default_factory=list)
    selective: bool = False  # a filter other than is_active: a page may need many rows walked

    def sql(self, parts: list[str]) -> str:
        return " AND ".join(parts) or "TRUE"


def _where(tenant: str, query: DataQuery, dialect: str, *, tenant_indexable: bool = True) -> _Where:
    w = _Where()
    # tenant_id is the same in every row of the tenant's table: as an index condition (the upsert key's
    # first column) it would make the planner read that whole index, so with q it is only a filter
    w.filters.append("tenant_id = ?" if tenant_indexable else "(tenant_id = ?) IS TRUE")
    w.filter_params.append(tenant)
    for column in ("source", "record_type", "category"):
        value = getattr(query, column)
        if value is not None:
            w.filters.append(f"{column} = ?")
            w.filter_params.append(value)
    if query.status is not None:
        w.filters.append("lower(status) = lower(?)")
        w.filter_params.append(query.status)
    w.selective = len(w.filters) > 1 or bool(query.q)
    if not query.include_inactive:
        w.filters.append("is_active")
    if query.q:
        if dialect == "postgres":  # served by the trigram index (records_search_idx)
            w.filters.append("(title ~* ? OR description ~* ?)")
            w.filter_params += [_regex(query.q)] * 2
        else:
            w.filters.append("(title ILIKE ? ESCAPE '\\' OR description ILIKE ? ESCAPE '\\')")
            w.filter_params += [_like(query.q)] * 2
    if query.updated_since is not None:
        w.bounds.append("sort_at >= ?")
        w.bound_params.append(query.updated_since)
    if query.updated_until is not None:
        w.bounds.append("sort_at < ?")
        w.bound_params.append(query.updated_until)
    if query.after is not None:
        # the plain bound lets DuckDB prune by zone maps; the row comparison is the keyset
        w.bounds.append("sort_at <= ? AND (sort_at, record_id) < (?, ?)")
        w.bound_params += [query.after[0], query.after[0], query.after[1]]
    return w


def probe_rows(limit: int) -> int:
    """How many of the newest rows a filtered PostgreSQL page tests before it turns to an index."""
    return min(PROBE_MAX, max(PROBE_MIN, PROBE_FACTOR * (limit + 1)))


def page_sql(tenant: str, query: DataQuery, *, json_rows: bool = False) -> tuple[str, list[Any]]:
    """The keyset page query: newest first, `limit + 1` rows (the extra one tells has_more).
    `json_rows` (PostgreSQL): rows are (sort_at, record_id, the record as JSON text); PostgreSQL pages
    with filters use probe_sql and beyond_sql instead."""
    w = _where(tenant, query, "postgres" if json_rows else "duckdb")
    where = w.sql(w.filters + w.bounds)
    sql = f"SELECT {_SELECT_PG if json_rows else _SELECT} FROM {_table(tenant)} WHERE {where} {ORDER}"
    if json_rows:
        sql = f"SELECT r.sort_at, r.record_id, row_to_json(r)::text FROM ({sql} LIMIT ?) r {ORDER}"
    else:
        sql += " LIMIT ?"
    return sql, [*w.filter_params, *w.bound_params, query.limit + 1]


def is_filtered(query: DataQuery) -> bool:
    """True when the page filters on more than activity (PostgreSQL then probes, see probe_sql)."""
    return _where("", query, "postgres").selective


def probe_sql(tenant: str, query: DataQuery) -> tuple[str, list[Any]]:
    """A filtered PostgreSQL page, first step: the newest `probe_rows(limit)` rows in the bounds,
    walked through the page index and tested, which serves filters that match often whatever the
    planner knows (tables are often never analyzed). Rows: (sort_at, record_id, the record as JSON
    text), up to `limit + 1`; when fewer match, one more row (sort_at, record_id, NULL): the oldest
    row walked, the *edge* to continue from (`beyond_sql`); none when the walk reached the end."""
    table, probe = _table(tenant), probe_rows(query.limit)
    w = _where(tenant, query, "postgres", tenant_indexable=not query.q)
    bounds = w.sql(w.bounds)
    sql = (
        f"WITH hits AS (SELECT r.sort_at, r.record_id, row_to_json(r)::text AS j FROM ("
        f"SELECT {_SELECT_PG} FROM {table} WHERE {bounds} {ORDER} LIMIT {probe}"
        f") r WHERE {w.sql(w.filters)} {ORDER} LIMIT ?) "
        "SELECT sort_at, record_id, j FROM hits UNION ALL "
        f"SELECT sort_at, record_id, NULL FROM (SELECT sort_at, record_id FROM {table} WHERE {bounds} {ORDER} "
        f"OFFSET {probe - 1} LIMIT 1) edge WHERE (SELECT count(*) FROM hits) < ?"
    )
    want = query.limit + 1
    return sql, [*w.bound_params, *w.filter_params, want, *w.bound_params, want]


def beyond_sql(tenant: str, query: DataQuery, edge: tuple[Any, str], want: int) -> tuple[str, list[Any]]:
    """A filtered PostgreSQL page, second step: the newest `want` matching rows older than `edge`,
    found through an index on the filter (q: the trigram index records_search_idx; source: the upsert
    key), so the cost grows with the rows that match, not with the table. Rows as in probe_sql."""
    table = _table(tenant)
    w = _where(tenant, query, "postgres", tenant_indexable=not query.q)
    since = ["sort_at >= ?"] if query.updated_since is not None else []
    # the CTE is a fence: planned alone, without the ORDER BY ... LIMIT that could make a walk of
    # the page index look cheaper than the filter's index; the edge is tested after it for the same reason
    sql = (
        f"WITH hits AS MATERIALIZED (SELECT ctid, sort_at, record_id FROM {table} WHERE {w.sql(w.filters + since)}), "
        "page AS (SELECT ctid FROM hits WHERE (sort_at, record_id) < (?, ?) "
        "ORDER BY sort_at DESC, record_id DESC LIMIT ?) "
        f"SELECT r.sort_at, r.record_id, row_to_json(r)::text FROM ("
        f"SELECT {_SELECT_PG} FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM page))) r {ORDER}"
    )
    since_params = [query.updated_since] if since else []
    return sql, [*w.filter_params, *since_params, edge[0], edge[1], want]


def to_json_row(row: Row) -> dict[str, Any]:
    """A record as JSON-ready values (the reader's session is UTC): attributes parsed, no NaN."""
    out = dict(zip(COLUMNS, row))
    attributes = out.get("attributes")
    if isinstance(attributes, str):  # DuckDB's JSON arrives as text
        try:
            out["attributes"] = orjson.loads(attributes)
        except orjson.JSONDecodeError:
            pass
    value = out.get("value")
    if isinstance(value, float) and not math.isfinite(value):
        out["value"] = None
    return out


async def fetch_page(reader: Reader, tenant: str, query: DataQuery, *, timeout_ms: int | None = None) -> Page:
    """One page of the tenant's records; no table yet means no rows. `timeout_ms` bounds each query."""
    if reader.dialect == "postgres":
        want = query.limit + 1
        if not is_filtered(query):
            rows = await _rows(reader, *page_sql(tenant, query, json_rows=True), tenant, timeout_ms)
        else:
            found = await _rows(reader, *probe_sql(tenant, query), tenant, timeout_ms)
            rows = [r for r in found if r[2] is not None]
            edge = next((r[:2] for r in found if r[2] is None), None)
            if edge is not None and len(rows) < want:
                rows += await _rows(reader, *beyond_sql(tenant, query, edge, want - len(rows)), tenant, timeout_ms)
        has_more = len(rows) > query.limit
        rows = rows[: query.limit]
        out = [r[2].encode() for r in rows]
        last = rows[-1][:2] if rows else None
    else:
        rows = await _rows(reader, *page_sql(tenant, query), tenant, timeout_ms)
        has_more = len(rows) > query.limit
        records = [to_json_row(r) for r in rows[: query.limit]]
        out = [orjson.dumps(r, option=orjson.OPT_UTC_Z) for r in records]
        last = (records[-1]["sort_at"], records[-1]["record_id"]) if records else None
    return Page(out, tuple(last) if has_more and last else None)


async def fetch_record(reader: Reader, tenant: str, record_id: str, *, timeout_ms: int | None = None
                       ) -> dict[str, Any] | None:
    """One record of the tenant by record_id (inactive ones too), or None. A record_id is
    `source/record_type/source_id` (source and record type names hold no `/`), so the lookup goes
    through the upsert key rather than a scan."""
    parts = record_id.split("/", 2)
    if len(parts) != 3:
        return None
    sql = (
        f"SELECT {_SELECT} FROM {_table(tenant)} WHERE tenant_id = ? AND source = ? AND record_type = ? "
        "AND source_id = ? AND record_id = ? LIMIT 1"
    )
    rows = await _rows(reader, sql, [tenant, *parts, record_id], tenant, timeout_ms)
    return to_json_row(rows[0]) if rows else None


async def active_counts(reader: Reader, tenant: str) -> list[dict[str, Any]]:
    """Active records per (source, record_type), with the newest sort_at of each."""
    sql = (
        f"SELECT source, record_type, count(*), max(sort_at) FROM {_table(tenant)} "
        "WHERE tenant_id = ? AND is_active GROUP BY source, record_type ORDER BY source, record_type"
    )
    return [
        {"source": s, "record_type": t, "active_records": int(n), "newest_record_at": newest}
        for s, t, n, newest in await _rows(reader, sql, [tenant], tenant, None, indexes_only=False)
    ]


async def ping(reader: Reader, *, lock_timeout_s: float | None = None) -> None:
    """Raise unless the database answers."""
    await reader.query("SELECT 1", lock_timeout_s=lock_timeout_s)
