"""One-time move of a single-file DuckDB warehouse to a file per tenant (`etl-platform warehouse
migrate`): the layout before ETL_DUCKDB_TENANT_FILES kept every tenant's schema in the platform's file.

Each tenant's schemas (`tenant_<id>` and dlt's `tenant_<id>_staging`) are copied, tables with their
keys and indexes and dlt's own tables (its state, schema versions, loads), into
`tenants/<id>.duckdb.part`, the row counts compared, the file renamed to `tenants/<id>.duckdb`, and
only then are the schemas dropped from the platform's file. All of it under the platform file's
writer lock and the tenant file's. A tenant that already has a file of its own (it loaded in the new
layout meanwhile) is left in place and reported, never overwritten. Running it again moves nothing.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from etl_platform.config.names import TENANT_SCHEMA_PREFIX
from etl_platform.warehouse.warehouse import Connection, Warehouse, WarehouseError, quote, tenant_file

STAGING_SUFFIX = "_staging"
_CATALOG = "etl_tenant_file"


@dataclass
class TenantMove:
    """What moved (or did not) for one tenant."""

    tenant_id: str
    tables: dict[str, int] = field(default_factory=dict)  # "<schema>.<table>" -> rows copied
    skipped: str = ""  # why nothing moved


def migrate_to_tenant_files(warehouse: Warehouse) -> list[TenantMove]:
    """Move every tenant schema of the platform's DuckDB file into the tenant's own file."""
    if warehouse.kind != "duckdb":
        raise WarehouseError("only a DuckDB warehouse has tenant files to migrate to")
    if not warehouse.duckdb_path.exists():
        return []
    moves = []
    with warehouse.connect(write=True) as conn:
        catalog = conn.query("SELECT current_database()")[0][0]
        for tenant_id, schemas in _tenant_schemas(conn, catalog).items():
            target = tenant_file(warehouse.duckdb_path, tenant_id)
            move = TenantMove(tenant_id)
            moves.append(move)
            if target.exists():
                move.skipped = f"{target} exists: the tenant's schemas stay in {warehouse.duckdb_path}"
                continue
            with Warehouse(f"duckdb:///{target}").lock(write=True):
                _copy(conn, catalog, schemas, target, move)
            for schema in schemas:
                conn.execute(f"DROP SCHEMA {quote(schema)} CASCADE")
        conn.execute("CHECKPOINT")
    return moves


def _tenant_schemas(conn: Connection, catalog: str) -> dict[str, list[str]]:
    rows = conn.query(
        "SELECT schema_name FROM duckdb_schemas() WHERE database_name = ? AND starts_with(schema_name, ?) "
        "ORDER BY schema_name",
        [catalog, TENANT_SCHEMA_PREFIX],
    )
    out: dict[str, list[str]] = {}
    for (schema,) in rows:
        tenant_id = schema[len(TENANT_SCHEMA_PREFIX):].removesuffix(STAGING_SUFFIX)
        out.setdefault(tenant_id, []).append(schema)
    return out


def _copy(conn: Connection, catalog: str, schemas: list[str], target: os.PathLike, move: TenantMove) -> None:
    """The schemas into `<target>.part` (same DDL, same rows, same indexes), then renamed to `target`."""
    part = f"{target}.part"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(part)
    conn.execute(f"ATTACH '{part}' AS {_CATALOG}")
    try:
        conn.execute(f"USE {_CATALOG}")  # the DDL below names schema.table: created in the tenant file
        try:
            for schema in schemas:
                conn.execute(f"CREATE SCHEMA {quote(schema)}")
                tables = conn.query(
                    "SELECT table_name, sql FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? "
                    "ORDER BY table_name",
                    [catalog, schema],
                )
                for table, ddl in tables:
                    conn.execute(ddl)
                    name = f"{quote(schema)}.{quote(table)}"
                    conn.execute(f"INSERT INTO {_CATALOG}.{name} SELECT * FROM {quote(catalog)}.{name}")
                    copied = conn.query(f"SELECT count(*) FROM {_CATALOG}.{name}")[0][0]
                    source = conn.query(f"SELECT count(*) FROM {quote(catalog)}.{name}")[0][0]
                    if copied != source:
                        raise WarehouseError(f"{schema}.{table}: {copied} rows copied of {source}")
                    move.tables[f"{schema}.{table}"] = int(copied)
                for (ddl,) in conn.query(
                    "SELECT sql FROM duckdb_indexes() WHERE database_name = ? AND schema_name = ? AND sql IS NOT NULL",
                    [catalog, schema],
                ):
                    conn.execute(ddl)
        finally:
            conn.execute(f"USE {quote(catalog)}")
        conn.execute(f"CHECKPOINT {_CATALOG}")
    except BaseException:
        conn.execute(f"DETACH {_CATALOG}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
        raise
    conn.execute(f"DETACH {_CATALOG}")
    os.replace(part, target)
