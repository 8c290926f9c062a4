"""Render mappings as set-based SQL for DuckDB or PostgreSQL (no row-by-row Python)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

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
    if len(p) == 1 and isinstance(p[0], str):  # same result as #>> for one key, ~30% cheaper
        return f"({RECORD} ->> {literal(p[0])})"
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


def json_path(p: Path) -> str:
    """A DuckDB JSON path: '$."fields"."summary"', list indexes as [n]."""
    return "$" + "".join(f"[{x}]" if isinstance(x, int) else "." + json.dumps(x) for x in p)


def alias(*parts: str) -> str:
    """A quoted name for a computed column; ':' never occurs in a raw column name (snake_case)."""
    return quote("etl:" + ":".join(parts))


def to_timestamp(dialect: str, text_expr: str, safe: bool = True) -> str:
    """Text as TIMESTAMPTZ, NULL when it has no digit or is not a date. PostgreSQL 15 has no
    non-raising cast: `safe` calls `etl_try_timestamptz` (an exception block per value, and a
    parallel-unsafe function); else the same plain cast, which raises on an invalid date
    (`run._stage` then renders the safe SQL), is 3x cheaper and lets the scan run in parallel."""
    if dialect == "duckdb":
        return f"TRY_CAST({text_expr} AS TIMESTAMPTZ)"
    if safe:
        return f"etl_try_timestamptz({text_expr})"
    return f"(CASE WHEN {text_expr} ~ '[0-9]' THEN CAST({text_expr} AS TIMESTAMPTZ) END)"


def matches(dialect: str, text_expr: str, pattern: str) -> str:
    """Whether text matches an anchored regular expression (a SQL literal)."""
    return f"regexp_matches({text_expr}, {pattern})" if dialect == "duckdb" else f"({text_expr} ~ {pattern})"


def number_text(dialect: str, text_expr: str) -> str:
    """Decimal comma ("9,50") read as a decimal point; thousands separators ("1,234.50",
    "1,234,567") dropped."""
    decimal_comma = f"regexp_replace({text_expr}, '^([-+]?[0-9]+),([0-9]+)$', '\\1.\\2')"
    thousands = f"replace({text_expr}, ',', '')"
    grouped = "'^[-+]?[0-9]{1,3}(,[0-9]{3})+(\\.[0-9]+)?$'"
    return (
        f"(CASE WHEN {text_expr} NOT LIKE '%,%' THEN {text_expr} "
        f"WHEN {matches(dialect, text_expr, grouped)} AND ({text_expr} LIKE '%.%' OR {text_expr} LIKE '%,%,%') "
        f"THEN {thousands} ELSE {decimal_comma} END)"
    )


# a number as both databases read it alike (DuckDB alone would also take '0x1A', '1_000', 'inf')
NUMBER_PATTERN = "'^\\s*[-+]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([eE][-+]?[0-9]+)?\\s*$'"


def to_number(dialect: str, number_text_expr: str, safe: bool = True) -> str:
    """Text as a finite double, NULL when it is not a number (`NUMBER_PATTERN`) or out of range
    ('1e999'); `select_for` makes such a value a reject. On PostgreSQL `safe` calls
    `etl_try_float8`; else a plain cast that raises when out of range (see `to_timestamp`)."""
    if dialect == "duckdb":
        number = f"TRY_CAST({number_text_expr} AS DOUBLE)"
        pattern = matches(dialect, number_text_expr, NUMBER_PATTERN)
        return f"(CASE WHEN {pattern} AND isfinite({number}) THEN {number} END)"
    if safe:
        return f"etl_try_float8({number_text_expr})"
    return (
        f"(CASE WHEN {matches(dialect, number_text_expr, NUMBER_PATTERN)} "
        f"THEN CAST({number_text_expr} AS DOUBLE PRECISION) END)"
    )


def _first_of(dialect: str, aliases: list[str]) -> str:
    if not aliases:
        return "CAST(NULL AS VARCHAR)" if dialect == "duckdb" else "CAST(NULL AS TEXT)"
    return aliases[0] if len(aliases) == 1 else f"COALESCE({', '.join(aliases)})"


def _attributes(dialect: str, removals: list[tuple[Path, list[str]]], took_keys: dict[str, str]) -> str:
    """The original record minus the fields a column took: `took_keys` holds per column the
    expression of the top-level key it took (else a placeholder key, or NULL on PostgreSQL);
    `removals` lists each record path with the conditions (one per column that lists it) under
    which a column took it (used for nested paths)."""
    if dialect == "duckdb":
        # json_merge_patch removes the keys a patch sets to null: one patch holding the top-level
        # keys the columns took (placeholders change nothing), then one per nested path whose key
        # is a placeholder unless a column took the path
        expr = RECORD
        if took_keys:
            pairs = ", ".join(f"{key}, NULL" for key in took_keys.values())
            expr = f"json_merge_patch({expr}, json_object({pairs}))"
        for p, conds in removals:
            if len(p) == 1 or any(isinstance(x, int) for x in p):
                continue
            chosen = " OR ".join(conds)
            value = "NULL"
            for part in reversed(p[1:]):
                value = f"json_object({literal(str(part))}, {value})"
            expr = (
                f"json_merge_patch({expr}, json_object(CASE WHEN {chosen} THEN {literal(str(p[0]))} "
                f"ELSE 'etl:none' END, CASE WHEN {chosen} THEN {value} END))"
            )
        return expr
    expr = f"CAST({RECORD} AS JSONB)"
    if took_keys:  # top-level keys in one pass (jsonb - text[] skips the NULLs)
        expr = f"({expr} - CAST(ARRAY[{', '.join(took_keys.values())}] AS TEXT[]))"
    for p, conds in removals:
        if len(p) == 1 and isinstance(p[0], str):
            continue
        target = "ARRAY[" + ", ".join(literal(str(x)) for x in p) + "]"
        expr = f"({expr} #- (CASE WHEN {' OR '.join(conds)} THEN {target} ELSE ARRAY['etl:none'] END))"
    return expr


def _top_level(name: str) -> bool:
    """True for a candidate naming one top-level key of the record."""
    if not is_record_path(name):
        return False
    p = path(name)
    return len(p) == 1 and isinstance(p[0], str)


def _is_active(status_alias: str, flag_alias: dict[str, str]) -> str:
    falsy = ", ".join(literal(v) for v in FALSE_VALUES)
    truthy = ", ".join(literal(v) for v in TRUE_VALUES)
    inactive = ", ".join(literal(v) for v in INACTIVE_STATUSES)
    conditions = [f"COALESCE(LOWER({status_alias}) IN ({inactive}), FALSE)"]
    conditions += [f"COALESCE(LOWER({flag_alias[f]}) IN ({falsy}), FALSE)" for f in ACTIVE_FLAG_FIELDS]
    conditions += [f"COALESCE(LOWER({flag_alias[f]}) IN ({truthy}), FALSE)" for f in DELETED_FLAG_FIELDS]
    return "NOT (" + " OR ".join(conditions) + ")"


def select_for(
    dialect: str,
    mapping: Mapping,
    schema: str,
    table: str,
    tenant_id: str,
    days_sql: str,
    has_columns: set[str],
    safe_casts: bool = True,
) -> str:
    """A SELECT of the unified columns (+ `reject_reason`) over one raw table's partition slice.

    Candidates reading raw columns ('@col', templates) that the table lacks are dropped.
    `safe_casts=False` (PostgreSQL): the SELECT raises on an invalid date or a number out of range
    (see `to_timestamp`, `to_number`).

    Rendered in layers so that each value is computed once per row (PostgreSQL would otherwise
    inline and re-evaluate every expression where it is used; `OFFSET 0` keeps the layers):
    0 (DuckDB) every record path extracted in one parse of `_etl_record`; 1 each distinct candidate
    as trimmed text; 2 per column its text (first non-empty candidate), the index of the candidate
    it took, and the parsed times and number; 3 the unified columns and the reject reason: a missing id, or a
    date or number that does not parse (the value is never dropped silently).
    """
    plan = _Plan.of(dialect, mapping, has_columns)
    layer1 = _candidates_layer(plan, mapping, schema, table, days_sql)
    layer2 = _ParsedLayer.of(plan, layer1, safe_casts)
    columns = _unified_columns(plan, layer2, mapping, tenant_id, table)
    select = ",\n  ".join(f"{expr} AS {quote(name)}" for name, expr in columns.items())
    return f"SELECT\n  {select}\nFROM ({layer2.sql}) AS l2"


@dataclass
class _Plan:
    """What one raw table offers a mapping: per unified column the candidates the table can read,
    every distinct candidate (and the flag fields) with its alias, the raw columns every layer
    carries, and which record paths a column may take."""

    dialect: str
    candidates: dict[str, list[str]]  # unified column -> candidates the table can read
    flags: list[str]  # the fields flagging a record active or deleted
    names: list[str]  # every distinct candidate and flag field
    cand: dict[str, str]  # candidate -> its alias (layer 1)
    text: dict[str, str]  # unified column -> its text alias (layer 2)
    fence: str  # PostgreSQL: `OFFSET 0` keeps a layer from being inlined
    raw_cols: list[str]  # the raw columns every layer carries
    took: dict[str, str]  # unified column reading record paths -> the alias of the candidate it took
    removals: dict[Path, list[str]]  # record path -> the condition (per column listing it) that it was taken

    @classmethod
    def of(cls, dialect: str, mapping: Mapping, has_columns: set[str]) -> _Plan:
        c = {
            col: [n for n in names if all(column in has_columns for column in raw_columns(n))]
            for col, names in mapping.candidates.items()
        }
        flags = [*ACTIVE_FLAG_FIELDS, *DELETED_FLAG_FIELDS]
        names = list(dict.fromkeys([*(n for ns in c.values() for n in ns), *flags]))
        lineage_cols = [quote(lineage.PARTITION_DATE), quote(lineage.ROW_KEY), "_dlt_load_id", RECORD]
        raw_cols = list(dict.fromkeys([*lineage_cols, *(quote(col) for n in names for col in raw_columns(n))]))
        # record paths a column may take, with the condition (per column listing it) that it did
        removals: dict[Path, list[str]] = {}
        took: dict[str, str] = {}
        for col, ns in c.items():
            if any(is_record_path(n) for n in ns):
                took[col] = alias("k", col)
                for index, n in enumerate(ns):
                    if is_record_path(n):
                        removals.setdefault(path(n), []).append(f"{took[col]} = {index}")
        return cls(
            dialect=dialect,
            candidates=c,
            flags=flags,
            names=names,
            cand={n: alias("c", str(i)) for i, n in enumerate(names)},
            text={col: alias("t", col) for col in c},
            fence=" OFFSET 0" if dialect == "postgres" else "",
            raw_cols=raw_cols,
            took=took,
            removals=removals,
        )

    def get(self, col: str) -> str:
        """A unified column's text (layer 2), else a typed NULL."""
        return self.text.get(col, "CAST(NULL AS VARCHAR)" if self.dialect == "duckdb" else "CAST(NULL AS TEXT)")


def _candidates_layer(plan: _Plan, mapping: Mapping, schema: str, table: str, days_sql: str) -> str:
    """Layers 0 and 1: the partition slice with each distinct candidate as trimmed text (DuckDB
    extracts every record path in one parse of `_etl_record` first)."""
    names, cand = plan.names, plan.cand
    source = f"{quote(schema)}.{quote(table)}"
    where = (
        f"WHERE {quote(lineage.SOURCE)} = {literal(mapping.source)} "
        f"AND {quote(lineage.PARTITION_DATE)} IN ({days_sql})"
    )
    layer0_cols = list(plan.raw_cols)
    if plan.dialect == "duckdb":
        text_paths = [path(n) for n in names if is_record_path(n)]
        extracted = {p: f'{alias("x")}[{i + 1}]' for i, p in enumerate(text_paths)}
        if text_paths:
            listed = ", ".join(literal(json_path(p)) for p in text_paths)
            layer0_cols.append(f"json_extract_string({RECORD}, [{listed}]) AS {alias('x')}")
        source = f"(SELECT {', '.join(layer0_cols)} FROM {source} {where}) AS l0"
        where = ""
        cand_expr = {
            n: f"NULLIF(TRIM({extracted[path(n)]}), '')" if is_record_path(n) else candidate_text(plan.dialect, n)
            for n in names
        }
    else:
        cand_expr = {n: candidate_text(plan.dialect, n) for n in names}
    return (
        f"SELECT {', '.join([*plan.raw_cols, *(f'{cand_expr[n]} AS {cand[n]}' for n in names)])} "
        f"FROM {source} {where}{plan.fence}"
    )


@dataclass
class _ParsedLayer:
    """Layer 2: per unified column its text (the first non-empty candidate) and the index of the
    candidate it took, the parsed times and number."""

    sql: str
    took_keys: dict[str, str]  # unified column -> alias of the top-level record key it took
    ts: dict[str, str]  # time column -> alias of its parsed timestamp
    number: str  # alias of the parsed `value`

    @classmethod
    def of(cls, plan: _Plan, layer1: str, safe_casts: bool) -> _ParsedLayer:
        dialect, c, cand = plan.dialect, plan.candidates, plan.cand
        took_keys: dict[str, str] = {}
        layer2_cols = [*plan.raw_cols, *(cand[f] for f in plan.flags)]
        for col, ns in c.items():
            layer2_cols.append(f"{_first_of(dialect, [cand[n] for n in ns])} AS {plan.text[col]}")
            if col in plan.took:
                whens = " ".join(f"WHEN {cand[n]} IS NOT NULL THEN {i}" for i, n in enumerate(ns))
                layer2_cols.append(f"CASE {whens} END AS {plan.took[col]}")
                if any(_top_level(n) for n in ns):
                    # the top-level key the column took: its first non-empty candidate, when that
                    # is a top-level key of the record, else a placeholder (DuckDB) or NULL
                    none_key = literal("etl:none:" + col) if dialect == "duckdb" else "NULL"
                    whens = " ".join(
                        f"WHEN {cand[n]} IS NOT NULL THEN {literal(n) if _top_level(n) else none_key}" for n in ns
                    )
                    layer2_cols.append(f"CASE {whens} ELSE {none_key} END AS {alias('key', col)}")
                    took_keys[col] = alias("key", col)
        ts = {col: alias("ts", col) for col in TIME_COLUMNS}
        for col in TIME_COLUMNS:
            first = _first_of(dialect, [cand[n] for n in c.get(col, [])])
            layer2_cols.append(f"{to_timestamp(dialect, first, safe_casts)} AS {ts[col]}")
        number = alias("n", "value")
        value_text = number_text(dialect, _first_of(dialect, [cand[n] for n in c.get("value", [])]))
        layer2_cols.append(f"{to_number(dialect, value_text, safe_casts)} AS {number}")
        sql = f"SELECT {', '.join(layer2_cols)} FROM ({layer1}) AS l1{plan.fence}"
        return cls(sql, took_keys, ts, number)


def _reject_reason(plan: _Plan, layer2: _ParsedLayer) -> str:
    """Why a row cannot become a record: a missing id, or a date or number that does not parse."""
    get = plan.get
    id_fields = ", ".join(n.lstrip(LINEAGE_PREFIX) for n in plan.candidates.get("source_id", [])) or "none configured"
    return " ".join(
        [
            "CASE",
            f"WHEN {get('source_id')} IS NULL THEN {literal('missing id (' + id_fields + ')')}",
            *(
                f"WHEN {get(col)} IS NOT NULL AND {layer2.ts[col]} IS NULL "
                f"THEN {literal('unparseable date in ' + col + ': ')} || {get(col)}"
                for col in TIME_COLUMNS
            ),
            f"WHEN {get('value')} IS NOT NULL AND {layer2.number} IS NULL "
            f"THEN {literal('unparseable number in value: ')} || {get('value')}",
            "ELSE NULL END",
        ]
    )


def _unified_columns(plan: _Plan, layer2: _ParsedLayer, mapping: Mapping, tenant_id: str, table: str) -> dict[str, str]:
    """Layer 3: each column of `records` (+ `reject_reason`) as an expression over layer 2."""
    get, ts = plan.get, layer2.ts
    reject = _reject_reason(plan, layer2)
    status = get("status")
    record = RECORD if plan.dialect == "duckdb" else f"CAST({RECORD} AS JSONB)"
    return {
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
        "value": layer2.number,
        "created_at": ts["created_at"],
        "updated_at": ts["updated_at"],
        "event_date": quote(lineage.PARTITION_DATE),
        "is_active": _is_active(status, {f: plan.cand[f] for f in plan.flags}),
        "attributes": _attributes(plan.dialect, list(plan.removals.items()), layer2.took_keys),
        "parent_id": get("parent_id"),
        "raw_table": literal(table),
        "raw_row_key": quote(lineage.ROW_KEY),
        "raw_load_id": "_dlt_load_id",
        # the original record is kept for rejects only (valid rows keep theirs in the raw table)
        "raw_record": f"CASE WHEN ({reject}) IS NOT NULL THEN {record} END",
        "reject_reason": reject,
    }


POSTGRES_FUNCTIONS = f"""
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

CREATE OR REPLACE FUNCTION public.etl_try_float8(v TEXT) RETURNS DOUBLE PRECISION
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF v IS NULL OR v !~ {NUMBER_PATTERN} THEN
    RETURN NULL;
  END IF;
  RETURN v::double precision;
EXCEPTION WHEN others THEN  -- out of range, e.g. '1e999'
  RETURN NULL;
END $$;
"""
