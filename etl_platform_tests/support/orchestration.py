"""Helpers for the orchestration tests: tenants whose sources fail for real, CSV data spread
over days, launching run requests the way the daemon does, table contents to compare."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, DagsterRun, RunRequest

from etl_platform_tests.support.http_servers import LocalServer, Request, Response

ITEMS = [{"id": i, "title": f"item {i}"} for i in range(1, 4)]
# lineage that differs between two runs loading the same data
RUN_SPECIFIC_COLUMNS = {"_etl_run_id", "_etl_extracted_at", "_dlt_load_id", "_dlt_id", "normalized_at", "raw_load_id"}


def quiet_home(home: Path) -> Path:
    """A DAGSTER_HOME whose runs capture no compute logs (no log-tailing processes per step)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\ncompute_logs:\n"
        "  module: dagster._core.storage.noop_compute_log_manager\n  class: NoOpComputeLogManager\n"
    )
    return home


class Switch:
    """An HTTP route that answers `status` until the test changes it (then the items)."""

    def __init__(self, status: int = 500) -> None:
        self.status = status
        self.hits = 0

    def __call__(self, req: Request) -> Response:
        self.hits += 1
        if self.status == 200:
            return Response(200, ITEMS)
        return Response(self.status, {"error": f"scripted {self.status}"})


def rest_tenant(tenant_id: str, server: LocalServer, path: str, **extra: Any) -> dict[str, Any]:
    """A tenant with one REST source `api` (resource `items`) on the local server."""
    return {
        "id": tenant_id,
        **extra,
        "sources": [
            {
                "name": "api",
                "kind": "rest_api",
                "base_url": server.url,
                "paginator": {"type": "single_page"},
                "resources": [{"name": "items", "path": path, "primary_key": "id"}],
            }
        ],
    }


def csv_tenant(
    tenant_id: str,
    folder: Path,
    first_day: dt.date,
    days: int,
    *,
    rows_per_day: int = 4,
    catalog_rows: int = 3,
    seed: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """A tenant with a CSV source `events` (column `event_time` spread over `days` days from
    `first_day`, plus a day before and after the range) and a snapshot CSV source `catalog`."""
    folder.mkdir(parents=True, exist_ok=True)
    events = folder / f"{tenant_id}_events.csv"
    lines = ["id,event_time,amount,note"]
    for d in range(-1, days + 1):
        day = first_day + dt.timedelta(days=d)
        for i in range((d + seed) % 3 + rows_per_day - 1):  # a varying number of rows per day
            ts = dt.datetime.combine(day, dt.time((i * 5 + seed) % 24, (i * 7) % 60), dt.timezone.utc)
            lines.append(f"{tenant_id}-{d}-{i},{ts.isoformat().replace('+00:00', 'Z')},{d * 10 + i + seed},n{i}")
    events.write_text("\n".join(lines) + "\n")
    catalog = folder / f"{tenant_id}_catalog.csv"
    catalog.write_text(
        "sku,name,price\n" + "".join(f"{tenant_id}-s{i},item {i},{i + seed}.5\n" for i in range(catalog_rows))
    )
    return {
        "id": tenant_id,
        **extra,
        "sources": [
            {
                "name": "events",
                "kind": "csv",
                "location": str(events),
                "event_time": "event_time",
                "primary_key": ["id"],
                "field_mapping": {"source_id": "id", "title": "note", "value": "amount", "created_at": "event_time"},
            },
            {
                "name": "catalog",
                "kind": "csv",
                "location": str(catalog),
                "primary_key": ["sku"],
                "field_mapping": {"source_id": "sku", "title": "name", "value": "price"},
            },
        ],
    }


def create_run(instance: DagsterInstance, tags: dict[str, str], status: Any, job: str = "ingest") -> DagsterRun:
    """A run record with these tags and status, not executed (a queued or in-flight run)."""
    import uuid

    return instance.add_run(DagsterRun(job_name=job, run_id=str(uuid.uuid4()), tags=tags, status=status))


def launch(instance: DagsterInstance, request: RunRequest, *, job: str | None = None):
    """Execute a run request in process as the daemon would launch it: its job, partition
    (key or range tags), asset selection and tags."""
    from etl_platform.definitions import build_definitions

    job_def = build_definitions().resolve_job_def(job or request.job_name or "ingest")
    tags = {k: v for k, v in request.tags.items() if not k.startswith("dagster/partition")}
    selection = request.asset_selection
    if request.asset_check_keys is not None:  # the checks the request names (the schedules': none)
        job_def = job_def.get_subset(asset_selection=set(selection or job_def.asset_layer.executable_asset_keys),
                                     asset_check_selection=set(request.asset_check_keys))
        selection = None
    return job_def.execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        tags=tags,
        asset_selection=selection,
        raise_on_error=False,
    )


def table_contents(warehouse_url: str, schema: str) -> dict[str, list[tuple]]:
    """table -> sorted rows without run-specific lineage columns (dlt's own tables excluded)."""
    from etl_platform.warehouse import Warehouse

    out: dict[str, list[tuple]] = {}
    with Warehouse(warehouse_url).connect() as conn:
        tables = [
            r[0]
            for r in conn.query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1", [schema]
            )
            if not r[0].startswith(("_dlt", "_etl"))
        ]
        for table in tables:
            columns = [
                r[0]
                for r in conn.query(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
                    "ORDER BY column_name",
                    [schema, table],
                )
                if r[0] not in RUN_SPECIFIC_COLUMNS
            ]
            select = ", ".join(f'CAST("{c}" AS VARCHAR)' for c in columns)
            rows = conn.query(f'SELECT {select} FROM "{schema}"."{table}"')
            out[table] = sorted((tuple(row) for row in rows), key=repr)
            out[f"{table}:columns"] = [tuple(columns)]
    return out


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a process we started (and its process group) by PID: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


def runs_with_tags(instance: DagsterInstance, **tags: str) -> list[DagsterRun]:
    from dagster import RunsFilter

    return [r for r in instance.get_runs(RunsFilter(tags=tags))]
