"""Helpers to run the platform in tests: a tenants file, a warehouse, a Dagster instance."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml
from dagster import DagsterInstance

from etl_platform.automation.onboarding import sync_tenants
from etl_platform.config.registry import load_registry
from etl_platform.runs.partitions import partition_key


# three tenants with secrets of every kind (a source token, an own warehouse, a read key, an alert
# channel) and one with a source token only: which of them a run's container or pod may hold
SECRET_TENANTS = [
    {"id": "alpha", "api_key_env": "ETL_ALPHA_API_KEY", "warehouse_url_env": "ALPHA_WAREHOUSE_URL",
     "alerts": {"channels": [{"type": "webhook", "url_env": "ALPHA_ALERT_URL"}]},
     "sources": [{"name": "gh", "kind": "github", "repositories": ["o/r"], "token_env": "ALPHA_GITHUB_TOKEN"}]},
    {"id": "beta", "api_key_env": "ETL_BETA_API_KEY", "warehouse_url_env": "BETA_WAREHOUSE_URL",
     "sources": [{"name": "gh", "kind": "github", "repositories": ["o/r"], "token_env": "BETA_GITHUB_TOKEN"}]},
    {"id": "gamma", "sources": [{"name": "gh", "kind": "github", "repositories": ["o/r"], "token_env": "GAMMA_TOKEN"}]},
]


def write_tenants(path: Path, tenants: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"tenants": tenants}, sort_keys=False))
    return path


def materialize(
    instance: DagsterInstance,
    tenant: str,
    day: dt.date | str,
    *,
    job: str = "ingest",
    tags: dict[str, str] | None = None,
    raise_on_error: bool = True,
    asset_selection: list | None = None,
):
    """Build the definitions from the current env, register tenants, run one partition."""
    from etl_platform.definitions import build_definitions

    sync_tenants(instance, load_registry())
    job_def = build_definitions().resolve_job_def(job)
    return job_def.execute_in_process(
        partition_key=str(partition_key(tenant, day)),
        instance=instance,
        tags=tags or {},
        raise_on_error=raise_on_error,
        asset_selection=asset_selection,
    )


def materialize_range(
    instance: DagsterInstance,
    first: str,
    last: str,
    *,
    job: str = "ingest",
    tags: dict[str, str] | None = None,
    raise_on_error: bool = True,
):
    """One single run over the partition range `first...last` (keys 'YYYY-MM-DD|tenant')."""
    from etl_platform.definitions import build_definitions

    sync_tenants(instance, load_registry())
    job_def = build_definitions().resolve_job_def(job)
    range_tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    return job_def.execute_in_process(
        instance=instance, tags={**range_tags, **(tags or {})}, raise_on_error=raise_on_error
    )


def partition_materialization(instance: DagsterInstance, key: Any, tenant: str, day: dt.date | str) -> Any:
    """The latest materialization of one partition of an asset (None: never materialized)."""
    from dagster import AssetKey, AssetRecordsFilter

    key = key if isinstance(key, AssetKey) else AssetKey(list(key))
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[str(partition_key(tenant, day))]), limit=1
    ).records
    return records[0].asset_materialization if records else None


def metadata_values(materialization: Any) -> dict[str, Any]:
    """A materialization's metadata as plain values."""
    return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


def table_counts(warehouse_url: str, schema: str) -> dict[str, int]:
    from etl_platform.warehouse import Warehouse

    out = {}
    with Warehouse(warehouse_url).connect() as conn:
        for (table,) in conn.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1", [schema]
        ):
            if not table.startswith("_dlt"):
                out[table] = conn.query(f'SELECT count(*) FROM "{schema}"."{table}"')[0][0]
    return out
