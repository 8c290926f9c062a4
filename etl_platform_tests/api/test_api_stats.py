"""GET /stats and /admin/stats: Dagster run storage + warehouse counts, on DuckDB and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dagster import DagsterInstance, instance_for_test

from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.read_api import ADMIN_KEY, auth, client, insert, make_runs, row


@pytest.fixture(scope="module")
def dagster() -> Iterator[tuple[DagsterInstance, dict[str, str]]]:
    with instance_for_test(set_dagster_home=False) as instance:
        yield instance, make_runs(instance)


@pytest.fixture
def warehouse(warehouse_url: str) -> Warehouse:
    """acme: 4 github pull requests (one inactive), 2 github reviews, 3 tickets; globex: 2 feed entries."""
    wh = Warehouse(warehouse_url)
    insert(wh, "acme", [row("acme", n, is_active=n != 3) for n in range(4)]
           + [row("acme", 10 + n, record_type="review") for n in range(2)]
           + [row("acme", 20 + n, source="tickets", record_type="ticket") for n in range(3)])
    insert(wh, "globex", [row("globex", n, source="feed", record_type="entry") for n in range(2)])
    return wh


def test_stats_per_source(warehouse: Warehouse, dagster) -> None:
    instance, ids = dagster
    response = client(warehouse, instance).get("/stats", headers=auth("acme"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tenant"] == "acme" and body["window_hours"] == 24
    assert body["metadata"]["request_id"] == response.headers["x-request-id"]
    sources = {s["source"]: s for s in body["sources"]}
    assert list(sources) == ["github", "tickets"]  # the configured sources
    github = sources["github"]
    assert github["last_success"]["run_id"] == ids["all_sources"]  # the run of every source is newer
    assert github["last_failure"]["run_id"] == ids["github_failed"]
    assert github["last_success"]["job"] == "assets (materialized from Python)"  # not `__ephemeral_asset_job__`
    assert "GitHub answered 502 Bad Gateway" in github["last_failure"]["failure_reason"]
    assert github["runs_by_status"] == {"FAILURE": 1, "SUCCESS": 3}
    assert (github["records_written"], github["rejects"], github["raw_rows"]) == (150, 15, 165)
    assert github["active_records"] == 5  # 3 active pull requests + 2 reviews
    assert github["newest_record_at"].startswith("2024-03-01T00:11:00")
    assert github["newest_record_age_s"] > 0 and github["materialization_age_s"] >= 0
    # each partition counted once, at its latest materialization: Jan 1 (30) and Jan 3 (7)
    assert sources["tickets"]["active_records"] == 3 and sources["tickets"]["records_written"] == 37
    assert body["records"] == [
        {"source": "github", "record_type": "pull_request", "active_records": 3,
         "newest_record_at": "2024-03-01T00:02:00Z"},
        {"source": "github", "record_type": "review", "active_records": 2,
         "newest_record_at": "2024-03-01T00:11:00Z"},
        {"source": "tickets", "record_type": "ticket", "active_records": 3,
         "newest_record_at": "2024-03-01T00:22:00Z"},
    ]
    assert "feed" not in response.text  # globex's source and its 999 records never show
    assert all(s["records_written"] != 999 for s in body["sources"])


def test_stats_source_filter_and_other_tenants_source_404(warehouse: Warehouse, dagster) -> None:
    instance, _ = dagster
    api = client(warehouse, instance)
    one = api.get("/stats", params={"source": "tickets"}, headers=auth("acme")).json()
    assert [s["source"] for s in one["sources"]] == ["tickets"]
    assert [r["source"] for r in one["records"]] == ["tickets"]
    foreign = api.get("/stats", params={"source": "feed"}, headers=auth("acme"))
    missing = api.get("/stats", params={"source": "nope"}, headers=auth("acme"))
    assert foreign.status_code == missing.status_code == 404 and foreign.json() == missing.json()
    globex = api.get("/stats", params={"source": "feed"}, headers=auth("globex")).json()
    assert globex["sources"][0]["records_written"] == 999 and globex["sources"][0]["active_records"] == 2


def test_stats_window(warehouse: Warehouse, dagster) -> None:
    instance, _ = dagster
    api = client(warehouse, instance)
    assert api.get("/stats", params={"window_hours": 0}, headers=auth("acme")).status_code == 422
    short = api.get("/stats", params={"window_hours": 0.0001}, headers=auth("acme")).json()
    github = next(s for s in short["sources"] if s["source"] == "github")
    assert github["runs_in_window"] == 0 and github["records_written"] == 0
    assert github["last_success"] is not None  # last success/failure are not limited to the window


def test_admin_stats(warehouse: Warehouse, dagster) -> None:
    instance, _ = dagster
    api = client(warehouse, instance)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = api.get("/admin/stats", headers=admin).json()
    assert [t["tenant"] for t in body["tenants"]] == ["acme", "globex"]
    assert api.get("/admin/stats", params={"tenant": "globex"}, headers=admin).json()["tenants"][0][
        "tenant"] == "globex"
    assert api.get("/admin/stats", params={"tenant": "initech"}, headers=admin).status_code == 404
    assert api.get("/admin/stats").status_code == 401
    assert api.get("/stats", headers=admin).status_code == 401


def test_health_lists_last_run_per_tenant_only_to_keys(warehouse: Warehouse, dagster) -> None:
    instance, ids = dagster
    api = client(warehouse, instance)
    body = api.get("/health", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert set(body["last_runs"]) == {"acme", "globex"}
    assert body["last_runs"]["acme"]["status"] == "SUCCESS" and body["last_runs"]["acme"]["at"]
    assert set(body["last_runs"]["acme"]) == {"status", "at"}
    assert set(api.get("/health", headers=auth("acme")).json()["last_runs"]) == {"acme"}  # its own only
    anonymous = api.get("/health")
    assert anonymous.status_code == 200 and anonymous.json()["last_runs"] is None
    assert "acme" not in anonymous.text and "globex" not in anonymous.text
    assert api.get("/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
