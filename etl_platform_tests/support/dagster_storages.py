"""Dagster storage for one test: the embedded SQLite default, or dagster-postgres as deployed
(global event ids instead of SQLite's per-run shards)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from etl_platform_tests.conftest import create_pg_database, drop_pg_database
from etl_platform_tests.support.orchestration import quiet_home

STORAGES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def dagster_storage(kind: str, home: Path) -> Iterator[None]:
    """Write `home/dagster.yaml` for `kind` (quiet compute logs); drops the database after."""
    quiet_home(home)
    if kind == "sqlite":
        yield
        return
    url = create_pg_database("etl_dagster")
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    # psycopg2: dagster-postgres's NOTIFY with a bound parameter fails under psycopg 3
    config["storage"] = {"postgres": {"postgres_url": url.replace("postgresql://", "postgresql+psycopg2://")}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    try:
        yield
    finally:
        drop_pg_database(url)
