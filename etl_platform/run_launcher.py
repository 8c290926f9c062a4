"""A run launcher for the deployed stack: Dagster's DefaultRunLauncher plus a worker health check.

The DefaultRunLauncher starts each run as a child process of the gRPC code server. While the code
server lives, it notices a child that died (SIGKILL, OOM) and fails the run itself. When the code
server dies with its children (its container is killed or restarted), nobody would: the
DefaultRunLauncher does not support run monitoring's worker health check, so the run stayed
STARTED forever and the retry sensor never saw a failure.

`MonitoredRunLauncher.check_run_worker_health` asks the code server that started the run (its
address is the run's `dagster/grpc_info` tag) whether it still executes the run: a server that
answers "no" (it restarted, or the worker is gone) makes run monitoring fail the run, and the
retry sensor re-launches it. A server that does not answer is assumed to be restarting, so the
run is left alone until it answers.

deploy/dagster.yaml selects it:

    run_launcher:
      module: etl_platform.run_launcher
      class: MonitoredRunLauncher
"""

from __future__ import annotations

import json

from dagster import DefaultRunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import GRPC_INFO_TAG

HEALTH_CHECK_TIMEOUT_S = 10


class MonitoredRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose runs run monitoring can check (`run_monitoring` in dagster.yaml)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        from dagster._grpc.client import DagsterGrpcClient
        from dagster._grpc.types import CanCancelExecutionRequest, CanCancelExecutionResult
        from dagster._serdes import deserialize_value

        raw = run.tags.get(GRPC_INFO_TAG)
        if not raw:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the run has no gRPC server tag")
        info = json.loads(raw)
        where = info.get("socket") or f"{info.get('host')}:{info.get('port')}"
        client = DagsterGrpcClient(
            port=info.get("port"), socket=info.get("socket"), host=info.get("host", "localhost"),
            use_ssl=bool(info.get("use_ssl", False)),
        )
        try:
            result = deserialize_value(
                client.can_cancel_execution(
                    CanCancelExecutionRequest(run_id=run.run_id), timeout=HEALTH_CHECK_TIMEOUT_S
                ),
                CanCancelExecutionResult,
            )
        except Exception as exc:  # unreachable: restarting; its runs may still be alive
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            return CheckRunHealthResult(
                WorkerStatus.RUNNING, f"code server {where} did not answer ({first}); assuming alive", transient=True
            )
        if result.can_cancel:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(
            WorkerStatus.NOT_FOUND,
            f"the code server at {where} has no process for this run (it restarted, or the run worker died)",
        )
