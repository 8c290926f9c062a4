"""Failures and figures are per tenant (issue 22, item 3): two tenants that fail in ONE range run
each see, in /stats, `etl-platform runs` and `/health`, their own failure only: never the
other's id, source name, request URL or upstream error body. /stats names only the tenant's
configured sources (another's is 404, even after a run that selected every asset), and each raw
table counts for exactly one source (`a` never counts `a_b`'s rows).

Invariant: no text written for one tenant is ever shown to another."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, instance_for_test
from fastapi.testclient import TestClient

from etl_platform.api import create_app
from etl_platform.api.auth import KeyRing
from etl_platform.config.registry import load_registry, parse_registry
from etl_platform.config.settings import ApiSettings
from etl_platform.runs import history
from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.http_servers import LocalServer, Response
from etl_platform_tests.support.orchestration import quiet_home
from etl_platform_tests.support.platform_runs import materialize, materialize_range, write_tenants
from etl_platform_tests.support.read_api import figures, launch

DAY = dt.date(2024, 5, 2)
KEYS = {"alpha": "alpha-key-0123456789", "bravo": "bravo-key-9876543210"}
# what each tenant's failure is made of: its id, its source's name, its URL path, its error body
OWN = {
    "alpha": ("alpha", "alpha_orders", "/alpha-private-path", "ALPHA-MARKER-7f3a"),
    "bravo": ("bravo", "bravo_tickets", "/bravo-private-path", "BRAVO-MARKER-9c1e"),
}


def _tenant(tenant: str, server: LocalServer) -> dict:
    _, source, path, _ = OWN[tenant]
    return {"id": tenant, "sources": [{
        "name": source, "kind": "rest_api", "base_url": server.url, "paginator": {"type": "single_page"},
        "resources": [{"name": "items", "path": path.lstrip("/"), "primary_key": "id"}],
    }]}  # fmt: skip


def _api(registry, warehouse_url: str, instance: DagsterInstance, keys: dict[str, str]) -> TestClient:
    return TestClient(create_app(registry, Warehouse(warehouse_url), instance,
                                 settings=ApiSettings(rate_limit_per_minute=0), keyring=KeyRing(keys)))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = quiet_home(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("ETL_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    monkeypatch.setenv("ETL_STEP_RETRIES", "0")
    return home


def test_two_tenants_failing_in_one_run_each_see_only_their_own_failure(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalServer() as server:
        for _, _, path, marker in OWN.values():  # 400: permanent, the body quoted in the error
            server.route(path, lambda req, marker=marker: Response(400, f"{marker}: upstream refused the request"))
        tenants = [_tenant("alpha", server), _tenant("bravo", server)]
        monkeypatch.setenv("ETL_TENANTS_FILE", str(write_tenants(tmp_path / "tenants.yaml", tenants)))
        instance = DagsterInstance.get()
        chunk = materialize_range(instance, f"{DAY}|alpha", f"{DAY}|bravo", raise_on_error=False)
        # a single-tenant run of every asset (`dagster asset materialize --select '*'`): its
        # selection names bravo's source too
        from etl_platform.definitions import build_definitions

        every = list(build_definitions().resolve_job_def("ingest").asset_layer.executable_asset_keys)
        single = materialize(instance, "alpha", DAY, asset_selection=every, raise_on_error=False)
    assert not chunk.success and not single.success
    # the attack's premise: the run-level text lists both tenants' failures
    run_text = history.failure_reason(instance, chunk.run_id) or ""
    assert OWN["alpha"][1] in run_text and OWN["bravo"][1] in run_text, run_text

    api = _api(load_registry(), f"duckdb:///{tmp_path / 'warehouse.duckdb'}", instance, KEYS)
    for tenant, other in (("alpha", "bravo"), ("bravo", "alpha")):
        headers = {"Authorization": f"Bearer {KEYS[tenant]}"}
        stats = api.get("/stats", headers=headers)
        assert stats.status_code == 200, stats.text
        body = stats.json()
        assert [s["source"] for s in body["sources"]] == [OWN[tenant][1]]  # its configured source only
        failure = body["sources"][0]["last_failure"]
        assert failure is not None and OWN[tenant][3] in failure["failure_reason"]  # its own failure, told
        assert failure["partition"] == f"{DAY}|{tenant}" or failure["partition"].endswith(f"|{tenant}")
        for word in OWN[other]:  # nothing of the other tenant: id, source, URL, error body
            assert word not in stats.text, (tenant, word)
        # the other's source is 404, as any unknown source; its own answers
        assert api.get("/stats", params={"source": OWN[other][1]}, headers=headers).status_code == 404
        assert api.get("/stats", params={"source": OWN[tenant][1]}, headers=headers).status_code == 200
        # the CLI's and /health's view of the tenant's runs: its own part of each
        for run in history.recent_runs(instance, tenant):
            text = str(run.to_dict())
            assert not any(word in text for word in OWN[other]), (tenant, text)
        last = api.get("/health", headers=headers).json()["last_runs"]
        assert list(last) == [tenant] and last[tenant]["status"] == "FAILURE"


# --- figures per source: fast, over synthetic runs ------------------------------------------------


@pytest.fixture(scope="module")
def prefixed() -> Iterator[DagsterInstance]:
    """acme has sources `a` and `a_b`; one run of every source loaded 10 rows into `a_rows` and
    1000 into `a_b_rows`."""
    with instance_for_test(set_dagster_home=False) as instance:
        launch(instance, "acme", "2024-01-01", source=None, by_table={"a_rows": figures(10), "a_b_rows": figures(1000)})
        yield instance


def test_a_source_never_counts_the_rows_of_a_source_its_name_prefixes(prefixed: DagsterInstance, tmp_path: Path,
                                                                     duckdb_url: str) -> None:
    stats = {s["source"]: s for s in history.source_stats(prefixed, "acme", sources=["a", "a_b"])}
    assert stats["a"]["records_written"] == 10 and stats["a_b"]["records_written"] == 1000
    # `a_b` removed from the tenants file: its old rows are still not `a`'s
    alone = history.source_stats(prefixed, "acme", sources=["a"], tables={"a": ["a_rows"]})
    assert alone[0]["records_written"] == 10
    registry = parse_registry({"tenants": [{"id": "acme", "sources": [
        {"name": "a", "kind": "csv", "location": "a.csv"}]}]}, tmp_path / "tenants.yaml")  # fmt: skip
    body = _api(registry, duckdb_url, prefixed, {"acme": KEYS["alpha"]}).get(
        "/stats", headers={"Authorization": f"Bearer {KEYS['alpha']}"}).json()
    assert [(s["source"], s["records_written"]) for s in body["sources"]] == [("a", 10)]
