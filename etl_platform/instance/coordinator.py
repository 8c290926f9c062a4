"""The run queue: Dagster's QueuedRunCoordinator, plus the platform's tags on every run.

dagster.yaml limits the queue per `etl/tenant` (one run at a time per tenant, hence per tenant
and source) and globally. Dagster tags single-partition runs with `dagster/partition/tenant`,
but a ranged run (a UI or scheduled single-run backfill) only carries
`dagster/asset_partition_range_start/end`: this coordinator derives `etl/tenant` (and
`etl/trigger`, `etl/source`) before the run is queued, so the per-tenant limit applies to
schedules, retries, backfills and manual launches alike.

A run spanning several tenants (a multi-tenant single-run backfill) gets `etl/tenants` instead:
the queue cannot hold it against several tenants' limits at once. Loads stay correct anyway,
each (tenant, source) loads through its own dlt pipeline under the warehouse's write lock.
"""

from __future__ import annotations

from typing import Any

from dagster import DagsterRun, QueuedRunCoordinator, SubmitRunContext

from etl_platform.observability import logs
from etl_platform.observability import warnings as known_warnings
from etl_platform.runs.tags import _registered, missing_platform_tags


class PlatformRunCoordinator(QueuedRunCoordinator):
    """QueuedRunCoordinator that adds the platform's run tags before enqueuing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # the webserver's and daemon's way into the platform (dagster.yaml): configure it here
        known_warnings.install()
        logs.configure_from_env()
        super().__init__(*args, **kwargs)

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        try:
            missing = missing_platform_tags(run.tags, run.asset_selection, _registered(self._instance), run.job_name)
        except Exception as exc:  # noqa: BLE001 - never refuse a run over its tags
            self._logger.warning(f"run {run.run_id}: could not derive the platform's tags: {exc}")
            missing = {}
        if missing:
            self._instance.add_run_tags(run.run_id, missing)
            run = self._instance.get_run_by_id(run.run_id) or run
            context = SubmitRunContext(run, context.workspace)
        return super().submit_run(context)
