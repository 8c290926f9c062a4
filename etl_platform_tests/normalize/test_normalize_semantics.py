"""One meaning of null and no silent NULLs, from a CSV file through raw into `records` on DuckDB
and PostgreSQL: a null spelling is NULL in raw columns, JSON null in `_etl_record` and in
`records.attributes`, NULL in mapped columns; a value that is no number is a record reject."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dlt

from etl_platform.config.models import TenantConfig
from etl_platform.config.names import REJECTS_TABLE
from etl_platform.normalize.run import normalize_tenant
from etl_platform.sources.csv.source import apply_load_hints, build_csv_source
from etl_platform.sources.lineage import RunContext, Window
from etl_platform.warehouse import Warehouse

DAY = dt.date(2024, 3, 1)


def test_nulls_and_unparseable_values_from_csv_to_records(warehouse_url: str, tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("id,title,amount,note\n1,Widget,12.5,NA\n2,NA,abc,ok\n3,Gadget,NA,\n4,Gizmo,1e999,x\n")
    tenant = TenantConfig.model_validate(
        {"id": "t1", "sources": [{"name": "items", "kind": "csv", "location": str(path), "primary_key": ["id"]}]}
    )
    config = tenant.sources[0]
    warehouse = Warehouse(warehouse_url)
    source = build_csv_source(config, str(path), RunContext("t1", "items", "run-1", Window((DAY,))))
    for name, resource in source.resources.items():
        if name != REJECTS_TABLE:
            resource.apply_hints(table_name=f"items_{name}")
    apply_load_hints(source, config, warehouse.kind)
    pipeline = dlt.pipeline(
        "semantics",
        destination=warehouse.dlt_destination(),
        dataset_name="tenant_t1",
        pipelines_dir=str(tmp_path / "pipelines"),
    )
    pipeline.run(source)

    result = normalize_tenant(warehouse, tenant, [DAY])
    with warehouse.connect() as conn:
        raw = {r["id"]: r for r in conn.query_dicts('SELECT * FROM "tenant_t1"."items_rows"')}
        records = {r["source_id"]: r for r in conn.query_dicts('SELECT * FROM "tenant_t1"."records"')}
        rejects = [r[0] for r in conn.query('SELECT reason FROM "tenant_t1"."record_rejects"')]

    def parsed(value: object) -> dict:
        return json.loads(value) if isinstance(value, str) else value  # type: ignore[arg-type]

    # raw: NULL in the columns and null in the record, alike
    assert raw["1"]["note"] is None and parsed(raw["1"]["_etl_record"])["note"] is None
    assert raw["3"]["amount"] is None and parsed(raw["3"]["_etl_record"])["amount"] is None
    # records: mapped columns NULL, attributes keep JSON null, never the spelling "NA"
    assert records["1"]["value"] == 12.5 and parsed(records["1"]["attributes"]) == {"note": None}
    assert records["3"]["value"] is None and records["3"]["title"] == "Gadget"
    assert parsed(records["3"]["attributes"]) == {"amount": None, "note": None}
    assert "NA" not in json.dumps([parsed(r["attributes"]) for r in records.values()])
    # a value that is no number: a record reject with its reason, counted
    assert sorted(records) == ["1", "3"]
    assert sorted(rejects) == [
        "unparseable number in value: 1e999",
        "unparseable number in value: abc",
    ]
    assert result.reject_reasons == {"unparseable number in value": 2}
    assert (result.raw_rows, result.records_written, result.rejects) == (4, 2, 2)
