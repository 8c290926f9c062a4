"""Schema contracts that tell the truth.

dlt enforces a source's `schema_contract` (freeze, discard_row, discard_value) in its normalize
step: `discard_row` drops a changed row and `discard_value` a changed value without a word, and
`freeze` names dlt's internal variant column (`amount__v_text`) for the first violation only.
`ContractGuard` looks at every row while the source is extracted, against the table's columns
as dlt knows them, with dlt's own type mapping and coercion:

- `discard_row`: the row goes to the tenant's `rejects` table instead, with the contract and the
  fields as the reason;
- `discard_value`: the value is dropped from the row (the record itself stays whole in
  `_etl_record`) and a reject row says which field and value were discarded;
- `freeze`: every violating field is collected, named as the source writes it; the load fails
  with all of them (`describe()`), and nothing is loaded;
- `evolve`: nothing (the drift check reports changes).

Rows are dicts (API and feed sources) or Arrow tables (CSV). Every discarded row or value is
counted in `stats` (`as_metadata()`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import dlt
from dlt.common.data_types import coerce_value, py_type_to_sc_type

from etl_platform.config.names import REJECTS_TABLE
from etl_platform.security.redaction import excerpt
from etl_platform.sources import lineage


@dataclass
class ContractStats:
    """What the contract discarded or refused in this load."""

    mode: str
    rows_discarded: int = 0
    values_discarded: int = 0
    violations: Counter[str] = field(default_factory=Counter)  # "field: what" -> rows

    def as_metadata(self) -> dict[str, Any]:
        return {
            "contract": self.mode,
            "contract_rows_discarded": self.rows_discarded,
            "contract_values_discarded": self.values_discarded,
            "contract_violations": dict(self.violations.most_common(50)),
        }


class ContractGuard:
    """Checks rows of one resource against its table's columns (`columns`: dlt's column schemas
    of the table before this load; empty: a new table, anything goes)."""

    def __init__(self, mode: str, resource: str, columns: dict[str, Any], naming: Any, ctx: lineage.RunContext):
        self.rejected: list[dict[str, Any]] = []  # reject rows, loaded after the data (`rejects_resource`)
        self.mode = mode
        self.resource = resource
        self.columns = {name: col for name, col in columns.items() if col.get("data_type")}
        self.naming = naming
        self.ctx = ctx
        self.stats = ContractStats(mode)

    @property
    def active(self) -> bool:
        return self.mode != "evolve" and bool(self.columns)

    # --- one row ------------------------------------------------------------------------------

    def violations(self, row: dict[str, Any]) -> list[tuple[str, str, str]]:
        """(top-level key, the field as the source writes it, what is wrong) for each violation."""
        found: list[tuple[str, str, str]] = []
        for key, value in row.items():
            if key.startswith(("_etl_", "_dlt_")) or value is None:
                continue
            self._check(key, key, self.naming.normalize_identifier(key), value, found)
        return found

    def _check(self, top: str, path: str, column: str, value: Any, found: list) -> None:
        if isinstance(value, dict):  # dlt flattens nested objects into parent__child columns
            for sub, inner in value.items():
                if inner is not None:
                    name = self.naming.normalize_identifier(f"{column}__{self.naming.normalize_identifier(sub)}")
                    self._check(top, f"{path}.{sub}", name, inner, found)
            return
        if isinstance(value, list):  # lists become child tables: not this table's columns
            return
        existing = self.columns.get(column)
        value_type = py_type_to_sc_type(type(value))
        if existing is None:
            found.append((top, path, "new field"))
            return
        column_type = existing["data_type"]
        if value_type == column_type:
            return
        try:
            coerce_value(column_type, value_type, value)
        except (ValueError, TypeError, SyntaxError):
            found.append((top, path, f"is {value_type} ({_short(value)}), the table has {column_type}"))

    def guard_row(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """The row as the contract lets it through (none, whole, or without the changed fields)."""
        found = self.violations(row)
        if not found:
            return [row]
        for _, path, what in found:
            self.stats.violations[f"{path}: {what.split(' (')[0]}"] += 1
        reason = "; ".join(f"field '{path}' {what}" for _, path, what in found)
        if self.mode == "freeze":
            return [row]  # dlt refuses the load; describe() names every field
        if self.mode == "discard_row":
            self.stats.rows_discarded += 1
            self._reject(row, f"schema contract discard_row: {reason}")
            return []
        self.stats.values_discarded += len(found)
        self._reject(row, f"schema contract discard_value: dropped {reason}")
        return [{k: v for k, v in row.items() if k not in {top for top, _, _ in found}}]

    def _reject(self, row: dict[str, Any], reason: str) -> None:
        """Keep the row for the tenant's `rejects` table (loaded after the data)."""
        record = row.get(lineage.RECORD)
        text = record if isinstance(record, str) else json.dumps(record, default=str, ensure_ascii=False)
        self.rejected.append(
            self.ctx.reject(
                resource=self.resource,
                position=row.get(lineage.POSITION),
                raw_text=text,
                reason=reason,
                partition_date=row.get(lineage.PARTITION_DATE),
            )
        )

    # --- Arrow batches (CSV) --------------------------------------------------------------------

    def guard_table(self, table: Any) -> list[Any]:
        """A CSV batch: its new columns are the violations (values are text)."""
        new = [
            name
            for name in table.column_names
            if not name.startswith(("_etl_", "_dlt_")) and self.naming.normalize_identifier(name) not in self.columns
        ]
        if not new:
            return [table]
        for name in new:
            self.stats.violations[f"{name}: new field"] += table.num_rows
        if self.mode == "freeze":
            return [table]
        rows = table.to_pylist()
        reason = ", ".join(f"'{name}'" for name in new)
        if self.mode == "discard_row":
            self.stats.rows_discarded += len(rows)
            for r in rows:
                self._reject(r, f"schema contract discard_row: new field(s) {reason}")
            return []
        self.stats.values_discarded += len(rows) * len(new)
        for r in rows:
            self._reject(r, f"schema contract discard_value: dropped new field(s) {reason}")
        return [table.drop_columns(new)]

    def __call__(self, item: Any) -> Any:
        if not self.active:
            yield item
            return
        if isinstance(item, dict):
            yield from self.guard_row(item)
        elif hasattr(item, "column_names"):
            yield from self.guard_table(item)
        else:
            yield item

    def describe(self) -> str:
        fields = sorted({v.split(":")[0] for v in self.stats.violations})
        details = "; ".join(f"{v} ({n} rows)" for v, n in sorted(self.stats.violations.items()))
        return (
            f"schema contract 'freeze' refused {len(fields)} field(s) of resource '{self.resource}': "
            f"{', '.join(repr(f) for f in fields)} — {details}. Nothing was loaded; change the contract "
            "(evolve) or fix the source."
        )


def rejects_resource(rows: list[dict[str, Any]]) -> Any:
    """The rows contracts diverted, as a resource of the tenant's `rejects` table (appended: the
    load's slice sweep replaces older ones)."""
    resource = dlt.resource(rows, name=REJECTS_TABLE)
    lineage.apply_raw_hints(resource, table_name=REJECTS_TABLE)
    resource.apply_hints(write_disposition="append")
    return resource


def _short(value: Any) -> str:
    text = repr(value)
    return excerpt(text, 40) if len(text) <= 40 else excerpt(text, 37, ellipsis="...")


def install_guards(source: Any, mode: str, schema: Any, table_of: Any, ctx: lineage.RunContext) -> list[ContractGuard]:
    """A guard on every data resource of `source` whose table exists in `schema` (dlt's schema
    of the tenant's pipeline before this load). `table_of(resource name)` -> table name."""
    if mode == "evolve" or schema is None:
        return []
    guards = []
    for name, resource in source.selected_resources.items():
        if name == REJECTS_TABLE:
            continue
        table = table_of(name)
        columns = schema.get_table_columns(table) if table in schema.tables else {}
        guard = ContractGuard(mode, name, columns, schema.naming, ctx)
        if guard.active:
            resource.add_yield_map(guard)
            guards.append(guard)
    return guards
