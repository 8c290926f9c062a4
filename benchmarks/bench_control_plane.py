"""Dagster's storage over a year of 1,000 tenants (issue 24): what one tenant-day load writes,
the control plane at a year, what the purge removes, and weeks of hourly operation.

    python benchmarks/bench_control_plane.py --smoke     # small sizes, a few minutes
    python benchmarks/bench_control_plane.py             # the issue's sizes (long: see README)

Everything runs on PostgreSQL (ETL_BENCH_POSTGRES_URL, default the local test server): Dagster's
storage and the warehouse are fresh databases, dropped at the end (--keep keeps them).

1. Per load (real runs). `--sample` demo tenants (two CSV files and a feed each, as
   `bench_tenants.py`) are loaded by the platform's own code path: the `hourly_ingest` tick's
   run requests, executed in process as the daemon would launch them. Then the same requests
   again: a reload that changes nothing. Printed per tenant-day load: Dagster's event rows and
   KiB by event type (the length of the stored JSON), the rows of `asset_check_executions`,
   `asset_event_tags`, `runs`/`run_tags`, the bytes Dagster's tables grew on disk (tables,
   indexes and TOAST), and what the warehouse holds per tenant-day. Re-run it after a change
   to what a run writes (issue 24 item 1): every figure below follows from these runs.
2. The year. `--tenants` x `--days` partitions of `normalized/records` (the asset whose
   partitions tab is timed), each loaded `--loads` times, the loads of one day in chunks of 50
   tenants as the schedule runs them. These runs are written in bulk: the rows the real runs
   stored (events, asset event tags, check executions, run and tags) copied with the tenant, day,
   run id and time changed, with PostgreSQL's COPY; Dagster's asset record then points at the
   newest of them. Dagster's single-event writes (one transaction and NOTIFY each) take 15-50 ms
   here, too slow for millions of rows. `--failed-share` of the loads fail (planned, never
   materialized, run FAILURE), so the failed subset is not empty.
   Timed, before and after `purge --older-than <retention>` (then `VACUUM`):
   - the partitions tab: `dagster-webserver` on the instance, the GraphQL query the tab issues
     (PartitionHealthQuery), first view (no status cache, as after a tenant is added: the
     tenant dimension's keys change the cache's definition id) and warm (the same query again);
   - the status cache per asset (`asset_keys.cached_status_data`, bytes);
   - `instance.get_materialized_partitions`;
   - webserver + code server memory (RSS of the webserver's process tree);
   - the platform exporter's first refresh (`PlatformState.refresh`) and a second one;
   - the purge itself: seconds, runs and rows removed, rows per statement.
3. Steady state. `--sim-tenants` tenants operated hourly for `--sim-days` days in compressed
   time (the hourly tick's chunks, 3 late-data hours, the 02:30 re-backfill of 7 days, and the
   daily purge at 03:00 with `--retention-days`), written in bulk from the real runs' rows. After
   each simulated day: Dagster's database size. Printed scaled to 1,000 tenants: GB per day
   before retention (growth while nothing is old enough to purge) and the plateau after it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pgdb
import psycopg
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NEVER = "0 0 1 1 *"
RECORDS = '["normalized", "records"]'  # AssetKey.to_string() of the timed asset
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
CHUNK = 50  # tenants per scheduled run (ETL_CHUNK_SIZE's default)
DAGSTER_TABLES = ("event_logs", "asset_event_tags", "asset_check_executions", "runs", "run_tags", "asset_keys")
KIB = 1024.0
PARTITION_HEALTH_QUERY = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
        ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
        ... on MultiPartitionStatuses {
          primaryDimensionName
          ranges {
            primaryDimStartKey primaryDimEndKey primaryDimStartTime primaryDimEndTime
            secondaryDim {
              ... on TimePartitionStatuses { ranges { status startTime endTime startKey endKey } }
              ... on DefaultPartitionStatuses { materializedPartitions materializingPartitions failedPartitions }
            }
          }
        }
      }
    }
  }
}
"""  # the query of the asset's Partitions tab, as dagster-webserver 1.13's UI sends it


def tenant_id(n: int) -> str:
    return f"t{n:04d}"


def log(text: str) -> None:
    print(f"  [{dt.datetime.now():%H:%M:%S}] {text}", flush=True)


# --- the instance ------------------------------------------------------------------------------


def demo_tenant() -> dict:
    demo = yaml.safe_load((REPO / "tenants.yaml").read_text())["tenants"][0]
    for source in demo["sources"]:
        key = "location" if "location" in source else "url"
        source[key] = str(REPO / source[key])
    return demo


class Home:
    """A DAGSTER_HOME on a fresh PostgreSQL database, with a PostgreSQL warehouse and demo tenants."""

    def __init__(self, work: Path, name: str, tenants: int, keep: bool) -> None:
        self.path = work / name
        self.path.mkdir(parents=True)
        self.keep = keep
        self.dagster_url = pgdb.create_database(f"bench_cp_{name}")
        self.warehouse_url = pgdb.create_database(f"bench_cp_{name}_wh")
        url = self.dagster_url.replace("postgresql://", "postgresql+psycopg2://")  # dagster-postgres' NOTIFY
        config = {
            "telemetry": {"enabled": False},
            "storage": {"postgres": {"postgres_url": url}},
            "compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager",
                             "class": "NoOpComputeLogManager"},
        }  # fmt: skip
        (self.path / "dagster.yaml").write_text(yaml.safe_dump(config))
        (self.path / "workspace.yaml").write_text(yaml.safe_dump(
            {"load_from": [{"python_module": {"module_name": "etl_platform.definitions", "location_name": "etl"}}]}
        ))  # fmt: skip
        demo = demo_tenant()
        samples = self.path / "samples"  # this home's copy: a load that changes data edits it
        samples.mkdir()
        for source in demo["sources"]:
            key = "location" if "location" in source else "url"
            copy = samples / Path(source[key]).name
            copy.write_bytes(Path(source[key]).read_bytes())
            source[key] = str(copy)
        rows = []
        for n in range(tenants):
            tenant = json.loads(json.dumps(demo))
            tenant.update(id=tenant_id(n), name=f"Tenant {n}", api_key_env=f"T{n:04d}_API_KEY")
            rows.append(tenant)
        (self.path / "tenants.yaml").write_text(yaml.safe_dump({"tenants": rows}, sort_keys=False))
        self.env = {
            "DAGSTER_HOME": str(self.path),
            "ETL_TENANTS_FILE": str(self.path / "tenants.yaml"),
            "ETL_WAREHOUSE_URL": self.warehouse_url,
            "ETL_HOURLY_CRON": NEVER,
            "ETL_REBACKFILL_CRON": NEVER,
            "ETL_FRESHNESS_CRON": NEVER,
            "ETL_RETENTION_CRON": NEVER,
            "ETL_TIMEZONE": "UTC",
            # as deployed (docker-compose.yml, the Helm values)
            "DAGSTER_EVENT_BATCH_SIZE": "1000",
            "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
        }
        print(f"  Dagster storage: {self.dagster_url}\n  warehouse: {self.warehouse_url}", flush=True)

    def activate(self) -> None:
        """This process works on this instance (the platform reads its settings when used)."""
        os.environ.update(self.env)

    def sql(self) -> psycopg.Connection:
        return psycopg.connect(self.dagster_url, autocommit=True)

    def close(self) -> None:
        if self.keep:
            print(f"  kept: {self.dagster_url}, {self.warehouse_url}, {self.path}")
            return
        for url in (self.dagster_url, self.warehouse_url):
            pgdb.drop_database(url)


def table_bytes(conn: psycopg.Connection, tables=DAGSTER_TABLES) -> dict[str, int]:
    """On-disk bytes (table, indexes, TOAST) of Dagster's tables."""
    rows = conn.execute(
        "SELECT relname, pg_total_relation_size(oid) FROM pg_class WHERE relkind = 'r' AND relname = ANY(%s) "
        "AND relnamespace = 'public'::regnamespace",
        [list(tables)],
    ).fetchall()
    return dict(rows)


def database_bytes(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


# --- 1. real runs -------------------------------------------------------------------------------


KINDS = ("first load", "reload, unchanged", "reload, one source changed")


@dataclass
class Load:
    """What one real run stored, per table, and the rows to clone it from."""

    run_id: str
    tenants: list[str]
    day: dt.date
    seconds: float
    success: bool
    disk_bytes: int  # Dagster's tables' growth during the run
    events: list[tuple] = field(default_factory=list)  # event_logs rows, ordered by id
    event_tags: list[tuple] = field(default_factory=list)
    checks: list[tuple] = field(default_factory=list)
    run_row: tuple = ()
    run_tags: list[tuple] = field(default_factory=list)
    kind: str = "first load"  # first load | reload, unchanged | reload, one source changed

    @property
    def tenant_days(self) -> int:
        return len(self.tenants)


EVENT_COLUMNS = "id, run_id, event, dagster_event_type, timestamp, step_key, asset_key, partition"
TAG_COLUMNS = "event_id, asset_key, key, value, event_timestamp"
CHECK_COLUMNS = (
    "asset_key, check_name, partition, run_id, execution_status, evaluation_event, evaluation_event_timestamp, "
    "evaluation_event_storage_id, materialization_event_storage_id, create_timestamp"
)
RUN_COLUMNS = (
    "run_id, snapshot_id, pipeline_name, mode, status, run_body, partition, partition_set, create_timestamp, "
    "update_timestamp, start_time, end_time, backfill_id"
)


def read_load(conn: psycopg.Connection, load: Load) -> None:
    run = [load.run_id]
    load.events = conn.execute(f"SELECT {EVENT_COLUMNS} FROM event_logs WHERE run_id = %s ORDER BY id", run).fetchall()
    ids = [r[0] for r in load.events]
    load.event_tags = conn.execute(
        f"SELECT {TAG_COLUMNS} FROM asset_event_tags WHERE event_id = ANY(%s) ORDER BY id", [ids]
    ).fetchall()
    load.checks = conn.execute(
        f"SELECT {CHECK_COLUMNS} FROM asset_check_executions WHERE run_id = %s ORDER BY id", run
    ).fetchall()
    load.run_row = conn.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = %s", run).fetchone()
    load.run_tags = conn.execute("SELECT key, value FROM run_tags WHERE run_id = %s ORDER BY id", run).fetchall()


def real_loads(home: Home, day: dt.date) -> tuple[list[Load], float, float]:
    """The hourly tick's requests for `day` (its noon), executed in process, twice: the second
    time nothing changed in the sources. Then the day before, once: the warehouse's growth per
    further tenant-day (KiB; the first day also pays for the tenant's tables)."""
    home.activate()
    from dagster import DagsterInstance, build_schedule_context

    from etl_platform.automation.onboarding import sync_tenants
    from etl_platform.config.registry import load_registry
    from etl_platform.definitions import build_definitions

    defs = build_definitions()
    job = defs.resolve_job_def("ingest")
    loads = []

    def tick(when: dt.date) -> list:
        noon = dt.datetime.combine(when, dt.time(12), tzinfo=dt.timezone.utc)
        context = build_schedule_context(instance=instance, scheduled_execution_time=noon,
                                         repository_def=defs.get_repository_def())  # fmt: skip
        return defs.resolve_schedule_def("hourly_ingest").evaluate_tick(context).run_requests

    def execute(request, when: dt.date, what: str) -> Load:
        before = sum(table_bytes(conn).values())
        tags = {k: v for k, v in request.tags.items() if not k.startswith("dagster/partition")}
        started = time.perf_counter()
        # as the daemon launches it: the request's assets and its checks (the schedule's: none)
        subset = job.get_subset(asset_selection=set(request.asset_selection),
                                asset_check_selection=set(request.asset_check_keys or ()))
        result = subset.execute_in_process(
            instance=instance, partition_key=request.partition_key, tags=tags, raise_on_error=False, run_config=QUIET,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        tenants = (request.tags.get("etl/tenants") or request.tags.get("etl/tenant") or "").split(",")
        load = Load(result.run_id, tenants, when, seconds, result.success, sum(table_bytes(conn).values()) - before,
                    kind=what)
        read_load(conn, load)
        log(f"{what}: run {load.run_id[:8]} of {len(tenants)} tenants on {when}, {seconds:.1f}s, "
            f"{'success' if result.success else 'FAILURE'}")  # fmt: skip
        return load

    with DagsterInstance.get() as instance, home.sql() as conn:
        sync_tenants(instance, load_registry())
        requests = tick(day)
        for what in ("first load", "reload, unchanged"):
            loads.extend(execute(request, day, what) for request in requests)
        tickets = home.path / "samples" / "support_tickets.csv"  # every tenant's: one row more
        tickets.write_text(tickets.read_text().rstrip("\n") + "\n" + tickets.read_text().splitlines()[-1]
                           .replace(",", "-changed,", 1) + "\n")
        loads.extend(execute(request, day, "reload, one source changed") for request in requests)
        first_day, rows_before = warehouse_bytes(home), warehouse_bytes(home, rows_only=True)
        previous = day - dt.timedelta(days=1)
        for request in tick(previous):
            execute(request, previous, "another day (warehouse growth)")
        tenants = home_tenants(loads)
        further_day = (warehouse_bytes(home, rows_only=True) - rows_before) / tenants / KIB
    return loads, first_day / tenants / KIB, further_day


def home_tenants(loads: list[Load]) -> int:
    return len({t for load in loads for t in load.tenants})


def warehouse_bytes(home: Home, rows_only: bool = False) -> int:
    """The tenants' schemas on disk (tables, indexes, TOAST), or the bytes of their rows alone
    (a few rows more fit in pages already allocated: the disk size moves in 8 KiB pages)."""
    with psycopg.connect(home.warehouse_url) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname LIKE 'tenant\\_%%'"
        ).fetchall()  # fmt: skip
        if not rows_only:
            return sum(int(size) for _, _, size in tables)
        return sum(int(conn.execute(f'SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM "{schema}"."{table}" t')
                       .fetchone()[0]) for schema, table, _ in tables)  # fmt: skip


def event_kind(row: tuple) -> str:
    return row[3] or "log line (no event type)"


def footprint(loads: list[Load]) -> dict[str, dict]:
    """Per kind of load: rows and bytes per tenant-day, by event type and table."""
    out: dict[str, dict] = {}
    for name in KINDS:
        group = [g for g in loads if g.kind == name]
        tenant_days = sum(g.tenant_days for g in group)
        rows, size = Counter(), Counter()
        for g in group:
            for row in g.events:
                rows[event_kind(row)] += 1
                size[event_kind(row)] += len(row[2].encode())
        out[name] = {
            "tenant_days": tenant_days,
            "rows": {k: v / tenant_days for k, v in rows.items()},
            "kib": {k: v / tenant_days / KIB for k, v in size.items()},
            "check_rows": sum(len(g.checks) for g in group) / tenant_days,
            "check_kib": sum(len((c[5] or "").encode()) for g in group for c in g.checks) / tenant_days / KIB,
            "tag_rows": sum(len(g.event_tags) for g in group) / tenant_days,
            "run_kib": sum(len(g.run_row[5].encode()) + sum(len(k) + len(v) for k, v in g.run_tags) for g in group)
            / tenant_days / KIB,
            "disk_kib": sum(g.disk_bytes for g in group) / tenant_days / KIB,
            "seconds": sum(g.seconds for g in group),
        }
    return out


def print_footprint(figures: dict[str, dict], warehouse_first: float, warehouse_next: float) -> None:
    columns = [figures[k] for k in KINDS]
    kinds = sorted({k for c in columns for k in c["rows"]}, key=lambda k: -columns[0]["kib"].get(k, 0))
    print("\nPer tenant-day load (real runs; KiB = the stored JSON's length)\n")
    print(f"| {'event_logs rows by type':<34} | " + " | ".join(f"{k}: rows | KiB" for k in KINDS) + " |")
    print("|---|" + "---:|---:|" * len(KINDS))

    def cells(values: list[tuple[float, float]], fmt: str = "{:.2f}") -> str:
        return " | ".join(f"{fmt.format(a)} | {fmt.format(b)}" for a, b in values)

    for kind in kinds:
        print(f"| {kind:<34} | " + cells([(c["rows"].get(kind, 0), c["kib"].get(kind, 0)) for c in columns]) + " |")
    print("| **event_logs, all** | " + cells([(sum(c["rows"].values()), sum(c["kib"].values())) for c in columns],
                                          "**{:.2f}**") + " |")  # fmt: skip
    print("| asset_check_executions | " + cells([(c["check_rows"], c["check_kib"]) for c in columns]) + " |")
    print("| asset_event_tags | " + " | ".join(f"{c['tag_rows']:.2f} | –" for c in columns) + " |")
    print("| runs + run_tags (share of the run) | " + " | ".join(f"– | {c['run_kib']:.2f}" for c in columns) + " |")
    print("| **on disk: Dagster's tables grew** (tables, indexes, TOAST) | "
          + " | ".join(f"– | **{c['disk_kib']:.1f}**" for c in columns) + " |")  # fmt: skip
    print(f"\nwarehouse (PostgreSQL; the demo tenant: 3 sources, 15 rows a day): its schema after the first day "
          f"{warehouse_first:.0f} KiB per tenant (tables and indexes), then {warehouse_next:.1f} KiB of rows per "
          f"further tenant-day")  # fmt: skip
    print("run time: " + ", ".join(f"{k} {c['seconds']:.1f}s" for k, c in zip(KINDS, columns))
          + f" (each {columns[0]['tenant_days']} tenant-days)")


# --- bulk writes cloned from the real runs ------------------------------------------------------


def _boundary(tenant: str) -> re.Pattern:
    return re.compile(rf"(?<![0-9A-Za-z]){re.escape(tenant)}(?![0-9])")


TIMESTAMP_KEY = '"timestamp": '


@dataclass
class Template:
    """One real run split into what belongs to the run and what belongs to one tenant-day."""

    load: Load
    run_events: list[tuple]
    tenant_events: list[tuple]  # of load.tenants[0]
    start: float  # the run's first event's time (epoch seconds)

    @classmethod
    def of(cls, load: Load) -> Template:
        patterns = {t: _boundary(t) for t in load.tenants}
        first = load.tenants[0]
        run_events, tenant_events = [], []
        for row in load.events:
            mentioned = [t for t, p in patterns.items() if p.search(row[2])]
            if mentioned == [first]:
                tenant_events.append(row)
            elif not mentioned or len(mentioned) > 1:
                run_events.append(row)
        start = load.events[0][4].replace(tzinfo=dt.timezone.utc).timestamp()
        return cls(load, run_events, tenant_events, start)


def _retime(text: str, ts: float) -> str:
    at = text.rfind(TIMESTAMP_KEY)
    if at < 0:
        return text
    end = at + len(TIMESTAMP_KEY)
    stop = end
    while stop < len(text) and text[stop] in "0123456789.e-":
        stop += 1
    return f"{text[:end]}{ts!r}{text[stop:]}"


def _copy_value(value) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


class BulkWriter:
    """Writes synthetic runs cloned from templates into Dagster's tables with COPY."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.next_id = (conn.execute("SELECT coalesce(max(id), 0) FROM event_logs").fetchone()[0] or 0) + 1
        self.buffers: dict[str, io.StringIO] = defaultdict(io.StringIO)
        self.newest: dict[tuple[str, str], tuple[int, str]] = {}  # (asset_key, type) -> (id, event)
        self.events = 0

    def _row(self, table: str, values: tuple) -> None:
        self.buffers[table].write("\t".join(_copy_value(v) for v in values) + "\n")

    def run(
        self,
        template: Template,
        tenants: list[str],
        days: list[dt.date],
        start: float,
        *,
        trigger: str = "schedule",
        failed: frozenset[str] = frozenset(),
        only_asset: str | None = None,
    ) -> str:
        """One synthetic run of `tenants` x `days` starting at `start` (epoch seconds). The tenants
        in `failed` get the run's planned events but no materialization or check (the run fails).
        `only_asset`: of the per-partition events, only this asset's (and no checks)."""
        load = template.load
        run_id = str(uuid.uuid4())
        shift = start - template.start
        tags_of = defaultdict(list)
        for tag in load.event_tags:
            tags_of[tag[0]].append(tag)
        ids: dict[tuple[int, str | None], int] = {}
        for row in template.run_events:
            if row[3] == "PIPELINE_SUCCESS" and failed:
                continue
            ids[(row[0], None)] = self._event(row, run_id, load, None, days[0], shift, tags_of)
        events = [r for r in template.tenant_events if only_asset is None or r[6] == only_asset]
        for day in days:
            for tenant in tenants:
                for row in events:
                    if tenant in failed and row[3] not in ("ASSET_MATERIALIZATION_PLANNED", None):
                        continue
                    ids[(row[0], tenant)] = self._event(row, run_id, load, tenant, day, shift, tags_of)
            if only_asset is None:
                self._checks(load, run_id, tenants, day, shift, ids, failed)
        self._run(load, run_id, tenants, days, start, trigger, "FAILURE" if failed else "SUCCESS")
        return run_id

    def _event(self, row: tuple, run_id: str, load: Load, tenant: str | None, day: dt.date, shift: float,
               tags_of: dict) -> int:  # fmt: skip
        """Clone one event row (and its asset event tags) for `tenant` and `day`."""
        event = row[2].replace(load.run_id, run_id)
        partition = row[7]
        if tenant is not None:
            event = _boundary(load.tenants[0]).sub(tenant, event).replace(load.day.isoformat(), day.isoformat())
            if partition:
                partition = f"{day.isoformat()}|{tenant}"
        when = row[4].replace(tzinfo=dt.timezone.utc).timestamp() + shift
        event = _retime(event, when)
        new_id = self.next_id
        self.next_id += 1
        self.events += 1
        stamp = dt.datetime.fromtimestamp(when, dt.timezone.utc).replace(tzinfo=None)
        self._row("event_logs", (new_id, run_id, event, row[3], stamp, row[5], row[6], partition))
        if row[3] in ("ASSET_MATERIALIZATION", "ASSET_MATERIALIZATION_PLANNED") and row[6]:
            self.newest[(row[6], row[3])] = (new_id, event)
        for tag in tags_of.get(row[0], ()):
            value = tag[3]
            if tenant is not None and value == load.tenants[0]:
                value = tenant
            elif value == load.day.isoformat():
                value = day.isoformat()
            self._row("asset_event_tags", (new_id, tag[1], tag[2], value, stamp))
        return new_id

    def _checks(self, load: Load, run_id: str, tenants: list[str], day: dt.date, shift: float,
                ids: dict, failed: frozenset[str]) -> None:  # fmt: skip
        first, template_day = load.tenants[0], load.day.isoformat()
        for row in load.checks:
            partition = row[2]
            if partition and not partition.endswith(f"|{first}"):
                continue
            for tenant in [t for t in tenants if t not in failed] if partition else [None]:
                event = (row[5] or "").replace(load.run_id, run_id)
                part = partition
                if tenant is not None:
                    event = _boundary(first).sub(tenant, event).replace(template_day, day.isoformat())
                    part = f"{day.isoformat()}|{tenant}"
                evaluation_id = ids.get((row[7], tenant)) or ids.get((row[7], None))
                when = row[6] + dt.timedelta(seconds=shift) if row[6] else None
                self._row("asset_check_executions", (row[0], row[1], part, run_id, row[4], event, when,
                                                     evaluation_id, row[8], when))  # fmt: skip

    def _run(self, load: Load, run_id: str, tenants: list[str], days: list[dt.date], start: float, trigger: str,
             status: str) -> None:  # fmt: skip
        row = load.run_row
        tags = dict(load.run_tags)
        tags.update({"etl/trigger": trigger, "etl/tenants": ",".join(tenants),
                     "dagster/asset_partition_range_start": f"{days[0].isoformat()}|{tenants[0]}",
                     "dagster/asset_partition_range_end": f"{days[-1].isoformat()}|{tenants[-1]}"})  # fmt: skip
        tags.pop("etl/worker", None)
        if status == "FAILURE":
            tags["etl/failed_tenants"] = ",".join(tenants)
        body = json.loads(row[5])
        body["run_id"] = run_id
        body["status"] = {"__enum__": f"DagsterRunStatus.{status}"}
        body["tags"] = tags
        ended = start + ((row[11] - row[10]) if row[11] and row[10] else 60.0)
        stamp = dt.datetime.fromtimestamp(start, dt.timezone.utc).replace(tzinfo=None)
        end_stamp = dt.datetime.fromtimestamp(ended, dt.timezone.utc).replace(tzinfo=None)
        self._row("runs", (run_id, row[1], row[2], row[3], status, json.dumps(body), row[6], row[7], stamp,
                           end_stamp, start, ended, None))  # fmt: skip
        for key, value in tags.items():
            self._row("run_tags", (run_id, key, value))

    def flush(self, instance=None) -> None:
        """COPY what is buffered; with `instance`, Dagster's asset records then point at the
        newest events (Dagster's own `store_asset_event`, as its batch write does)."""
        columns = {"event_logs": EVENT_COLUMNS, "asset_event_tags": TAG_COLUMNS,
                   "asset_check_executions": CHECK_COLUMNS, "runs": RUN_COLUMNS, "run_tags": "run_id, key, value"}
        for table in ("runs", "run_tags", "event_logs", "asset_event_tags", "asset_check_executions"):
            data = self.buffers.pop(table, None)
            if data is None:
                continue
            with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({columns[table]}) FROM STDIN") as copy:
                copy.write(data.getvalue())
        self.conn.execute("SELECT setval('event_logs_id_seq', %s)", [self.next_id])
        if instance is not None:
            from dagster._core.events.log import EventLogEntry
            from dagster_shared.serdes import deserialize_value

            for (_key, _kind), (event_id, event) in sorted(self.newest.items(), key=lambda kv: kv[1][0]):
                # the asset record (last materialization, last planned id) the status cache starts from
                instance.event_log_storage.store_asset_event(deserialize_value(event, EventLogEntry), event_id)
            self.newest.clear()


def chunks(items: list[str], size: int = CHUNK) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def epoch(day: dt.date, hour: float = 0.0) -> float:
    return dt.datetime.combine(day, dt.time(0), tzinfo=dt.timezone.utc).timestamp() + hour * 3600


# --- 2. the year --------------------------------------------------------------------------------


def build_year(home: Home, first: Template, again: Template, args: argparse.Namespace) -> dict:
    """`args.tenants` x `args.days` partitions of the timed asset, each loaded `args.loads` times
    (the first load's rows, then the unchanged reload's), up to yesterday."""
    from dagster import DagsterInstance

    tenants = [tenant_id(n) for n in range(args.tenants)]
    today = dt.datetime.now(dt.timezone.utc).date()
    days = [today - dt.timedelta(days=n) for n in range(args.days, 0, -1)]
    failed_every = round(1 / args.failed_share) if args.failed_share else 0
    started = time.perf_counter()
    runs = failed = 0
    with DagsterInstance.get() as instance, home.sql() as conn:
        instance.add_dynamic_partitions("tenant", tenants)
        writer = BulkWriter(conn)
        for number, day in enumerate(days):
            for load in range(args.loads):
                for chunk in chunks(tenants):
                    bad = frozenset()
                    if failed_every and load == args.loads - 1:
                        bad = frozenset(t for t in chunk if (int(t[1:]) + day.toordinal()) % failed_every == 0)
                    writer.run(first if load == 0 else again, chunk, [day], epoch(day, 1 + load), failed=bad,
                               only_asset=None if args.year_events == "all" else RECORDS)  # fmt: skip
                    runs += 1
                    failed += len(bad)
            if number % 10 == 9 or day == days[-1]:
                writer.flush(instance)
                log(f"year: {number + 1} of {len(days)} days written ({writer.events:,} events, {runs:,} runs)")
        conn.execute("ANALYZE")
    return {"runs": runs, "events": writer.events, "failed_partitions": failed,
            "seconds": time.perf_counter() - started, "partitions": len(tenants) * len(days)}  # fmt: skip


class Webserver:
    """`dagster-webserver` on the instance; GraphQL over HTTP."""

    def __init__(self, home: Home, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.out = open(home.path / "webserver.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
             "-w", str(home.path / "workspace.yaml")],
            env={**os.environ, **home.env}, cwd=home.path, stdout=self.out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                state = self.graphql("{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }")
                entries = state["data"]["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    return
            except OSError:
                pass
            time.sleep(1)
        raise SystemExit(f"dagster-webserver did not load the code location; see {home.path / 'webserver.log'}")

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 600) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def partitions_tab(self) -> tuple[float, str]:
        """Seconds of the Partitions tab's query, and a short account of its answer."""
        started = time.perf_counter()
        answer = self.graphql(PARTITION_HEALTH_QUERY, {"assetKey": {"path": ["normalized", "records"]}})
        seconds = time.perf_counter() - started
        if answer.get("errors"):
            return seconds, "error: " + answer["errors"][0]["message"][:200]
        statuses = answer["data"]["assetNodeOrError"]["assetPartitionStatuses"]
        failed = sum(len(r["secondaryDim"].get("failedPartitions") or []) for r in statuses.get("ranges", []))
        return seconds, f"{len(statuses.get('ranges', []))} date ranges, {failed} failed tenant-days"

    def rss_mb(self) -> float:
        """Resident memory of the webserver and its children (the code server)."""
        pids, total = [self.proc.pid], 0
        while pids:
            pid = pids.pop()
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pids.extend(int(c) for c in (task / "children").read_text().split())
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
        return total / 1024

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.out.close()


def measure(home: Home, args: argparse.Namespace) -> dict:
    """The control plane's figures on the instance as it is now."""
    from dagster import AssetKey, DagsterEventType, DagsterInstance, EventRecordsFilter

    from etl_platform.automation.partition_status import refresh_partition_status
    from etl_platform.observability.platform_state import PlatformState

    key = AssetKey(["normalized", "records"])
    out: dict = {}
    with DagsterInstance.get() as instance, home.sql() as conn:
        out["rows"] = conn.execute(
            "SELECT count(*) FROM event_logs WHERE asset_key = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            [RECORDS],
        ).fetchone()[0]
        out["event_rows"] = conn.execute("SELECT count(*) FROM event_logs").fetchone()[0]
        out["runs"] = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        out["database_mb"] = database_bytes(conn) / KIB / KIB
        started = time.perf_counter()
        out["materialized"] = len(instance.get_materialized_partitions(key))
        out["get_materialized_partitions_s"] = time.perf_counter() - started
        if not args.no_webserver:
            server = Webserver(home, args.port)
            try:
                instance.wipe_asset_cached_status([key])
                out["tab_first_s"], out["tab_first"] = server.partitions_tab()
                out["tab_warm_s"], out["tab_warm"] = server.partitions_tab()
                # a new tenant invalidates the cache; the onboarding sensor's run rebuilds it
                instance.add_dynamic_partitions("tenant", [f"new{uuid.uuid4().hex[:6]}"])
                started = time.perf_counter()
                refresh_partition_status(instance, [key])
                out["status_run_s"] = time.perf_counter() - started
                out["tab_after_onboarding_s"], _ = server.partitions_tab()
                out["memory_mb"] = server.rss_mb()
            finally:
                server.stop()
            cached = conn.execute("SELECT length(cached_status_data) FROM asset_keys WHERE asset_key = %s",
                                  [RECORDS]).fetchone()  # fmt: skip
            out["status_cache_kb"] = (cached[0] or 0) / 1000 if cached else 0
        since = time.time() - 25 * 3600  # the exporter's first query before start_position: by time, from the start
        started = time.perf_counter()
        instance.event_log_storage.get_event_records(
            EventRecordsFilter(event_type=DagsterEventType.ASSET_MATERIALIZATION, after_timestamp=since),
            limit=1000, ascending=True,
        )  # fmt: skip
        out["exporter_by_time_s"] = time.perf_counter() - started
        state = PlatformState(lookback_s=25 * 3600)
        started = time.perf_counter()
        state.refresh(instance)
        out["exporter_first_s"] = time.perf_counter() - started
        started = time.perf_counter()
        state.refresh(instance)
        out["exporter_next_s"] = time.perf_counter() - started
    return out


def purge(home: Home, retention_days: int, now: dt.datetime | None = None) -> dict:
    from dagster import DagsterInstance

    from etl_platform.automation.retention import purge_history

    with DagsterInstance.get() as instance:
        started = time.perf_counter()
        report = purge_history(instance, older_than=dt.timedelta(days=retention_days), now=now)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, **report.as_dict()}


def print_year(year: dict, before: dict, after: dict | None, purged: dict | None, args: argparse.Namespace) -> None:
    print(f"\nThe year: {args.tenants:,} tenants x {args.days} days = {year['partitions']:,} partitions of "
          f"normalized/records, {args.loads} loads each ({year['runs']:,} runs, {year['events']:,} events written "
          f"in {year['seconds']:.0f}s; {year['failed_partitions']} partitions whose last load failed)\n")  # fmt: skip
    rows = [
        ("materialized partitions (get_materialized_partitions)", "materialized", "{:,}"),
        ("materialization rows of the asset", "rows", "{:,}"),
        ("partitions tab, first view (no status cache), s", "tab_first_s", "{:.2f}"),
        ("partitions tab, warm, s", "tab_warm_s", "{:.2f}"),
        ("tenant added: refresh_partition_status run for this asset, s", "status_run_s", "{:.2f}"),
        ("tenant added: partitions tab, first view after that run, s", "tab_after_onboarding_s", "{:.2f}"),
        ("status cache per asset (cached_status_data), KB", "status_cache_kb", "{:,.0f}"),
        ("instance.get_materialized_partitions, s", "get_materialized_partitions_s", "{:.2f}"),
        ("webserver + code server memory, MB", "memory_mb", "{:.0f}"),
        ("exporter: first page read by time (before this change), s", "exporter_by_time_s", "{:.2f}"),
        ("exporter: first refresh (from start_position), s", "exporter_first_s", "{:.2f}"),
        ("exporter: next refresh, s", "exporter_next_s", "{:.3f}"),
        ("event_logs rows (all assets and runs)", "event_rows", "{:,}"),
        ("runs", "runs", "{:,}"),
        ("Dagster database, MB", "database_mb", "{:,.0f}"),
    ]
    print(f"| | before purge | after `purge --older-than {args.retention_days}d` |")
    print("|---|---:|---:|")
    for label, key, fmt in rows:
        cells = [fmt.format(m[key]) if m and key in m else "–" for m in (before, after)]
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    for m, name in ((before, "before"), (after, "after")):
        if m and "tab_first" in m:
            print(f"partitions tab answer {name}: {m['tab_first']}")
    if purged:
        print(f"\npurge: {purged['seconds']:.1f}s; runs deleted {purged['runs_deleted']:,}, runs kept with their "
              f"latest events {purged['runs_thinned']:,}; event rows deleted {purged['events_deleted']:,}, check "
              f"rows deleted {purged['check_rows_deleted']:,}; at most {purged['largest_batch']:,} rows per "
              f"statement; VACUUM {purged.get('vacuum_seconds', 0):.1f}s")  # fmt: skip


# --- 3. steady state ----------------------------------------------------------------------------


def copy_snapshots(source: Home, target: Home) -> None:
    """The runs' job snapshots (runs reference them), so that cloned runs fit the new database."""
    from dagster import DagsterInstance

    with DagsterInstance.get():  # creates Dagster's tables in the target (the active home)
        pass
    with source.sql() as src, target.sql() as dst:
        rows = src.execute("SELECT snapshot_id, snapshot_body, snapshot_type FROM snapshots").fetchall()
        for row in rows:
            dst.execute("INSERT INTO snapshots (snapshot_id, snapshot_body, snapshot_type) VALUES (%s, %s, %s) "
                        "ON CONFLICT DO NOTHING", row)  # fmt: skip


def steady_state(home: Home, first: Template, again: Template, args: argparse.Namespace) -> list[dict]:
    """Hourly operation of `args.sim_tenants` tenants for `args.sim_days` days ending yesterday.
    Today's partition: changing loads (the first load's rows); yesterday's late reloads and the
    re-backfill: unchanged reloads. The purge runs daily at 03:00."""
    from dagster import DagsterInstance

    tenants = [tenant_id(n) for n in range(args.sim_tenants)]
    today = dt.datetime.now(dt.timezone.utc).date()
    days = [today - dt.timedelta(days=n) for n in range(args.sim_days, 0, -1)]
    out = []
    with DagsterInstance.get() as instance, home.sql() as conn:
        instance.add_dynamic_partitions("tenant", tenants)
        writer = BulkWriter(conn)
        for day in days:
            written = writer.events
            for hour in range(24):
                for chunk in chunks(tenants):
                    writer.run(first, chunk, [day], epoch(day, hour))
                    if hour < 3:  # ETL_LATE_DATA_HOURS: yesterday again
                        writer.run(again, chunk, [day - dt.timedelta(days=1)], epoch(day, hour + 0.2))
                if hour == 2:  # daily_rebackfill at 02:30: the last 7 complete days, one run per chunk
                    for chunk in chunks(tenants):
                        week = [day - dt.timedelta(days=n) for n in range(7, 0, -1)]
                        writer.run(again, chunk, week, epoch(day, 2.5), trigger="backfill")
                    writer.flush(instance)
                    now = dt.datetime.combine(day, dt.time(3), tzinfo=dt.timezone.utc)
                    report = purge(home, args.retention_days, now=now)
            writer.flush(instance)
            sizes = table_bytes(conn)
            out.append({"day": day, "events_written": writer.events - written, "database": database_bytes(conn),
                        "tables": sum(sizes.values()), "event_rows": conn.execute(
                            "SELECT count(*) FROM event_logs").fetchone()[0], "purge": report})  # fmt: skip
            out[-1]["kept"] = kept_per_tenant_day(conn, day - dt.timedelta(days=args.retention_days + 7),
                                                  args.sim_tenants)  # fmt: skip
            log(f"steady: {day} {out[-1]['tables'] / 1e6:,.0f} MB in Dagster's tables, "
                f"{out[-1]['event_rows']:,} event rows; purge {report['seconds']:.1f}s "
                f"deleted {report['events_deleted']:,} rows")  # fmt: skip
    return out


def kept_per_tenant_day(conn: psycopg.Connection, before: dt.date, tenants: int) -> dict:
    """Rows and KiB per tenant-day of the partitions older than `before` (past the retention and
    the re-backfill): what a tenant-day keeps for good."""
    days = conn.execute(
        "SELECT count(DISTINCT split_part(partition, '|', 1)) FROM event_logs WHERE partition IS NOT NULL "
        "AND split_part(partition, '|', 1) < %s", [before.isoformat()]).fetchone()[0]  # fmt: skip
    if not days:
        return {}
    rows = conn.execute(
        "SELECT dagster_event_type, count(*), sum(length(event)) FROM event_logs WHERE partition IS NOT NULL "
        "AND split_part(partition, '|', 1) < %s GROUP BY 1", [before.isoformat()]).fetchall()  # fmt: skip
    checks = conn.execute(
        "SELECT count(*), coalesce(sum(length(evaluation_event)), 0) FROM asset_check_executions WHERE "
        "partition IS NOT NULL AND split_part(partition, '|', 1) < %s", [before.isoformat()]).fetchone()  # fmt: skip
    evaluations = conn.execute(  # check results are stored without a partition column: through their rows
        "SELECT count(*), coalesce(sum(length(e.event)), 0) FROM asset_check_executions c JOIN event_logs e ON "
        "e.id = c.evaluation_event_storage_id WHERE c.partition IS NOT NULL AND split_part(c.partition, '|', 1) < %s",
        [before.isoformat()]).fetchone()  # fmt: skip
    share = tenants * days
    out = {kind: (count / share, float(size) / share / KIB) for kind, count, size in rows}
    out["asset_check_executions"] = (checks[0] / share, float(checks[1]) / share / KIB)
    out["ASSET_CHECK_EVALUATION (of those rows)"] = (evaluations[0] / share, float(evaluations[1]) / share / KIB)
    return out


def print_steady(days: list[dict], args: argparse.Namespace) -> None:
    scale = 1000 / args.sim_tenants
    print(f"\nSteady state: {args.sim_tenants} tenants, hourly, {args.sim_days} days in compressed time, purge "
          f"daily with --older-than {args.retention_days}d; GB scaled x{scale:g} to 1,000 tenants\n")  # fmt: skip
    print("| day | events written | event rows stored | Dagster's tables, GB (1,000 tenants) | growth, GB/day |")
    print("|---|---:|---:|---:|---:|")
    previous = None
    for d in days:
        growth = (d["tables"] - previous) * scale / 1e9 if previous is not None else float("nan")
        print(f"| {d['day']} | {d['events_written']:,} | {d['event_rows']:,} | {d['tables'] * scale / 1e9:.2f} | "
              f"{growth:.2f} |")  # fmt: skip
        previous = d["tables"]
    early = days[1 : min(len(days), args.retention_days)]
    late = days[-7:]
    if len(early) >= 2:
        before = (early[-1]["tables"] - early[0]["tables"]) / (len(early) - 1) * scale / 1e9
        print(f"\nbefore retention (days 2-{len(early) + 1}, nothing old enough to purge): {before:.2f} GB/day")
    if len(days) > args.retention_days + 7:
        after = (late[-1]["tables"] - late[0]["tables"]) / (len(late) - 1) * scale / 1e9
        print(f"after retention (last 7 days): {after:.3f} GB/day; Dagster's tables at "
              f"{late[-1]['tables'] * scale / 1e9:.2f} GB (1,000 tenants)")  # fmt: skip
    else:
        print(f"(run --sim-days > {args.retention_days + 7} to see the plateau after retention)")
    kept = days[-1].get("kept")
    if kept:
        print("\nWhat a tenant-day keeps after retention (partitions older than the retention and the re-backfill)\n")
        print("| kept per tenant-day | rows | KiB |")
        print("|---|---:|---:|")
        for kind, (rows, kib) in sorted(kept.items(), key=lambda kv: -kv[1][1]):
            print(f"| {kind} | {rows:.2f} | {kib:.2f} |")
        print(f"| **all** | **{sum(r for r, _ in kept.values()):.2f}** | **{sum(k for _, k in kept.values()):.2f}** |")


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="small sizes: a run of a few minutes")
    parser.add_argument("--sample", type=int, default=50, help="tenants loaded by real runs (default 50: one chunk)")
    parser.add_argument("--tenants", type=int, default=1000, help="tenants of the year (default 1000)")
    parser.add_argument("--days", type=int, default=366, help="days of the year (default 366)")
    parser.add_argument("--loads", type=int, default=2, help="loads of each partition in the year (default 2)")
    parser.add_argument("--year-events", choices=("records", "all"), default="records",
                        help="the year's per-partition events: normalized/records' only (default), or every asset's "
                        "events and checks (about 66 KiB per tenant-day load)")  # fmt: skip
    parser.add_argument("--failed-share", type=float, default=0.001, help="share of partitions whose last load failed")
    parser.add_argument("--retention-days", type=int, default=30, help="the purge's --older-than (default 30)")
    parser.add_argument("--sim-tenants", type=int, default=50, help="tenants of the steady state (default 50)")
    parser.add_argument("--sim-days", type=int, default=40, help="simulated days (default 40)")
    parser.add_argument("--skip", default="", help="comma-separated: year, steady")
    parser.add_argument("--no-webserver", action="store_true", help="do not time the partitions tab")
    parser.add_argument("--port", type=int, default=3391)
    parser.add_argument("--keep", action="store_true", help="keep the databases and the folder")
    args = parser.parse_args()
    if args.smoke:
        args.sample, args.tenants, args.days, args.sim_tenants, args.sim_days = 5, 100, 60, 5, 10
        args.retention_days = 3
    skip = set(filter(None, args.skip.split(",")))
    uptime = Path("/proc/loadavg").read_text().split()[:3]
    arguments = " ".join(sys.argv[1:]) or "(defaults)"
    print(f"bench_control_plane {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
          f"{' '.join(uptime)}, {os.cpu_count()} CPUs; {arguments}", flush=True)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench_control_plane_"))
    homes: list[Home] = []
    try:
        sample = Home(work, "sample", args.sample, args.keep)
        homes.append(sample)
        today = dt.datetime.now(dt.timezone.utc).date()
        loads, warehouse_first, warehouse_next = real_loads(sample, today)
        print_footprint(footprint(loads), warehouse_first, warehouse_next)
        first = Template.of(next(g for g in loads if g.kind == "first load"))
        again = Template.of(next(g for g in loads if g.kind == "reload, one source changed"))
        if "year" not in skip:
            year_home = Home(work, "year", args.sample, args.keep)
            homes.append(year_home)
            year_home.activate()
            copy_snapshots(sample, year_home)
            year = build_year(year_home, first, again, args)
            before = measure(year_home, args)
            purged = purge(year_home, args.retention_days)
            after = measure(year_home, args)
            print_year(year, before, after, purged, args)
        if "steady" not in skip:
            steady_home = Home(work, "steady", args.sim_tenants, args.keep)
            homes.append(steady_home)
            steady_home.activate()
            copy_snapshots(sample, steady_home)
            print_steady(steady_state(steady_home, first, again, args), args)
    finally:
        for home in homes:
            home.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
