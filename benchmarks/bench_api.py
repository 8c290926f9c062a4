"""Benchmark of GET /data on PostgreSQL: page latency at the start and deep in a large table,
a walk of consecutive pages, search (`q`) with and without matches, requests/s under concurrent
load, and fair reads: a light tenant's latency while another tenant sends expensive requests.
Then `q` on the same records in DuckDB. Prints tables.

    python benchmarks/bench_api.py [--rows 1000000] [--requests 1000] [--threads 8] [--seconds 15]
        [--search-requests 300] [--heavy-threads 12] [--no-duckdb]

Needs the PostgreSQL server of ETL_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres);
creates a fresh database, bulk-loads it with COPY (tenant `bench`, and 2,000 rows for tenant
`light`), runs uvicorn (one worker) in a subprocess on 127.0.0.1, and drops the database
afterwards. `q` is measured first on the never-analyzed table, as the platform leaves it, then
after VACUUM ANALYZE with the pages. Targets: p95 < 10 ms for a 50-row page; p95 < 50 ms for `q`
with and without matches; p95 < 10 ms for the light tenant's page while `bench` runs 12 concurrent
expensive requests (a filter no index serves, answered 504 at ETL_API_DATA_TIMEOUT_MS).
Sequential latencies use a light stdlib client (httpx costs the shared CPUs more than the API
does); the concurrent load runs once with httpx threads and once with stdlib threads.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

import httpx
import orjson
import pgdb
import psycopg
from pgdb import drop_database

from etl_platform.api.cursor import encode_cursor
from etl_platform.api.db import default_tenant_share
from etl_platform.normalize.schema import ensure_search_index, ensure_tables
from etl_platform.warehouse import Connection

TENANT = "bench"
KEY = "bench-" + uuid.uuid4().hex
LIGHT, LIGHT_KEY = "light", "light-" + uuid.uuid4().hex  # the other tenant, small, for fairness
SOURCES = [("github", "github", "pull_request"), ("jira", "jira", "issue"), ("tickets", "csv", "ticket"),
           ("news", "rss", "entry")]
COLUMNS = ["record_id", "tenant_id", "source", "source_kind", "record_type", "source_id", "title", "description",
           "url", "author", "category", "status", "value", "created_at", "updated_at", "sort_at", "event_date",
           "is_active", "attributes", "normalized_at"]
T0 = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)


def create_database() -> str:
    return pgdb.create_database("etl_bench")


def bench_rows(rows: int, tenant: str = TENANT):
    """The benchmark's records (fixed seed), as tuples in COLUMNS order. Titles: 6 of 12 words, so a
    word matches about 40% of rows; 'quasar' is in 1.5% of titles and 'zephyr' in 0.1%, spread evenly."""
    rng = random.Random(7)
    words = "alpha beta gamma delta error latency deploy release review merge outage invoice".split()
    for i in range(rows):
        source, kind, rtype = SOURCES[i % 4]
        at = T0 + dt.timedelta(seconds=(i // 3) * 7)  # ties of 3: the record_id tie-break matters
        title = " ".join(rng.choices(words, k=6))
        title += " quasar" if i % 67 == 3 else ""
        title += " zephyr" if i % 1000 == 7 else ""
        yield (
            f"{source}/{rtype}/{i}", tenant, source, kind, rtype, str(i), title,
            f"{title}. " * 4, f"https://example.com/{source}/{i}", f"user{i % 500}",
            ("bug", "feature", "chore")[i % 3], ("Open", "In Progress", "Done")[i % 3 - 1],
            float(i % 1000), at, at, at, at.date(), i % 50 != 0,
            json.dumps({"labels": ["a", "b"], "n": i}), at,
        )


def load(url: str, rows: int, tenant: str = TENANT) -> float:
    """Create the tenant's records (the platform's DDL) and COPY `rows` rows in, with the search index
    built after the COPY (faster than maintaining it row by row); never analyzed. Seconds taken."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as raw:
        conn = Connection(raw, "postgres")
        ensure_tables(conn, f"tenant_{tenant}", search_index=False)
        cols = ", ".join(COLUMNS)
        with raw.cursor() as cur, cur.copy(f"COPY tenant_{tenant}.records ({cols}) FROM STDIN") as copy:
            for values in bench_rows(rows, tenant):
                copy.write_row(values)
        ensure_search_index(conn, f"tenant_{tenant}")
    return time.perf_counter() - started


def analyze(url: str, tenant: str = TENANT) -> float:
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as raw:
        raw.execute(f"VACUUM ANALYZE tenant_{tenant}.records")
    return time.perf_counter() - started


def cursor_at(url: str, offset: int) -> str:
    """The cursor after the `offset`-th active row, newest first (OFFSET only here, to set up)."""
    with psycopg.connect(url) as conn:
        sort_at, record_id = conn.execute(
            f"SELECT sort_at, record_id FROM tenant_{TENANT}.records WHERE is_active "
            "ORDER BY sort_at DESC, record_id DESC OFFSET %s LIMIT 1", (offset - 1,)
        ).fetchone()
    return encode_cursor(sort_at, record_id)


def start_server(url: str, workdir: Path, env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """uvicorn (1 worker) over the warehouse `url`, tenants `bench` and `light`; (process, base URL)."""
    (workdir / "tenants.yaml").write_text(f"tenants:\n  - id: {TENANT}\n    api_key_env: BENCH_API_KEY\n"
                                          f"  - id: {LIGHT}\n    api_key_env: BENCH_LIGHT_KEY\n")
    (workdir / "dagster").mkdir(exist_ok=True)
    (workdir / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ETL_WAREHOUSE_URL": url, "ETL_TENANTS_FILE": str(workdir / "tenants.yaml"),
           "DAGSTER_HOME": str(workdir / "dagster"), "BENCH_API_KEY": KEY, "BENCH_LIGHT_KEY": LIGHT_KEY,
           "ETL_API_RATE_LIMIT_PER_MINUTE": "100000000", **(env_extra or {})}
    log = open(workdir / "api.log", "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "etl_platform.api.app:app_from_env", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{base}/health", timeout=5)
            return proc, base
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API did not start:\n" + (workdir / "api.log").read_text()) from None
            time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), load-independent cost."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_pids(url: str) -> list[int]:
    """The PostgreSQL server processes serving the API's pooled connections."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'etl-platform-api'")
        return [r[0] for r in rows.fetchall()]


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except FileNotFoundError:
            pass
    return total


def timed(client: httpx.Client | LightClient, params: dict) -> tuple[float, dict]:
    """(milliseconds, decoded body) of one GET /data."""
    started = time.perf_counter()
    if isinstance(client, LightClient):
        content = client.get("/data?" + urlencode(params))
    else:
        response = client.get("/data", params=params)
        response.raise_for_status()
        content = response.content
    elapsed = (time.perf_counter() - started) * 1000
    return elapsed, orjson.loads(content)


class LightClient:
    """A keep-alive stdlib HTTP client for the sequential latency figures: it costs the shared
    CPUs less than httpx, so the figures say more about the API than about the client."""

    def __init__(self, base: str, key: str = KEY, timeout: float = 10) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        self.headers = {"Authorization": f"Bearer {key}"}

    def request(self, path: str) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                self.conn.request("GET", path, headers=self.headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()  # the server closed an idle keep-alive connection: reconnect once
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str) -> bytes:
        status, body = self.request(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:200]!r}")
        return body

    def close(self) -> None:
        self.conn.close()


def summary(name: str, latencies: list[float], server: list[float], rows: int) -> tuple:
    latencies = sorted(latencies)
    p95 = latencies[int(len(latencies) * 0.95) - 1]
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return (name, len(latencies), rows, statistics.median(latencies), p95, p99, statistics.median(server))


def repeat(client: LightClient, pids: tuple[int, list[int]], name: str, params: dict, n: int) -> tuple:
    lat, srv, rows = [], [], 0
    api, pg = cpu_seconds(pids[0]), cpu_of(pids[1])
    for _ in range(n):
        ms, body = timed(client, params)
        lat.append(ms)
        srv.append(body["metadata"]["api_latency_ms"])
        rows = len(body["data"])
    return (*summary(name, lat, srv, rows), (cpu_seconds(pids[0]) - api) * 1000 / n, (cpu_of(pids[1]) - pg) * 1000 / n)


def walk(client: LightClient, pids: tuple[int, list[int]], name: str, cursor: str | None, pages: int) -> tuple:
    lat, srv, rows, seen = [], [], 0, set()
    api, pg = cpu_seconds(pids[0]), cpu_of(pids[1])
    for _ in range(pages):
        ms, body = timed(client, {"limit": 50, **({"cursor": cursor} if cursor else {})})
        lat.append(ms)
        srv.append(body["metadata"]["api_latency_ms"])
        rows += len(body["data"])
        seen.update(r["record_id"] for r in body["data"])
        cursor = body["metadata"]["pagination"]["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == rows, "a walk repeated rows"
    n = len(lat)
    return (*summary(name, lat, srv, rows), (cpu_seconds(pids[0]) - api) * 1000 / n, (cpu_of(pids[1]) - pg) * 1000 / n)


def load_test(base: str, cursors: list[str | None], threads: int, seconds: float, max_requests: int,
              kind: str = "httpx") -> tuple:
    """`threads` keep-alive clients (httpx, or the stdlib LightClient) request random pages until
    the time or the request budget runs out."""
    lat: list[float] = []
    lock, done, deadline = threading.Lock(), threading.Event(), time.monotonic() + seconds
    errors = [0]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        client: httpx.Client | LightClient = (
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
            if kind == "httpx" else LightClient(base)
        )
        try:
            while not done.is_set() and time.monotonic() < deadline:
                cursor = rng.choice(cursors)
                try:
                    ms, _ = timed(client, {"limit": 50, **({"cursor": cursor} if cursor else {})})
                except (httpx.HTTPError, OSError, RuntimeError):
                    with lock:
                        errors[0] += 1
                    continue
                with lock:
                    lat.append(ms)
                    if len(lat) >= max_requests:
                        done.set()
        finally:
            client.close()

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    lat.sort()
    return (kind, len(lat), elapsed, len(lat) / elapsed, statistics.median(lat), lat[int(len(lat) * 0.95) - 1],
            errors[0])


SEARCHES = [
    ("q, 40% of rows match ('review')", {"limit": 50, "q": "review"}),
    ("q, 1.5% match ('quasar')", {"limit": 50, "q": "quasar"}),
    ("q, 0.1% match ('zephyr')", {"limit": 50, "q": "zephyr"}),
    ("q, no match ('zzqxy')", {"limit": 50, "q": "zzqxy"}),
    ("q, no match, source=jira", {"limit": 50, "q": "zzqxy", "source": "jira"}),
]
# no index serves status: after the probe, every row is tested (until ETL_API_DATA_TIMEOUT_MS: a 504)
EXPENSIVE = {"limit": 50, "status": "no-such-status"}


def searches(client: LightClient, pids: tuple[int, list[int]], label: str, n: int) -> list[tuple]:
    return [repeat(client, pids, f"{name}{label}", params, n) for name, params in SEARCHES]


def fairness(url: str, base: str, threads: int, requests: int, seconds: float) -> dict:
    """`threads` clients of tenant bench send EXPENSIVE requests back to back while one client of
    tenant light sends first pages for `seconds` (at least `requests` of them): light latencies and
    statuses, the heavy requests' statuses, and the most bench queries seen running at once."""
    stop, lock, heavy = threading.Event(), threading.Lock(), Counter()

    def hammer() -> None:
        client = LightClient(base, timeout=60)
        try:
            while not stop.is_set():
                try:
                    status, _ = client.request("/data?" + urlencode(EXPENSIVE))
                except OSError:
                    status = "error"
                with lock:
                    heavy[status] += 1
        finally:
            client.close()

    pool = [threading.Thread(target=hammer) for _ in range(threads)]
    for t in pool:
        t.start()
    busy = [0]
    with psycopg.connect(url, autocommit=True) as watch:
        def running() -> int:
            return watch.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'etl-platform-api' "
                                 "AND backend_type = 'client backend' AND state = 'active' AND query LIKE %s",
                                 (f'%"tenant_{TENANT}"%',)).fetchone()[0]
        deadline = time.monotonic() + 30
        while threads and running() == 0 and time.monotonic() < deadline:  # the heavy queries have started
            time.sleep(0.05)
        light, lat, statuses = LightClient(base, LIGHT_KEY, timeout=60), [], Counter()
        end = time.monotonic() + seconds
        try:
            while len(lat) < requests or time.monotonic() < end:
                started = time.perf_counter()
                status, _ = light.request("/data?limit=50")
                lat.append((time.perf_counter() - started) * 1000)
                statuses[status] += 1
                busy[0] = max(busy[0], running())
        finally:
            light.close()
            stop.set()
    for t in pool:
        t.join()
    lat.sort()
    return {"n": len(lat), "median": statistics.median(lat), "p95": lat[max(0, int(len(lat) * 0.95) - 1)],
            "max": lat[-1], "light": dict(statuses), "heavy": dict(heavy), "busy": busy[0]}


def duckdb_searches(rows: int, workdir: Path, n: int) -> tuple[float, list[tuple]]:
    """The same records in a DuckDB warehouse (CSV, then INSERT ... SELECT), served by the API:
    (seconds to load, the SEARCHES and a first page measured as on PostgreSQL)."""
    from etl_platform.warehouse import Warehouse

    started = time.perf_counter()
    csv_path = workdir / "records.csv"
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(bench_rows(rows))
    warehouse = Warehouse(f"duckdb:///{workdir / 'warehouse.duckdb'}")
    with warehouse.connect(write=True) as conn:
        ensure_tables(conn, f"tenant_{TENANT}")
        conn.execute(f"INSERT INTO tenant_{TENANT}.records ({', '.join(COLUMNS)}) "
                     f"SELECT * FROM read_csv('{csv_path}', header = false, all_varchar = true)")
        ensure_tables(conn, f"tenant_{LIGHT}")
    csv_path.unlink()
    load_s = time.perf_counter() - started
    proc, base = start_server(str(warehouse.url), workdir)
    client = LightClient(base)
    try:
        for _ in range(20):
            timed(client, {"limit": 50})
        pids = (proc.pid, [])
        return load_s, [repeat(client, pids, "first page", {"limit": 50}, n), *searches(client, pids, "", n)]
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def print_table(results: list[tuple]) -> None:
    head = f"{'measurement':<46}{'requests':>9}{'rows/page':>10}{'median ms':>11}{'p95 ms':>9}{'p99 ms':>9}"
    print(head + f"{'server ms':>11}{'API CPU ms':>12}{'PG CPU ms':>11}")
    print("-" * (len(head) + 34))
    for name, n, rows, med, p95, p99, srv, cpu, pg in results:
        print(f"{name:<46}{n:>9}{rows:>10}{med:>11.2f}{p95:>9.2f}{p99:>9.2f}{srv:>11.2f}{cpu:>12.2f}{pg:>11.2f}")


def print_fairness(name: str, f: dict, threads: int) -> None:
    print(f"{name}: light tenant's first page while tenant bench sends {threads} concurrent {EXPENSIVE} requests:")
    print(f"  {f['n']} light requests, median {f['median']:.2f} ms, p95 {f['p95']:.2f} ms, max {f['max']:.0f} ms, "
          f"statuses {f['light']}; heavy statuses {f['heavy']}; bench queries running at once: at most {f['busy']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=1000, help="requests per fixed-page measurement")
    parser.add_argument("--search-requests", type=int, default=300, help="requests per q measurement")
    parser.add_argument("--pages", type=int, default=2000, help="pages in the consecutive walk")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--heavy-threads", type=int, default=12, help="concurrent expensive requests (fairness)")
    parser.add_argument("--no-duckdb", action="store_true", help="skip the DuckDB q figures")
    args = parser.parse_args()

    url = create_database()
    proc = None
    try:
        print(f"loading {args.rows:,} rows with COPY, then the search index ...", flush=True)
        load_s = load(url, args.rows)
        load(url, 2000, LIGHT)
        active = sum(1 for i in range(args.rows) if i % 50 != 0)
        deep_offset = min(900_000, active - active // 20)
        walk_offset = max(0, active - args.pages * 50)
        with tempfile.TemporaryDirectory() as tmp:
            proc, base = start_server(url, Path(tmp))
            client = LightClient(base)
            try:
                for _ in range(50):  # warm-up: connections
                    timed(client, {"limit": 50})
                    timed(client, {"limit": 50, "q": "zzqxy"})
                pid = (proc.pid, backend_pids(url))
                load_before = os.getloadavg()
                print("q on the fresh table (never analyzed) ...", flush=True)
                fresh = searches(client, pid, ", fresh table", args.search_requests)
                analyze_s = analyze(url)
                deep, walk_from = cursor_at(url, deep_offset), cursor_at(url, walk_offset) if walk_offset else None
                for _ in range(200):  # warm-up: the deep page
                    timed(client, {"limit": 50, "cursor": deep})
                print("pages ...", flush=True)
                results = [
                    repeat(client, pid, "first page", {"limit": 50}, args.requests),
                    repeat(client, pid, f"deep page (after {deep_offset:,} rows)", {"limit": 50, "cursor": deep},
                           args.requests),
                    repeat(client, pid, "deep page, source=github",
                           {"limit": 50, "cursor": deep, "source": "github"}, args.requests),
                    repeat(client, pid, "first page, status=done (ci)", {"limit": 50, "status": "done"},
                           args.requests),
                    walk(client, pid, f"walk {args.pages:,} pages from row {walk_offset:,}", walk_from, args.pages),
                    *searches(client, pid, ", analyzed", args.search_requests),
                ]
            finally:
                client.close()
            cursors = [None, deep, *[cursor_at(url, o) for o in range(50_000, deep_offset, 150_000)]]
            loads = [load_test(base, cursors, args.threads, args.seconds, 100_000, kind)
                     for kind in ("httpx", "stdlib")]
            print("fairness ...", flush=True)
            light_alone = fairness(url, base, 0, args.search_requests, 0)
            fair = fairness(url, base, args.heavy_threads, args.search_requests, 2 * args.seconds)
            proc.terminate()
            proc.wait(10)
            proc, base = start_server(url, Path(tmp), {"ETL_API_PG_TENANT_CONNECTIONS": "8"})  # the whole pool
            unfair = fairness(url, base, args.heavy_threads, 0, 2 * args.seconds)
            proc.terminate()
            proc.wait(10)
            proc = None
        duck = None
        if not args.no_duckdb:
            print("DuckDB ...", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                duck = duckdb_searches(args.rows, Path(tmp), args.search_requests)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        drop_database(url)

    print(f"\nPostgreSQL, {args.rows:,} records ({active:,} active): COPY + indexes in {load_s:.1f}s, "
          f"VACUUM ANALYZE in {analyze_s:.1f}s; uvicorn, 1 worker, loopback, keep-alive\n")
    print_table(fresh + results)
    print()
    for kind, n, elapsed, rps, med, p95, errors in loads:
        print(f"concurrent load ({kind} clients): {args.threads} threads, {n:,} requests in {elapsed:.1f}s -> "
              f"{rps:,.0f} requests/s (median {med:.2f} ms, p95 {p95:.2f} ms, {errors} errors)")
    print()
    print_fairness("alone", light_alone, 0)
    share = default_tenant_share(8)
    print_fairness(f"fair (default share: {share} of 8 connections per tenant)", fair, args.heavy_threads)
    print_fairness("unfair (ETL_API_PG_TENANT_CONNECTIONS=8: a tenant may take the whole pool)", unfair,
                   args.heavy_threads)
    if duck is not None:
        print(f"\nDuckDB, the same {args.rows:,} records (loaded in {duck[0]:.1f}s), the same API:\n")
        print_table(duck[1])
    pages = max(r[4] for r in results[:5])
    search = max(r[4] for r in fresh + results[5:])
    print(f"\ntarget p95 < 10 ms per 50-row page (sequential): {'met' if pages < 10 else 'NOT met'} "
          f"(worst p95 {pages:.2f} ms)")
    print(f"target p95 < 50 ms for q, with and without matches: {'met' if search < 50 else 'NOT met'} "
          f"(worst p95 {search:.2f} ms)")
    print(f"target p95 < 10 ms for the light tenant during {args.heavy_threads} expensive requests: "
          f"{'met' if fair['p95'] < 10 else 'NOT met'} (p95 {fair['p95']:.2f} ms)")
    print("server ms = median api_latency_ms reported by the API (request in, before the body is sent);")
    print("API CPU ms / PG CPU ms = CPU time per request of the uvicorn process / of its PostgreSQL")
    print("  backends (unlike latencies, barely affected by other load on the machine);")
    print(f"the clients share the machine's {os.cpu_count()} cores (load generator threads share one GIL);")
    print(f"1-minute load average, other work on the machine included: {load_before[0]:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
