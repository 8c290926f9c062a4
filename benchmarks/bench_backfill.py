"""Benchmark of backfills: single-run backfills (BackfillPolicy.single_run()) against Dagster's
default of one run per partition, as partitions per minute. Prints a table.

    python benchmarks/bench_backfill.py [--tenants 10] [--days 90] [--sample-days 10] [--no-daemon]
                                        [--planned-event-subsets] [--keep]

Sets up a fresh DAGSTER_HOME (the repo's dagster.yaml: run queue, platform coordinator and tag
limits; storage on a fresh PostgreSQL database of ETL_BENCH_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/postgres) and `--tenants` tenants with one small CSV source
(rows spread over `--days` days by `event_time`), DuckDB warehouses. Then measures:

1. single run, CLI: `dagster asset materialize --select '*' --partition-range 'D1|t00...Dn|t09'`,
   the whole tenants × days rectangle in one run (no daemon);
2. single-run policy, daemon: the same rectangle as an asset backfill (what the UI launches),
   executed by `dagster-daemon run`: the backfill daemon makes one ranged run per tenant, the
   queue runs them under the per-tenant and global limits;
3. one run per partition, daemon: `dagster job backfill -j ingest --partitions ...` over
   1 tenant × `--sample-days` days, one queued run per partition (Dagster's default).

Targets: single-run ≥ 20× the per-partition rate; the 900-partition backfill under 3 minutes.

Most of a big single run's time is Dagster writing one "materialization planned" event per
partition and asset when the run is created (one INSERT and one new connection each on
PostgreSQL). `--planned-event-subsets` sets DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS,
one planned event per asset instead, at the price Dagster documents: partitions of a failed run
are then not marked failed in the asset view. The platform leaves it off.
Every process started here is stopped by PID; the database is dropped and the folder removed
(unless --keep).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pgdb
import yaml
from pgdb import drop_database

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIRST = dt.date(2024, 1, 1)
NEVER = "0 0 1 1 *"
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def create_database() -> str:
    return pgdb.create_database("etl_bench_dagster")


def tenant_ids(count: int) -> list[str]:
    return [f"t{i:02d}" for i in range(count)]


def write_tenants(folder: Path, tenants: list[str], days: int, rows_per_day: int) -> Path:
    """One CSV source per tenant: `rows_per_day` events a day over `days` days (+1 on each side)."""
    entries = []
    for n, tenant in enumerate(tenants):
        path = folder / f"{tenant}_events.csv"
        lines = ["id,event_time,amount,note"]
        for d in range(-1, days + 1):
            day = FIRST + dt.timedelta(days=d)
            for i in range(rows_per_day):
                ts = dt.datetime.combine(day, dt.time((i * 5 + n) % 24, (i * 7) % 60))
                lines.append(f"{tenant}-{d}-{i},{ts.isoformat()}Z,{d * 10 + i},note {i}")
        path.write_text("\n".join(lines) + "\n")
        entries.append(
            {
                "id": tenant,
                "sources": [
                    {
                        "name": "events",
                        "kind": "csv",
                        "location": str(path),
                        "event_time": "event_time",
                        "primary_key": ["id"],
                        "field_mapping": {"source_id": "id", "title": "note", "value": "amount"},
                    }
                ],
            }
        )
    target = folder / "tenants.yaml"
    target.write_text(yaml.safe_dump({"tenants": entries}, sort_keys=False))
    return target


def write_home(home: Path, storage_url: str) -> None:
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    # psycopg2: dagster-postgres's NOTIFY with a bound parameter fails under psycopg 3 (SQLAlchemy 2.1's default)
    config["storage"] = {"postgres": {"postgres_url": storage_url.replace("postgresql://", "postgresql+psycopg2://")}}
    config["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    (home / "workspace.yaml").write_text(
        yaml.safe_dump(
            {"load_from": [{"python_module": {"module_name": "etl_platform.definitions", "location_name": "etl"}}]}
        )
    )


def key(tenant: str, day: dt.date) -> str:
    return f"{day.isoformat()}|{tenant}"


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started here (its own session) by PID: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def wait_runs(instance, tags: dict[str, str], count: int, timeout: float, started: float) -> tuple[float, list]:
    """Seconds from `started` until `count` runs with `tags` are finished; the runs."""
    from dagster import RunsFilter

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = instance.get_runs(RunsFilter(tags=tags))
        done = [r for r in runs if r.status.value in FINISHED]
        if len(runs) >= count and len(done) == len(runs):
            return time.monotonic() - started, runs
        time.sleep(0.5)
    raise TimeoutError(f"runs tagged {tags} not finished after {timeout}s")


def row_counts(url: str, tenants: list[str]) -> dict[str, tuple[int, int]]:
    from etl_platform.warehouse import Warehouse

    out = {}
    with Warehouse(url).connect() as conn:
        for tenant in tenants:
            events = conn.query(f'SELECT count(*) FROM "tenant_{tenant}"."events_rows"')[0][0]
            records = conn.query(f'SELECT count(*) FROM "tenant_{tenant}"."records"')[0][0]
            out[tenant] = (int(events), int(records))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--sample-days", type=int, default=10)
    parser.add_argument("--rows-per-day", type=int, default=4)
    parser.add_argument("--no-daemon", action="store_true", help="only the CLI single run")
    parser.add_argument(
        "--planned-event-subsets", action="store_true", help="set DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="etl_bench_backfill_"))
    home = work / "home"
    storage_url = create_database()
    write_home(home, storage_url)
    tenants = tenant_ids(args.tenants)
    tenants_file = write_tenants(work, tenants, args.days, args.rows_per_day)
    last = FIRST + dt.timedelta(days=args.days - 1)
    cli_url, daemon_url = f"duckdb:///{work / 'cli.duckdb'}", f"duckdb:///{work / 'daemon.duckdb'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        ETL_TENANTS_FILE=str(tenants_file),
        ETL_START_DATE=FIRST.isoformat(),
        ETL_HOURLY_CRON=NEVER,
        ETL_REBACKFILL_CRON=NEVER,
        DLT_TELEMETRY_DISABLED="1",
        RUNTIME__DLTHUB_TELEMETRY="false",
    )
    if args.planned_event_subsets:
        env["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"] = "true"
    os.environ.update(env)
    os.environ["ETL_WAREHOUSE_URL"] = daemon_url
    from dagster import DagsterInstance, RunsFilter
    from dagster._core.instance.ref import InstanceRef

    from etl_platform.automation.onboarding import sync_tenants
    from etl_platform.config.registry import load_registry

    print(
        f"DAGSTER_EVENT_BATCH_SIZE={os.environ.get('DAGSTER_EVENT_BATCH_SIZE')} "
        f"DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS={'true' if args.planned_event_subsets else 'unset'}"
    )
    rows: list[tuple[str, int, int, float]] = []
    daemon: subprocess.Popen | None = None
    logs = []
    try:
        with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
            print(sync_tenants(instance, load_registry()).summary())
            partitions = args.tenants * args.days

            # 1. the whole rectangle in one run, through the CLI
            print(f"single run via CLI: {args.tenants} tenants x {args.days} days ...", flush=True)
            log = (work / "cli.log").open("w")
            logs.append(log)
            started = time.monotonic()
            result = subprocess.run(
                [str(BIN / "dagster"), "asset", "materialize", "-m", "etl_platform.definitions", "--select", "*",
                 "--partition-range", f"{key(tenants[0], FIRST)}...{key(tenants[-1], last)}"],
                env={**env, "ETL_WAREHOUSE_URL": cli_url}, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            seconds = time.monotonic() - started
            if result.returncode:
                raise RuntimeError(f"dagster asset materialize failed; see {work / 'cli.log'}")
            rows.append(("single run, `dagster asset materialize --partition-range`", partitions,
                         len(instance.get_runs()), seconds))  # fmt: skip

            if not args.no_daemon:
                log = (work / "daemon.log").open("w")
                logs.append(log)
                daemon = subprocess.Popen(
                    [str(BIN / "dagster-daemon"), "run", "-w", str(home / "workspace.yaml")],
                    env={**env, "ETL_WAREHOUSE_URL": daemon_url}, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
                wanted = {"SCHEDULER", "SENSOR", "QUEUED_RUN_COORDINATOR", "BACKFILL"}
                deadline = time.monotonic() + 120
                while not wanted <= set(instance.get_daemon_heartbeats()):
                    if time.monotonic() > deadline or daemon.poll() is not None:
                        raise RuntimeError(f"dagster-daemon did not come up; see {work / 'daemon.log'}")
                    time.sleep(1)

                # 2. Dagster's default: one queued run per partition (1 tenant x sample days)
                sample = [key(tenants[0], FIRST + dt.timedelta(days=d)) for d in range(args.sample_days)]
                print(f"one run per partition via the daemon: {len(sample)} partitions ...", flush=True)
                started = time.monotonic()
                subprocess.run(
                    [str(BIN / "dagster"), "job", "backfill", "-w", str(home / "workspace.yaml"), "-j", "ingest",
                     "--partitions", ",".join(sample), "--noprompt"],
                    env={**env, "ETL_WAREHOUSE_URL": daemon_url}, cwd=work, check=True, capture_output=True,
                    start_new_session=True,
                )  # fmt: skip
                backfill_id = instance.get_backfills()[0].backfill_id
                seconds, runs = wait_runs(instance, {"dagster/backfill": backfill_id}, len(sample), 900, started)
                failed = [r.run_id for r in runs if r.status.value != "SUCCESS"]
                if failed:
                    raise RuntimeError(f"per-partition runs failed: {failed}; see {work / 'daemon.log'}")
                rows.append(("one run per partition, `dagster job backfill` + daemon", len(sample), len(runs),
                             seconds))  # fmt: skip

                # 3. the rectangle as an asset backfill (as the UI launches it), run by the daemon
                print(f"single-run policy via the daemon: {partitions} partitions ...", flush=True)
                backfill_id = launch_asset_backfill(instance, tenants, args.days)
                started = time.monotonic()
                seconds, runs = wait_runs(instance, {"dagster/backfill": backfill_id}, args.tenants, 900, started)
                failed = [r.run_id for r in runs if r.status.value != "SUCCESS"]
                if failed:
                    raise RuntimeError(f"backfill runs failed: {failed}; see {work / 'daemon.log'}")
                rows.append(("single-run policy, asset backfill + daemon", partitions, len(runs), seconds))
                print(f"  runs: {sorted(r.tags.get('etl/tenant', '?') for r in runs)}")

                cli_counts, daemon_counts = row_counts(cli_url, tenants), row_counts(daemon_url, tenants)
                same = "identical" if cli_counts == daemon_counts else f"DIFFERENT: {cli_counts} vs {daemon_counts}"
                print(f"rows per tenant, CLI single run vs daemon backfill: {same}")
            print(f"runs in the instance: {len(instance.get_runs(RunsFilter()))}")
    finally:
        if daemon is not None:
            stop(daemon)
        for log in logs:
            log.close()
        drop_database(storage_url)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print_table(rows)
    return 0


def launch_asset_backfill(instance, tenants: list[str], days: int) -> str:
    """Submit an asset backfill of every tenant × day, as the UI's 'Materialize partitions' does."""
    from dagster._core.execution.backfill import PartitionBackfill
    from dagster._core.utils import make_new_backfill_id

    from etl_platform.definitions import build_definitions

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    selection = sorted(k for k in graph.materializable_asset_keys)
    names = [key(t, FIRST + dt.timedelta(days=d)) for t in tenants for d in range(days)]
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=graph,
        partition_names=names,
        asset_selection=selection,
        backfill_timestamp=time.time(),
        tags={},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title="bench_backfill",
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


def print_table(rows: list[tuple[str, int, int, float]]) -> None:
    per_partition = next((r for r in rows if r[0].startswith("one run per partition")), None)
    base = per_partition[1] / per_partition[3] * 60 if per_partition else None
    header = f"{'mode':58} {'partitions':>10} {'runs':>5} {'seconds':>8} {'partitions/min':>15} {'speed-up':>9}"
    print()
    print(header)
    print("-" * len(header))
    for name, partitions, runs, seconds in rows:
        rate = partitions / seconds * 60
        speedup = f"{rate / base:8.1f}x" if base else "        -"
        print(f"{name:58} {partitions:>10} {runs:>5} {seconds:>8.1f} {rate:>15.1f} {speedup:>9}")
    print()
    print("targets: single-run >= 20x the per-partition rate; the 900-partition backfill under 180 s")


if __name__ == "__main__":
    sys.exit(main())
