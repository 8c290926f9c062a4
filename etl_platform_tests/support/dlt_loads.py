"""Load a dlt source into a throwaway DuckDB file and read tables back (source tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dlt
import duckdb

DATASET = "tenant_t1"


def pipeline(tmp_path: Path, name: str, destination: Any = None) -> Any:
    return dlt.pipeline(
        pipeline_name=name,
        destination=destination or dlt.destinations.duckdb(str(tmp_path / "warehouse.duckdb")),
        dataset_name=DATASET,
        pipelines_dir=str(tmp_path / "pipelines"),
    )


def table(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    """Rows of a loaded table (empty when it was never created), `_etl_record` parsed."""
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as conn:
        exists = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [DATASET, name],
        ).fetchall()[0][0]
        if not exists:
            return []
        cursor = conn.execute(f"SELECT * FROM {DATASET}.{name} ORDER BY _etl_partition_date, _etl_row_key")
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    for row in rows:
        row["_etl_record"] = json.loads(row["_etl_record"])
    return rows
