"""PostgreSQL at volume on fresh, never-analyzed tables (this server runs with autovacuum off):
a 60-day backfill with thousands of rows a day counts exactly, and the checks' queries find a
partition through indexes, never a nested loop over a sequential scan."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance

from etl_platform.config.registry import load_registry
from etl_platform.normalize.checks import check_queries, plan_by_index
from etl_platform.normalize.run import STAGE, prepare, stage_tenant
from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.platform_runs import materialize, materialize_range

FIRST = dt.date(2024, 2, 1)
DAYS = 60
BIG_TABLES = ("records", "events_rows", "record_rejects")


def write_events(path: Path) -> Counter[str]:
    """2,000–2,600 rows a day over DAYS days (plus rows outside the range); rows per day."""
    per_day: Counter[str] = Counter()
    lines = ["id,event_time,amount,note"]
    for d in range(-1, DAYS + 1):
        day = FIRST + dt.timedelta(days=d)
        for i in range(2000 + (d * 37) % 600):
            lines.append(f"{d}-{i},{day.isoformat()}T{i % 24:02d}:{i % 60:02d}:00Z,{i}.5,note {i % 7}")
            if 0 <= d < DAYS:
                per_day[day.isoformat()] += 1
    path.write_text("\n".join(lines) + "\n")
    return per_day


@pytest.fixture
def volume(pg_url: str, platform_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ETL_START_DATE", (FIRST - dt.timedelta(days=5)).isoformat())
    per_day = write_events(tmp_path / "events.csv")
    source = {
        "name": "events",
        "kind": "csv",
        "location": str(tmp_path / "events.csv"),
        "event_time": "event_time",
        "primary_key": ["id"],
        "field_mapping": {"source_id": "id", "title": "note", "value": "amount", "created_at": "event_time"},
    }
    platform_env([{"id": "vol", "sources": [source]}], pg_url)
    return pg_url, per_day


def _by_day(url: str, sql: str) -> dict[str, int]:
    with Warehouse(url).connect() as conn:
        return {str(day): int(n) for day, n in conn.query(sql)}


@pytest.mark.postgres
def test_sixty_day_backfill_on_fresh_tables_counts_exactly(volume) -> None:
    url, per_day = volume
    last = FIRST + dt.timedelta(days=DAYS - 1)
    with DagsterInstance.get() as instance:
        result = materialize_range(instance, f"{FIRST}|vol", f"{last}|vol")
        assert result.success
        records = instance.get_records_for_run(
            result.run_id, of_type={DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_CHECK_EVALUATION}
        ).records
        checks = [r.event_log_entry.dagster_event.event_specific_data for r in records
                  if r.event_log_entry.dagster_event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION]
        # each partition judged on its own (3 on records + drift, per day); the run's summary of each
        # check and the not-applicable engineering metrics (the tenant has no Jira or GitHub) aside
        judged = [c for c in checks if c.partition and "applies" not in c.metadata]
        assert len(judged) == DAYS * 4 and all(c.passed for c in checks)
        written = {}
        for r in records:
            mat = r.event_log_entry.asset_materialization
            if mat is not None and mat.asset_key.path == ["normalized", "records"]:
                written[mat.partition.split("|")[0]] = mat.metadata["records_written"].value
        assert written == dict(per_day)  # each partition's own figure

        # exact per day in raw and in records
        assert _by_day(url, 'SELECT "_etl_partition_date", count(*) FROM tenant_vol.events_rows GROUP BY 1') == per_day
        assert _by_day(url, "SELECT event_date, count(*) FROM tenant_vol.records GROUP BY 1") == per_day

        # re-running one day changes nothing
        assert materialize(instance, "vol", FIRST + dt.timedelta(days=10)).success
        assert _by_day(url, "SELECT event_date, count(*) FROM tenant_vol.records GROUP BY 1") == per_day


def _nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _assert_partition_plan(name: str, plan: dict) -> None:
    for node in _nodes(plan):
        relation = node.get("Relation Name")
        assert not (node["Node Type"] == "Seq Scan" and relation in BIG_TABLES), (name, json.dumps(plan)[:2000])
        if node["Node Type"] == "Nested Loop":
            inner = node["Plans"][1]
            scans = {n["Node Type"] for n in _nodes(inner)}
            assert "Seq Scan" not in scans or all(
                n.get("Relation Name") not in BIG_TABLES for n in _nodes(inner) if n["Node Type"] == "Seq Scan"
            ), (name, json.dumps(plan)[:2000])


@pytest.mark.postgres
def test_check_queries_find_the_partition_through_indexes(volume) -> None:
    """After the backfill (fresh tables: only the platform's own ANALYZE gave them statistics),
    every check query of one day reads that day's rows through an index."""
    url, _ = volume
    last = FIRST + dt.timedelta(days=DAYS - 1)
    with DagsterInstance.get() as instance:
        assert materialize_range(instance, f"{FIRST}|vol", f"{last}|vol").success
    tenant = load_registry().tenant("vol")
    day = [FIRST + dt.timedelta(days=20)]
    with Warehouse(url).connect(write=True) as conn:
        prepare(conn, tenant.dataset)
        with conn.transaction():
            assert stage_tenant(conn, tenant, day)
            plan_by_index(conn)  # as the checks do
            for name, sql in check_queries(tenant.dataset, tenant.id, day, STAGE).items():
                (plan,) = conn.query("EXPLAIN (FORMAT JSON) " + sql)[0][0]
                _assert_partition_plan(name, plan["Plan"])
            # and the raw slice the stage was built from
            (plan,) = conn.query(
                "EXPLAIN (FORMAT JSON) SELECT count(*) FROM tenant_vol.events_rows "
                f"WHERE \"_etl_source\" = 'events' AND \"_etl_partition_date\" IN (DATE '{day[0]}')"
            )[0][0]
            _assert_partition_plan("raw slice", plan["Plan"])
            conn.execute(f"DROP TABLE {STAGE}")
