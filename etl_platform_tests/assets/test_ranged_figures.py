"""Right figures for ranged runs: after a 5-day single-run backfill each partition's metadata
counts what that partition loaded, and /stats totals equal the warehouse's rows for the window."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from dagster import DagsterInstance
from fastapi.testclient import TestClient

from etl_platform.api import create_app
from etl_platform.api.auth import KeyRing
from etl_platform.config.registry import load_registry
from etl_platform.config.settings import ApiSettings
from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.orchestration import csv_tenant
from etl_platform_tests.support.platform_runs import materialize_range, metadata_values, partition_materialization

FIRST = dt.date(2024, 5, 1)
DAYS = [FIRST + dt.timedelta(days=n) for n in range(5)]


def test_five_day_backfill_figures_match_the_warehouse(platform_env, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ETL_START_DATE", "2024-04-01")
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    platform_env([csv_tenant("shop", tmp_path / "data", FIRST, len(DAYS))], url)
    with DagsterInstance.get() as instance:
        result = materialize_range(instance, f"{DAYS[0]}|shop", f"{DAYS[-1]}|shop")
        assert result.success
        raw = {}  # raw rows per day in the warehouse, every source
        with Warehouse(url).connect() as conn:
            for table in ("events_rows", "catalog_rows"):
                for day, n in conn.query(
                    f'SELECT CAST("_etl_partition_date" AS VARCHAR), count(*) FROM tenant_shop.{table} GROUP BY 1'
                ):
                    raw[day] = raw.get(day, 0) + n
            events = dict(
                conn.query(
                    "SELECT CAST(event_date AS VARCHAR), count(*) FROM tenant_shop.records "
                    "WHERE source = 'events' GROUP BY 1"
                )
            )
        for day in DAYS:
            records = metadata_values(partition_materialization(instance, ["normalized", "records"], "shop", day))
            assert records["raw_rows"] == raw[day.isoformat()], day  # this day's own figure
            assert records["by_table"]["events_rows"]["records"] == events[day.isoformat()], day
            loaded = metadata_values(partition_materialization(instance, ["raw", "events", "events_rows"], "shop", day))
            assert loaded["dagster/row_count"] == events[day.isoformat()], day
        assert len(set(raw.values())) > 1  # days differ, so a range-wide figure would show

        api = TestClient(
            create_app(
                load_registry(),
                Warehouse(url),
                instance,
                settings=ApiSettings(rate_limit_per_minute=0),
                keyring=KeyRing({"shop": "k" * 20}),
            )
        )
        body = api.get("/stats", headers={"Authorization": f"Bearer {'k' * 20}"}).json()
        assert sum(s["raw_rows"] for s in body["sources"]) == sum(raw.values())  # the warehouse's raw rows
        by_source = {s["source"]: s for s in body["sources"]}
        assert by_source["events"]["records_written"] == sum(events.values())
