"""Load a CSV file through the CSV source and a real dlt pipeline into a throwaway DuckDB file,
and read the tables back (the CSV source's tests)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import dlt
from dlt.destinations.exceptions import DatabaseUndefinedRelation

from etl_platform.config.models import CsvSource
from etl_platform.sources.csv.layout import CsvStats
from etl_platform.sources.csv.source import build_csv_source
from etl_platform.sources.lineage import RunContext, Window

DAY = dt.date(2024, 3, 10)


def csv_config(**settings: Any) -> CsvSource:
    return CsvSource(**{"kind": "csv", "name": "orders", "location": "unused.csv", **settings})


def run_context(days: tuple[dt.date, ...] = (DAY,), run_id: str = "run-1") -> RunContext:
    return RunContext(tenant_id="t1", source="orders", run_id=run_id, window=Window(days))


def new_pipeline(tmp_path: Path, destination: Any = None) -> dlt.Pipeline:
    name = f"csv_{uuid.uuid4().hex[:8]}"
    return dlt.pipeline(
        pipeline_name=name,
        destination=destination or dlt.destinations.duckdb(str(tmp_path / f"{name}.duckdb")),
        dataset_name="tenant_t1",
        pipelines_dir=str(tmp_path / "pipelines"),
    )


def load(
    tmp_path: Path,
    location: Path | str,
    *,
    days: tuple[dt.date, ...] = (DAY,),
    pipeline: dlt.Pipeline | None = None,
    run_id: str = "run-1",
    **settings: Any,
) -> tuple[dlt.Pipeline, CsvStats]:
    """Load one CSV file for one window; returns the pipeline and the source's stats."""
    source = build_csv_source(csv_config(**settings), str(location), run_context(days, run_id))
    pipeline = pipeline or new_pipeline(tmp_path)
    pipeline.run(source)
    return pipeline, source.etl_stats


def table(pipeline: dlt.Pipeline, name: str) -> list[dict[str, Any]]:
    """All rows of a table, by partition day and line; [] when the table was never created."""
    with pipeline.sql_client() as client:
        try:
            with client.execute_query(f"SELECT * FROM {client.make_qualified_table_name(name)}") as cursor:
                columns = [d[0] for d in cursor.description]
                rows = [dict(zip(columns, values)) for values in cursor.fetchall()]
        except DatabaseUndefinedRelation:
            return []
    return sorted(rows, key=lambda r: (r["_etl_partition_date"], line_of(r["_etl_position"])))


def line_of(position: str) -> int:
    return int(position.rsplit(":", 1)[1])


def record(row: dict[str, Any]) -> dict[str, Any]:
    value = row["_etl_record"]
    return json.loads(value) if isinstance(value, str) else value


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def root_cause(exc: BaseException, kind: type[BaseException]) -> BaseException:
    """The first exception of `kind` in the cause/context chain (dlt wraps source errors)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    raise AssertionError(f"no {kind.__name__} behind {exc!r}")
