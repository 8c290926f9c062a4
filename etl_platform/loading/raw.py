"""Raw loads: one tenant's source over the run's days, through the tenant's own dlt pipeline
(`etl__<tenant>__<source>`) into its own dataset (`tenant_<id>`), then the partition slice made
exact (rows of earlier loads swept), counted and fingerprinted per day.

Every query here finds a (source, day) slice through an index on PostgreSQL (created with the
table) or DuckDB's pruning, so the work of a load follows the partition, not the table.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dlt
import pyarrow

from etl_platform.config.models import SourceConfig, TenantConfig
from etl_platform.config.names import REJECTS_TABLE, raw_table
from etl_platform.config.registry import Registry
from etl_platform.config.settings import get_settings
from etl_platform.isolation import progress
from etl_platform.loading.messages import DriftFigures
from etl_platform.loading.versions import slice_figures
from etl_platform.normalize.drift import observed_schema, remember_schema
from etl_platform.sources import lineage
from etl_platform.sources.build import apply_load_hints, build_source
from etl_platform.sources.contracts import install_guards, rejects_resource
from etl_platform.sources.errors import PermanentSourceError
from etl_platform.warehouse import Connection, Warehouse, quote
from etl_platform.warehouse.indexes import analyze_if_stale, ensure_slice_index

# what a load tells about its source, kept in the raw asset's metadata (compact: no per-page detail)
SUMMARY_FIELDS = (
    "pages", "bytes", "rows_read", "rejects", "outside_window", "repeated_pages_stopped", "warning",
    "skipped_by_reason", "event_time_fallbacks", "encoding", "encoding_source", "pages_by_resource",
)  # fmt: skip


def pipeline_name(tenant_id: str, source: str) -> str:
    """One dlt pipeline per (tenant, source): pipelines with one name never run concurrently."""
    return f"etl__{tenant_id}__{source}"


def pipelines_dir() -> str:
    path = get_settings().data_dir / "dlt_pipelines"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


@dataclass
class ResourceSlice:
    """What one resource's table holds for each day of the run after the load."""

    resource: str
    table: str  # the table's name in the tenant's dataset
    rows: dict[dt.date, int]
    versions: dict[dt.date, str]  # content fingerprint of each day's slice
    columns: dict[str, str] = field(default_factory=dict)  # dlt's columns (name -> type), for the UI
    columns_added: list[str] = field(default_factory=list)  # by this load
    drift: DriftFigures | None = None  # a data table's fields against the previous load's (not rejects)


@dataclass
class SourceLoad:
    """One tenant's load of one source: per resource and day, plus the load's own figures."""

    source: str
    slices: list[ResourceSlice]
    rejects: dict[dt.date, int]  # the source's rows in the tenant's `rejects` per day (loaders', contracts')
    summary: dict[str, Any]
    swept: dict[str, int]
    duration_s: float


def load_source(
    run_id: str,
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
    ctx = lineage.RunContext(tenant.id, config.name, run_id, lineage.Window(tuple(days), get_settings().timezone))
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

    def writer() -> Any:  # DuckDB: one writing process per file; PostgreSQL: one load per (tenant, source)
        return warehouse.writing(name="" if warehouse.kind == "duckdb" else f"{tenant.id}/{config.name}")

    with writer() as held:
        # a failed earlier load would replay its pending packages: drop them; then the state and
        # schema as the destination holds them (another process or container may have loaded)
        pipeline.abort_packages()
        pipeline.sync_destination(destination=held.destination)
        guards = _contract_guards(pipeline, source, config, ctx)
    # extract and normalize write local files only: outside the writer's lock, so that other runs'
    # loads go on meanwhile (the destination was synced just before)
    pipeline.config.restore_from_destination = False
    with _refusals_named(guards):
        progress.note(phase="extract")
        pipeline.extract(source)
        pipeline.normalize()
    # Arrow's allocator keeps the pages the extract freed (~110 MB after a 1M-row CSV), which the
    # load's DuckDB memory would otherwise come on top of
    pyarrow.default_memory_pool().release_unused()
    with writer() as held:
        with _refusals_named(guards):
            progress.note(phase="load")
            load_info = pipeline.load(destination=held.destination)
        load_ids = _load_ids(pipeline, load_info, guards, held.destination)
        slices, rejects, swept = _settle_slice(
            held.conn, tenant.dataset, pipeline, load_info, load_ids, source, config, days
        )
    return SourceLoad(
        source=config.name,
        slices=slices,
        rejects=rejects,
        summary={**_summary(stats), **_contract_stats(guards)},
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


@contextlib.contextmanager
def _refusals_named(guards: list) -> Iterator[None]:
    """A schema contract (freeze) that refused the data fails as permanent, naming every field as
    the source writes it (dlt names its variant column)."""
    try:
        yield
    except Exception:
        refused = [g.describe() for g in guards if g.mode == "freeze" and g.stats.violations]
        if refused:
            raise PermanentSourceError("; ".join(refused)) from None
        raise


def _load_ids(pipeline: Any, load_info: Any, guards: list, destination: Any) -> list[str]:
    """The loads of this run: the source's, then the rows or values a contract discarded (kept in
    `rejects` with the reason)."""
    load_info.raise_on_failed_jobs()
    load_ids = list(load_info.loads_ids)
    diverted = [row for guard in guards for row in guard.rejected]
    if diverted:
        extra = pipeline.run(rejects_resource(diverted), destination=destination)
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
) -> tuple[list[ResourceSlice], dict[dt.date, int], dict[str, int]]:
    """After the load, under the writer's lock: slice indexes and statistics (PostgreSQL), the
    earlier loads of the slice swept, rows counted and fingerprinted per table and day, the fields
    each data table observed remembered. (slices per resource, the source's rejects per day, rows
    swept per table)."""
    tables = [raw_table(config.name, r) for r in source.selected_resources]
    if REJECTS_TABLE not in source.selected_resources and conn.table_exists(dataset, REJECTS_TABLE):
        tables.append(REJECTS_TABLE)  # rows a contract diverted
    for table in tables:
        if conn.dialect == "postgres" and conn.table_exists(dataset, table):
            ensure_slice_index(conn, dataset, table)
            analyze_if_stale(conn, dataset, table)
    swept = _sweep_stale_rows(conn, dataset, config.name, days, load_ids)
    figures = {t: slice_figures(conn, dataset, t, config.name, days) for t in tables}
    slices = []
    for name in source.selected_resources:
        table = raw_table(config.name, name)
        rows, versions = figures[table]
        found = ResourceSlice(name, table, rows, versions, _columns(pipeline, table), _schema_changes(load_info, table))
        if name != REJECTS_TABLE:  # the fields of this load's records against the previous load's
            observed = observed_schema(conn, dataset, table, load_ids, config.name, days, resource=name)
            found.drift = DriftFigures(observed, *remember_schema(conn, dataset, config.name, name, observed))
        slices.append(found)
    rejects = figures[REJECTS_TABLE][0] if REJECTS_TABLE in figures else {d: 0 for d in days}
    return slices, rejects, swept


def _columns(pipeline: Any, table: str) -> dict[str, str]:
    """The table's columns as dlt knows them (name -> data type)."""
    if not pipeline.default_schema_name or table not in pipeline.default_schema.tables:
        return {}
    columns = pipeline.default_schema.get_table_columns(table)
    return {name: str(col.get("data_type") or "unknown") for name, col in columns.items()}


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


def _summary(stats: Any) -> dict[str, Any]:
    """The source's own counters of the load (pages, bytes, rejects, rows outside the window,
    rows skipped by reason, warnings); empty values left out."""
    if stats is None:
        return {}
    data = dict(stats.as_metadata()) if hasattr(stats, "as_metadata") else {}
    for name in SUMMARY_FIELDS:
        if name not in data and hasattr(stats, name):
            data[name] = getattr(stats, name)
    if data.get("encoding_source") == "utf-8 (valid)":  # the usual case: nothing to tell
        data.pop("encoding", None)
        data.pop("encoding_source", None)
    return {k: v for k, v in data.items() if k in SUMMARY_FIELDS and v not in (None, 0, {}, [], "")}


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
