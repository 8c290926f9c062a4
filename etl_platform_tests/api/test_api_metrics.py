"""GET /metrics of the read API: Prometheus text that parses, labels by route template (never
raw paths or keys), counters and latency that move as requests are made, rate-limit
rejections, database errors, and the PostgreSQL pool's slots in use and waiters."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from dagster import DagsterInstance
from prometheus_client.parser import text_string_to_metric_families

from etl_platform.api.db import AsyncPgPool
from etl_platform.config.settings import ApiSettings
from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.read_api import KEYS, auth, client, insert, row


def scrape(api) -> dict[str, dict[tuple, float]]:
    """family name -> {(sample name, sorted labels): value}."""
    response = api.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.text):
        samples = out.setdefault(family.name, {})
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict, family: str, sample: str, **labels: str) -> float:
    return metrics.get(family, {}).get((sample, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def instance(dagster_home: Path):
    with DagsterInstance.get() as inst:
        yield inst


def test_metrics_parse_and_move_with_requests(warehouse_url: str, instance: DagsterInstance) -> None:
    wh = Warehouse(warehouse_url)
    insert(wh, "acme", [row("acme", n) for n in range(1, 4)])
    api = client(wh, instance)
    before = scrape(api)
    data = dict(method="GET", route="/data", status="200")
    assert value(before, "etl_api_requests", "etl_api_requests_total", **data) == 0
    for _ in range(3):
        assert api.get("/data", headers=auth("acme")).status_code == 200
    assert api.get("/data/github/pull_request/000001", headers=auth("acme")).status_code == 200
    assert api.get("/data/github/pull_request/999999", headers=auth("acme")).status_code == 404
    assert api.get("/data", headers={"Authorization": "Bearer wrong-key"}).status_code == 401
    assert api.get("/no/such/path").status_code == 404
    assert api.request("BREW", "/data").status_code == 405
    after = scrape(api)
    assert value(after, "etl_api_requests", "etl_api_requests_total", **data) == 3
    latency = "etl_api_request_duration_seconds"
    assert value(after, latency, f"{latency}_count", **data) == 3
    assert value(after, latency, f"{latency}_sum", **data) > 0
    assert value(after, latency, f"{latency}_bucket", le="+Inf", **data) == 3
    record = dict(method="GET", route="/data/{record_id:path}")
    assert value(after, "etl_api_requests", "etl_api_requests_total", status="200", **record) == 1
    assert value(after, "etl_api_requests", "etl_api_requests_total", status="404", **record) == 1
    assert value(after, "etl_api_requests", "etl_api_requests_total", method="GET", route="/data", status="401") == 1
    assert value(after, "etl_api_requests", "etl_api_requests_total", method="GET", route="<unmatched>",
                 status="404") == 1
    # no raw paths, record ids or keys in any label
    text = " ".join(v for family in after.values() for (_, labels) in family for _, v in labels)
    assert value(after, "etl_api_requests", "etl_api_requests_total", method="OTHER", route="/data", status="405") == 1
    for leaked in ("000001", "999999", "/no/such/path", KEYS["acme"], "wrong-key", "BREW"):
        assert leaked not in text
    assert "etl_api_db_pool_in_use" in after and "etl_api_db_pool_waiting" in after
    if wh.kind == "postgres":
        assert value(after, "etl_api_db_pool_size", "etl_api_db_pool_size") == 8
        assert value(after, "etl_api_db_pool_in_use", "etl_api_db_pool_in_use") == 0


def test_rate_limit_rejections_and_database_errors_are_counted(duckdb_url: str, instance: DagsterInstance) -> None:
    api = client(Warehouse(duckdb_url), instance, ApiSettings(rate_limit_per_minute=60, rate_limit_burst=2))
    codes = [api.get("/data", headers=auth("acme")).status_code for _ in range(4)]
    assert codes.count(429) == 2
    metrics = scrape(api)
    assert value(metrics, "etl_api_rate_limited", "etl_api_rate_limited_total") == 2
    assert value(metrics, "etl_api_requests", "etl_api_requests_total", method="GET", route="/data",
                 status="429") == 2
    down = client(Warehouse("postgresql://postgres@127.0.0.1:1/nowhere"), instance)
    assert down.get("/data", headers=auth("acme")).status_code == 503
    errors = scrape(down)
    assert value(errors, "etl_api_database_errors", "etl_api_database_errors_total", database="warehouse") == 1
    assert value(errors, "etl_api_database_errors", "etl_api_database_errors_total", database="dagster") == 0


@pytest.mark.postgres
def test_pool_gauges_follow_queries_in_use_and_waiting(pg_url: str) -> None:
    """Two slots, three slow queries at once: two in use, one waiting; then all back to 0."""
    pool = AsyncPgPool(Warehouse(pg_url).postgres_dsn, size=2)

    async def scenario() -> list[dict[str, int]]:
        seen: list[dict[str, int]] = []
        tasks = [asyncio.create_task(pool.fetch("SELECT pg_sleep(0.5)", [])) for _ in range(3)]
        await asyncio.sleep(0.25)
        seen.append(pool.stats())
        await asyncio.gather(*tasks)
        seen.append(pool.stats())
        await pool.close()
        return seen

    during, after = asyncio.run(scenario())
    assert during["in_use"] == 2 and during["waiting"] == 1 and during["size"] == 2
    assert after["in_use"] == 0 and after["waiting"] == 0 and after["idle"] == 2
