"""Anonymous surfaces (issue 22, item 8): a flood of anonymous /health from one address is
refused there and never reaches the databases, while another tenant's /data stays served; an
anonymous caller learns each component's status, never a host, port, role, database or error
text; /metrics answers 401 without its token when one is set.

Invariant: no tenant waits for another caller, and nothing about the platform's databases is
told to a caller without the admin key."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dagster import DagsterInstance
from fastapi.testclient import TestClient

from etl_platform.api import create_app
from etl_platform.api.auth import KeyRing
from etl_platform.config.settings import ApiSettings
from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.read_api import ADMIN_KEY, KEYS, auth, client, insert, registry, row

# a warehouse nobody listens on, whose URL names a role and a database worth hiding
DOWN_PG = "postgresql://hidden_role@127.0.0.1:1/hidden_database"
METRICS_TOKEN = "metrics-token-0123456789abcdef"


@pytest.fixture
def instance(dagster_home: Path) -> DagsterInstance:
    with DagsterInstance.get() as inst:
        yield inst


def _app(warehouse: Warehouse, instance: DagsterInstance, **kwargs) -> object:
    settings = kwargs.pop("settings", ApiSettings(rate_limit_per_minute=0))
    return create_app(registry(), warehouse, instance, settings=settings, keyring=KeyRing(KEYS, ADMIN_KEY), **kwargs)


def test_a_health_flood_from_one_address_is_refused_while_another_tenants_data_is_served(
    duckdb_url: str, instance: DagsterInstance
) -> None:
    wh = Warehouse(duckdb_url)
    insert(wh, "acme", [row("acme", n) for n in range(3)])
    app = _app(wh, instance)  # defaults: 10/s per address, burst 20, one check per 1.5 s
    flooder = TestClient(app, client=("10.0.0.66", 40000))
    tenant = TestClient(app, client=("10.0.0.7", 40001))
    started = time.monotonic()
    answers = [flooder.get("/health") for _ in range(120)]
    elapsed = time.monotonic() - started
    codes = [a.status_code for a in answers]
    assert codes.count(429) >= 120 - 20 - int(elapsed * 10) - 1, codes
    refused = next(a for a in answers if a.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    # the flood reached the databases at most once per cache period
    assert app.state.health_cache.checks <= 1 + int(elapsed / 1.5) + 1, (app.state.health_cache.checks, elapsed)
    # meanwhile: another tenant's data, and anonymous /health from another address
    data = tenant.get("/data", headers=auth("acme"))
    assert data.status_code == 200 and len(data.json()["data"]) == 3
    assert tenant.get("/health").status_code == 200


def test_anonymous_health_with_the_warehouse_down_names_no_host_port_role_or_database(
    instance: DagsterInstance,
) -> None:
    api = TestClient(_app(Warehouse(DOWN_PG), instance))
    anonymous = api.get("/health")
    assert anonymous.status_code == 503
    body = anonymous.json()
    assert body["failing"] == ["warehouse"] and body["components"]["warehouse"]["ok"] is False
    for word in ("127.0.0.1", ":1", "hidden_role", "hidden_database", "connection", "Error"):
        assert word not in anonymous.text, word
    assert all(c.get("detail") is None for c in body["components"].values())
    # a tenant's key sees its last run, not the platform's detail either
    tenant = api.get("/health", headers=auth("acme"))
    assert "hidden_database" not in tenant.text and tenant.json()["components"]["warehouse"].get("detail") is None
    # the admin key gets the detail it needs to act
    admin = api.get("/health", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert admin["components"]["warehouse"]["detail"]


def test_one_health_check_serves_every_caller_for_its_cache_period(duckdb_url: str, instance: DagsterInstance) -> None:
    app = _app(Warehouse(duckdb_url), instance, settings=ApiSettings(rate_limit_per_minute=0, health_cache_s=60))
    for n in range(30):  # thirty addresses: no rate limit applies, the cache does
        assert TestClient(app, client=(f"10.1.0.{n}", 1000)).get("/health").status_code == 200
    assert app.state.health_cache.checks == 1


def test_metrics_needs_its_token_when_one_is_set(duckdb_url: str, instance: DagsterInstance,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    wh = Warehouse(duckdb_url)
    assert client(wh, instance).get("/metrics").status_code == 200  # no token set: open, as before
    api = TestClient(_app(wh, instance, metrics_token=METRICS_TOKEN))
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, auth("acme"),
                    {"Authorization": f"Bearer {ADMIN_KEY}"}, {"Authorization": f"Basic {METRICS_TOKEN}"}):
        refused = api.get("/metrics", headers=headers)
        assert refused.status_code == 401 and "etl_api" not in refused.text, headers
        assert refused.headers["www-authenticate"].startswith("Bearer")
    served = api.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert served.status_code == 200 and "etl_api_requests_total" in served.text
    # from the environment (ETL_METRICS_TOKEN), as deployed
    monkeypatch.setenv("ETL_METRICS_TOKEN", METRICS_TOKEN)
    from_env = TestClient(_app(wh, instance))
    assert from_env.get("/metrics").status_code == 401
    assert from_env.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200
