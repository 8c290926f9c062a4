"""Benchmark of memory on one huge API page: peak RSS of loading a single JSON page of
`--mb` MB (393,350 records at the default 200 MB, the issue's case) through the platform's raw
asset into DuckDB, against the page's size. Prints the figures; not a test.

    python benchmarks/bench_big_page.py [--mb 200] [--keep]

The page (`{"data": [...], "meta": {...}}`, ~508 bytes a record, fixed seed) is written to a
temporary folder and served by a local HTTP server in this process; a child process materializes
the raw asset of one tenant with one `rest_api` source (`data_selector: data`, one page) through
Dagster (`execute_in_process`, SQLite instance in a temporary DAGSTER_HOME). The page is read and
loaded in the tenant's own process (forked by the run's fork server): its peak RSS is that
process's, as the run worker recorded it (the larger of its sampled RSS and its ru_maxrss); the
run worker's own (ru_maxrss, from wait4) is printed apart. Target: the tenant's peak RSS <= 4x the
page.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TENANT = "bench"
SOURCE = "api"
DAY = dt.date(2024, 3, 1)
RECORD_BYTES = 200_000_000 / 393_350  # the page: 200 MB, 393,350 records
WORDS = (
    "alpha beta gamma delta epsilon error latency deploy release review merge outage invoice customer "
    "order shipment refund payment account region cluster database network storage report weekly"
).split()


def generate_page(path: Path, megabytes: float, seed: int = 42) -> int:
    """Write the page; returns its record count."""
    rng = random.Random(seed)
    count = int(megabytes * 1e6 / RECORD_BYTES)
    t0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
    with open(path, "w", encoding="utf-8") as out:
        out.write('{"data": [')
        for i in range(1, count + 1):
            when = t0 + dt.timedelta(seconds=rng.randrange(86400))
            record = {
                "id": i,
                "title": " ".join(rng.choices(WORDS, k=6)).capitalize(),
                "body": " ".join(rng.choices(WORDS, k=rng.randint(30, 42))),
                "status": rng.choice(["open", "closed", "pending"]),
                "amount": round(rng.uniform(0, 10000), 2),
                "updated_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "author": {"id": rng.randrange(1000), "email": f"user{rng.randrange(1000)}@example.com"},
                "tags": rng.sample(WORDS, 3),
            }
            out.write(("," if i > 1 else "") + json.dumps(record))
        out.write(f'], "meta": {{"count": {count}, "next": null}}}}')
    return count


def serve(path: Path) -> tuple[ThreadingHTTPServer, str]:
    """A local server answering every GET with the page, streamed."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(path.stat().st_size))
            self.end_headers()
            with open(path, "rb") as handle:
                shutil.copyfileobj(handle, self.wfile, 1 << 20)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    return server, f"http://{host}:{port}"


def load(url: str, work: Path) -> dict:
    """In the child: materialize the raw asset of the one-page source; rows loaded and time."""
    import yaml

    home = work / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    tenants = work / "tenants.yaml"
    source = {
        "name": SOURCE,
        "kind": "rest_api",
        "base_url": url,
        "paginator": {"type": "single_page"},
        "resources": [{"name": "items", "path": "page", "data_selector": "data", "primary_key": "id"}],
    }
    tenants.write_text(yaml.safe_dump({"tenants": [{"id": TENANT, "sources": [source]}]}, sort_keys=False))
    os.environ.update({"DAGSTER_HOME": str(home), "ETL_TENANTS_FILE": str(tenants), "ETL_START_DATE": "2024-01-01",
                       "ETL_WAREHOUSE_URL": f"duckdb:///{work / 'warehouse.duckdb'}",
                       "ETL_MAX_PAGE_BYTES": str(1 << 30)})  # the page is the case: above the 64 MiB default

    from dagster import DagsterInstance

    from etl_platform.automation.onboarding import sync_tenants
    from etl_platform.config.registry import load_registry
    from etl_platform.definitions import build_definitions
    from etl_platform.runs.partitions import partition_key
    from etl_platform.warehouse import Warehouse

    instance = DagsterInstance.get()
    sync_tenants(instance, load_registry())
    defs = build_definitions()
    raw_keys = [k for k in defs.resolve_asset_graph().get_all_asset_keys() if k.path[0] == "raw"]
    started = time.perf_counter()
    result = defs.resolve_job_def("ingest").execute_in_process(
        partition_key=str(partition_key(TENANT, DAY)), instance=instance, asset_selection=raw_keys
    )
    seconds = time.perf_counter() - started
    assert result.success, "raw run failed"
    with Warehouse(os.environ["ETL_WAREHOUSE_URL"]).for_tenant(TENANT).connect() as conn:  # its own file
        rows = conn.query(f'SELECT count(*) FROM "tenant_{TENANT}"."{SOURCE}_items"')[0][0]
    instance.dispose()
    from etl_platform.assets.ingest import fork_server

    tenant_peak = fork_server(None).peaks[TENANT]  # the run worker's record of the tenant's process
    return {"rows": rows, "seconds": seconds, "tenant_peak": tenant_peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=200.0, help="size of the page in MB")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(load(args.child, Path(args.work))), flush=True)
        return

    root = Path(tempfile.mkdtemp(prefix="etl_bench_page_"))
    try:
        page = root / "page.json"
        started = time.perf_counter()
        records = generate_page(page, args.mb)
        size = page.stat().st_size
        print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; page {size / 1e6:.1f} MB, "
              f"{records:,} records (written in {time.perf_counter() - started:.1f}s)", flush=True)
        server, url = serve(page)
        work = root / "work"
        work.mkdir()
        log = root / "child.log"
        try:
            with open(log, "w") as out:
                proc = subprocess.Popen([sys.executable, __file__, "--child", url, "--work", str(work)],
                                        stdout=out, stderr=subprocess.STDOUT)
                _, status, usage = os.wait4(proc.pid, 0)
        finally:
            server.shutdown()
            server.server_close()
        text = log.read_text()
        lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
        if os.waitstatus_to_exitcode(status) != 0 or not lines:
            raise SystemExit(f"the load failed:\n{text[-4000:]}")
        result = json.loads(lines[-1][len("RESULT "):])
        assert result["rows"] == records, f"{result['rows']} rows loaded, expected {records}"
        worker = usage.ru_maxrss * 1024  # kilobytes on Linux
        peak = result["tenant_peak"]
        ratio = peak / size
        print(f"loaded {result['rows']:,} rows in {result['seconds']:.1f}s; peak RSS of the tenant's process "
              f"{peak / 1e6:.0f} MB = {ratio:.2f}x the page (target <= 4x: {'met' if ratio <= 4 else 'MISSED'}); "
              f"the run worker's {worker / 1e6:.0f} MB")
    finally:
        if args.keep:
            print(f"work folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
