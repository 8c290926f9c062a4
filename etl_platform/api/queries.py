"""SQL over a tenant's `records` table (both dialects, `?` placeholders): keyset pages,
one record, and active-record counts."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import orjson

from etl_platform.api.db import Reader, Row
from etl_platform.normalize.schema import RECORD_COLUMNS, RECORDS_TABLE
from etl_platform.warehouse import quote, tenant_schema

COLUMNS = tuple(RECORD_COLUMNS)
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
    q: str | None = None  # case-insensitive substring of title or description
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


async def _rows(reader: Reader, sql: str, params: list[Any]) -> list[Row]:
    """The query's rows; none when the tenant has no table yet."""
    try:
        return await reader.query(sql, params)
    except Exception as exc:
        if is_missing_table(exc):
            return []
        raise


def _table(tenant: str) -> str:
    return f"{quote(tenant_schema(tenant))}.{quote(RECORDS_TABLE)}"


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def page_sql(tenant: str, query: DataQuery, *, json_rows: bool = False) -> tuple[str, list[Any]]:
    """The keyset page query: newest first, `limit + 1` rows (the extra one tells has_more).
    `json_rows` (PostgreSQL): rows are (sort_at, record_id, the record as JSON text)."""
    where, params = ["tenant_id = ?"], [tenant]
    for column in ("source", "record_type", "category"):
        value = getattr(query, column)
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if query.status is not None:
        where.append("lower(status) = lower(?)")
        params.append(query.status)
    if not query.include_inactive:
        where.append("is_active")
    if query.updated_since is not None:
        where.append("sort_at >= ?")
        params.append(query.updated_since)
    if query.updated_until is not None:
        where.append("sort_at < ?")
        params.append(query.updated_until)
    if query.q:
        where.append("(title ILIKE ? ESCAPE '\\' OR description ILIKE ? ESCAPE '\\')")
        params += [_like(query.q)] * 2
    if query.after is not None:
        # the plain bound lets DuckDB prune by zone maps; the row comparison is the keyset
        where.append("sort_at <= ? AND (sort_at, record_id) < (?, ?)")
        params += [query.after[0], query.after[0], query.after[1]]
    order = "ORDER BY sort_at DESC, record_id DESC"
    sql = f"SELECT {_SELECT_PG if json_rows else _SELECT} FROM {_table(tenant)} WHERE {' AND '.join(where)} {order}"
    if json_rows:
        sql = f"SELECT r.sort_at, r.record_id, row_to_json(r)::text FROM ({sql} LIMIT ?) r {order}"
    else:
        sql += " LIMIT ?"
    return sql, [*params, query.limit + 1]


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


async def fetch_page(reader: Reader, tenant: str, query: DataQuery) -> Page:
    """One page of the tenant's records; no table yet means no rows."""
    json_rows = reader.dialect == "postgres"
    rows = await _rows(reader, *page_sql(tenant, query, json_rows=json_rows))
    has_more = len(rows) > query.limit
    rows = rows[: query.limit]
    if json_rows:
        out = [r[2].encode() for r in rows]
        last = rows[-1][:2] if rows else None
    else:
        records = [to_json_row(r) for r in rows]
        out = [orjson.dumps(r, option=orjson.OPT_UTC_Z) for r in records]
        last = (records[-1]["sort_at"], records[-1]["record_id"]) if records else None
    return Page(out, tuple(last) if has_more and last else None)


async def fetch_record(reader: Reader, tenant: str, record_id: str) -> dict[str, Any] | None:
    """One record of the tenant by record_id (inactive ones too), or None."""
    sql = f"SELECT {_SELECT} FROM {_table(tenant)} WHERE tenant_id = ? AND record_id = ? LIMIT 1"
    rows = await _rows(reader, sql, [tenant, record_id])
    return to_json_row(rows[0]) if rows else None


async def active_counts(reader: Reader, tenant: str) -> list[dict[str, Any]]:
    """Active records per (source, record_type), with the newest sort_at of each."""
    sql = (
        f"SELECT source, record_type, count(*), max(sort_at) FROM {_table(tenant)} "
        "WHERE tenant_id = ? AND is_active GROUP BY source, record_type ORDER BY source, record_type"
    )
    return [
        {"source": s, "record_type": t, "active_records": int(n), "newest_record_at": newest}
        for s, t, n, newest in await _rows(reader, sql, [tenant])
    ]


async def ping(reader: Reader, *, lock_timeout_s: float | None = None) -> None:
    """Raise unless the database answers."""
    await reader.query("SELECT 1", lock_timeout_s=lock_timeout_s)
