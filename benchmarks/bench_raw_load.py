"""Benchmark of raw CSV ingestion: the raw Dagster asset (CSV source -> dlt -> warehouse) against
the bare database load of the same file. Prints a table; not a test.

    python benchmarks/bench_raw_load.py [--rows 1000000] [--small-rows 100000] [--warehouse duckdb|postgres|both]

Generates a CSV (id, name, category, value, description, created_at, updated_at; ~150 bytes a
row, fixed seed) in a temporary folder, then runs every case in its own subprocess, so that the
peak RSS (ru_maxrss of that process, from wait4) belongs to that case alone. A raw case reads and
loads in the tenant's own process (forked by the run's fork server): its peak RSS is that
process's, as the run worker recorded it (the larger of its sampled RSS and its ru_maxrss; pages
it shares with the fork server included); the run worker's own is printed apart.

- ``bare``: DuckDB ``CREATE TABLE AS SELECT * FROM read_csv(...)`` / PostgreSQL
  ``COPY ... FROM STDIN (FORMAT csv, HEADER)`` through psycopg into a table of text columns;
- ``same``: the database's own load of the rows the raw asset stores (the file's columns, the
  original record as JSON, the lineage constants, the position and the row key): DuckDB
  ``CREATE TABLE AS SELECT ... FROM read_csv(...)``; PostgreSQL ``COPY`` of those rows (a CSV
  DuckDB writes first, untimed) into a table of the raw table's types;
- ``raw``: one tenant with one csv source (``primary_key: [id]``), its raw asset materialized
  through Dagster (``execute_in_process`` of the ``ingest`` job restricted to the raw assets,
  SQLite instance in a temporary DAGSTER_HOME). The time is that of the run; building the
  definitions is reported apart (``setup s``). dlt's own step times come from the pipeline trace.

"stored MB" is what the table takes in the database (DuckDB: blocks in use in the file;
PostgreSQL: ``pg_total_relation_size``): a raw row holds the original record as JSON and the
lineage columns besides the CSV's own columns, so the raw load writes several times the bytes.
Both ``raw`` at ``--small-rows`` and at ``--rows`` are run to show that memory stays flat;
``reload`` materializes the same day twice in one process and times the second run (the day's
rows replaced: the hourly schedule's case).
Targets: DuckDB raw >= 0.75 x its same-rows load (rows/s), peak RSS < 600 MB; the ratios to the
bare file load, and PostgreSQL's to its same-rows COPY, are printed for information.
PostgreSQL: ETL_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres); a fresh
database per case, dropped afterwards. ``--profile`` runs the raw cases under cProfile and prints
the top functions (slower; timings then are not comparable).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import random
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
COLUMNS = ["id", "name", "category", "value", "description", "created_at", "updated_at"]
WORDS = (
    "alpha beta gamma delta epsilon error latency deploy release review merge outage invoice customer "
    "order shipment refund payment account region cluster database network storage report weekly"
).split()
CATEGORIES = ["hardware", "software", "services", "support", "billing", "logistics", "marketing", "research"]
T0 = dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)


# --- data ------------------------------------------------------------------------------------


def generate_csv(path: Path, rows: int, seed: int = 42) -> int:
    """Write `rows` rows with a fixed seed; returns the file size in bytes."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for i in range(1, rows + 1):
            created = T0 + dt.timedelta(seconds=rng.randrange(0, 400 * 86400))
            updated = created + dt.timedelta(seconds=rng.randrange(0, 30 * 86400))
            words = rng.choices(WORDS, k=rng.randint(8, 13))
            if rng.random() < 0.2:
                words[3] += ","  # some descriptions need quoting
            writer.writerow((
                i,
                f"{rng.choice(WORDS).title()} {rng.choice(WORDS)} {rng.randrange(100000)}",
                rng.choice(CATEGORIES),
                f"{rng.uniform(0, 10000):.2f}",
                " ".join(words),
                created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                updated.strftime("%Y-%m-%dT%H:%M:%SZ"),
            ))
    return path.stat().st_size


# bytes in use in a DuckDB file (the warehouse's other tables, dlt's state, are a few KB)
DUCKDB_USED_BYTES = (
    "SELECT used_blocks * block_size FROM pragma_database_size() WHERE database_name = current_database()"
)


def create_database() -> str:
    return pgdb.create_database("etl_bench_raw")


# --- cases (run in a child process) -------------------------------------------------------------


def bare_duckdb(csv_path: Path, work: Path) -> dict:
    import duckdb

    started = time.perf_counter()
    conn = duckdb.connect(str(work / "bare.duckdb"))
    conn.execute(f"CREATE TABLE bare AS SELECT * FROM read_csv('{csv_path}', header = true)")
    rows = conn.execute("SELECT count(*) FROM bare").fetchone()[0]
    seconds = time.perf_counter() - started
    conn.execute("CHECKPOINT")
    stored = conn.execute(DUCKDB_USED_BYTES).fetchall()[0][0]
    conn.close()
    return {"seconds": seconds, "rows": rows, "stored_mb": stored / 1e6}


def same_rows_select(csv_path: Path) -> str:
    """DuckDB SQL building the rows the raw asset stores, from `read_csv` of the file: its columns
    (as text), the original record as JSON, the lineage constants, the position and the row key."""
    record = "json_object(" + ", ".join(f"'{c}', {c}" for c in COLUMNS) + ")"
    return (
        f"SELECT {', '.join(COLUMNS)}, '{TENANT}' AS _etl_tenant_id, '{SOURCE}' AS _etl_source, "
        f"'rows' AS _etl_resource, DATE '{DAY}' AS _etl_partition_date, 'bench-run' AS _etl_run_id, "
        f"now() AS _etl_extracted_at, '{csv_path}:' || CAST(row_number() OVER () + 1 AS VARCHAR) AS _etl_position, "
        f"id AS _etl_row_key, CAST(NULL AS TIMESTAMPTZ) AS _etl_event_time, {record} AS _etl_record, "
        f"'1709290000.0' AS _dlt_load_id "
        f"FROM read_csv('{csv_path}', header = true, all_varchar = true)"
    )


def same_rows_duckdb(csv_path: Path, work: Path) -> dict:
    """DuckDB's own load of the stored rows: one `CREATE TABLE ... AS SELECT ... FROM read_csv`."""
    import duckdb

    started = time.perf_counter()
    conn = duckdb.connect(str(work / "same.duckdb"))
    conn.execute(f"CREATE TABLE same AS {same_rows_select(csv_path)}")
    rows = conn.execute("SELECT count(*) FROM same").fetchone()[0]
    seconds = time.perf_counter() - started
    conn.execute("CHECKPOINT")
    stored = conn.execute(DUCKDB_USED_BYTES).fetchall()[0][0]
    conn.close()
    return {"seconds": seconds, "rows": rows, "stored_mb": stored / 1e6}


def same_rows_postgres(csv_path: Path, work: Path, url: str) -> dict:
    """PostgreSQL's own load of the stored rows: COPY of a CSV that holds them (written by DuckDB
    beforehand, not timed) into a table of the raw table's types (text, date, timestamptz, jsonb)."""
    import duckdb
    import psycopg

    rows_csv = work / "same_rows.csv"
    with duckdb.connect() as prep:
        prep.execute(f"COPY ({same_rows_select(csv_path)}) TO '{rows_csv}' (FORMAT csv, HEADER false)")
    types = {**dict.fromkeys(COLUMNS, "TEXT"), "_etl_tenant_id": "TEXT", "_etl_source": "TEXT",
             "_etl_resource": "TEXT", "_etl_partition_date": "DATE", "_etl_run_id": "TEXT",
             "_etl_extracted_at": "TIMESTAMPTZ", "_etl_position": "TEXT", "_etl_row_key": "TEXT",
             "_etl_event_time": "TIMESTAMPTZ", "_etl_record": "JSONB", "_dlt_load_id": "TEXT"}
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE same ({', '.join(f'{c} {t}' for c, t in types.items())})")
        with conn.cursor() as cur, cur.copy("COPY same FROM STDIN (FORMAT csv)") as copy:
            with open(rows_csv, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    copy.write(chunk)
        rows = conn.execute("SELECT count(*) FROM same").fetchone()[0]
        seconds = time.perf_counter() - started
        stored = conn.execute("SELECT pg_total_relation_size('same')").fetchone()[0]
    return {"seconds": seconds, "rows": rows, "stored_mb": stored / 1e6}


def bare_postgres(csv_path: Path, url: str) -> dict:
    import psycopg

    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        cols = ", ".join(f"{c} TEXT" for c in COLUMNS)
        conn.execute(f"CREATE TABLE bare ({cols})")
        with conn.cursor() as cur, cur.copy("COPY bare FROM STDIN (FORMAT csv, HEADER true)") as copy:
            with open(csv_path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    copy.write(chunk)
        rows = conn.execute("SELECT count(*) FROM bare").fetchone()[0]
        seconds = time.perf_counter() - started
        stored = conn.execute("SELECT pg_total_relation_size('bare')").fetchone()[0]
    return {"seconds": seconds, "rows": rows, "stored_mb": stored / 1e6}


def raw_asset(csv_path: Path, work: Path, warehouse_url: str, profile: bool, runs: int = 1) -> dict:
    """Materialize the raw asset of one tenant × day through Dagster (`runs` times: the figures
    are the last run's; a second run re-loads the day over the rows of the first)."""
    import yaml

    home = work / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    tenants = work / "tenants.yaml"
    tenant = {"id": TENANT, "sources": [
        {"name": SOURCE, "kind": "csv", "location": str(csv_path), "primary_key": ["id"]}]}
    tenants.write_text(yaml.safe_dump({"tenants": [tenant]}, sort_keys=False))
    os.environ.update({"DAGSTER_HOME": str(home), "ETL_TENANTS_FILE": str(tenants),
                       "ETL_DATA_ROOT": str(csv_path.parent),  # the generated CSV is read from there
                       "ETL_WAREHOUSE_URL": warehouse_url, "ETL_START_DATE": "2024-01-01"})

    from dagster import DagsterInstance

    from etl_platform.automation.onboarding import sync_tenants
    from etl_platform.config.registry import load_registry
    from etl_platform.definitions import build_definitions
    from etl_platform.loading.raw import pipeline_name, pipelines_dir
    from etl_platform.runs.partitions import partition_key
    from etl_platform.warehouse import Warehouse

    setup_started = time.perf_counter()
    instance = DagsterInstance.get()
    sync_tenants(instance, load_registry())
    defs = build_definitions()
    raw_keys = [k for k in defs.resolve_asset_graph().get_all_asset_keys() if k.path[0] == "raw"]
    job = defs.resolve_job_def("ingest")
    setup = time.perf_counter() - setup_started

    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    for _ in range(runs):
        started = time.perf_counter()
        result = job.execute_in_process(
            partition_key=str(partition_key(TENANT, DAY)), instance=instance, asset_selection=raw_keys
        )
        seconds = time.perf_counter() - started
    if profiler:
        profiler.disable()
        import io
        import pstats

        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(45)
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
        (work / "profile.txt").write_text(out.getvalue())
    assert result.success, "raw run failed"

    import dlt

    steps = {}
    pipeline = dlt.attach(pipeline_name(TENANT, SOURCE), pipelines_dir=pipelines_dir())
    if pipeline.last_trace:
        for step in pipeline.last_trace.steps:
            if step.finished_at and step.started_at:
                steps[step.step] = round((step.finished_at - step.started_at).total_seconds(), 2)
    # the tenant's own file on DuckDB (ETL_DUCKDB_TENANT_FILES), the database on PostgreSQL
    with Warehouse(warehouse_url).for_tenant(TENANT).connect() as conn:
        rows = conn.query(f'SELECT count(*) FROM "tenant_{TENANT}"."{SOURCE}_rows"')[0][0]
        rejects = (
            conn.query(f'SELECT count(*) FROM "tenant_{TENANT}"."rejects"')[0][0]
            if conn.table_exists(f"tenant_{TENANT}", "rejects") else 0
        )
        if conn.dialect == "duckdb":
            stored = conn.query(DUCKDB_USED_BYTES)[0][0]
        else:
            stored = conn.query(f"SELECT pg_total_relation_size('\"tenant_{TENANT}\".\"{SOURCE}_rows\"')")[0][0]
    instance.dispose()
    from etl_platform.assets.ingest import fork_server

    tenant_peak = fork_server(None).peaks[TENANT]  # the run worker's record of the tenant's process
    return {"seconds": seconds, "rows": rows, "setup": setup, "steps": steps, "rejects": rejects,
            "stored_mb": stored / 1e6, "tenant_rss_mb": tenant_peak / (1 << 20)}


def child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    csv_path = Path(args.csv)
    if args.case == "bare":
        out = bare_duckdb(csv_path, work) if args.child == "duckdb" else bare_postgres(csv_path, args.url)
    elif args.case == "same":
        out = same_rows_duckdb(csv_path, work) if args.child == "duckdb" else same_rows_postgres(csv_path, work, args.url)
    else:
        url = f"duckdb:///{work / 'warehouse.duckdb'}" if args.child == "duckdb" else args.url
        out = raw_asset(csv_path, work, url, args.profile, runs=2 if args.case == "reload" else 1)
    print("RESULT " + json.dumps(out), flush=True)


# --- parent --------------------------------------------------------------------------------------


def run_case(warehouse: str, case: str, csv_path: Path, root: Path, profile: bool) -> dict:
    work = root / f"{warehouse}_{case}_{csv_path.stem}"
    work.mkdir()
    url = create_database() if warehouse == "postgres" else ""
    log = work / "child.log"
    try:
        cmd = [sys.executable, __file__, "--child", warehouse, "--case", case, "--csv", str(csv_path),
               "--work", str(work), "--url", url] + (["--profile"] if profile else [])
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        text = log.read_text()
        lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"{warehouse}/{case} failed (exit {proc.returncode}):\n{text[-4000:]}")
        result = json.loads(lines[-1][len("RESULT "):])
        result["peak_rss_mb"] = usage.ru_maxrss / 1024  # kilobytes on Linux
        if "tenant_rss_mb" in result:  # the load ran in the tenant's own process: that is its memory
            result["worker_rss_mb"], result["peak_rss_mb"] = result["peak_rss_mb"], result["tenant_rss_mb"]
        if profile and (work / "profile.txt").exists():
            print(f"\n--- cProfile {warehouse}/{case} ({csv_path.name}) ---")
            print((work / "profile.txt").read_text())
        return result
    finally:
        if url:
            drop_database(url)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=100_000, help="second raw run, to show flat memory")
    parser.add_argument("--warehouse", choices=["duckdb", "postgres", "both"], default="both")
    parser.add_argument("--profile", action="store_true", help="cProfile the raw cases (slower)")
    parser.add_argument("--no-reload", dest="reload", action="store_false",
                        help="skip the re-load case (the same day loaded again over its rows)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--csv", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    warehouses = ["duckdb", "postgres"] if args.warehouse == "both" else [args.warehouse]
    root = Path(tempfile.mkdtemp(prefix="etl_bench_raw_"))
    free_gb = shutil.disk_usage(root).free / 1e9
    need_gb = args.rows * 150 * 6 / 1e9  # the file, the DuckDB files, dlt's load packages
    if free_gb < need_gb:
        raise SystemExit(f"{root}: {free_gb:.1f} GB free, about {need_gb:.1f} GB needed")
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; work folder {root}")
    try:
        files = {}
        for rows in sorted({args.rows, args.small_rows} - {0}):
            started = time.perf_counter()
            path = root / f"items_{rows}.csv"
            size = generate_csv(path, rows)
            files[rows] = path
            print(f"generated {path.name}: {rows:,} rows, {size / 1e6:.0f} MB in {time.perf_counter() - started:.1f}s")
        results = []
        for warehouse in warehouses:
            plan = [("bare", args.rows), ("same", args.rows), ("raw", args.rows)]
            if args.small_rows and args.small_rows != args.rows:
                plan.append(("raw", args.small_rows))
            if args.reload:
                plan.append(("reload", args.rows))
            for case, rows in plan:
                print(f"running {warehouse} {case} {rows:,} rows ...", flush=True)
                r = run_case(warehouse, case, files[rows], root, args.profile and case not in ("bare", "same"))
                assert r["rows"] == rows, f"{warehouse}/{case}: {r['rows']} rows loaded, expected {rows}"
                r.update(warehouse=warehouse, case=case, n=rows)
                results.append(r)
                extra = (f" (the run worker {r['worker_rss_mb']:.0f} MB); setup {r['setup']:.1f}s, "
                         f"dlt steps {r['steps']}" if "setup" in r else "")
                print(f"  {r['seconds']:.1f}s, {rows / r['seconds']:,.0f} rows/s, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB{extra}")
        print_table(results)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def print_table(results: list[dict]) -> None:
    """Each case against the bare file load and against the database's own load of the same rows."""
    rate = {(r["warehouse"], r["case"], r["n"]): r["n"] / r["seconds"] for r in results}
    print()
    header = (f"{'case':<30} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'peak RSS MB':>12} {'stored MB':>10} "
              f"{'vs bare':>8} {'vs same':>8}  target")
    print(header)
    print("-" * len(header))
    names = {"bare": "bare ", "same": "same rows ", "raw": "raw asset", "reload": "raw asset, re-load"}
    for r in results:
        own = r["n"] / r["seconds"]
        bare, same = rate.get((r["warehouse"], "bare", r["n"])), rate.get((r["warehouse"], "same", r["n"]))
        name = names[r["case"]]
        if r["case"] in ("bare", "same"):
            name += "read_csv" if r["warehouse"] == "duckdb" else "COPY"
        vs_bare = f"{own / bare:.2f}" if bare else "-"
        vs_same = f"{own / same:.2f}" if same else "-"
        target = ""
        if r["case"] == "raw" and same and r["warehouse"] == "duckdb":
            target = f"vs same >= 0.75 {'ok' if own / same >= 0.75 else 'MISSED'}"
        if r["case"] not in ("bare", "same"):
            target += f"{'; ' if target else ''}RSS < 600 {'ok' if r['peak_rss_mb'] < 600 else 'MISSED'}"
        print(f"{r['warehouse'] + ' ' + name:<30} {r['n']:>10,} {r['seconds']:>8.1f} {own:>10,.0f} "
              f"{r['peak_rss_mb']:>12.0f} {r['stored_mb']:>10.0f} {vs_bare:>8} {vs_same:>8}  {target}")
    for warehouse in sorted({r["warehouse"] for r in results}):
        raws = sorted((r["n"], r["peak_rss_mb"]) for r in results if r["warehouse"] == warehouse and r["case"] == "raw")
        if len(raws) == 2:
            (n1, m1), (n2, m2) = raws
            print(f"{warehouse}: raw peak RSS {m1:.0f} MB at {n1:,} rows vs {m2:.0f} MB at {n2:,} rows "
                  f"({m2 - m1:+.0f} MB for {n2 / n1:.0f}x the rows)")


if __name__ == "__main__":
    main()
