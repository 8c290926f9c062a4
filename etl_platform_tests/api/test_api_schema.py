"""Property-based run of the OpenAPI schema with schemathesis against the app, in process (ASGI)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from dagster import DagsterInstance
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from etl_platform.api import create_app
from etl_platform.api.auth import KeyRing
from etl_platform.config.settings import ApiSettings
from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.read_api import ADMIN_KEY, KEYS, insert, registry, row

# schemathesis needs the schema at collection time: the app exists then, its rows come below
_TMP = tempfile.TemporaryDirectory(prefix="etl_api_schema_")
WAREHOUSE = Warehouse(f"duckdb:///{Path(_TMP.name) / 'warehouse.duckdb'}")
APP = create_app(
    registry(), WAREHOUSE, DagsterInstance.ephemeral(),
    settings=ApiSettings(rate_limit_per_minute=0), keyring=KeyRing(KEYS, ADMIN_KEY),
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def _rows() -> None:
    insert(WAREHOUSE, "acme", [row("acme", n, is_active=n % 7 != 0) for n in range(40)]
           + [row("acme", 50, source="tickets", record_type="ticket", title=None, attributes="[1, 2]")])
    insert(WAREHOUSE, "globex", [row("globex", 1, source="feed", record_type="entry")])


@schema.auth()
class TenantKey:
    """acme's key; the admin key for /admin."""

    def get(self, case, ctx) -> str:
        return ADMIN_KEY if case.path.startswith("/admin") else KEYS["acme"]

    def set(self, case, data: str, ctx) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_schema_conformance(case) -> None:
    """No 500s; status codes, headers and bodies conform to the schema. Not checked: that
    every schema-valid request succeeds — an opaque `cursor` or `updated_since` later than
    `updated_until` fit the schema yet are rightly 422."""
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
