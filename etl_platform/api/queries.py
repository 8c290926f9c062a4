"""SQL over a tenant's `records` table (both dialects, `?` placeholders): keyset pages,
one record, and active-record counts."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import orjson

from etl_platform.normalize.schema import RECORD_COLUMNS, RECORDS_TABLE
from etl_platform.warehouse import Connection, quote, tenant_schema

COLUMNS = tuple(RECORD_COLUMNS)
_SELECT = ", ".join(quote(c) for c in COLUMNS)


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


def is_missing_table(exc: BaseException) -> bool:
    """True when `exc` says the tenant's schema or table does not exist (nothing loaded yet)."""
    name = type(exc).__name__
    return name in ("CatalogException", "UndefinedTable", "InvalidSchemaName")


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def page_sql(tenant: str, query: DataQuery) -> tuple[str, list[Any]]:
    """The keyset page query: newest first, `limit + 1` rows (the extra one tells has_more)."""
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
    table = f"{quote(tenant_schema(tenant))}.{quote(RECORDS_TABLE)}"
    sql = (
        f"SELECT {_SELECT} FROM {table} WHERE {' AND '.join(where)} "
        "ORDER BY sort_at DESC, record_id DESC LIMIT ?"
    )
    return sql, [*params, query.limit + 1]


def to_json_row(row: tuple[Any, ...]) -> dict[str, Any]:
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


def fetch_page(conn: Connection, tenant: str, query: DataQuery) -> tuple[list[dict[str, Any]], bool]:
    """(rows, has_more); no table yet means no rows."""
    sql, params = page_sql(tenant, query)
    try:
        rows = conn.query(sql, params)
    except Exception as exc:
        if is_missing_table(exc):
            return [], False
        raise
    return [to_json_row(r) for r in rows[: query.limit]], len(rows) > query.limit


def fetch_record(conn: Connection, tenant: str, record_id: str) -> dict[str, Any] | None:
    """One record of the tenant by record_id (inactive ones too), or None."""
    table = f"{quote(tenant_schema(tenant))}.{quote(RECORDS_TABLE)}"
    sql = f"SELECT {_SELECT} FROM {table} WHERE tenant_id = ? AND record_id = ? LIMIT 1"
    try:
        rows = conn.query(sql, [tenant, record_id])
    except Exception as exc:
        if is_missing_table(exc):
            return None
        raise
    return to_json_row(rows[0]) if rows else None


def active_counts(conn: Connection, tenant: str) -> list[dict[str, Any]]:
    """Active records per (source, record_type), with the newest sort_at of each."""
    table = f"{quote(tenant_schema(tenant))}.{quote(RECORDS_TABLE)}"
    sql = (
        f"SELECT source, record_type, count(*), max(sort_at) FROM {table} "
        "WHERE tenant_id = ? AND is_active GROUP BY source, record_type ORDER BY source, record_type"
    )
    try:
        rows = conn.query(sql, [tenant])
    except Exception as exc:
        if is_missing_table(exc):
            return []
        raise
    return [
        {"source": s, "record_type": t, "active_records": int(n), "newest_record_at": newest}
        for s, t, n, newest in rows
    ]


def ping(conn: Connection) -> None:
    """Raise unless the database answers."""
    conn.query("SELECT 1")
