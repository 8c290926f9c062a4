"""The Celery engine: every run a Celery task that a worker on any machine executes.

`PlatformCeleryRunLauncher` is dagster-celery's `CeleryRunLauncher`: the daemon sends each run
to the broker (RabbitMQ), a worker (`dagster-celery worker start`, deploy/celery/worker.yaml)
takes it and executes the whole run in its own process, reading Dagster's storage and the
warehouse over the network. Our runs are one step each, so the run is the unit to distribute: the
control plane keeps no process per run (dagster-celery's executor would, for each run, keep a run
worker on the launching host to hand its one step to a worker; README, "Worker machines").

It adds a truthful worker health check. Dagster's run monitoring asks the launcher about every
started run; CeleryRunLauncher answers from the task's state in the result backend, and a task
whose worker died (the machine powered off, the container killed) stays STARTED there for ever:
the run would hold its tenant's queue slot until `max_runtime_seconds`. Here a started task's
worker (its name is in the task's state) must also answer a ping and list the task among its
active ones; if it does not, the run is reported FAILED with the worker's name, run monitoring
marks it FAILURE, and the platform's retry sensor retries it on the workers that are left.
Select it in dagster.yaml (deploy/celery/run_launcher.yaml):

    run_launcher:
      module: etl_platform.instance.celery_launcher
      class: PlatformCeleryRunLauncher
      config:
        broker: {env: DAGSTER_CELERY_BROKER_URL}
        backend: {env: DAGSTER_CELERY_BACKEND_URL}
"""

from __future__ import annotations

from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

PING_TIMEOUT_S = 2.0
PING_ATTEMPTS = 3  # a busy broker may drop one reply; a dead worker answers none


class PlatformCeleryRunLauncher(CeleryRunLauncher):
    """CeleryRunLauncher whose health check notices a started run whose worker is gone."""

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        result = super().check_run_worker_health(run)
        if result.status != WorkerStatus.RUNNING:
            return result
        task_id = run.tags[DAGSTER_CELERY_TASK_ID_TAG]
        meta = self.celery.AsyncResult(task_id).info
        worker = meta.get("hostname") if isinstance(meta, dict) else None
        if not worker:
            return result
        if self._runs_task(worker, task_id):
            return result
        if self.celery.AsyncResult(task_id).state != "STARTED":  # it finished meanwhile: ask again next poll
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "the task finished while its worker was checked")
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"Celery worker {worker}, which started this run, no longer runs it: the worker's machine or "
            "process is gone (it answers no ping), or it restarted and lost the task",
        )

    def _runs_task(self, worker: str, task_id: str) -> bool:
        """Does `worker` answer, and list `task_id` among its active tasks?"""
        for _ in range(PING_ATTEMPTS):
            replies = self.celery.control.inspect(destination=[worker], timeout=PING_TIMEOUT_S).active()
            if replies:
                return any(task.get("id") == task_id for task in replies.get(worker, []))
        return False
