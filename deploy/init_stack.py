"""One-shot start-up step of the stack (compose service `init`); safe to run on every start.

1. Creates the warehouse database named by ETL_WAREHOUSE_URL when it is missing (PostgreSQL;
   the user needs CREATEDB, as the compose stack's POSTGRES_USER has; with a managed database,
   create it beforehand and this step only checks that it answers).
2. `dagster instance migrate`: creates or upgrades Dagster's tables in DAGSTER_PG_DB (needed
   after upgrading Dagster; a no-op otherwise).
3. `etl-platform tenants sync`: registers the tenants file's tenants as partitions (the
   tenant_onboarding sensor does it too, once a minute).

Usage: python deploy/init_stack.py   (environment as for the other services)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BIN = Path(sys.executable).parent
WAIT_S = float(os.environ.get("ETL_INIT_WAIT_SECONDS", "60"))


def _tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def _connect(dsn: str):
    import psycopg

    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


def ensure_warehouse_database(url: str) -> None:
    from etl_platform.warehouse import Warehouse, redact_url

    warehouse = Warehouse(url)
    if warehouse.kind != "postgres":
        print(f"init: warehouse {warehouse} is not PostgreSQL: nothing to create")
        return
    import psycopg

    dsn = warehouse.postgres_dsn
    name = urlsplit(dsn).path.lstrip("/")
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            with _connect(dsn):
                print(f"init: warehouse database {name!r} exists")
                return
        except psycopg.OperationalError as exc:
            if "does not exist" in str(exc):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"init: cannot reach the warehouse {redact_url(url)}: {exc}") from exc
            time.sleep(2)
    admin_db = os.environ.get("ETL_WAREHOUSE_ADMIN_DB", "postgres")
    admin = urlunsplit(urlsplit(dsn)._replace(path=f"/{admin_db}"))
    with _connect(admin) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchall()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
            print(f"init: created the warehouse database {name!r}")


def run(*cmd: str) -> None:
    print("init: $ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> int:
    from etl_platform.config.settings import get_settings

    ensure_warehouse_database(get_settings().warehouse_url)
    run(_tool("dagster"), "instance", "migrate")
    run(_tool("etl-platform"), "tenants", "sync")
    print("init: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
