"""Schema contracts and drift that tell the truth: every discarded row or value is counted and in
`rejects` with the contract and the field; `freeze` names every field as the source writes it;
drift is judged per tenant against its own previous load, on every run."""

from __future__ import annotations

import datetime as dt

import pytest
from dagster import AssetCheckSeverity, DagsterEventType, DagsterInstance

from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.http_servers import LocalServer, Response
from etl_platform_tests.support.orchestration import rest_tenant
from etl_platform_tests.support.platform_runs import materialize, metadata_values, partition_materialization

D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)
FIRST = [{"id": 1, "amount": 1.5, "name": "a"}, {"id": 2, "amount": 2.5, "name": "b"}]
CHANGED = [
    {"id": 3, "amount": 3.5, "name": "c"},  # as before
    {"id": 4, "amount": "abc", "name": "d"},  # amount retyped
    {"id": 5, "amount": 5.5, "name": "e", "extra": "x"},  # a field added
]


def tenant(tenant_id: str, server: LocalServer, path: str, contract: str = "evolve") -> dict:
    """A tenant with one REST source `api` (resource `items` at `path`) under `contract`."""
    config = rest_tenant(tenant_id, server, path)
    config["sources"][0]["schema_contract"] = contract
    return config


def query(url: str, sql: str) -> list:
    with Warehouse(url).connect() as conn:
        return conn.query(sql)


def checks(instance: DagsterInstance, run_id: str) -> dict:
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    return {
        (e.check_name, e.partition): e for e in (r.event_log_entry.dagster_event.event_specific_data for r in records)
    }


@pytest.mark.parametrize("contract", ["discard_row", "discard_value"])
def test_discarding_contracts_count_and_reject(warehouse_url, platform_env, contract) -> None:
    payload = {"rows": FIRST}
    with LocalServer() as server:
        server.route("/items", lambda r: Response(200, payload["rows"]))
        platform_env([tenant("acme", server, "/items", contract)], warehouse_url)
        with DagsterInstance.get() as instance:
            assert materialize(instance, "acme", D1).success  # creates the table
            payload["rows"] = CHANGED
            assert materialize(instance, "acme", D2).success
            raw = metadata_values(partition_materialization(instance, ["raw", "api", "api_items"], "acme", D2))
    rejects = query(
        warehouse_url,
        "SELECT reason FROM tenant_acme.rejects WHERE \"_etl_partition_date\" = DATE '2024-03-02' ORDER BY reason",
    )
    reasons = [r[0] for r in rejects]
    assert len(reasons) == 2 and all(f"schema contract {contract}" in r for r in reasons)
    assert any("field 'amount' is text" in r for r in reasons) and any("field 'extra' new field" in r for r in reasons)
    assert raw["rejects"] == 2
    whole = raw["load"]
    if contract == "discard_row":
        assert raw["dagster/row_count"] == 1 and whole["contract_rows_discarded"] == 2
        ids = [r[0] for r in query(warehouse_url, "SELECT id FROM tenant_acme.api_items ORDER BY id")]
        assert ids == [1, 2, 3]
    else:
        assert raw["dagster/row_count"] == 3 and whole["contract_values_discarded"] == 2
        rows = query(warehouse_url, "SELECT id, amount FROM tenant_acme.api_items ORDER BY id")
        assert rows[-2:] == [(4, None), (5, 5.5)]  # the discarded value is gone, the row stays
    assert whole["contract_violations"] == {"items.amount: is text": 1, "items.extra: new field": 1}


def test_freeze_names_every_field_as_the_source_writes_it(warehouse_url, platform_env) -> None:
    payload = {"rows": FIRST}
    with LocalServer() as server:
        server.route("/items", lambda r: Response(200, payload["rows"]))
        platform_env([tenant("acme", server, "/items", "freeze")], warehouse_url)
        with DagsterInstance.get() as instance:
            assert materialize(instance, "acme", D1).success
            payload["rows"] = CHANGED
            result = materialize(instance, "acme", D2, raise_on_error=False)
            assert not result.success
            (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
            text = failure.step_failure_data.user_failure_data.description
    assert text.startswith("[permanent] tenant 'acme', source 'api'")
    assert "'amount'" in text and "'extra'" in text and "__v_" not in text
    assert query(warehouse_url, "SELECT count(*) FROM tenant_acme.api_items") == [(2,)]  # nothing partial


def test_drift_is_judged_per_tenant_on_every_run(duckdb_url, platform_env) -> None:
    rows = {"a": [{"id": 1, "v": 1, "gone": "x"}], "b": [{"id": 1, "v": 1, "gone": "x"}]}
    with LocalServer() as server:
        server.route("/a", lambda r: Response(200, rows["a"]))
        server.route("/b", lambda r: Response(200, rows["b"]))
        platform_env([tenant("a", server, "/a"), tenant("b", server, "/b")], duckdb_url)
        with DagsterInstance.get() as instance:
            for t in ("a", "b"):
                assert materialize(instance, t, D1).success
            rows["a"] = [{"id": 1, "v": "one"}]  # tenant a: a field removed and one retyped
            run_a = materialize(instance, "a", D1)
            run_b = materialize(instance, "b", D1)
            drift_a = checks(instance, run_a.run_id)[("schema_drift", f"{D1}|a")]
            drift_b = checks(instance, run_b.run_id)[("schema_drift", f"{D1}|b")]
            assert not drift_a.passed and drift_a.severity == AssetCheckSeverity.ERROR
            assert drift_a.metadata["columns_removed"].value == ["gone"] and "tenant 'a'" in drift_a.description
            assert drift_b.passed and "tenant 'b'" in drift_b.description  # b's schema did not change
            # a run that loads nothing reports so, without repeating an earlier change
            rows["a"] = []
            empty = checks(instance, materialize(instance, "a", D2).run_id)[("schema_drift", f"{D2}|a")]
            assert empty.passed and "no rows loaded" in empty.description
