"""A year on PostgreSQL against the same year on the embedded default (issue 13). Prints a table.

    python benchmarks/bench_year.py [--rows 1000000] [--days 365] [--keep]

Generates one CSV of `--rows` rows with event times spread over `--days` days (a flights-like
shape), then for each backend — DuckDB warehouse + SQLite Dagster storage, and PostgreSQL
warehouse + dagster-postgres storage, both on fresh, never-analyzed databases — measures through
the `dagster` CLI, as a user would:

1. the year as one single-run backfill (`--partition-range 'D1|fl...Dn|fl'`), wall time; the raw
   load, normalize and check seconds from the run's metadata; every day's count checked exact;
2. a re-run of one day after the year is loaded, against the first load of that day alone (a
   fresh tenant with the same file: its tables hold nothing yet). Both read the whole file (a
   file source has no day filter); the difference is what the year already in the tables costs;
3. a small partition (the shipped demo tenant), the median of three runs.

Targets: PostgreSQL wall time ≤ 2× DuckDB's; every check ≤ 0.25 of the normalize step; the
re-run of a day ≤ 1.5× its first load alone; a small partition on PostgreSQL ≤ 1.5× DuckDB's.
Ratios are taken within this run. Processes are stopped; databases dropped; folders removed
(unless --keep).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pgdb
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIRST = dt.date(2023, 1, 1)
CARRIERS = ["AA", "B6", "DL", "EV", "UA", "US", "WN", "MQ"]
AIRPORTS = ["EWR", "JFK", "LGA", "ATL", "ORD", "LAX", "SFO", "MIA", "BOS", "DCA"]


def write_flights(path: Path, rows: int, days: int) -> Counter[str]:
    """The CSV, and its rows per day."""
    rng = random.Random(13)
    per_day: Counter[str] = Counter()
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "time_hour", "carrier", "origin", "dest", "distance", "dep_delay", "tailnum"])
        for i in range(rows):
            day = FIRST + dt.timedelta(days=i * days // rows)
            ts = f"{day.isoformat()}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z"
            delay = "NA" if rng.random() < 0.02 else str(rng.randrange(-20, 300))
            out.writerow([i, ts, rng.choice(CARRIERS), rng.choice(AIRPORTS), rng.choice(AIRPORTS),
                          rng.randrange(100, 3000), delay, f"N{rng.randrange(10000):04d}"])  # fmt: skip
            per_day[day.isoformat()] += 1
    return per_day


def source(path: Path) -> dict:
    return {
        "name": "flights",
        "kind": "csv",
        "location": str(path),
        "event_time": "time_hour",
        "primary_key": ["id"],
        "field_mapping": {"source_id": "id", "title": "tailnum", "category": "carrier", "value": "dep_delay",
                          "created_at": "time_hour"},
    }  # fmt: skip


class Backend:
    """A DAGSTER_HOME, a warehouse, and the CLI run against them."""

    def __init__(self, kind: str, work: Path, tenants: list[dict]) -> None:
        self.kind = kind
        self.home = work / f"home_{kind}"
        self.home.mkdir(parents=True)
        config = yaml.safe_load((REPO / "dagster.yaml").read_text())
        self.databases: list[str] = []
        if kind == "postgres":
            storage = self._database("etl_bench_dagster")
            config["storage"] = {
                "postgres": {"postgres_url": storage.replace("postgresql://", "postgresql+psycopg2://")}
            }
            self.warehouse = self._database("etl_bench_wh")
        else:
            self.warehouse = f"duckdb:///{work / 'warehouse.duckdb'}"
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(config))
        (self.home / "tenants.yaml").write_text(yaml.safe_dump({"tenants": tenants}, sort_keys=False))
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "ETL_TENANTS_FILE": str(self.home / "tenants.yaml"),
            "ETL_WAREHOUSE_URL": self.warehouse,
            "ETL_START_DATE": FIRST.isoformat(),
        }

    def _database(self, prefix: str) -> str:
        url = pgdb.create_database(prefix)
        self.databases.append(url)
        return url

    def cli(self, *args: str) -> float:
        """Run a CLI command; its wall seconds (fails loudly)."""
        started = time.perf_counter()
        proc = subprocess.run([str(BIN / args[0]), *args[1:]], env=self.env, cwd=self.home, capture_output=True,
                              text=True)  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return time.perf_counter() - started

    def materialize(self, partition: str) -> float:
        flag = "--partition-range" if "..." in partition else "--partition"
        return self.cli("dagster", "asset", "materialize", "-m", "etl_platform.definitions", "--select", "*",
                        flag, partition)  # fmt: skip

    def query(self, sql: str) -> list:
        sys.path.insert(0, str(REPO))
        from etl_platform.warehouse import Warehouse

        with Warehouse(self.warehouse).connect() as conn:
            return conn.query(sql)

    def run_metadata(self, tenant: str, day: dt.date) -> dict:
        """The raw and records metadata of one partition's latest materialization."""
        code = f"""
import json
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
with DagsterInstance.get() as i:
    out = {{}}
    for key in (["raw", "flights", "flights_rows"], ["normalized", "records"]):
        r = i.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(key),
            asset_partitions=["{day.isoformat()}|{tenant}"]), limit=1).records[0]
        out["/".join(key)] = {{k: getattr(v, "value", v) for k, v in r.asset_materialization.metadata.items()
                              if k in ("load", "seconds", "dagster/row_count", "raw_rows")}}
    print(json.dumps(out, default=str))
"""
        proc = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        for url in self.databases:
            pgdb.drop_database(url)


def measure(kind: str, work: Path, flights: Path, per_day: Counter[str], days: int, solo_day: dt.date) -> dict:
    demo = yaml.safe_load((REPO / "tenants.yaml").read_text())["tenants"][0]
    for s in demo["sources"]:
        s["location" if "location" in s else "url"] = str(REPO / s.get("location", s.get("url")))
    tenants = [
        {"id": "fl", "sources": [source(flights)]},
        {"id": "solo", "sources": [source(flights)]},  # the same file, its tables empty
        demo,
    ]
    backend = Backend(kind, work, tenants)
    try:
        backend.cli("etl-platform", "tenants", "sync")
        last = FIRST + dt.timedelta(days=days - 1)
        year = backend.materialize(f"{FIRST}|fl...{last}|fl")
        counts = {str(d): n for d, n in backend.query(
            "SELECT CAST(event_date AS VARCHAR), count(*) FROM tenant_fl.records GROUP BY 1")}  # fmt: skip
        exact = counts == dict(per_day)
        meta = backend.run_metadata("fl", FIRST)
        seconds = meta["normalized/records"]["seconds"]
        raw_s = meta["raw/flights/flights_rows"]["load (whole run)"]["duration_s"]
        first_alone = backend.materialize(f"{solo_day}|solo")
        rerun = backend.materialize(f"{solo_day}|fl")
        today = dt.date.today()
        small = [backend.materialize(f"{today}|demo") for _ in range(3)]
        return {
            "kind": kind, "year_s": year, "raw_s": raw_s, "normalize_s": seconds["normalize"],
            "checks_s": seconds["checks"], "exact": exact, "first_alone_s": first_alone, "rerun_s": rerun,
            "small_s": statistics.median(small),
        }  # fmt: skip
    finally:
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_year_"))
    try:
        flights = work / "flights.csv"
        per_day = write_flights(flights, args.rows, args.days)
        solo_day = FIRST + dt.timedelta(days=args.days // 2)
        print(f"{args.rows:,} rows over {len(per_day)} days ({flights.stat().st_size / 1e6:.0f} MB); work: {work}")
        results = [measure(kind, work, flights, per_day, args.days, solo_day) for kind in ("duckdb", "postgres")]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    duck, pg = results
    print(f"\n{'':34}{'DuckDB':>12}{'PostgreSQL':>12}")
    for label, key in (("year, one single-run backfill (s)", "year_s"), ("  raw load (s)", "raw_s"),
                       ("  normalize (s)", "normalize_s"), ("  checks (s)", "checks_s"),
                       ("first load of one day alone (s)", "first_alone_s"), ("re-run of that day (s)", "rerun_s"),
                       ("small partition (demo), median (s)", "small_s")):  # fmt: skip
        print(f"{label:34}{duck[key]:>12.1f}{pg[key]:>12.1f}")
    print(f"{'every day exact':34}{str(duck['exact']):>12}{str(pg['exact']):>12}")
    print("\nratios (target)")
    print(f"  PostgreSQL / DuckDB, the year        {pg['year_s'] / duck['year_s']:.2f}  (≤ 2)")
    for r in results:
        share = r["checks_s"] / max(r["normalize_s"], 1e-9)
        print(f"  checks / normalize, {r['kind']:<10}       {share:.2f}  (≤ 0.25)")
        print(f"  re-run / first load alone, {r['kind']:<10} {r['rerun_s'] / r['first_alone_s']:.2f}  (≤ 1.5)")
    print(f"  small partition PostgreSQL / DuckDB  {pg['small_s'] / duck['small_s']:.2f}  (≤ 1.5)")


if __name__ == "__main__":
    main()
