"""Benchmark of normalization: `normalize_tenant` (raw rows -> `records`) against a plain
`INSERT INTO ... SELECT` of the same rows into a table of the same shape. Prints a table; not a test.

    python benchmarks/bench_normalize.py [--rows 1000000] [--warehouse duckdb|postgres|both]

Per warehouse: the raw table `tenant_bench.items_rows` is created by the platform's own CSV raw
path (a 3-row file loaded through dlt, so its columns and types are exactly what ingestion
creates), emptied, and filled with `--rows` rows for one partition day by SQL (generate_series):
CSV-like string columns plus lineage plus `_etl_record`, the original record as JSON (id, name,
category, status, value, description, created_at, updated_at; fixed pseudo-random content).
Then, each in its own subprocess (peak RSS = that process; on PostgreSQL the work is in the server):

- ``baseline``: ``INSERT INTO tenant_baseline.records SELECT ...`` of the raw rows' own columns
  (plain casts, no mapping) into a table created by the same DDL as `records` (same keys/indexes);
- ``normalize``: ``normalize_tenant`` of that day into an empty `records`;
- ``normalize again``: the same day again over the 1M existing records (every row an upsert
  conflict: DuckDB updates every record, in MERGEs of slices that fit its memory cap).
- DuckDB: both first ``uncapped`` (ETL_NORMALIZE_MEMORY_MB=0, DuckDB's default of 80% of RAM),
  then `records` dropped, then with the platform's cap (ETL_NORMALIZE_MEMORY_MB as set, default 448).

Targets (both normalizations): rows/s >= 0.5 x the baseline's; DuckDB peak RSS < 600 MB. PostgreSQL: ETL_BENCH_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/postgres), a fresh database dropped afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pgdb
from pgdb import drop_database

TENANT = "bench"
SOURCE = "items"
DAY = dt.date(2024, 3, 1)
RAW = f'"tenant_{TENANT}"."{SOURCE}_rows"'
SEED_CSV = """id,name,category,status,value,description,created_at,updated_at
1,Alpha item,Hardware,Open,12.50,first,2024-02-01T10:00:00Z,2024-02-02T10:00:00Z
2,Beta item,Software,Closed,7,second,2024-02-01T11:00:00Z,2024-02-03T10:00:00Z
3,Gamma item,Services,open,"9,75",third,2024-02-01T12:00:00Z,2024-02-04T10:00:00Z
"""
COLUMNS = ["id", "name", "category", "status", "value", "description", "created_at", "updated_at"]


def tenant_config(csv_path: str) -> dict:
    return {"id": TENANT, "sources": [{"name": SOURCE, "kind": "csv", "location": csv_path, "primary_key": ["id"]}]}


def create_database() -> str:
    return pgdb.create_database("etl_bench_norm")


# --- setup: the raw table ------------------------------------------------------------------------


def _expressions(dialect: str) -> dict[str, str]:
    """SQL per raw field over `i` (1..N): deterministic pseudo-random, CSV-like strings."""
    if dialect == "duckdb":
        mod = lambda n, salt: f"CAST(hash(i + {salt}) % {n} AS BIGINT)"  # noqa: E731
        ts = "strftime(TIMESTAMP '2023-01-01' + to_seconds({s}), '%Y-%m-%dT%H:%M:%SZ')"
    else:
        mod = lambda n, salt: f"(abs(CAST(hashint8(i + {salt}) AS BIGINT)) % {n})"  # noqa: E731
        ts = "to_char(TIMESTAMP '2023-01-01' + make_interval(secs => {s}), 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
    pick = lambda values, salt: f"(ARRAY[{', '.join(repr(v) for v in values)}])[{mod(len(values), salt)} + 1]"  # noqa: E731
    words = ["alpha", "beta", "gamma", "delta", "error", "latency", "deploy", "release", "review", "merge"]
    created = mod(34_000_000, 11)
    return {
        "id": "CAST(i AS VARCHAR)",
        "name": f"{pick(words, 1)} || ' ' || {pick(words, 2)} || ' ' || CAST({mod(100000, 3)} AS VARCHAR)",
        "category": pick(["Hardware", "Software", "Services", "Support", "Billing", "Logistics"], 4),
        "status": pick(["Open", "Closed", "In progress", "open", "archived", "Done"], 5),
        "value": f"CAST(CAST(CAST({mod(1000000, 6)} AS DECIMAL(12, 2)) / 100 AS DECIMAL(12, 2)) AS VARCHAR)",
        "description": " || ' ' || ".join(pick(words, 10 + k) for k in range(10)),
        "created_at": ts.format(s=created),
        "updated_at": ts.format(s=f"{created} + {mod(2_000_000, 7)}"),
    }


def fill_raw(warehouse_url: str, rows: int) -> dict:
    """Replace the raw rows by `rows` rows of partition DAY; returns seconds, count and a sample."""
    from etl_platform.warehouse import Warehouse

    warehouse = Warehouse(warehouse_url)
    dialect = warehouse.kind
    exprs = _expressions(dialect)
    with warehouse.connect(write=True) as conn:
        conn.execute(f"DELETE FROM {RAW}")
        types = conn.columns(f"tenant_{TENANT}", f"{SOURCE}_rows")
    pairs = ", ".join(f"'{c}', {c}" for c in COLUMNS)
    record = f"json_object({pairs})" if dialect == "duckdb" else f"CAST(json_build_object({pairs}) AS JSONB)"
    lineage = {
        "_etl_tenant_id": f"'{TENANT}'",
        "_etl_source": f"'{SOURCE}'",
        "_etl_resource": "'rows'",
        "_etl_partition_date": f"DATE '{DAY}'",
        "_etl_run_id": "'bench-run'",
        "_etl_extracted_at": "TIMESTAMPTZ '2024-03-01 12:00:00+00'",
        "_etl_position": "'/data/items.csv:' || CAST(i + 1 AS VARCHAR)",
        "_etl_row_key": "id",
        "_etl_event_time": "CAST(NULL AS TIMESTAMPTZ)",
        "_etl_record": record,
        "_dlt_load_id": "'1709290000.0'",
        "_dlt_id": "md5(CAST(i AS VARCHAR))",
    }
    names = list(types)
    unknown = set(names) - set(COLUMNS) - set(lineage)
    assert not unknown and set(COLUMNS) <= set(names), f"unexpected raw columns: {types}"
    inner = ", ".join(f"{e} AS {c}" for c, e in exprs.items())
    select = ", ".join(c if c in COLUMNS else lineage[c] for c in names)
    gen = "range(1, ? + 1) AS t(i)" if dialect == "duckdb" else "generate_series(1, CAST(? AS BIGINT)) AS t(i)"
    sql = f"INSERT INTO {RAW} ({', '.join(names)}) SELECT {select} FROM (SELECT i, {inner} FROM {gen}) AS g"
    started = time.perf_counter()
    with warehouse.connect(write=True) as conn:
        conn.execute(sql, [rows])
        conn.execute(f"VACUUM ANALYZE {RAW}" if dialect == "postgres" else "CHECKPOINT")
        count = conn.query(f"SELECT count(*) FROM {RAW}")[0][0]
        sample = conn.query(f"SELECT CAST(_etl_record AS VARCHAR) FROM {RAW} LIMIT 1")[0][0]
    return {"seconds": time.perf_counter() - started, "rows": count, "sample": sample}


def setup(work: Path, warehouse_url: str, rows: int) -> dict:
    """The raw table via the platform's CSV raw path (3 rows), then `rows` rows by SQL."""
    import dlt

    from etl_platform.config.registry import load_registry
    from etl_platform.sources import lineage
    from etl_platform.sources.build import build_source
    from etl_platform.sources.csv.source import apply_load_hints
    from etl_platform.warehouse import Warehouse

    registry = load_registry()
    config = registry.tenant(TENANT).source(SOURCE)
    warehouse = Warehouse(warehouse_url)
    ctx = lineage.RunContext(TENANT, SOURCE, "bench-run", lineage.Window((DAY,)))
    source = build_source(config, registry, ctx)
    apply_load_hints(source, config, warehouse.kind)
    pipeline = dlt.pipeline(pipeline_name="bench_seed", destination=warehouse.dlt_destination(),
                            dataset_name=f"tenant_{TENANT}", pipelines_dir=str(work / "dlt"))
    pipeline.run(source)
    return fill_raw(warehouse_url, rows)


# --- cases (child processes) ---------------------------------------------------------------------


def baseline(warehouse_url: str) -> dict:
    """Plain INSERT ... SELECT of the raw rows' columns into a `records`-shaped table."""
    from etl_platform.normalize.schema import RECORD_COLUMNS, ensure_tables
    from etl_platform.warehouse import Warehouse

    warehouse = Warehouse(warehouse_url)
    pg = warehouse.kind == "postgres"
    ts = "CAST({} AS TIMESTAMPTZ)"
    exprs = {
        "record_id": "_etl_source || '/rows/' || id",
        "tenant_id": "_etl_tenant_id",
        "source": "_etl_source",
        "source_kind": "'csv'",
        "record_type": "'rows'",
        "source_id": "id",
        "title": "name",
        "description": "description",
        "url": "NULL",
        "author": "NULL",
        "category": "category",
        "status": "status",
        "value": f"CAST(value AS {'DOUBLE PRECISION' if pg else 'DOUBLE'})",
        "created_at": ts.format("created_at"),
        "updated_at": ts.format("updated_at"),
        "sort_at": ts.format("updated_at"),
        "event_date": "_etl_partition_date",
        "is_active": "TRUE",
        "attributes": "CAST(_etl_record AS JSONB)" if pg else "_etl_record",
        "parent_id": "NULL",
        "raw_table": f"'{SOURCE}_rows'",
        "raw_row_key": "_etl_row_key",
        "raw_load_id": "_dlt_load_id",
        "normalized_at": "now()",
    }
    assert list(exprs) == list(RECORD_COLUMNS)
    with warehouse.connect(write=True) as conn:
        ensure_tables(conn, "tenant_baseline", search_index=False)  # a plain INSERT … SELECT: no search index
        started = time.perf_counter()
        conn.execute(
            f'INSERT INTO "tenant_baseline"."records" ({", ".join(exprs)}) SELECT {", ".join(exprs.values())} '
            f"FROM {RAW} WHERE _etl_source = '{SOURCE}' AND _etl_partition_date IN (DATE '{DAY}')"
        )
        seconds = time.perf_counter() - started
        rows = conn.query('SELECT count(*) FROM "tenant_baseline"."records"')[0][0]
    return {"seconds": seconds, "rows": rows}


def normalize(warehouse_url: str) -> dict:
    from etl_platform.config.registry import load_registry
    from etl_platform.normalize.run import normalize_tenant
    from etl_platform.warehouse import Warehouse

    warehouse = Warehouse(warehouse_url)
    tenant = load_registry().tenant(TENANT)
    started = time.perf_counter()
    result = normalize_tenant(warehouse, tenant, [DAY])
    seconds = time.perf_counter() - started
    with warehouse.connect() as conn:
        rows = conn.query(f'SELECT count(*) FROM "tenant_{TENANT}"."records"')[0][0]
    return {"seconds": seconds, "rows": result.raw_rows, "records": rows, "rejects": result.rejects,
            "upserted": result.records_upserted}


def reset(warehouse_url: str, rows: int) -> dict:
    """Drop the tenant's `records` (the next case normalizes into an empty table again)."""
    from etl_platform.warehouse import Warehouse

    with Warehouse(warehouse_url).connect(write=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "tenant_{TENANT}"."records"')
        conn.execute(f'DROP TABLE IF EXISTS "tenant_{TENANT}"."record_rejects"')
        conn.execute("CHECKPOINT")
    return {"seconds": 0.0, "rows": rows}


def child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    os.environ["ETL_TENANTS_FILE"] = str(work / "tenants.yaml")
    os.environ["DAGSTER_HOME"] = str(work)
    os.environ["ETL_DATA_ROOT"] = str(work)  # the generated CSV is read from there
    if args.case.endswith("uncapped"):
        os.environ["ETL_NORMALIZE_MEMORY_MB"] = "0"  # DuckDB's own default (80% of RAM)
    if args.case == "setup":
        out = setup(work, args.url, args.rows)
    elif args.case == "reset":
        out = reset(args.url, args.rows)
    elif args.case == "baseline":
        out = baseline(args.url)
    else:
        out = normalize(args.url)
    print("RESULT " + json.dumps(out), flush=True)


# --- parent --------------------------------------------------------------------------------------


def run_child(case: str, work: Path, url: str, rows: int) -> dict:
    log = work / f"{case}.log"
    cmd = [sys.executable, __file__, "--child", case, "--case", case, "--work", str(work), "--url", url,
           "--rows", str(rows)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{case} failed (exit {proc.returncode}):\n{text[-4000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def run_warehouse(warehouse: str, rows: int, root: Path) -> list[dict]:
    import yaml

    work = root / warehouse
    work.mkdir()
    csv_path = work / "items.csv"
    csv_path.write_text(SEED_CSV)
    (work / "tenants.yaml").write_text(yaml.safe_dump({"tenants": [tenant_config(str(csv_path))]}, sort_keys=False))
    url = create_database() if warehouse == "postgres" else f"duckdb:///{work / 'warehouse.duckdb'}"
    results = []
    try:
        print(f"{warehouse}: creating {rows:,} raw rows ...", flush=True)
        made = run_child("setup", work, url, rows)
        assert made["rows"] == rows, made
        print(f"  {made['seconds']:.1f}s; a record: {made['sample']}", flush=True)
        cases = ["baseline", "normalize", "normalize again"]
        if warehouse == "duckdb":  # the same two without the memory cap first (then `records` emptied)
            cases = ["baseline", "normalize uncapped", "normalize again uncapped", "reset"] + cases[1:]
        for case in cases:
            print(f"{warehouse}: {case} ...", flush=True)
            r = run_child(case, work, url, rows)
            if case == "reset":
                continue
            assert r["rows"] == rows, r
            r.update(warehouse=warehouse, case=case, n=rows)
            results.append(r)
            print(f"  {r['seconds']:.1f}s, {rows / r['seconds']:,.0f} rows/s, peak RSS {r['peak_rss_mb']:.0f} MB"
                  + (f"; records {r['records']:,}, rejects {r['rejects']:,}" if "records" in r else ""), flush=True)
    finally:
        if warehouse == "postgres":
            drop_database(url)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--warehouse", choices=["duckdb", "postgres", "both"], default="both")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    warehouses = ["duckdb", "postgres"] if args.warehouse == "both" else [args.warehouse]
    root = Path(tempfile.mkdtemp(prefix="etl_bench_norm_"))
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; work folder {root}")
    try:
        results = [r for warehouse in warehouses for r in run_warehouse(warehouse, args.rows, root)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(results)


def print_table(results: list[dict]) -> None:
    base = {r["warehouse"]: r["n"] / r["seconds"] for r in results if r["case"] == "baseline"}
    print()
    header = f"{'case':<34} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'peak RSS MB':>12} {'ratio':>7}  target"
    print(header)
    print("-" * len(header))
    for r in results:
        rate = r["n"] / r["seconds"]
        ratio = rate / base[r["warehouse"]] if r["warehouse"] in base else None
        target = ""
        if r["case"] in ("normalize", "normalize again") and r["warehouse"] == "duckdb":
            target = f"RSS < 600 {'ok' if r['peak_rss_mb'] < 600 else 'MISSED'}; "
        if r["case"] in ("normalize", "normalize again") and ratio is not None:
            target += f">= 0.5 {'ok' if ratio >= 0.5 else 'MISSED'}"
        print(f"{r['warehouse'] + ' ' + r['case']:<34} {r['n']:>10,} {r['seconds']:>8.1f} {rate:>10,.0f} "
              f"{r['peak_rss_mb']:>12.0f} {ratio:>7.2f}  {target}")


if __name__ == "__main__":
    main()
