"""Single-run backfills over tenant × date ranges load exactly what one run per partition loads.

Two tenants × 14 days of a CSV source whose `event_time` spreads rows over the days (plus rows
just outside the range) and a snapshot CSV source (every row belongs to each day). One side runs
`dagster asset materialize --partition-range 'D1|t1...D14|t2'` in a subprocess: one run over the
28-partition rectangle. The other side runs the 28 partitions one by one in process. Table
contents, minus run-specific lineage, must be identical. Then the daily re-backfill schedule
re-loads the last 7 days of each tenant as one ranged run and picks up corrected data.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, build_schedule_context

from etl_platform.automation.onboarding import sync_tenants
from etl_platform.config.registry import load_registry
from etl_platform.definitions import build_definitions
from etl_platform.runs.partitions import partition_key
from etl_platform_tests.support.orchestration import csv_tenant, launch, quiet_home, stop_process, table_contents
from etl_platform_tests.support.platform_runs import write_tenants

FIRST = dt.date(2024, 1, 1)
DAYS = 14  # the re-backfill case below needs more than 10
TENANTS = ("t1", "t2")
RAW_EVENTS = AssetKey(["raw", "events", "events_rows"])
RECORDS = AssetKey(["normalized", "records"])


def day(n: int) -> dt.date:
    return FIRST + dt.timedelta(days=n)


def cli_env(home: Path, tenants_file: Path, warehouse_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        ETL_TENANTS_FILE=str(tenants_file),
        ETL_WAREHOUSE_URL=warehouse_url,
        ETL_START_DATE=FIRST.isoformat(),
        ETL_STEP_RETRIES="0",
        ETL_DATA_ROOT=os.environ["ETL_DATA_ROOT"],  # the suite's roots (conftest): the tenants' CSV files
        ETL_DUCKDB_TENANT_FILES=os.environ["ETL_DUCKDB_TENANT_FILES"],  # the one file the test compares
    )
    return env


def test_single_run_backfill_equals_one_run_per_partition(
    platform_env, dagster_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETL_START_DATE", FIRST.isoformat())
    monkeypatch.setenv("ETL_STEP_RETRIES", "0")
    data = tmp_path / "data"
    tenants = [csv_tenant(t, data, FIRST, DAYS, seed=i) for i, t in enumerate(TENANTS)]
    single_url = f"duckdb:///{tmp_path / 'single.duckdb'}"
    tenants_file = platform_env(tenants, single_url)

    # --- the single-run backfill through the CLI, in its own DAGSTER_HOME and warehouse ---------
    cli_home = quiet_home(tmp_path / "cli_home")
    quiet_home(dagster_home)
    cli_url = f"duckdb:///{tmp_path / 'cli.duckdb'}"
    with DagsterInstance.from_ref(_ref(cli_home)) as cli_instance:
        sync_tenants(cli_instance, load_registry(tenants_file))
    partition_range = f"{partition_key('t1', day(0))}...{partition_key('t2', day(DAYS - 1))}"
    command = [
        str(Path(sys.executable).with_name("dagster")),
        "asset", "materialize", "-m", "etl_platform.definitions", "--select", "*",
        "--partition-range", partition_range,
    ]  # fmt: skip
    log = (tmp_path / "cli.log").open("w")
    cli = subprocess.Popen(
        command, env=cli_env(cli_home, tenants_file, cli_url), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # --- meanwhile, one run per partition in process ------------------------------------------
        with DagsterInstance.get() as instance:
            sync_tenants(instance, load_registry())
            job = build_definitions().resolve_job_def("ingest")
            for tenant in TENANTS:
                for n in range(DAYS):
                    result = job.execute_in_process(partition_key=str(partition_key(tenant, day(n))), instance=instance)
                    assert result.success
            assert len(instance.get_runs()) == DAYS * len(TENANTS)
        assert cli.wait(timeout=600) == 0, (tmp_path / "cli.log").read_text()[-5000:]
    finally:
        stop_process(cli)
        log.close()

    # --- exactly one run, tagged, that materialized every partition of the rectangle ------------
    with DagsterInstance.from_ref(_ref(cli_home)) as cli_instance:
        runs = cli_instance.get_runs()
        assert len(runs) == 1
        run = runs[0]
        assert run.status == DagsterRunStatus.SUCCESS
        assert run.tags["dagster/asset_partition_range_start"] == f"{day(0)}|t1"
        assert run.tags["dagster/asset_partition_range_end"] == f"{day(DAYS - 1)}|t2"
        assert run.tags["etl/tenants"] == "t1,t2" and run.tags["etl/trigger"] == "backfill"
        expected = {f"{day(n)}|{t}" for t in TENANTS for n in range(DAYS)}
        for key in (RAW_EVENTS, RECORDS):
            assert set(cli_instance.get_materialized_partitions(key)) == expected
        events = cli_instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
        per_asset = {}
        for record in events:
            mat = record.event_log_entry.asset_materialization
            per_asset.setdefault(mat.asset_key, set()).add(mat.partition)
        assert per_asset[RAW_EVENTS] == expected
        # one materialization per partition, with that partition's own figures
        for record in events:
            mat = record.event_log_entry.asset_materialization
            if mat.asset_key == RAW_EVENTS:
                tenant, day_key = mat.partition.split("|")[1], mat.partition.split("|")[0]
                rows = mat.metadata["dagster/row_count"].value
                assert rows == _events_on(tmp_path, tenant, day_key), mat.partition

    # --- identical data, tenant by tenant -----------------------------------------------------
    for tenant in TENANTS:
        single = table_contents(single_url, f"tenant_{tenant}")
        backfilled = table_contents(cli_url, f"tenant_{tenant}")
        assert set(single) == set(backfilled)
        for table in single:
            assert single[table] == backfilled[table], f"tenant {tenant}, table {table}"
        # partition semantics held: events only on their own days of the range, the snapshot on every day
        events = single["events_rows"]
        columns = single["events_rows:columns"][0]
        days = {row[columns.index("_etl_partition_date")] for row in events}
        assert days == {day(n).isoformat() for n in range(DAYS)}
        assert all(row[columns.index("id")].startswith(f"{tenant}-") for row in events)
        assert not any(row[columns.index("id")].startswith((f"{tenant}--1-", f"{tenant}-{DAYS}-")) for row in events)
        assert len(single["catalog_rows"]) == DAYS * 3
        assert len(single["records"]) == len(events) + 3  # snapshot rows upsert into one record per sku

    # --- the daily re-backfill: one ranged run per active tenant over the last 7 days ---------
    _rebackfill(tmp_path, tenants, single_url)


def _events_on(tmp_path: Path, tenant: str, day_key: str) -> int:
    """Rows of the tenant's events CSV whose event time falls on `day_key` (UTC)."""
    lines = (tmp_path / "data" / f"{tenant}_events.csv").read_text().splitlines()[1:]
    return sum(line.split(",")[1].startswith(day_key) for line in lines)


def _ref(home: Path):
    from dagster._core.instance.ref import InstanceRef

    return InstanceRef.from_dir(str(home))


def _rebackfill(tmp_path: Path, tenants: list[dict], warehouse_url: str) -> None:
    """Correct a value inside the window and one before it, pause t2, run the schedule's requests."""
    events_file = Path(tenants[0]["sources"][0]["location"])
    lines = events_file.read_text().splitlines()
    in_window = next(i for i, line in enumerate(lines) if f",{day(DAYS - 3)}T" in line)
    before = next(i for i, line in enumerate(lines) if f",{day(DAYS - 10)}T" in line)
    lines[in_window] = lines[in_window].rsplit(",", 2)[0] + ",999999,corrected"
    lines[before] = lines[before].rsplit(",", 2)[0] + ",888888,not reloaded"
    events_file.write_text("\n".join(lines) + "\n")
    write_tenants(tmp_path / "tenants.yaml", [tenants[0], {**tenants[1], "paused": True}])
    before_t2 = table_contents(warehouse_url, "tenant_t2")

    with DagsterInstance.get() as instance:
        defs = build_definitions()
        context = build_schedule_context(
            instance=instance,
            scheduled_execution_time=dt.datetime.combine(day(DAYS), dt.time(2, 30), dt.timezone.utc),
            repository_def=defs.get_repository_def(),
        )
        data = defs.resolve_schedule_def("daily_rebackfill").evaluate_tick(context)
        assert [r.tags["etl/tenant"] for r in data.run_requests] == ["t1"]  # t2 paused: a chunk of one
        request = data.run_requests[0]
        assert request.tags["dagster/asset_partition_range_start"] == f"{day(DAYS - 7)}|t1"
        assert request.tags["dagster/asset_partition_range_end"] == f"{day(DAYS - 1)}|t1"
        result = launch(instance, request)
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert run.tags["etl/trigger"] == "backfill" and run.tags["dagster/schedule_name"] == "daily_rebackfill"
        records = instance.get_records_for_run(result.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
        partitions = {r.event_log_entry.asset_materialization.partition for r in records}
        # the rectangle t1 × 7 days was reloaded; only the day whose data changed is written
        assert partitions == {f"{day(DAYS - 3)}|t1"}
        assert "tenant t1" in " ".join(e.user_message for e in instance.all_logs(result.run_id) if e.user_message)

    t1 = table_contents(warehouse_url, "tenant_t1")
    columns = t1["events_rows:columns"][0]
    notes = {row[columns.index("note")] for row in t1["events_rows"]}
    assert "corrected" in notes and "not reloaded" not in notes
    amounts = [r for r in t1["records"] if any("999999" in str(v) for v in r)]
    assert len(amounts) == 1  # normalized picked up the corrected row, no duplicate
    assert table_contents(warehouse_url, "tenant_t2") == before_t2


def test_queue_tags_every_run_with_its_tenant(platform_env, dagster_home: Path, tmp_path: Path) -> None:
    """The repo's dagster.yaml queue: runs submitted without platform tags (a UI backfill's
    ranged run, a manual launch) get `etl/tenant` before the per-tenant limit looks at them."""
    import yaml
    from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.run_coordinator.base import SubmitRunContext
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    repo_config = yaml.safe_load((Path(__file__).resolve().parents[2] / "dagster.yaml").read_text())
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(repo_config))
    tenants = [csv_tenant(t, tmp_path / "data", FIRST, 3) for t in ("t1", "t2", "t3")]
    platform_env(tenants, f"duckdb:///{tmp_path / 'wh.duckdb'}")
    with DagsterInstance.get() as instance:
        coordinator = instance.run_coordinator
        assert type(coordinator).__name__ == "PlatformRunCoordinator"
        limits = {(limit["key"], limit["limit"]) for limit in coordinator.get_run_queue_config().tag_concurrency_limits}
        assert {("etl/tenant", 1), ("dagster/partition/tenant", 1)} <= limits
        assert coordinator.get_run_queue_config().max_concurrent_runs == 4
        sync_tenants(instance, load_registry())
        defs = build_definitions()
        job = defs.resolve_job_def("ingest")

        origin = RemoteJobOrigin(
            RemoteRepositoryOrigin(
                InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="etl_platform.definitions")),
                "__repository__",
            ),
            "ingest",
        )

        def submit(tags: dict[str, str], **kwargs):
            run = instance.create_run_for_job(job, tags=tags, remote_job_origin=origin, **kwargs)
            coordinator.submit_run(SubmitRunContext(run, workspace=None))
            queued = instance.get_run_by_id(run.run_id)
            assert queued.status == DagsterRunStatus.QUEUED
            return queued.tags

        one_tenant = submit(
            {
                "dagster/asset_partition_range_start": f"{day(0)}|t2",
                "dagster/asset_partition_range_end": f"{day(2)}|t2",
                "dagster/backfill": "abc",
            }
        )
        assert one_tenant["etl/tenant"] == "t2" and one_tenant["etl/trigger"] == "backfill"
        spanning = submit(
            {"dagster/asset_partition_range_start": f"{day(0)}|t1", "dagster/asset_partition_range_end": f"{day(2)}|t3"}
        )
        assert "etl/tenant" not in spanning and spanning["etl/tenants"] == "t1,t2,t3"
        manual = submit(job.partitions_def.get_tags_for_partition_key(str(partition_key("t3", day(1)))))
        assert manual["etl/tenant"] == "t3" and manual["dagster/partition/tenant"] == "t3"
        assert manual["etl/trigger"] == "manual"
        one_source = submit(
            {"dagster/partition": f"{day(1)}|t1"}, asset_selection=frozenset({RAW_EVENTS, RECORDS})
        )
        assert one_source["etl/source"] == "events" and one_source["etl/tenant"] == "t1"
        scheduled = submit({"dagster/partition": f"{day(1)}|t1", "etl/tenant": "t1", "etl/trigger": "schedule"})
        assert scheduled["etl/trigger"] == "schedule"  # tags already set are kept
