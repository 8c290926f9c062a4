"""Asset keys, groups and check names: the names the UI, the CLI and the API share."""

from __future__ import annotations

from dagster import AssetKey

from etl_platform.config import names

RAW_GROUP = "raw"
NORMALIZED_GROUP = "normalized"
METRICS_GROUP = "metrics"

RECORDS_KEY = AssetKey(["normalized", "records"])
ENGINEERING_KEY = AssetKey(["metrics", "engineering"])

# checks on normalized/records, per partition
UNIQUE_KEY_CHECK = "unique_upsert_key"
NOT_NULL_CHECK = "required_columns_not_null"
RECONCILIATION_CHECK = "raw_reconciles_with_records_and_rejects"
# on normalized/records, across tenants (its own hourly job)
FRESHNESS_CHECK = "tenant_freshness"
# on every raw data asset, per partition
DRIFT_CHECK = "schema_drift"
# on metrics/engineering, per partition
UNMAPPED_STATUSES_CHECK = "unmapped_jira_statuses"


def raw_asset_key(source: str, resource: str) -> AssetKey:
    """`raw/<source>/<source>_<resource>`: the last part, which the UI shows on the node, names the
    source too (two sources' `rejects` nodes read `products_rejects` and `tickets_rejects`)."""
    return AssetKey(["raw", source, names.raw_name(source, resource)])


def source_of(key: AssetKey) -> str | None:
    """The source name of a raw asset key, else None."""
    return key.path[1] if len(key.path) == 3 and key.path[0] == "raw" else None


def resource_of(key: AssetKey) -> str:
    """The dlt resource name of a raw asset key."""
    return names.resource_of(key.path[1], key.path[2])
