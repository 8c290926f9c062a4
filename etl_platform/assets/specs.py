"""The asset graph as specs: one raw asset per source resource (through dagster-dlt's
translator), `normalized/records`, `metrics/engineering`, and their partitioned checks.

Every asset is partitioned by tenant × date and is optional in a run: a run materializes a
partition only when its tenant configures the source and the load succeeded.
"""

from __future__ import annotations

import warnings

import dlt
from dagster import AssetCheckSpec, AssetKey, AssetSpec, PreviewWarning
from dagster_dlt import DagsterDltTranslator, build_dlt_asset_specs
from dagster_dlt.translator import DltResourceTranslatorData

from etl_platform.assets.keys import (
    DRIFT_CHECK,
    ENGINEERING_KEY,
    FRESHNESS_CHECK,
    METRICS_GROUP,
    NORMALIZED_GROUP,
    NOT_NULL_CHECK,
    RAW_GROUP,
    RECONCILIATION_CHECK,
    RECORDS_KEY,
    UNIQUE_KEY_CHECK,
    UNMAPPED_STATUSES_CHECK,
    raw_asset_key,
)
from etl_platform.config.names import REJECTS_TABLE, raw_table
from etl_platform.config.registry import Registry
from etl_platform.config.settings import get_settings
from etl_platform.runs.partitions import tenant_date_partitions
from etl_platform.sources import lineage
from etl_platform.sources.build import build_source

KIND_DESCRIPTIONS = {
    "rest_api": "REST/JSON API",
    "csv": "CSV file",
    "rss": "RSS/Atom feed",
    "jira": "Jira",
    "github": "GitHub",
}
METRICS_TABLE = "engineering_metrics"


class RawTranslator(DagsterDltTranslator):
    """Keys `raw/<source>/<source>_<resource>`, group `raw`, kinds, descriptions; no phantom deps."""

    def __init__(self, source: str, kind: str, warehouse_kind: str) -> None:
        self.source = source
        self.kind = kind
        self.warehouse_kind = warehouse_kind

    def get_asset_spec(self, data: DltResourceTranslatorData) -> AssetSpec:
        default = super().get_asset_spec(data)
        resource = data.resource.name
        what = (
            f"Rows of the {KIND_DESCRIPTIONS.get(self.kind, self.kind)} source `{self.source}` that could not be "
            "loaded (file and line or page, raw text, reason), in each tenant's table `rejects`."
            if resource == REJECTS_TABLE
            else f"Raw `{resource}` rows of the {KIND_DESCRIPTIONS.get(self.kind, self.kind)} source "
            f"`{self.source}`, as received (original record in `_etl_record`) with lineage, in each tenant's "
            f"table `tenant_<id>.{raw_table(self.source, resource)}`."
        )
        return default.replace_attributes(
            key=raw_asset_key(self.source, resource),
            deps=[],
            group_name=RAW_GROUP,
            description=what + " Partitions of tenants without this source are never materialized.",
            kinds={"dlt", self.warehouse_kind},
            partitions_def=tenant_date_partitions(),
            skippable=True,
        )


def raw_specs(registry: Registry, warehouse_kind: str, destination: object) -> list[AssetSpec]:
    """One spec per resource of every source name in the tenants file, built by dagster-dlt from
    a template of the source (the first tenant's configuration; no secrets read, no I/O)."""
    settings = get_settings()
    pipelines = str(settings.data_dir / "dlt_pipelines")
    specs: list[AssetSpec] = []
    for name, kind in registry.source_kinds().items():
        config = registry.template_config(name)
        ctx = lineage.RunContext(
            "template", name, "template", lineage.Window((settings.start_date,), settings.timezone)
        )
        template = build_source(config, registry, ctx, for_run=False)
        pipeline = dlt.pipeline(
            pipeline_name=f"etl__template__{name}",
            destination=destination,
            dataset_name="template",
            pipelines_dir=pipelines,
        )
        specs.extend(build_dlt_asset_specs(template, pipeline, RawTranslator(name, kind, warehouse_kind)))
    return specs


def records_spec(raw_keys: list[AssetKey], warehouse_kind: str) -> AssetSpec:
    return AssetSpec(
        RECORDS_KEY,
        deps=raw_keys,
        group_name=NORMALIZED_GROUP,
        kinds={"sql", warehouse_kind},
        partitions_def=tenant_date_partitions(),
        skippable=True,
        description=(
            "Every source's rows in one schema: table `records` in `tenant_<id>`, upserted on "
            "(tenant_id, source, record_type, source_id); rows that cannot be mapped go to `record_rejects` "
            "with their reason. A partition is materialized once all of its tenant's sources loaded."
        ),
    )


def metrics_spec(warehouse_kind: str) -> AssetSpec:
    return AssetSpec(
        ENGINEERING_KEY,
        deps=[RECORDS_KEY],
        group_name=METRICS_GROUP,
        kinds={"sql", warehouse_kind},
        partitions_def=tenant_date_partitions(),
        skippable=True,
        description=(
            f"Engineering metrics per tenant and day from the Jira and GitHub records: table `{METRICS_TABLE}` "
            "in `tenant_<id>`, one row per (metric_date, metric, repository): PR lead time, time to first "
            "review, reviews, merged PRs, releases, deployments, reverts/hotfixes, Jira cycle time. "
            "Materialized only for tenants with Jira or GitHub."
        ),
    )


def check_specs(raw_keys: list[AssetKey]) -> list[AssetCheckSpec]:
    """Partitioned checks: each result names the tenant and day it judged."""

    def spec(name: str, asset: AssetKey, description: str) -> AssetCheckSpec:
        with warnings.catch_warnings():  # partitioned checks are a preview feature of Dagster 1.13
            warnings.simplefilter("ignore", PreviewWarning)
            return AssetCheckSpec(
                name, asset=asset, description=description, partitions_def=tenant_date_partitions(), blocking=False
            )

    return [
        spec(UNIQUE_KEY_CHECK, RECORDS_KEY, "the partition's records have unique upsert keys"),
        spec(NOT_NULL_CHECK, RECORDS_KEY, "required columns of the partition's records are not null"),
        spec(
            RECONCILIATION_CHECK,
            RECORDS_KEY,
            "the partition's raw rows = its rows now in records + its record rejects",
        ),
        *(
            spec(
                DRIFT_CHECK,
                key,
                "fields of this load vs the tenant's previous load: added warn, removed or retyped are errors",
            )
            for key in raw_keys
            if not key.path[-1].endswith(f"_{REJECTS_TABLE}")
        ),
        spec(
            UNMAPPED_STATUSES_CHECK,
            ENGINEERING_KEY,
            "every active Jira status in use maps to one of the tenant's flow steps (warning)",
        ),
    ]


def freshness_spec() -> AssetCheckSpec:
    """Tenant freshness, across tenants: evaluated by the step when a run selects it (the hourly
    `tenant_freshness` job selects it alone), never a step of its own that a run would skip."""
    return AssetCheckSpec(
        FRESHNESS_CHECK,
        asset=RECORDS_KEY,
        blocking=False,
        description="Every active tenant's newest record is younger than its freshness_hours (warning). "
        "Runs on its own hourly schedule (`tenant_freshness`), and for the run's tenants in a run that selects it.",
    )

