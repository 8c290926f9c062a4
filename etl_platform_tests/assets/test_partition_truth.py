"""What the UI shows is what happened: after a run, a partition reads Failed only where that
tenant's own source failed; a source a tenant does not have never reads Failed or Unsynced; a
reload that changed nothing writes nothing; no run logs outputs it did not yield.

Every case runs with Dagster's two ways of planning a run's materializations: one planned event
per partition (its default: a run that fails then marks every planned partition it did not
materialize as failed) and one per asset (`DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS`,
what production sets to write less).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, RunRequest

from etl_platform.assets.keys import RECORDS_KEY
from etl_platform.runs.partitions import partition_key, tenant_date_partitions
from etl_platform_tests.support.orchestration import csv_tenant, launch, quiet_home
from etl_platform_tests.support.platform_runs import materialize_range, write_tenants

DAY = dt.date(2024, 3, 2)
EVENTS = [AssetKey(["raw", "events", "events_rows"]), AssetKey(["raw", "events", "events_rejects"])]
CATALOG = [AssetKey(["raw", "catalog", "catalog_rows"]), AssetKey(["raw", "catalog", "catalog_rejects"])]


@pytest.fixture(params=["per partition", "per asset"])
def planning(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "per asset":
        monkeypatch.setenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
    return request.param


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DagsterInstance:
    home = quiet_home(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("ETL_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    monkeypatch.setenv("ETL_STEP_RETRIES", "0")
    return DagsterInstance.get()


def _tenants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tenants: list[dict]) -> None:
    monkeypatch.setenv("ETL_TENANTS_FILE", str(write_tenants(tmp_path / "tenants.yaml", tenants)))


def statuses(instance: DagsterInstance, keys: list[AssetKey], tenants: list[str]) -> dict[str, dict[str, str]]:
    """asset -> tenant -> the partition's status as the UI reads it (MATERIALIZED, FAILED, ...)."""
    out = {}
    for key in keys:
        found = instance.get_status_by_partition(
            key, [str(partition_key(t, DAY)) for t in tenants], tenant_date_partitions()
        ) or {}
        out[key.to_user_string()] = {
            t: (found.get(str(partition_key(t, DAY))) or "missing") for t in tenants
        }
    return {k: {t: getattr(v, "value", v) for t, v in d.items()} for k, d in out.items()}


def _no_false_outputs(instance: DagsterInstance, run_id: str) -> None:
    logs = instance.all_logs(run_id)
    assert not [e for e in logs if e.user_message and "did not yield or return expected outputs" in e.user_message]
    assert not [e for e in logs if e.dagster_event_type == DagsterEventType.STEP_SKIPPED]


def test_a_failing_tenant_paints_only_its_own_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance: DagsterInstance, planning: str
) -> None:
    """alpha has events and catalog; beta only events, and its file is missing. A range run of
    everything over both: only beta's events (and beta's records, which nothing fed) read Failed."""
    alpha = csv_tenant("alpha", tmp_path / "alpha", DAY, 1)
    beta = csv_tenant("beta", tmp_path / "beta", DAY, 1)
    beta["sources"] = [dict(beta["sources"][0], location=str(tmp_path / "beta" / "missing.csv"))]
    _tenants(tmp_path, monkeypatch, [alpha, beta])
    result = materialize_range(instance, f"{DAY}|alpha", f"{DAY}|beta", raise_on_error=False)
    assert not result.success
    keys = [*EVENTS, *CATALOG, RECORDS_KEY]
    assert statuses(instance, keys, ["alpha", "beta"]) == {
        "raw/events/events_rows": {"alpha": "MATERIALIZED", "beta": "FAILED"},
        "raw/events/events_rejects": {"alpha": "MATERIALIZED", "beta": "FAILED"},
        "raw/catalog/catalog_rows": {"alpha": "MATERIALIZED", "beta": "MATERIALIZED"},  # applies: false
        "raw/catalog/catalog_rejects": {"alpha": "MATERIALIZED", "beta": "MATERIALIZED"},
        "normalized/records": {"alpha": "MATERIALIZED", "beta": "FAILED"},
    }
    _no_false_outputs(instance, result.run_id)


def test_a_failed_source_does_not_block_the_tenants_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance: DagsterInstance, planning: str
) -> None:
    """One good CSV and one missing file: the good rows load and are normalized; the records say
    which source failed; only the missing source's partitions read Failed."""
    tenant = csv_tenant("gamma", tmp_path / "gamma", DAY, 1)
    tenant["sources"][1]["location"] = str(tmp_path / "nowhere.csv")
    _tenants(tmp_path, monkeypatch, [tenant])
    result = materialize_range(instance, f"{DAY}|gamma", f"{DAY}|gamma", raise_on_error=False)
    assert not result.success
    from etl_platform_tests.support.platform_runs import metadata_values, partition_materialization, table_counts

    records = metadata_values(partition_materialization(instance, RECORDS_KEY, "gamma", DAY))
    assert records["sources"] == {"current": ["events"], "failed": ["catalog"]}
    assert records["raw_rows"] > 0
    counts = table_counts(f"duckdb:///{tmp_path / 'warehouse.duckdb'}", "tenant_gamma")
    assert counts["records"] == counts["events_rows"] > 0
    assert statuses(instance, [EVENTS[0], AssetKey(["raw", "catalog", "catalog_rows"]), RECORDS_KEY], ["gamma"]) == {
        "raw/events/events_rows": {"gamma": "MATERIALIZED"},
        "raw/catalog/catalog_rows": {"gamma": "FAILED"},
        "normalized/records": {"gamma": "MATERIALIZED"},
    }


def _scheduled(tenants: list[str], keys: list[AssetKey]) -> RunRequest:
    """A run as the hourly schedule asks for it: the chunk's sources and records, no checks."""
    return RunRequest(
        asset_selection=keys,
        asset_check_keys=[],
        tags={"etl/trigger": "schedule", "dagster/asset_partition_range_start": f"{DAY}|{tenants[0]}",
              "dagster/asset_partition_range_end": f"{DAY}|{tenants[-1]}"},
    )


def _written(instance: DagsterInstance, run_id: str) -> dict[str, list[str]]:
    logs = instance.all_logs(run_id)
    return {
        "materialized": sorted(
            f"{e.dagster_event.asset_key.to_user_string()}|{e.dagster_event.partition}"
            for e in logs if e.dagster_event_type == DagsterEventType.ASSET_MATERIALIZATION
        ),
        "checked": sorted(
            f"{e.dagster_event.event_specific_data.asset_key.to_user_string()}:"
            f"{e.dagster_event.event_specific_data.check_name}"
            for e in logs if e.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION
        ),
    }


def test_a_reload_that_changes_nothing_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance: DagsterInstance, planning: str
) -> None:
    tenant = csv_tenant("delta", tmp_path / "delta", DAY, 1)
    _tenants(tmp_path, monkeypatch, [tenant])
    from etl_platform.automation.onboarding import sync_tenants
    from etl_platform.config.registry import load_registry

    sync_tenants(instance, load_registry())
    keys = [*EVENTS, *CATALOG, RECORDS_KEY]
    first = launch(instance, _scheduled(["delta"], keys))
    assert first.success
    written = _written(instance, first.run_id)
    assert len(written["materialized"]) == 5 and "normalized/records:raw_reconciles_with_records_and_rejects" in (
        written["checked"]
    )
    again = launch(instance, _scheduled(["delta"], keys))
    assert again.success
    assert _written(instance, again.run_id) == {"materialized": [], "checked": []}
    _no_false_outputs(instance, again.run_id)
    # a row changes in one source: its partition and the records are written; the checks' verdicts
    # did not change (still passing), so their earlier results stand and no new one is written
    path = Path(tenant["sources"][1]["location"])
    path.write_text(path.read_text() + "delta-s9,new item,9.5\n")
    third = launch(instance, _scheduled(["delta"], keys))
    assert third.success
    assert _written(instance, third.run_id) == {
        "materialized": [f"normalized/records|{DAY}|delta", f"raw/catalog/catalog_rows|{DAY}|delta"],
        "checked": [],
    }
    # a field appears in that source: the drift check's verdict changes, and only it is written
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + ",color", *(line + ",red" for line in lines[1:])]) + "\n")
    fourth = launch(instance, _scheduled(["delta"], keys))
    assert fourth.success
    written = _written(instance, fourth.run_id)
    assert written["checked"] == ["raw/catalog/catalog_rows:schema_drift"], written
    drift = [e.dagster_event.event_specific_data for e in instance.all_logs(fourth.run_id)
             if e.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION][0]
    assert drift.metadata["columns_added"].value == ["color"] and not drift.passed
    # what the UI reads: every partition still materialized, none failed or out of date
    assert set(statuses(instance, keys, ["delta"])[RECORDS_KEY.to_user_string()].values()) == {"MATERIALIZED"}
    assert _stale(instance, RECORDS_KEY, "delta") == []


def _stale(instance: DagsterInstance, key: AssetKey, tenant: str) -> list[str]:
    """Why Dagster reads the partition as out of date ("Unsynced" in the UI); empty: it does not."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.loader import LoadingContextForTest

    from etl_platform.definitions import build_definitions

    graph = build_definitions().resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    causes = resolver.get_stale_root_causes(key, str(partition_key(tenant, DAY)))
    return [f"{c.reason} ({c.dependency})" for c in causes]


def test_records_of_a_tenant_without_some_sources_are_not_unsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance: DagsterInstance
) -> None:
    """epsilon has events only; the graph also has catalog (zeta's). epsilon's records never read
    out of date because of catalog, which epsilon does not have."""
    epsilon = csv_tenant("epsilon", tmp_path / "epsilon", DAY, 1)
    epsilon["sources"] = epsilon["sources"][:1]
    zeta = csv_tenant("zeta", tmp_path / "zeta", DAY, 1)
    _tenants(tmp_path, monkeypatch, [epsilon, zeta])
    from etl_platform.automation.onboarding import sync_tenants
    from etl_platform.config.registry import load_registry

    sync_tenants(instance, load_registry())
    assert launch(instance, _scheduled(["epsilon"], [*EVENTS, RECORDS_KEY])).success
    assert _stale(instance, RECORDS_KEY, "epsilon") == []
