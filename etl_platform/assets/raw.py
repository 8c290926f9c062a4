"""Raw assets: one `@dlt_assets` per configured source name, one asset per resource
(`raw/<source>/<resource>`), partitioned by tenant × date.

A run may span several tenants and days (single-run backfills): each tenant loads
through its own pipeline (`etl__<tenant>__<source>`) into its own dataset
(`tenant_<id>`), and the run yields one result per asset with the tenants' figures.
"""

import time
from collections.abc import Iterator
from typing import Any

import dlt
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
)
from dagster_dlt import DagsterDltResource, DagsterDltTranslator, dlt_assets
from dagster_dlt.translator import DltResourceTranslatorData

from etl_platform.automation.tags import ensure_run_tags
from etl_platform.config.models import SourceConfig
from etl_platform.config.registry import Registry, load_registry
from etl_platform.config.settings import get_settings
from etl_platform.failures import classify, failure_for
from etl_platform.normalize.drift import observed_schema
from etl_platform.partitions import days_by_tenant, tenant_date_partitions
from etl_platform.sources import lineage
from etl_platform.sources.build import build_source
from etl_platform.warehouse import Warehouse, get_warehouse, quote

RAW_GROUP = "raw"
KIND_DESCRIPTIONS = {
    "rest_api": "REST/JSON API",
    "csv": "CSV file",
    "rss": "RSS/Atom feed",
    "jira": "Jira",
    "github": "GitHub",
}


def raw_asset_key(source: str, resource: str) -> AssetKey:
    return AssetKey(["raw", source, resource])


def pipeline_name(tenant_id: str, source: str) -> str:
    """One dlt pipeline per (tenant, source): pipelines with one name never run concurrently."""
    return f"etl__{tenant_id}__{source}"


def pipelines_dir() -> str:
    path = get_settings().data_dir / "dlt_pipelines"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


class RawTranslator(DagsterDltTranslator):
    """Keys `raw/<source>/<resource>`, group `raw`, kinds, descriptions; no phantom deps."""

    def __init__(self, source: str, kind: str, warehouse_kind: str) -> None:
        self.source = source
        self.kind = kind
        self.warehouse_kind = warehouse_kind

    def get_asset_spec(self, data: DltResourceTranslatorData) -> AssetSpec:
        default = super().get_asset_spec(data)
        resource = data.resource.name
        return default.replace_attributes(
            key=raw_asset_key(self.source, resource),
            deps=[],
            group_name=RAW_GROUP,
            description=(
                f"Raw `{resource}` rows of the {KIND_DESCRIPTIONS.get(self.kind, self.kind)} source "
                f"`{self.source}`, as received (original record in `_etl_record`) with lineage, "
                "in each tenant's dataset `tenant_<id>`."
            ),
            kinds={"dlt", self.warehouse_kind},
        )


def build_raw_assets(registry: Registry, warehouse: Warehouse) -> list[AssetsDefinition]:
    """Every source name in the tenants file becomes one multi-asset."""
    settings = get_settings()
    assets = []
    for source_name in registry.resources_by_source():
        config = registry.template_config(source_name)
        ctx = lineage.RunContext(
            "template", source_name, "template", lineage.Window((settings.start_date,), settings.timezone)
        )
        template = build_source(config, registry, ctx, for_run=False)
        pipeline = dlt.pipeline(
            pipeline_name=f"etl__template__{source_name}",
            destination=warehouse.dlt_destination(),
            dataset_name="template",
            pipelines_dir=pipelines_dir(),
        )
        assets.append(_raw_assets(source_name, config.kind, template, pipeline, warehouse.kind))
    return assets


def _raw_assets(source_name: str, kind: str, template: Any, pipeline: Any, warehouse_kind: str) -> AssetsDefinition:
    @dlt_assets(
        dlt_source=template,
        dlt_pipeline=pipeline,
        name=f"raw_{source_name}",
        dagster_dlt_translator=RawTranslator(source_name, kind, warehouse_kind),
        partitions_def=tenant_date_partitions,
        backfill_policy=BackfillPolicy.single_run(),
        op_tags={"etl/source": source_name, "etl/source_kind": kind},
    )
    def _load(context: AssetExecutionContext, dlt: DagsterDltResource) -> Iterator[MaterializeResult]:
        yield from load_raw(context, dlt, source_name)

    return _load


def load_raw(
    context: AssetExecutionContext, dlt_resource: DagsterDltResource, source_name: str
) -> Iterator[MaterializeResult]:
    """Load every tenant × day of the run's partitions for one source; one result per asset."""
    ensure_run_tags(context)
    registry = load_registry()
    warehouse = get_warehouse()
    settings = get_settings()
    keys = context.partition_keys if context.has_partition_key_range else [context.partition_key]
    selected = set(context.selected_asset_keys)
    merged: dict[AssetKey, dict[str, Any]] = {key: {"tenants": {}} for key in selected}

    for tenant_id, days in days_by_tenant(keys).items():
        try:
            tenant = registry.tenant(tenant_id)
        except KeyError as exc:
            raise failure_for(exc, tenant_id, source_name, permanent=True) from exc
        config = tenant.source(source_name)
        if config is None:
            for key in selected:
                merged[key]["tenants"][tenant_id] = {"configured": False, "rows_loaded": 0}
            context.log.info(f"tenant {tenant_id!r} has no source {source_name!r}: nothing to load")
            continue
        ctx = lineage.RunContext(tenant_id, source_name, context.run_id, lineage.Window(tuple(days), settings.timezone))
        started = time.monotonic()
        try:
            figures = _load_tenant(context, dlt_resource, registry, warehouse, config, ctx, tenant.dataset)
        except Exception as exc:  # noqa: BLE001 - classified and re-raised with a clear message
            permanent = classify(exc) == "permanent"
            raise failure_for(exc, tenant_id, source_name, permanent=permanent, config=config) from exc
        duration = round(time.monotonic() - started, 3)
        for key, meta in figures.items():
            if key in merged:
                merged[key]["tenants"][tenant_id] = {**meta, "duration_s": duration, "days": len(days)}

    for key in sorted(selected, key=lambda k: k.to_user_string()):
        yield MaterializeResult(asset_key=key, metadata=_summarize(merged[key]))


def _load_tenant(
    context: AssetExecutionContext,
    dlt_resource: DagsterDltResource,
    registry: Registry,
    warehouse: Warehouse,
    config: SourceConfig,
    ctx: lineage.RunContext,
    dataset: str,
) -> dict[AssetKey, dict[str, Any]]:
    """One tenant's load through its own pipeline; returns per-asset figures."""
    source = build_source(config, registry, ctx)
    if config.kind == "csv":
        from etl_platform.sources.csv_files import apply_load_hints

        apply_load_hints(source, config, warehouse.kind)
    pipeline = dlt.pipeline(
        pipeline_name=pipeline_name(ctx.tenant_id, config.name),
        destination=warehouse.dlt_destination(),
        dataset_name=dataset,
        pipelines_dir=pipelines_dir(),
    )
    figures: dict[AssetKey, dict[str, Any]] = {}
    # DuckDB: one writing process at a time; PostgreSQL: one load per (tenant, source)
    lock_name = "" if warehouse.kind == "duckdb" else f"{ctx.tenant_id}/{config.name}"
    with warehouse.lock(write=True, name=lock_name):
        for result in dlt_resource.run(context=context, dlt_source=source, dlt_pipeline=pipeline):
            meta = dict(result.metadata or {})
            figures[result.asset_key] = meta
        load_info = pipeline.last_trace.last_load_info if pipeline.last_trace else None
        load_ids = list(load_info.loads_ids) if load_info else []
        swept = _sweep_stale_rows(warehouse, dataset, config.name, ctx, load_ids)
        observed = _observed_schemas(warehouse, dataset, config.name, figures, load_ids)
    stats = getattr(source, "etl_stats", None)
    changes = _schema_changes(load_info)
    for key, meta in figures.items():
        resource = key.path[-1]
        table = _table(config.name, resource)
        figures[key] = {
            "rows_loaded": int(_value(meta.get("rows_loaded")) or 0),
            "table": f"{dataset}.{table}",
            "stale_rows_removed": swept.get(table, 0),
            "schema_changes": changes.get(table, []),
            "observed_schema": observed.get(resource, {}),
            "column_schema": meta.get("dagster/column_schema"),
            "table_name": _value(meta.get("dagster/table_name")),
            **_stats_figures(stats, resource),
        }
    return figures


def _table(source: str, resource: str) -> str:
    return resource if resource == lineage.REJECTS_TABLE else f"{source}_{resource}"


def _observed_schemas(
    warehouse: Warehouse, dataset: str, source: str, figures: dict[AssetKey, Any], load_ids: list[str]
) -> dict[str, dict[str, str]]:
    """resource -> fields and JSON types of the original records this load wrote."""
    with warehouse.connect(write=True) as conn:
        return {
            key.path[-1]: observed_schema(conn, dataset, _table(source, key.path[-1]), load_ids)
            for key in figures
            if key.path[-1] != lineage.REJECTS_TABLE
        }


def _value(meta: Any) -> Any:
    return getattr(meta, "value", meta)


def _stats_figures(stats: Any, resource: str) -> dict[str, Any]:
    """Per-source counters from the source's stats object (pages, bytes, rejects, warnings)."""
    if stats is None:
        return {}
    out: dict[str, Any] = {}
    for name in ("pages", "bytes", "rows_read", "rejects", "outside_window", "repeated_pages_stopped", "warning"):
        value = getattr(stats, name, None)
        if value is not None and not callable(value):
            out[name] = value
    pages = getattr(stats, "pages_by_resource", None)
    if isinstance(pages, dict) and resource in pages:
        out["pages"] = pages[resource]
    return out


def _schema_changes(load_info: Any) -> dict[str, list[str]]:
    """table -> columns added by this load (from dlt's schema updates)."""
    out: dict[str, list[str]] = {}
    if load_info is None:
        return out
    for package in load_info.load_packages:
        for table, update in (package.schema_update or {}).items():
            if table.startswith("_dlt"):
                continue
            added = [c for c in (update.get("columns") or {}) if not c.startswith("_dlt")]
            if added:
                out.setdefault(table, []).extend(added)
    return out


def _sweep_stale_rows(
    warehouse: Warehouse, dataset: str, source: str, ctx: lineage.RunContext, load_ids: list[str]
) -> dict[str, int]:
    """Remove the rest of the partition slice: rows of this source and these days from earlier
    loads. Delete-insert replaces a slice only where the new load has rows; appended CSV data
    replaces nothing until this runs."""
    if not load_ids:
        return {}
    removed: dict[str, int] = {}
    days = [d.isoformat() for d in ctx.window.days]
    with warehouse.connect(write=True) as conn:
        tables = [
            r[0]
            for r in conn.query(
                "SELECT table_name FROM information_schema.columns WHERE table_schema = ? AND column_name = ?",
                [dataset, lineage.SOURCE],
            )
        ]
        for table in tables:
            target = f"{quote(dataset)}.{quote(table)}"
            in_days = ", ".join("CAST(? AS DATE)" for _ in days)
            in_loads = ", ".join("?" for _ in load_ids)
            where = (
                f"{quote(lineage.SOURCE)} = ? AND {quote(lineage.PARTITION_DATE)} IN ({in_days}) "
                f"AND _dlt_load_id NOT IN ({in_loads})"
            )
            count = conn.delete(f"DELETE FROM {target} WHERE {where}", [source, *days, *load_ids])
            if count:
                removed[table] = count
    return removed


def _summarize(figures: dict[str, Any]) -> dict[str, Any]:
    """Asset metadata: totals plus a per-tenant breakdown; never secrets."""
    tenants = figures["tenants"]
    total = sum(int(t.get("rows_loaded", 0)) for t in tenants.values())
    meta: dict[str, Any] = {
        "rows_loaded": MetadataValue.int(total),
        "tenants": MetadataValue.json(
            {tid: {k: v for k, v in t.items() if k not in ("column_schema",)} for tid, t in tenants.items()}
        ),
    }
    for name in ("pages", "bytes", "rejects", "outside_window", "duration_s"):
        values = [t[name] for t in tenants.values() if isinstance(t.get(name), (int, float))]
        if values:
            meta[name] = (
                MetadataValue.float(float(sum(values))) if name == "duration_s" else MetadataValue.int(int(sum(values)))
            )
    changes = sorted({c for t in tenants.values() for c in t.get("schema_changes", [])})
    meta["schema_changes"] = MetadataValue.json(changes)
    warnings = [f"{tid}: {t['warning']}" for tid, t in tenants.items() if t.get("warning")]
    if warnings:
        meta["warnings"] = MetadataValue.json(warnings)
    schemas = [t["column_schema"] for t in tenants.values() if t.get("column_schema") is not None]
    if schemas:
        meta["dagster/column_schema"] = schemas[-1]
    names = [t["table_name"] for t in tenants.values() if t.get("table_name")]
    if len(names) == 1:
        meta["dagster/table_name"] = names[0]
    return meta
