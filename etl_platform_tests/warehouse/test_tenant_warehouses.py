"""A warehouse per tenant: tenants on two different PostgreSQL databases load, normalize and are
served through /data independently.

`beta` names its own warehouse (`warehouse_url_env` in the tenants file); `alpha` uses the
platform's (ETL_WAREHOUSE_URL). Each tenant's rows land in its own database only, the read API
serves each from its own database, and beta's database going away fails beta's reads (503) while
alpha's carry on.
"""

from __future__ import annotations

import datetime as dt

import pytest
from dagster import DagsterInstance
from fastapi.testclient import TestClient

from etl_platform.api.app import create_app
from etl_platform.api.auth import KeyRing
from etl_platform.config.names import tenant_schema
from etl_platform.config.registry import load_registry
from etl_platform.config.settings import ApiSettings
from etl_platform.warehouse import Warehouse
from etl_platform_tests.conftest import create_pg_database, drop_pg_database
from etl_platform_tests.support.http_servers import LocalServer
from etl_platform_tests.support.jsonplaceholder import collection_handler
from etl_platform_tests.support.platform_runs import materialize

pytestmark = [pytest.mark.postgres]

DAY = dt.date(2024, 3, 1)
KEYS = {"alpha": "alpha-key-0123456789", "beta": "beta-key-9876543210"}
ITEMS = {  # different data per tenant, so that a mix-up shows
    "alpha": [{"id": i, "title": f"alpha item {i}", "updated": "2024-03-01T10:00:00Z"} for i in range(1, 8)],
    "beta": [{"id": i, "title": f"beta item {i}", "updated": "2024-03-01T11:00:00Z"} for i in range(1, 4)],
}


def _tenant(tenant: str, base_url: str, **extra: str) -> dict:
    source = {
        "name": "items", "kind": "rest_api", "base_url": f"{base_url}/{tenant}", "paginator": {"type": "header_link"},
        "resources": [{"name": "items", "path": "items", "params": {"_page": 1, "_limit": 5}, "primary_key": "id"}],
        "field_mapping": {"title": "title", "updated_at": "updated"},
    }
    return {"id": tenant, "api_key_env": f"ETL_{tenant.upper()}_API_KEY", "sources": [source], **extra}


def _tenants_in(url: str) -> set[str]:
    """Tenants with a schema in the database (dlt's `_staging` schemas included)."""
    with Warehouse(url).connect() as conn:
        schemas = conn.query(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'tenant_%' ORDER BY 1"
        )
    return {s.removeprefix("tenant_").removesuffix("_staging") for (s,) in schemas}


@pytest.fixture
def two_databases():
    urls = create_pg_database("etl_wh_alpha"), create_pg_database("etl_wh_beta")
    try:
        yield urls
    finally:
        for url in urls:
            drop_pg_database(url)


def test_two_tenants_on_two_databases(two_databases, platform_env, monkeypatch) -> None:
    platform_url, beta_url = two_databases
    monkeypatch.setenv("ETL_BETA_WAREHOUSE_URL", beta_url)
    for tenant, key in KEYS.items():
        monkeypatch.setenv(f"ETL_{tenant.upper()}_API_KEY", key)
    with LocalServer() as server:
        for tenant, items in ITEMS.items():
            server.route(f"/{tenant}/items", collection_handler(items, f"{server.url}/{tenant}", "/items"))
        platform_env(
            [_tenant("alpha", server.url), _tenant("beta", server.url, warehouse_url_env="ETL_BETA_WAREHOUSE_URL")],
            platform_url,
        )
        with DagsterInstance.get() as instance:
            for tenant in KEYS:
                assert materialize(instance, tenant, DAY).success, tenant

    # loads and normalization: each tenant's schema in its own database only
    assert _tenants_in(platform_url) == {"alpha"}
    assert _tenants_in(beta_url) == {"beta"}
    for tenant, url in (("alpha", platform_url), ("beta", beta_url)):
        assert Warehouse(url).count(tenant_schema(tenant), "records") == len(ITEMS[tenant]), tenant

    # reads: the API, configured with the platform's warehouse only, serves beta from beta's database
    app = create_app(
        load_registry(), Warehouse(platform_url), None,
        settings=ApiSettings(rate_limit_per_minute=0), keyring=KeyRing(KEYS, "admin-key-0000000000"),
    )
    with TestClient(app) as api:
        for tenant, items in ITEMS.items():
            response = api.get("/data?limit=500", headers={"Authorization": f"Bearer {KEYS[tenant]}"})
            assert response.status_code == 200, response.text
            rows = response.json()["data"]
            assert sorted(r["title"] for r in rows) == sorted(i["title"] for i in items), tenant
            assert {r["tenant_id"] for r in rows} == {tenant}
        record = api.get(f"/data/{rows[0]['record_id']}", headers={"Authorization": f"Bearer {KEYS['beta']}"})
        assert record.status_code == 200 and record.json()["data"]["title"].startswith("beta"), record.text
        assert len(app.state.readers.readers) == 2  # one pool per database

        # beta's database goes away: beta's reads fail, alpha's do not
        drop_pg_database(beta_url)
        beta = api.get("/data", headers={"Authorization": f"Bearer {KEYS['beta']}"})
        assert beta.status_code == 503 and beta.json() == {"detail": "warehouse unavailable"}, beta.text
        alpha = api.get("/data", headers={"Authorization": f"Bearer {KEYS['alpha']}"})
        assert alpha.status_code == 200 and len(alpha.json()["data"]) == len(ITEMS["alpha"])

        # a tenant whose warehouse variable is unset: 503 too, naming nothing secret
        monkeypatch.delenv("ETL_BETA_WAREHOUSE_URL")
        beta = api.get("/data", headers={"Authorization": f"Bearer {KEYS['beta']}"})
        assert beta.status_code == 503, beta.text
