"""Names derived from the tenants file, each rule in one place: a tenant's schema, a source's raw
tables and asset names, and the tenant's shared `rejects` table."""

from __future__ import annotations

REJECTS_TABLE = "rejects"  # every source's ingestion rejects share the tenant's table of this name
TENANT_SCHEMA_PREFIX = "tenant_"


def tenant_schema(tenant_id: str) -> str:
    """The schema (dlt's dataset) holding every table of one tenant: `tenant_<id>`."""
    return f"{TENANT_SCHEMA_PREFIX}{tenant_id}"


def raw_name(source: str, resource: str) -> str:
    """`<source>_<resource>`: a raw resource's asset name (the last part of its key) and, but for
    rejects, its warehouse table, so that two sources of a tenant never share a table."""
    return f"{source}_{resource}"


def raw_table(source: str, resource: str) -> str:
    """The warehouse table of a raw resource: `<source>_<resource>`; ingestion rejects of every
    source share the tenant's `rejects` table."""
    return REJECTS_TABLE if resource == REJECTS_TABLE else raw_name(source, resource)


def resource_of(source: str, name: str) -> str:
    """The resource of a raw name of `source` (the inverse of `raw_name`)."""
    return name[len(source) + 1 :]


def is_raw_name_of(source: str, name: str) -> bool:
    """`name` reads as a raw name of `source` (`<source>_...`)."""
    return name.startswith(f"{source}_")
