"""Schema drift of raw data: the fields (and JSON types) observed in a load of original
records, compared with the previous load's. dlt never drops columns from its schema, so
removed fields are only visible in the records themselves."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from etl_platform.config.names import REJECTS_TABLE
from etl_platform.sources import lineage
from etl_platform.warehouse import Connection, quote

SAMPLE_ROWS = 10_000
_DUCKDB_TYPES = {
    "VARCHAR": "string",
    "BOOLEAN": "boolean",
    "ARRAY": "array",
    "OBJECT": "object",
}


def _common_type(db_type: str) -> str | None:
    t = db_type.upper()
    if t == "NULL":
        return None
    if t in _DUCKDB_TYPES:
        return _DUCKDB_TYPES[t]
    if t in ("STRING", "NUMBER"):
        return t.lower()
    if any(x in t for x in ("INT", "DOUBLE", "FLOAT", "DECIMAL", "NUMBER")):
        return "number"
    return t.lower()


def observed_schema(
    conn: Connection,
    schema: str,
    table: str,
    load_ids: list[str],
    source: str,
    days: list[dt.date],
    resource: str | None = None,
) -> dict[str, str]:
    """field -> type ('string', 'number', 'boolean', 'array', 'object', or 'a|b' when mixed)
    over a sample of the rows the given loads wrote into the source's slice of `days`, and of the
    rows of `resource` that a schema contract diverted to `rejects` in those loads: a contract
    that discarded every row still shows the drift that made it do so."""
    if not load_ids:
        return {}
    loads = ", ".join("'" + i.replace("'", "''") + "'" for i in load_ids)
    in_days = ", ".join(f"DATE '{d.isoformat()}'" for d in days)
    where = (
        f"{quote(lineage.SOURCE)} = '{source.replace(chr(39), chr(39) * 2)}' "
        f"AND {quote(lineage.PARTITION_DATE)} IN ({in_days}) AND _dlt_load_id IN ({loads})"
    )
    samples = []
    if conn.table_exists(schema, table):
        samples.append(
            f"(SELECT CAST({quote(lineage.RECORD)} AS VARCHAR) AS r FROM {quote(schema)}.{quote(table)} "
            f"WHERE {where} LIMIT {SAMPLE_ROWS})"
        )
    if resource and "reason" in conn.columns(schema, REJECTS_TABLE):
        samples.append(
            f"(SELECT raw_text AS r FROM {quote(schema)}.{quote(REJECTS_TABLE)} WHERE {where} "
            f"AND resource = '{resource.replace(chr(39), chr(39) * 2)}' AND reason LIKE 'schema contract discard_%' "
            f"LIMIT {SAMPLE_ROWS})"
        )
    if not samples:
        return {}
    sample = " UNION ALL ".join(samples)
    if conn.dialect == "duckdb":
        sql = f"SELECT DISTINCT e.key, e.type FROM ({sample}) AS s, json_each(CAST(s.r AS JSON)) AS e"
    else:
        sql = f"SELECT DISTINCT e.key, jsonb_typeof(e.value) FROM ({sample}) AS s, jsonb_each(CAST(s.r AS JSONB)) AS e"
    types: dict[str, set[str]] = {}
    for key, db_type in conn.query(sql):
        common = _common_type(str(db_type))
        entry = types.setdefault(key, set())
        if common:
            entry.add(common)
    return {k: "|".join(sorted(v)) or "null" for k, v in sorted(types.items())}


@dataclass(frozen=True)
class Drift:
    added: list[str]
    removed: list[str]
    retyped: dict[str, tuple[str, str]]

    @property
    def breaking(self) -> bool:
        return bool(self.removed or self.retyped)

    @property
    def any(self) -> bool:
        return bool(self.added or self.removed or self.retyped)

    def describe(self) -> str:
        parts = []
        if self.added:
            parts.append(f"added {self.added}")
        if self.removed:
            parts.append(f"removed {self.removed}")
        if self.retyped:
            parts.append("retyped " + ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in self.retyped.items()))
        return "; ".join(parts) or "no change"


def diff_schemas(previous: dict[str, str], current: dict[str, str]) -> Drift:
    """Fields added, removed, or whose type changed (a field that was only ever null, 'null',
    takes any type without counting as a change)."""
    added = sorted(set(current) - set(previous))
    removed = sorted(set(previous) - set(current))
    retyped = {
        k: (previous[k], current[k])
        for k in sorted(set(previous) & set(current))
        if previous[k] != current[k] and "null" not in (previous[k], current[k])
    }
    return Drift(added, removed, retyped)


SCHEMAS_TABLE = "_etl_observed_schemas"  # per tenant schema: the last observed fields per raw table


def remember_schema(
    conn: Connection, schema: str, source: str, resource: str, observed: dict[str, str]
) -> tuple[dict[str, str] | None, str | None]:
    """Store the fields a load observed for (source, resource) of this tenant and return the
    previous ones with the time they were first observed (None, None: the first observation). A
    load that observed nothing (no rows) stores nothing and returns what is stored."""
    target = f"{quote(schema)}.{quote(SCHEMAS_TABLE)}"
    json_type = "JSON" if conn.dialect == "duckdb" else "JSONB"
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {target} (source VARCHAR NOT NULL, resource VARCHAR NOT NULL, "
        f"observed {json_type} NOT NULL, observed_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (source, resource))"
    )
    rows = conn.query(
        f"SELECT CAST(observed AS VARCHAR), CAST(observed_at AS VARCHAR) FROM {target} "
        "WHERE source = ? AND resource = ?",
        [source, resource],
    )
    previous, at = (json.loads(rows[0][0]), rows[0][1]) if rows else (None, None)
    if observed:
        conn.execute(
            f"INSERT INTO {target} (source, resource, observed, observed_at) VALUES (?, ?, ?, now()) "
            "ON CONFLICT (source, resource) DO UPDATE SET observed = excluded.observed, observed_at = now() "
            f"WHERE CAST({target}.observed AS VARCHAR) <> CAST(excluded.observed AS VARCHAR)",
            [source, resource, json.dumps(observed, sort_keys=True)],
        )
    return previous, at
