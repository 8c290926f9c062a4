"""`normalized/records` end to end on DuckDB and PostgreSQL: order-independent upserts, newer
versions win, rejects with reasons, reconciliation, schema drift and frozen contracts."""

import datetime as dt

from dagster import AssetCheckSeverity, AssetKey, DagsterEventType, DagsterInstance

from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.http_servers import LocalServer, Response
from etl_platform_tests.support.platform_runs import materialize

D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)
LINEAGE = {"raw_load_id", "normalized_at", "raw_row_key"}


def _csv_tenant(path, **extra):
    return {
        "id": "acme",
        "sources": [
            {
                "name": "orders",
                "kind": "csv",
                "location": str(path),
                "event_time": "updated_at",
                "field_mapping": {"source_id": "id", "title": "name", "status": "state", "updated_at": "updated_at"},
                **extra,
            }
        ],
    }


def _records(url):
    with Warehouse(url).connect() as conn:
        rows = conn.query_dicts('SELECT * FROM "tenant_acme"."records" ORDER BY record_id')
    return [{k: (str(v) if k == "attributes" else v) for k, v in r.items() if k not in LINEAGE} for r in rows]


def _checks(instance, run_id):
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    evaluations = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    return {e.check_name: e for e in evaluations}


ORDERS = """id,name,state,updated_at
1,Old name,Open,2024-03-01T10:00:00Z
2,Second,CLOSED,2024-03-01T11:00:00Z
,No id,open,2024-03-01T12:00:00Z
1,New name,Done,2024-03-02T09:00:00Z
3,Third,open,2024-03-02T10:00:00Z
4,Bad date,open,2024-03-02T99:99:99Z
"""


def test_partition_order_does_not_matter_and_newest_wins(warehouse_url, platform_env, tmp_path):
    csv = tmp_path / "orders.csv"
    csv.write_text(ORDERS)
    platform_env([_csv_tenant(csv)], warehouse_url)
    with DagsterInstance.get() as instance:
        for day in (D2, D1, D2, D1):  # newer partition first, then again
            assert materialize(instance, "acme", day).success
        first = _records(warehouse_url)
    by_id = {r["source_id"]: r for r in first}
    assert sorted(by_id) == ["1", "2", "3"]
    assert by_id["1"]["title"] == "New name" and by_id["1"]["status"] == "done"  # D2 version, newer updated_at
    assert by_id["2"]["status"] == "closed"

    other = tmp_path / "other"
    other.mkdir()
    url2 = warehouse_url.replace("warehouse.duckdb", "other/warehouse.duckdb") if "duckdb" in warehouse_url else None
    if url2:  # the same partitions in the other order into a fresh warehouse give the same records
        platform_env([_csv_tenant(csv)], url2)
        with DagsterInstance.get() as instance:
            for day in (D1, D2):
                assert materialize(instance, "acme", day).success
        assert _records(url2) == first


def test_rejects_reconciliation_and_updates(warehouse_url, platform_env, tmp_path):
    csv = tmp_path / "orders.csv"
    csv.write_text(ORDERS)
    platform_env([_csv_tenant(csv)], warehouse_url)
    with DagsterInstance.get() as instance:
        r1 = materialize(instance, "acme", D1)
        r2 = materialize(instance, "acme", D2)
        with Warehouse(warehouse_url).connect() as conn:
            rejects = conn.query(
                'SELECT CAST(event_date AS VARCHAR), reason FROM "tenant_acme"."record_rejects" ORDER BY 1'
            )
        assert rejects == [("2024-03-01", "missing id (id)")]
        with Warehouse(warehouse_url).connect() as conn:  # the loader kept the row it could not place
            ingest = conn.query('SELECT DISTINCT reason, raw_text FROM "tenant_acme"."rejects"')
        # a row whose day is unknown is kept in each loaded partition (here: D1 and D2)
        assert len(ingest) == 1 and "unparseable event_time" in ingest[0][0] and "99:99:99" in ingest[0][1]
        for run in (r1, r2):
            checks = _checks(instance, run.run_id)
            assert checks["raw_reconciles_with_records_and_rejects"].passed
            assert checks["unique_upsert_key"].passed and checks["required_columns_not_null"].passed
        meta = instance.get_latest_materialization_event(AssetKey(["normalized", "records"])).asset_materialization
        assert (
            meta.metadata["records_written"].value + meta.metadata["rejects"].value == meta.metadata["raw_rows"].value
        )

        # a corrected file: the D1 record changes; re-materializing D1 updates it in place
        csv.write_text(ORDERS.replace("2,Second,CLOSED,2024-03-01T11:00:00Z", "2,Second v2,Open,2024-03-01T11:30:00Z"))
        assert materialize(instance, "acme", D1).success
    by_id = {r["source_id"]: r for r in _records(warehouse_url)}
    assert by_id["2"]["title"] == "Second v2" and by_id["2"]["status"] == "open"
    assert len(by_id) == 3


def _rest_tenant(url, contract="evolve"):
    return {
        "id": "acme",
        "sources": [
            {
                "name": "api",
                "kind": "rest_api",
                "base_url": url,
                "schema_contract": contract,
                "resources": [
                    {"name": "items", "path": "items", "primary_key": "id", "paginator": {"type": "single_page"}}
                ],
            }
        ],
    }


def test_schema_drift_is_detected(warehouse_url, platform_env):
    payload = {"rows": [{"id": 1, "v": 1, "gone": "x"}]}
    with LocalServer() as server:
        server.route("/items", lambda r: Response(200, payload["rows"]))
        platform_env([_rest_tenant(server.url)], warehouse_url)
        with DagsterInstance.get() as instance:
            first = materialize(instance, "acme", D1)
            assert _checks(instance, first.run_id)["schema_drift"].passed
            payload["rows"] = [{"id": 1, "v": 1, "gone": "x", "added": True}]
            added = _checks(instance, materialize(instance, "acme", D1).run_id)["schema_drift"]
            assert not added.passed and added.severity == AssetCheckSeverity.WARN
            assert added.metadata["columns_added"].value == ["added"]
            assert added.partition == f"{D1}|acme"  # the check names the tenant and day it judged
            payload["rows"] = [{"id": 1, "v": "one", "added": True}]
            broken = _checks(instance, materialize(instance, "acme", D1).run_id)["schema_drift"]
            assert not broken.passed and broken.severity == AssetCheckSeverity.ERROR
            assert broken.metadata["columns_removed"].value == ["gone"]
            assert broken.metadata["columns_retyped"].value == {"v": "number -> string"}
            assert "tenant 'acme'" in broken.description


def test_frozen_contract_fails_naming_the_column(warehouse_url, platform_env):
    payload = {"rows": [{"id": 1, "v": 1}]}
    with LocalServer() as server:
        server.route("/items", lambda r: Response(200, payload["rows"]))
        platform_env([_rest_tenant(server.url, contract="freeze")], warehouse_url)
        with DagsterInstance.get() as instance:
            assert materialize(instance, "acme", D1).success  # the first load creates the table
            payload["rows"] = [{"id": 2, "v": 2, "surprise": "x"}]
            result = materialize(instance, "acme", D2, raise_on_error=False)
            assert not result.success
            (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
            description = failure.step_failure_data.user_failure_data.description
            assert description.startswith("[permanent]") and "surprise" in description
    with Warehouse(warehouse_url).connect() as conn:
        assert conn.query('SELECT count(*) FROM "tenant_acme"."api_items"') == [(1,)]  # nothing partial loaded
