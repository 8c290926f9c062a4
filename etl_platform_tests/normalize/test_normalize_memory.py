"""Normalization on DuckDB under a memory cap (ETL_NORMALIZE_MEMORY_MB): a tenant's large
normalization cannot take the machine's memory from the others. Under a cap far below what the
rows take, DuckDB spills to the temp folder and writes exactly what it writes uncapped; the
spill folder is gone afterwards, and nothing of the stage is left in the tenant's file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dlt
import pytest

from etl_platform.config.models import TenantConfig
from etl_platform.config.names import REJECTS_TABLE
from etl_platform.normalize.run import STAGE, normalize_tenant
from etl_platform.sources.csv.source import apply_load_hints, build_csv_source
from etl_platform.sources.lineage import RunContext, Window
from etl_platform.warehouse import Warehouse

DAY = dt.date(2024, 3, 1)
ROWS = 60_000


def _load(tmp_path: Path, url: str) -> TenantConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "items.csv"
    lines = ["id,title,amount,note"] + [f"{i},item {i} {'x' * 60},{i % 97}.5,n{i % 13}" for i in range(ROWS)]
    path.write_text("\n".join(lines) + "\n")
    tenant = TenantConfig.model_validate(
        {"id": "t1", "sources": [{"name": "items", "kind": "csv", "location": str(path), "primary_key": ["id"]}]}
    )
    config = tenant.sources[0]
    warehouse = Warehouse(url)
    source = build_csv_source(config, str(path), RunContext("t1", "items", "run-1", Window((DAY,))))
    for name, resource in source.resources.items():
        if name != REJECTS_TABLE:
            resource.apply_hints(table_name=f"items_{name}")
    apply_load_hints(source, config, warehouse.kind)
    pipeline = dlt.pipeline("memory", destination=warehouse.dlt_destination(), dataset_name="tenant_t1",
                            pipelines_dir=str(tmp_path / "pipelines"))
    pipeline.run(source)
    return tenant


def _records(warehouse: Warehouse) -> list[tuple]:
    with warehouse.connect() as conn:
        return conn.query('SELECT record_id, title, value, CAST(attributes AS VARCHAR), sort_at '
                          'FROM "tenant_t1"."records" ORDER BY record_id')


def test_a_capped_normalization_spills_and_writes_what_an_uncapped_one_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spill = tmp_path / "spill"
    monkeypatch.setenv("ETL_DUCKDB_TEMP_DIR", str(spill))
    results = {}
    for cap in ("0", "128"):  # 0: DuckDB's default (80% of RAM); 128 MB: the smallest cap to work with
        monkeypatch.setenv("ETL_NORMALIZE_MEMORY_MB", cap)
        warehouse = Warehouse(f"duckdb:///{tmp_path / cap / 'warehouse.duckdb'}")
        tenant = _load(tmp_path / cap, warehouse.url)
        result = normalize_tenant(warehouse, tenant, [DAY])
        again = normalize_tenant(warehouse, tenant, [DAY])  # every row an upsert conflict
        assert result.raw_rows == again.raw_rows == ROWS and result.records_upserted == ROWS
        results[cap] = _records(warehouse)
        with warehouse.connect() as conn:
            assert not conn.query("SELECT * FROM duckdb_tables() WHERE table_name = ?", [STAGE])
    assert len(results["0"]) == ROWS
    assert [r[:4] for r in results["128"]] == [r[:4] for r in results["0"]]
    assert not spill.exists() or list(spill.iterdir()) == []  # each connection's spill folder removed
