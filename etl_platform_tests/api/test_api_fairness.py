"""Fair reads: one tenant's slow queries take at most its share of the API's PostgreSQL connections
and never delay another tenant's requests; a tenant over its share waits in its own queue (429 when
that takes too long); a query past its route's time limit is cancelled with a 504 that says how to
narrow it. The slow queries are real: the tenant's `records` becomes a view that sleeps (PostgreSQL)
or computes for long (DuckDB). Assertions are on order and outcome, not on wall time."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg
import pytest

from etl_platform.config.settings import ApiSettings
from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.read_api import auth, client, insert, row

SLEEP_S = 3


def make_slow(wh: Warehouse, tenant: str, seconds: float) -> None:
    """Every query of the tenant's records takes `seconds` more (PostgreSQL: pg_sleep once per query;
    DuckDB, which cannot sleep: a cross join it takes far longer than `seconds` to compute)."""
    schema = f"tenant_{tenant}"
    with wh.connect(write=True) as conn:
        conn.execute(f"ALTER TABLE {schema}.records RENAME TO records_data")
        if wh.kind == "postgres":
            conn.execute(f"CREATE VIEW {schema}.records AS SELECT * FROM {schema}.records_data "
                         f"WHERE (SELECT true FROM pg_sleep({seconds}))")
        else:
            conn.execute(f"CREATE VIEW {schema}.records AS SELECT d.* FROM {schema}.records_data d, "
                         "range(3000000000) AS n(i) WHERE n.i % 1000000007 = 1000000006")


def running(url: str, tenant: str) -> int:
    """The API's queries of the tenant's table running now on the server."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'etl-platform-api' "
            "AND backend_type = 'client backend' AND state = 'active' AND query LIKE %s", (f'%"tenant_{tenant}"%',)
        ).fetchone()[0]


async def until(check: Any, what: str, tries: int = 600) -> None:
    for _ in range(tries):
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def setup(pg_url: str) -> Warehouse:
    wh = Warehouse(pg_url)
    insert(wh, "acme", [row("acme", n) for n in range(10)])
    insert(wh, "globex", [row("globex", n, source="feed", record_type="entry") for n in range(5)])
    make_slow(wh, "acme", SLEEP_S)
    return wh


@pytest.mark.postgres
@pytest.mark.parametrize("share", [2, 4])
def test_one_tenants_slow_queries_do_not_delay_another(pg_url: str, share: int) -> None:
    """Pool of 4. acme sends 4 slow requests. With a share of 2, acme runs 2 at a time and globex's
    request completes while every acme request is still running or queued. With a share of 4 (no
    fairness) acme holds the whole pool, and globex completes only after an acme request: the
    behaviour the share prevents."""
    wh = setup(pg_url)
    settings = ApiSettings(rate_limit_per_minute=0, pg_pool_size=4, pg_tenant_connections=share,
                           data_timeout_ms=60_000)
    app = client(wh, settings=settings).app
    peak: list[int] = []

    async def main() -> tuple[httpx.Response, int, list[httpx.Response]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=120) as api:
            acme = [asyncio.create_task(api.get("/data", headers=auth("acme"))) for _ in range(4)]

            def full() -> bool:
                peak.append(running(pg_url, "acme"))
                return peak[-1] >= share

            await until(full, f"acme runs {share} queries")
            globex = await api.get("/data", headers=auth("globex"))
            acme_done_first = sum(task.done() for task in acme)
            while not all(task.done() for task in acme):
                peak.append(running(pg_url, "acme"))
                await asyncio.sleep(0.05)
            await app.state.reader.close()
            return globex, acme_done_first, [task.result() for task in acme]

    globex, acme_done_first, acme = asyncio.run(main())
    assert globex.status_code == 200 and len(globex.json()["data"]) == 5
    assert [r.status_code for r in acme] == [200] * 4 and all(len(r.json()["data"]) == 10 for r in acme)
    assert max(peak) == share  # acme never ran more than its share
    if share == 2:
        assert acme_done_first == 0  # globex was served while all of acme's requests were pending
    else:
        assert acme_done_first >= 1  # globex had to wait for one of acme's slow queries


@pytest.mark.postgres
def test_a_tenant_waiting_too_long_for_its_share_gets_429(pg_url: str) -> None:
    wh = setup(pg_url)
    settings = ApiSettings(rate_limit_per_minute=0, pg_pool_size=2, pg_tenant_connections=1, data_timeout_ms=60_000)
    app = client(wh, settings=settings).app
    app.state.reader.pool.gate.wait_timeout_s = 0.5

    async def main() -> tuple[list[httpx.Response], httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=120) as api:
            first = asyncio.create_task(api.get("/data", headers=auth("acme")))
            await until(lambda: running(pg_url, "acme") == 1, "acme's first query runs")
            second = await api.get("/data", headers=auth("acme"))  # waits in acme's own queue, then gives up
            globex = await api.get("/data", headers=auth("globex"))
            responses = [await first, second]
            await app.state.reader.close()
            return responses, globex

    (first, second), globex = asyncio.run(main())
    assert first.status_code == 200
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert second.json()["detail"] == ("too many concurrent queries for this tenant: at most 1 run at once; "
                                       "retry when one has finished")
    assert globex.status_code == 200 and len(globex.json()["data"]) == 5


def test_query_past_the_time_limit_is_504_and_cancelled(warehouse_url: str) -> None:
    wh = Warehouse(warehouse_url)
    insert(wh, "acme", [row("acme", n) for n in range(10)])
    insert(wh, "globex", [row("globex", n, source="feed", record_type="entry") for n in range(5)])
    make_slow(wh, "acme", 600)
    api = client(wh, settings=ApiSettings(rate_limit_per_minute=0, data_timeout_ms=300))
    response = api.get("/data", params={"source": "github"}, headers=auth("acme"))
    assert response.status_code == 504
    assert response.json() == {"detail": "the query ran longer than 0.3s and was cancelled; narrow it: a longer or "
                                         "rarer q, source or record_type, updated_since/updated_until, "
                                         "or a smaller limit"}
    if wh.kind == "postgres":
        assert running(warehouse_url, "acme") == 0  # cancelled on the server, not left running
    follow = api.get("/data", headers=auth("globex"))  # the reader (and its connection) still serves
    assert follow.status_code == 200 and len(follow.json()["data"]) == 5
    record = api.get("/data/github/pull_request/000001", headers=auth("acme"))
    assert record.status_code == 504 and record.json()["detail"].startswith("the query ran longer than 0.3s")


def test_gate_queues_a_tenant_over_its_share_apart_from_others() -> None:
    """TenantGate alone: size 3, share 2. acme's third request waits in acme's queue (counted as
    waiting) while globex takes the last slot at once; a shared-only caller (health) queues behind
    the full pool and gives up with PoolExhausted; acme's waiter gives up with TenantBusy."""
    from etl_platform.api.fairness import PoolExhausted, TenantBusy, TenantGate

    gate = TenantGate(3, 2, wait_timeout_s=0.3)

    async def main() -> list[str]:
        events: list[str] = []
        release = asyncio.Event()

        async def hold(tenant: str | None, name: str) -> None:
            try:
                async with gate.slot(tenant):
                    events.append(f"{name} in")
                    await release.wait()
            except (TenantBusy, PoolExhausted) as exc:
                events.append(f"{name} {type(exc).__name__}")

        acme = [asyncio.create_task(hold("acme", f"acme{n}")) for n in range(3)]
        await asyncio.sleep(0.05)
        assert (gate.in_use, gate.waiting) == (2, 1)
        globex = asyncio.create_task(hold("globex", "globex"))
        await asyncio.sleep(0.05)
        assert gate.in_use == 3 and events[-1] == "globex in"
        await hold(None, "health")  # the pool is full: waits, then gives up
        await asyncio.wait_for(acme[2], 5)  # acme's third never got in
        assert gate.waiting == 0
        release.set()
        await asyncio.gather(*acme[:2], globex)
        assert (gate.in_use, gate.waiting) == (0, 0)
        async with gate.slot("acme"):  # queues are dropped when empty, and recreated
            events.append("acme again")
        return events

    events = asyncio.run(main())
    # acme2 started waiting first, so its wait ends first
    assert events == ["acme0 in", "acme1 in", "globex in", "acme2 TenantBusy", "health PoolExhausted", "acme again"]


def test_default_share_leaves_cores_for_other_tenants() -> None:
    """A quarter of the pool, at most half of the cores, at least one."""
    from etl_platform.api.db import default_tenant_share

    assert default_tenant_share(8, cpus=2) == 1
    assert default_tenant_share(8, cpus=16) == 2
    assert default_tenant_share(32, cpus=8) == 4
    assert default_tenant_share(2, cpus=64) == 1
    assert default_tenant_share(8, cpus=1) == 1
