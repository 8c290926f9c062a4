"""Render mappings as set-based SQL for DuckDB or PostgreSQL (no row-by-row Python)."""

from __future__ import annotations

import dataclasses
import json
import re

from etl_platform.normalize.mapping import (
    ACTIVE_FLAG_FIELDS,
    CATEGORICAL_COLUMNS,
    DELETED_FLAG_FIELDS,
    FALSE_VALUES,
    INACTIVE_STATUSES,
    LINEAGE_PREFIX,
    TEMPLATE_PREFIX,
    TIME_COLUMNS,
    TRUE_VALUES,
    Mapping,
    Path,
    path,
)
from etl_platform.sources import lineage
from etl_platform.warehouse import quote

RECORD = quote(lineage.RECORD)


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def json_text(dialect: str, p: Path) -> str:
    """Text at a path of the original record (NULL when absent)."""
    if dialect == "duckdb":
        parts = "".join(f"[{x}]" if isinstance(x, int) else "." + json.dumps(x) for x in p)
        return f"json_extract_string({RECORD}, {literal('$' + parts)})"
    array = "ARRAY[" + ", ".join(literal(str(x)) for x in p) + "]"
    return f"({RECORD} #>> {array})"


TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def template_parts(name: str) -> list[tuple[str, bool]]:
    """'={repository}#{pull_number}' -> [('repository', True), ('#', False), ('pull_number', True)]:
    (raw column, True) or (literal text, False), in order."""
    body, parts, at = name[len(TEMPLATE_PREFIX) :], [], 0
    for match in TEMPLATE_FIELD.finditer(body):
        if match.start() > at:
            parts.append((body[at : match.start()], False))
        parts.append((match.group(1), True))
        at = match.end()
    if at < len(body):
        parts.append((body[at:], False))
    return parts


def raw_columns(name: str) -> list[str]:
    """The raw columns a candidate reads: '@col' -> [col], a template -> its fields, a path -> []."""
    if name.startswith(LINEAGE_PREFIX):
        return [name[1:]]
    if name.startswith(TEMPLATE_PREFIX):
        return [part for part, is_column in template_parts(name) if is_column]
    return []


def is_record_path(name: str) -> bool:
    """True for a path into the original record (not '@col', not a template)."""
    return not name.startswith((LINEAGE_PREFIX, TEMPLATE_PREFIX))


def column_text(dialect: str, column: str) -> str:
    return f"CAST({quote(column)} AS VARCHAR)" if dialect == "duckdb" else f"CAST({quote(column)} AS TEXT)"


def candidate_text(dialect: str, name: str) -> str:
    """A candidate as trimmed text; '' becomes NULL. '@col' reads a raw column; a template
    '={a}#{b}' concatenates raw columns and literal text, NULL when any of its columns is empty."""
    if name.startswith(LINEAGE_PREFIX):
        expr = column_text(dialect, name[1:])
    elif name.startswith(TEMPLATE_PREFIX):
        pieces = [
            f"NULLIF(TRIM({column_text(dialect, part)}), '')" if is_column else literal(part)
            for part, is_column in template_parts(name)
        ]
        expr = "(" + " || ".join(pieces or [literal("")]) + ")"
    else:
        expr = json_text(dialect, path(name))
    return f"NULLIF(TRIM({expr}), '')"


def first_of(dialect: str, names: list[str]) -> str:
    exprs = [candidate_text(dialect, n) for n in names]
    if not exprs:
        return "CAST(NULL AS VARCHAR)" if dialect == "duckdb" else "CAST(NULL AS TEXT)"
    return exprs[0] if len(exprs) == 1 else f"COALESCE({', '.join(exprs)})"


def to_timestamp(dialect: str, text_expr: str) -> str:
    if dialect == "duckdb":
        return f"TRY_CAST({text_expr} AS TIMESTAMPTZ)"
    return f"etl_try_timestamptz({text_expr})"


def to_number(dialect: str, text_expr: str) -> str:
    # decimal comma ("9,50") is read as a decimal point
    fixed = f"regexp_replace({text_expr}, '^(-?[0-9]+),([0-9]+)$', '\\1.\\2')"
    if dialect == "duckdb":
        return f"TRY_CAST({fixed} AS DOUBLE)"
    number = "'^\\s*-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?\\s*$'"
    return f"(CASE WHEN {fixed} ~ {number} THEN CAST({fixed} AS DOUBLE PRECISION) END)"


def _chosen(dialect: str, names: list[str], index: int) -> str:
    """True when candidate `index` is the one a column took (first non-empty)."""
    conds = [f"{candidate_text(dialect, n)} IS NULL" for n in names[:index]]
    conds.append(f"{candidate_text(dialect, names[index])} IS NOT NULL")
    return " AND ".join(conds)


def attributes(dialect: str, mapping: Mapping) -> str:
    """The original record minus the fields a column took (per row: the candidate chosen)."""
    removals: list[tuple[Path, str]] = []
    for names in mapping.candidates.values():
        for index, name in enumerate(names):
            if is_record_path(name):
                removals.append((path(name), _chosen(dialect, names, index)))
    if dialect == "duckdb":
        expr = RECORD
        for p, chosen in removals:
            if any(isinstance(x, int) for x in p):
                continue
            keep = f"json_extract({RECORD}, {literal('$' + ''.join('.' + json.dumps(x) for x in p))})"
            value = f"CASE WHEN {chosen} THEN NULL ELSE {keep} END"
            for part in reversed(p):
                value = f"json_object({literal(str(part))}, {value})"
            expr = f"json_merge_patch({expr}, {value})"
        return expr
    expr = f"CAST({RECORD} AS JSONB)"
    for p, chosen in removals:
        target = "ARRAY[" + ", ".join(literal(str(x)) for x in p) + "]"
        expr = f"({expr} #- (CASE WHEN {chosen} THEN {target} ELSE ARRAY['etl:none'] END))"
    return expr


def is_active(dialect: str, status_expr: str) -> str:
    falsy = ", ".join(literal(v) for v in FALSE_VALUES)
    truthy = ", ".join(literal(v) for v in TRUE_VALUES)
    inactive = ", ".join(literal(v) for v in INACTIVE_STATUSES)
    conditions = [f"COALESCE(LOWER({status_expr}) IN ({inactive}), FALSE)"]
    conditions += [f"COALESCE(LOWER({candidate_text(dialect, f)}) IN ({falsy}), FALSE)" for f in ACTIVE_FLAG_FIELDS]
    conditions += [f"COALESCE(LOWER({candidate_text(dialect, f)}) IN ({truthy}), FALSE)" for f in DELETED_FLAG_FIELDS]
    return "NOT (" + " OR ".join(conditions) + ")"


def select_for(
    dialect: str, mapping: Mapping, schema: str, table: str, tenant_id: str, days_sql: str, has_columns: set[str]
) -> str:
    """A SELECT of the unified columns (+ `reject_reason`) over one raw table's partition slice.

    Candidates reading raw columns ('@col', templates) that the table lacks are dropped.
    """
    c = {
        col: [n for n in names if all(column in has_columns for column in raw_columns(n))]
        for col, names in mapping.candidates.items()
    }
    text = {col: first_of(dialect, names) for col, names in c.items()}
    none = "CAST(NULL AS VARCHAR)" if dialect == "duckdb" else "CAST(NULL AS TEXT)"
    get = lambda col: text.get(col, none)  # noqa: E731
    status = get("status")
    ts = {col: to_timestamp(dialect, get(col)) for col in TIME_COLUMNS}
    id_fields = ", ".join(n.lstrip(LINEAGE_PREFIX) for n in c.get("source_id", [])) or "none configured"
    reject = " ".join(
        [
            "CASE",
            f"WHEN {get('source_id')} IS NULL THEN {literal('missing id (' + id_fields + ')')}",
            *(
                f"WHEN {get(col)} IS NOT NULL AND {ts[col]} IS NULL "
                f"THEN {literal('unparseable date in ' + col + ': ')} || {get(col)}"
                for col in TIME_COLUMNS
            ),
            "ELSE NULL END",
        ]
    )
    cols = {
        "tenant_id": literal(tenant_id),
        "source": literal(mapping.source),
        "source_kind": literal(mapping.source_kind),
        "record_type": literal(mapping.record_type),
        "source_id": get("source_id"),
        "title": get("title"),
        "description": get("description"),
        "url": get("url"),
        "author": get("author"),
        "category": f"LOWER({get('category')})" if "category" in CATEGORICAL_COLUMNS else get("category"),
        "status": f"LOWER({status})",
        "value": to_number(dialect, get("value")),
        "created_at": ts["created_at"],
        "updated_at": ts["updated_at"],
        "event_date": quote(lineage.PARTITION_DATE),
        "is_active": is_active(dialect, status),
        "attributes": attributes(dialect, dataclasses.replace(mapping, candidates=c)),
        "parent_id": get("parent_id"),
        "raw_table": literal(table),
        "raw_row_key": quote(lineage.ROW_KEY),
        "raw_load_id": "_dlt_load_id",
        "raw_record": RECORD if dialect == "duckdb" else f"CAST({RECORD} AS JSONB)",
        "reject_reason": reject,
    }
    select = ",\n  ".join(f"{expr} AS {quote(name)}" for name, expr in cols.items())
    return (
        f"SELECT\n  {select}\nFROM {quote(schema)}.{quote(table)}\n"
        f"WHERE {quote(lineage.SOURCE)} = {literal(mapping.source)} "
        f"AND {quote(lineage.PARTITION_DATE)} IN ({days_sql})"
    )


POSTGRES_FUNCTIONS = """
CREATE OR REPLACE FUNCTION public.etl_try_timestamptz(v TEXT) RETURNS TIMESTAMPTZ
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  -- no digit: not a date ('yesterday', 'now' and 'infinity' are special inputs to PostgreSQL)
  IF v IS NULL OR v !~ '[0-9]' THEN
    RETURN NULL;
  END IF;
  RETURN v::timestamptz;
EXCEPTION WHEN others THEN
  RETURN NULL;
END $$;
"""
