"""Raw loads: one tenant's source over the run's days, through the tenant's own dlt pipeline
(`etl__<tenant>__<source>`) into its own dataset (`tenant_<id>`), then the partition slice made
exact (rows of earlier loads swept) and counted per day.

Every query here finds a (source, day) slice through an index on PostgreSQL (created with the
table) or DuckDB's pruning, so the work of a load follows the partition, not the table.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dlt
from dagster import AssetKey, MetadataValue, TableColumn, TableSchema

from etl_platform.assets.keys import raw_asset_key
from etl_platform.config.models import SourceConfig, TenantConfig
from etl_platform.config.names import REJECTS_TABLE, raw_table
from etl_platform.config.registry import Registry
from etl_platform.config.settings import get_settings
from etl_platform.normalize.drift import observed_schema
from etl_platform.sources import lineage
from etl_platform.sources.build import apply_load_hints, build_source
from etl_platform.sources.contracts import install_guards, rejects_resource
from etl_platform.sources.errors import PermanentSourceError
from etl_platform.warehouse import Connection, Warehouse, quote
from etl_platform.warehouse.indexes import analyze_if_stale, ensure_slice_index

STATS_FIELDS = (
    "pages",
    "pages_by_resource",
    "bytes",
    "rows_read",
    "rejects",
    "outside_window",
    "repeated_pages_stopped",
    "warning",
)


def pipeline_name(tenant_id: str, source: str) -> str:
    """One dlt pipeline per (tenant, source): pipelines with one name never run concurrently."""
    return f"etl__{tenant_id}__{source}"


def pipelines_dir() -> str:
    path = get_settings().data_dir / "dlt_pipelines"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


@dataclass
class ResourceLoad:
    """What one resource's table holds for each day of the run after the load."""

    key: AssetKey
    resource: str
    table: str
    rows_by_day: dict[dt.date, int]
    metadata: dict[str, Any]
    observed: dict[str, str] = field(default_factory=dict)


@dataclass
class SourceLoad:
    """One tenant's load of one source: per resource and day, plus the run-level source figures."""

    source: str
    resources: list[ResourceLoad]
    rejects_by_day: dict[dt.date, int]
    stats: dict[str, Any]
    swept: dict[str, int]
    duration_s: float


def selected_resources(config: SourceConfig, selected: set[AssetKey]) -> list[str]:
    """The source's data resources the run selected (its rejects load with them)."""
    return [r for r in config.resource_names if raw_asset_key(config.name, r) in selected]


def load_source(
    context: Any,
    registry: Registry,
    warehouse: Warehouse,
    tenant: TenantConfig,
    config: SourceConfig,
    days: list[dt.date],
    resources: list[str],
) -> SourceLoad:
    """Load the data `resources` of the tenant's source (and its rejects) for `days`; the slice of
    each day is replaced."""
    started = time.monotonic()
    settings = get_settings()
    ctx = lineage.RunContext(tenant.id, config.name, context.run.run_id, lineage.Window(tuple(days), settings.timezone))
    source = build_source(config, registry, ctx)
    apply_load_hints(source, config, warehouse.kind)  # how this kind loads (CSV: appended, then swept)
    stats = getattr(source, "etl_stats", None)  # filled while the (selected clone of the) source runs
    source = source.with_resources(*_with_rejects(source, resources))
    pipeline = dlt.pipeline(
        pipeline_name=pipeline_name(tenant.id, config.name),
        destination=warehouse.dlt_destination(),
        dataset_name=tenant.dataset,
        pipelines_dir=pipelines_dir(),
    )

    def writer() -> Any:  # DuckDB: one writing process at a time; PostgreSQL: one load per (tenant, source)
        return warehouse.lock(write=True, name="" if warehouse.kind == "duckdb" else f"{tenant.id}/{config.name}")

    with writer():
        # a failed earlier load would replay its pending packages: drop them; then the state and
        # schema as the destination holds them (another process or container may have loaded)
        pipeline.abort_packages()
        pipeline.sync_destination()
        guards = _contract_guards(pipeline, source, config, ctx)
    load_info = _extract_and_load(pipeline, source, guards, writer)
    with writer():
        load_ids = _load_ids(pipeline, load_info, guards)
        with warehouse.connect(write=True) as conn:
            settled = _settle_slice(conn, tenant.dataset, pipeline, load_info, load_ids, source, config, days)
    loads, counts, swept = settled
    return SourceLoad(
        source=config.name,
        resources=loads,
        rejects_by_day=counts.get(raw_table(config.name, REJECTS_TABLE), {d: 0 for d in days}),
        stats={**_stats(stats), **_contract_stats(guards)},
        swept=swept,
        duration_s=round(time.monotonic() - started, 3),
    )


def _with_rejects(source: Any, resources: list[str]) -> list[str]:
    """The selected resources the source has, and its rejects: rows a loader rejects are kept
    whatever the selection."""
    names = [r for r in resources if r in source.resources]
    if REJECTS_TABLE in source.resources and REJECTS_TABLE not in names:
        names.append(REJECTS_TABLE)
    return names


def _extract_and_load(pipeline: Any, source: Any, guards: list, writer: Callable[[], Any]) -> Any:
    """Extract and normalize (local files only: outside the writer's lock, so that other runs'
    loads go on meanwhile; the destination was synced just before), then load under the lock.
    A schema contract (freeze) that refused the data fails as permanent, naming every field."""
    pipeline.config.restore_from_destination = False
    try:
        pipeline.extract(source)
        pipeline.normalize()
        with writer():
            return pipeline.load()
    except Exception:
        refused = [g.describe() for g in guards if g.mode == "freeze" and g.stats.violations]
        if refused:  # name every field as the source writes it (dlt names its variant column)
            raise PermanentSourceError("; ".join(refused)) from None
        raise


def _load_ids(pipeline: Any, load_info: Any, guards: list) -> list[str]:
    """The loads of this run: the source's, then the rows or values a contract discarded (kept in
    `rejects` with the reason)."""
    load_info.raise_on_failed_jobs()
    load_ids = list(load_info.loads_ids)
    diverted = [row for guard in guards for row in guard.rejected]
    if diverted:
        extra = pipeline.run(rejects_resource(diverted))
        extra.raise_on_failed_jobs()
        load_ids += list(extra.loads_ids)
    return load_ids


def _settle_slice(
    conn: Connection,
    dataset: str,
    pipeline: Any,
    load_info: Any,
    load_ids: list[str],
    source: Any,
    config: SourceConfig,
    days: list[dt.date],
) -> tuple[list[ResourceLoad], dict[str, dict[dt.date, int]], dict[str, int]]:
    """After the load, under the writer's lock: slice indexes and statistics (PostgreSQL), the
    earlier loads of the slice swept, rows counted per table and day. (loads per resource, counts
    per table, rows swept per table)."""
    metadata = {name: _table_metadata(pipeline, raw_table(config.name, name)) for name in source.selected_resources}
    tables = [raw_table(config.name, r) for r in source.selected_resources]
    if REJECTS_TABLE not in source.selected_resources and conn.table_exists(dataset, REJECTS_TABLE):
        tables.append(REJECTS_TABLE)  # rows a contract diverted
    for table in tables:
        if conn.dialect == "postgres" and conn.table_exists(dataset, table):
            ensure_slice_index(conn, dataset, table)
            analyze_if_stale(conn, dataset, table)
    swept = _sweep_stale_rows(conn, dataset, config.name, days, load_ids)
    counts = {t: _rows_by_day(conn, dataset, t, config.name, days) for t in tables}
    loads = [
        ResourceLoad(
            key=raw_asset_key(config.name, name),
            resource=name,
            table=f"{dataset}.{raw_table(config.name, name)}",
            rows_by_day=counts[raw_table(config.name, name)],
            metadata=_resource_metadata(metadata[name], _schema_changes(load_info, raw_table(config.name, name))),
            observed=(
                {}
                if name == REJECTS_TABLE
                else observed_schema(conn, dataset, raw_table(config.name, name), load_ids, config.name, days)
            ),
        )
        for name in source.selected_resources
    ]
    return loads, counts, swept


def _table_metadata(pipeline: Any, table: str) -> dict[str, Any]:
    """The table's columns as dlt knows them and its full name (the UI shows both)."""
    if not pipeline.default_schema_name or table not in pipeline.default_schema.tables:
        return {}
    columns = pipeline.default_schema.get_table_columns(table)
    schema = TableSchema(
        columns=[TableColumn(name=name, type=str(col.get("data_type") or "unknown")) for name, col in columns.items()]
    )
    return {
        "dagster/column_schema": MetadataValue.table_schema(schema),
        "dagster/table_name": MetadataValue.text(f"{pipeline.dataset_name}.{table}"),
    }


def _contract_guards(pipeline: Any, source: Any, config: SourceConfig, ctx: lineage.RunContext) -> list:
    """Guards that make the source's schema contract tell the truth (`sources/contracts.py`),
    against the tables as the destination knows them (synced just before)."""
    if config.schema_contract == "evolve":
        return []
    schema = pipeline.default_schema if pipeline.default_schema_name else None
    return install_guards(source, config.schema_contract, schema, lambda r: raw_table(config.name, r), ctx)


def _contract_stats(guards: list) -> dict[str, Any]:
    if not guards:
        return {}
    violations: dict[str, int] = {}
    for guard in guards:
        for name, count in guard.stats.violations.items():
            violations[f"{guard.resource}.{name}"] = count
    return {
        "contract": guards[0].mode,
        "contract_rows_discarded": sum(g.stats.rows_discarded for g in guards),
        "contract_values_discarded": sum(g.stats.values_discarded for g in guards),
        "contract_violations": violations,
    }


def _resource_metadata(meta: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    """The dagster-dlt metadata worth keeping per partition: the table's columns and name."""
    out: dict[str, Any] = {"schema_changes": MetadataValue.json(changes)}
    for name in ("dagster/column_schema", "dagster/table_name"):
        if meta.get(name) is not None:
            out[name] = meta[name]
    return out


def _rows_by_day(conn: Connection, schema: str, table: str, source: str, days: list[dt.date]) -> dict[dt.date, int]:
    """Rows of the source's slice of each day, now in the table."""
    counts = {d: 0 for d in days}
    if not conn.table_exists(schema, table):
        return counts
    in_days = ", ".join("CAST(? AS DATE)" for _ in days)
    rows = conn.query(
        f"SELECT {quote(lineage.PARTITION_DATE)}, count(*) FROM {quote(schema)}.{quote(table)} "
        f"WHERE {quote(lineage.SOURCE)} = ? AND {quote(lineage.PARTITION_DATE)} IN ({in_days}) GROUP BY 1",
        [source, *[d.isoformat() for d in days]],
    )
    for day, count in rows:
        day = day if isinstance(day, dt.date) else dt.date.fromisoformat(str(day))
        counts[day] = int(count)
    return counts


def _stats(stats: Any) -> dict[str, Any]:
    """Run-level counters of the source (pages, bytes, rejects, rows outside the window, warnings)."""
    if stats is None:
        return {}
    if hasattr(stats, "as_metadata"):
        data = dict(stats.as_metadata())
    else:
        data = {name: getattr(stats, name) for name in STATS_FIELDS if hasattr(stats, name)}
    return {k: v for k, v in data.items() if v is not None and not callable(v) and k != "current_url"}


def _schema_changes(load_info: Any, table: str) -> list[str]:
    """Columns this load added to `table` (from dlt's schema updates)."""
    added: list[str] = []
    for package in load_info.load_packages:
        update = (package.schema_update or {}).get(table) or {}
        added.extend(c for c in (update.get("columns") or {}) if not c.startswith("_dlt"))
    return added


def _sweep_stale_rows(
    conn: Connection, dataset: str, source: str, days: list[dt.date], load_ids: list[str]
) -> dict[str, int]:
    """Remove the rest of the partition slice: rows of this source and these days from earlier
    loads. Delete-insert replaces a slice only where the new load has rows; appended CSV data
    replaces nothing until this runs."""
    if not load_ids:
        return {}
    removed: dict[str, int] = {}
    tables = [
        r[0]
        for r in conn.query(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = ? AND column_name = ?",
            [dataset, lineage.SOURCE],
        )
    ]
    in_days = ", ".join("CAST(? AS DATE)" for _ in days)
    in_loads = ", ".join("?" for _ in load_ids)
    for table in tables:
        count = conn.delete(
            f"DELETE FROM {quote(dataset)}.{quote(table)} WHERE {quote(lineage.SOURCE)} = ? AND "
            f"{quote(lineage.PARTITION_DATE)} IN ({in_days}) AND _dlt_load_id NOT IN ({in_loads})",
            [source, *[d.isoformat() for d in days], *load_ids],
        )
        if count:
            removed[table] = count
    return removed
