"""What a tenant's process would pay at its first load, paid once by the run's fork server
(isolation/zygote.py) before it forks: the warehouses' dlt destination clients and their
drivers, SQLAlchemy, Parquet, and dlt's plugin registry (a scan of every installed
distribution's entry points). Measured without it: 134 modules imported by every tenant's
process (benchmarks/RESULTS.md, "The 1,000-tenant cycle with a process per tenant")."""

from __future__ import annotations

import importlib

from dlt.common.configuration.plugins import manager

MODULES = (
    "sqlalchemy", "sqlalchemy.dialects", "pyarrow.parquet", "pyarrow.fs", "pendulum.locales.en.locale",
    "xml.sax.expatreader", "dlt.common.libs.pyarrow", "dlt.common.libs.sql_alchemy_compat",
    "dlt.destinations.insert_job_client",
    "psycopg2", "psycopg2.extensions", "dlt.destinations.impl.postgres.postgres",
    "dlt.destinations.impl.postgres.sql_client",
    "dlt.destinations.impl.duckdb.duck", "dlt.destinations.impl.duckdb.sql_client",
)  # fmt: skip


def warm_up() -> None:
    """Import what a tenant's first load imports, and build dlt's plugin registry."""
    for name in MODULES:
        importlib.import_module(name)
    manager()
