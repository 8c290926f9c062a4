"""Thousands of tenants on one machine (issue 14): per-run cost against the number of tenants,
and a full hourly cycle through the daemon. Prints tables.

    python benchmarks/bench_tenants.py [--sizes 10,100,1000,5000] [--storage sqlite|postgres]
    python benchmarks/bench_tenants.py --cycle 1000 [--storage sqlite|postgres] [--chunk-size 50]
                                       [--warehouse duckdb|postgres]

Each size N gets a fresh DAGSTER_HOME (the repo's dagster.yaml), a tenants file of N copies of
the shipped `demo` tenant (3 sources: two CSV files and a feed, so the asset graph stays the same)
and a DuckDB warehouse. Measured, each in a fresh process as in production:

- `etl-platform tenants sync`: the first (registers N tenants) and a second (nothing to add);
- the tenants file: parse + validate the whole file (once per change), then load it in a new
  process (the compiled form: what every run and tick pays);
- definitions load in a new process;
- one `hourly_ingest` tick (chunked run requests), a `tenant_onboarding` tick with and without
  its cursor, a `retry_failed_runs` tick;
- `dagster asset materialize` of one partition (`<today>|t0000`), wall time and peak RSS.

`--cycle N`: N tenants, then `dagster-daemon run` with the hourly schedule set to fire once, at
the next minute: the daemon creates the chunked runs and the queued coordinator runs them (4 at
a time, one run per tenant at a time). Prints the time from the tick to the last run's end and
checks that every tenant's partition of `normalized/records` is materialized and every check
result of the cycle passed. Target: 1,000 tenants within 30 minutes on 2 cores.
`--warehouse postgres` loads into a fresh PostgreSQL database (production) instead of DuckDB
(a file per tenant beside `warehouse.duckdb`, ETL_DUCKDB_TENANT_FILES: runs of different tenants
write at once).
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
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NEVER = "0 0 1 1 *"


def demo_tenant() -> dict:
    demo = yaml.safe_load((REPO / "tenants.yaml").read_text())["tenants"][0]
    for s in demo["sources"]:
        key = "location" if "location" in s else "url"
        s[key] = str(REPO / s[key])
    return demo


def write_tenants(path: Path, count: int) -> None:
    demo = demo_tenant()
    tenants = []
    for i in range(count):
        tenant = json.loads(json.dumps(demo))  # no YAML aliases: a file as an operator writes it
        tenant.update(id=f"t{i:04d}", name=f"Tenant {i}", api_key_env=f"T{i:04d}_API_KEY")
        tenants.append(tenant)
    path.write_text(yaml.safe_dump({"tenants": tenants}, sort_keys=False))


class Home:
    def __init__(self, work: Path, count: int, storage: str, warehouse: str = "duckdb", **env: str) -> None:
        self.path = work / f"home_{count}"
        self.path.mkdir(parents=True)
        config = yaml.safe_load((REPO / "dagster.yaml").read_text())
        self.database = None
        if storage == "postgres":
            self.database = pgdb.create_database("etl_bench_tenants")
            url = self.database.replace("postgresql://", "postgresql+psycopg2://")
            config["storage"] = {"postgres": {"postgres_url": url}}
        config["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1
        (self.path / "dagster.yaml").write_text(yaml.safe_dump(config))
        (self.path / "workspace.yaml").write_text(yaml.safe_dump(
            {"load_from": [{"python_module": {"module_name": "etl_platform.definitions", "location_name": "etl"}}]}
        ))  # fmt: skip
        write_tenants(self.path / "tenants.yaml", count)
        self.warehouse = pgdb.create_database("etl_bench_warehouse") if warehouse == "postgres" else None
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.path),
            "ETL_TENANTS_FILE": str(self.path / "tenants.yaml"),
            "ETL_WAREHOUSE_URL": self.warehouse or f"duckdb:///{self.path / 'warehouse.duckdb'}",
            "ETL_HOURLY_CRON": NEVER,
            "ETL_REBACKFILL_CRON": NEVER,
            "ETL_FRESHNESS_CRON": NEVER,
            **env,
        }

    def run(self, *args: str) -> tuple[float, int, str]:
        """(wall seconds, peak RSS in MB, stdout) of a command in a new process."""
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            started = time.perf_counter()
            proc = subprocess.Popen(args, env=self.env, cwd=self.path, stdout=out, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
        return wall, usage.ru_maxrss // 1024, stdout

    def python(self, code: str) -> dict:
        return json.loads(self.run(sys.executable, "-c", code)[2].strip().splitlines()[-1])

    def close(self) -> None:
        for url in (self.database, self.warehouse):
            if url:
                pgdb.drop_database(url)


TIMINGS = """
import json, time
t = time.perf_counter()
from etl_platform.config.registry import load_registry, ParseCounter
from etl_platform.config.registry import _compile
from pathlib import Path
import os
path = Path(os.environ["ETL_TENANTS_FILE"])
started = time.perf_counter(); _compile(path.read_text(), path, None); parse = time.perf_counter() - started
started = time.perf_counter(); registry = load_registry(); compiled = time.perf_counter() - started
started = time.perf_counter(); from etl_platform.definitions import defs; definitions = time.perf_counter() - started
import datetime as dt
from dagster import DagsterInstance, build_schedule_context, build_sensor_context
out = {"parse": parse, "load_compiled": compiled, "definitions": definitions}
with DagsterInstance.get() as instance:
    repo = defs.get_repository_def()
    now = dt.datetime.now(dt.timezone.utc).replace(hour=12)
    started = time.perf_counter()
    tick = defs.resolve_schedule_def("hourly_ingest").evaluate_tick(
        build_schedule_context(instance=instance, scheduled_execution_time=now, repository_def=repo))
    out["hourly_tick"] = time.perf_counter() - started
    out["hourly_runs"] = len(tick.run_requests)
    onboarding = defs.resolve_sensor_def("tenant_onboarding")
    started = time.perf_counter()
    first = onboarding.evaluate_tick(build_sensor_context(instance=instance))
    out["onboarding_tick"] = time.perf_counter() - started
    started = time.perf_counter()
    onboarding.evaluate_tick(build_sensor_context(instance=instance, cursor=first.cursor))
    out["onboarding_tick_unchanged"] = time.perf_counter() - started
    started = time.perf_counter()
    defs.resolve_sensor_def("retry_failed_runs").evaluate_tick(build_sensor_context(instance=instance))
    out["retry_tick"] = time.perf_counter() - started
print(json.dumps(out))
"""


def sizes(args: argparse.Namespace, work: Path) -> None:
    rows = []
    for count in [int(n) for n in args.sizes.split(",")]:
        home = Home(work, count, args.storage)
        try:
            first_sync = home.run(str(BIN / "etl-platform"), "tenants", "sync")[0]
            again_sync = home.run(str(BIN / "etl-platform"), "tenants", "sync")[0]
            timings = home.python(TIMINGS)
            today = dt.datetime.now(dt.timezone.utc).date()
            run = [home.run(str(BIN / "dagster"), "asset", "materialize", "-m", "etl_platform.definitions",
                            "--select", "*", "--partition", f"{today}|t0000") for _ in range(2)]  # fmt: skip
            wall, rss = min(r[0] for r in run), max(r[1] for r in run)
            rows.append((count, first_sync, again_sync, timings, wall, rss))
            print(f"N={count}: done", flush=True)
        finally:
            home.close()
    print(f"\nstorage: {args.storage}; seconds (one-partition run: the faster of two)\n")
    head = ("N", "sync", "sync again", "parse file", "load compiled", "defs load", "hourly tick", "runs",
            "onboarding", "unchanged", "retry tick", "1-partition run", "peak RSS MB")  # fmt: skip
    print(" | ".join(head))
    for count, first_sync, again_sync, t, wall, rss in rows:
        cells = [count, first_sync, again_sync, t["parse"], t["load_compiled"], t["definitions"], t["hourly_tick"],
                 t["hourly_runs"], t["onboarding_tick"], t["onboarding_tick_unchanged"], t["retry_tick"], wall, rss]
        print(" | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells))  # fmt: skip
    base = rows[0][4]
    for count, *_, wall, _rss in rows:
        print(f"one-partition run at N={count}: {wall / base:.2f}x N={rows[0][0]}")


CYCLE_CHECK = """
import json, os, datetime as dt
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, DagsterEventType, RunsFilter
day = os.environ["BENCH_DAY"]; count = int(os.environ["BENCH_COUNT"]); since = float(os.environ["BENCH_SINCE"])
with DagsterInstance.get() as i:
    runs = i.get_run_records(RunsFilter(created_after=dt.datetime.fromtimestamp(since, dt.timezone.utc)), limit=100000)
    statuses = {}
    for r in runs:
        statuses[r.dagster_run.status.value] = statuses.get(r.dagster_run.status.value, 0) + 1
    done = all(r.dagster_run.status.value in ("SUCCESS", "FAILURE", "CANCELED") for r in runs)
    ends = [r.end_time for r in runs if r.end_time]
    out = {"runs": len(runs), "statuses": statuses, "done": done and len(runs) > 0, "last_end": max(ends or [0])}
    if out["done"]:
        keys = [f"{day}|t{n:04d}" for n in range(count)]
        got = set()
        for start in range(0, len(keys), 500):
            res = i.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(["normalized", "records"]),
                asset_partitions=keys[start:start + 500], after_timestamp=since), limit=10000)
            got |= {r.partition_key for r in res.records}
        passed = failed = 0
        for r in runs:
            checks = i.get_records_for_run(r.dagster_run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
            for e in checks.records:
                if e.event_log_entry.dagster_event.event_specific_data.passed:
                    passed += 1
                else:
                    failed += 1
        out.update(materialized=len(got), checks_passed=passed, checks_failed=failed)
    print(json.dumps(out))
"""


def cycle(args: argparse.Namespace, work: Path) -> None:
    count = args.cycle
    fire = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=2)).replace(second=0, microsecond=0)
    home = Home(work, count, args.storage, args.warehouse, ETL_HOURLY_CRON=f"{fire.minute} {fire.hour} * * *",
                ETL_CHUNK_SIZE=str(args.chunk_size), ETL_TIMEZONE="UTC")  # fmt: skip
    daemon = None
    try:
        home.run(str(BIN / "etl-platform"), "tenants", "sync")
        # the tick at least 3 minutes after the daemon starts (on a loaded machine it takes a minute
        # to start; a tick due before it runs is never made)
        fire = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=3)).replace(second=0, microsecond=0)
        home.env["ETL_HOURLY_CRON"] = f"{fire.minute} {fire.hour} * * *"
        log = (work / "daemon.log").open("w")
        daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(home.path / "workspace.yaml")],
                                  env=home.env, cwd=home.path, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
        print(f"{count} tenants registered; the hourly tick fires at {fire:%H:%M} UTC", flush=True)
        since = str(fire.timestamp() - 60)
        home.env.update({"BENCH_DAY": fire.date().isoformat(), "BENCH_COUNT": str(count), "BENCH_SINCE": since})
        deadline = time.time() + 3 * 3600
        while time.time() < deadline:
            time.sleep(20)
            state = home.python(CYCLE_CHECK)
            print(f"  {dt.datetime.now(dt.timezone.utc):%H:%M:%S} runs {state['runs']} {state['statuses']}", flush=True)
            if state["done"] and state.get("materialized") is not None:
                break
        elapsed = state["last_end"] - fire.timestamp()
        print(f"\nhourly cycle of {count} tenants (chunks of {args.chunk_size}, storage {args.storage}, "
              f"warehouse {args.warehouse}): {state['runs']} runs, "
              f"{elapsed / 60:.1f} min from the tick to the last run's end")  # fmt: skip
        print(f"partitions of normalized/records materialized: {state['materialized']} of {count}; "
              f"checks passed {state['checks_passed']}, failed {state['checks_failed']}; runs {state['statuses']}")
        if args.warehouse == "duckdb":  # a file per tenant (ETL_DUCKDB_TENANT_FILES), no lock file left
            files = len(list((home.path / "tenants").glob("*.duckdb")))
            locks = len(list(home.path.rglob("*.lock")))
            print(f"DuckDB: {files} tenant files in {home.path / 'tenants'}; {locks} lock files left")
    finally:
        if daemon is not None:
            os.killpg(daemon.pid, 15)
            daemon.wait(60)
        home.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument("--storage", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--cycle", type=int, help="run a full hourly cycle of this many tenants instead")
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--warehouse", choices=("duckdb", "postgres"), default="duckdb", help="--cycle only")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_tenants_"))
    try:
        cycle(args, work) if args.cycle else sizes(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
