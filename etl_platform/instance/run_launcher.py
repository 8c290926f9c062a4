"""Run launchers of the deployed stack.

`PlatformDockerRunLauncher` (the Compose stack's, deploy/dagster.yaml): Dagster's
DockerRunLauncher, so that every run gets its own container from the platform's image (a run's
memory, crash or hang cannot take down the code server or other tenants' runs; Dagster's run
monitoring checks the container). It adds what the instance config cannot say by itself:

- per-run limits from the environment: `memory_limit` ("4g") and `cpus` ("2"), both `{env: ...}`;
- `volumes_from`: the containers whose volumes each run mounts (the code server's: the tenants
  file, the run logs and dlt's working folders), so no host path is written twice;
- the environment a run needs besides `env_vars` (`forwarded_env`): the platform's settings of the
  launching process (`ETL_*` but ETL_ROLE, the per-container ports, the admin key, the alert
  channels and metrics tokens; dlt's `RUNTIME__*`, `DESTINATION__*`...), and the secrets of the
  tenants the run covers, read from its tags (their sources' `*_env` and `warehouse_url_env`):
  no other tenant's secret, and no read-API key.

`MonitoredRunLauncher` (the single-process option, for hosts without a Docker socket to give the
daemon): Dagster's DefaultRunLauncher, which starts each run as a child process of the gRPC
code server, plus a worker health check. While the code server lives, it notices a child that
died (SIGKILL, OOM) and fails the run itself. When the code server dies with its children,
nobody would: the DefaultRunLauncher does not support run monitoring's worker health check, so
the run stayed STARTED forever and the retry sensor never saw a failure.
`MonitoredRunLauncher.check_run_worker_health` asks the code server that started the run (its
address is the run's `dagster/grpc_info` tag) whether it still executes the run: a server that
answers "no" (it restarted, or the worker is gone) makes run monitoring fail the run, and the
retry sensor re-launches it. A server that does not answer is assumed to be restarting, so the
run is left alone until it answers. Select it with:

    run_launcher:
      module: etl_platform.instance.run_launcher
      class: MonitoredRunLauncher
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from dagster import DagsterRun, DefaultRunLauncher, Field, StringSource

# a launcher's worker health check and the code server's gRPC client have no public Dagster API
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._grpc.client import DagsterGrpcClient
from dagster._grpc.types import CanCancelExecutionRequest, CanCancelExecutionResult
from dagster._serdes import deserialize_value
from dagster_docker import DockerRunLauncher
from dagster_docker.container_context import DockerContainerContext
from dagster_docker.utils import DOCKER_CONFIG_SCHEMA

from etl_platform.config import secrets
from etl_platform.config.settings import CONTAINER_VARIABLES, platform_variables
from etl_platform.instance.run_secrets import covered_secret_names, registered_order, registry_tenants
from etl_platform.isolation.environment import PLATFORM_SECRETS, env_fields
from etl_platform.observability import logs
from etl_platform.observability import warnings as known_warnings

HEALTH_CHECK_TIMEOUT_S = 10
# dlt's settings a run's sources and warehouse read (README: RUNTIME__* HTTP retries); not
# SOURCES__*, which would hold sources' secrets outside the tenants file's *_env fields
RUN_PREFIXES = ("ETL_", "RUNTIME__", "NORMALIZE__", "DATA_WRITER__", "LOAD__", "EXTRACT__", "DESTINATION__", "DLT_")


def configure_process() -> None:
    """The daemon's and webserver's way into the platform is dagster.yaml: the launcher configures
    the platform's warning filters and logging (idempotent)."""
    known_warnings.install()
    logs.configure_from_env()


class MonitoredRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose runs run monitoring can check (`run_monitoring` in dagster.yaml)."""

    def __init__(self, inst_data=None) -> None:  # noqa: ANN001 - Dagster's signature
        configure_process()
        super().__init__(inst_data=inst_data)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
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


class PlatformDockerRunLauncher(DockerRunLauncher):
    """DockerRunLauncher plus per-run limits, `volumes_from` and the platform's environment."""

    def __init__(self, inst_data=None, volumes_from=None, memory_limit=None, cpus=None, **docker_config: Any) -> None:
        configure_process()
        self.volumes_from = [v.strip() for v in (volumes_from or "").split(",") if v.strip()]
        self.memory_limit = (memory_limit or "").strip() or None
        self.cpus = _cpus(cpus)
        super().__init__(inst_data=inst_data, **docker_config)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            **DOCKER_CONFIG_SCHEMA,
            "volumes_from": Field(
                StringSource, is_required=False,
                description="Comma-separated containers whose volumes every run's container mounts.",
            ),
            "memory_limit": Field(
                StringSource, is_required=False,
                description="Memory limit of every run's container, Docker's format (512m, 4g); empty: none.",
            ),
            "cpus": Field(
                StringSource, is_required=False,
                description="CPUs every run's container may use (2, 0.5); empty: no limit.",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]) -> PlatformDockerRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def get_container_context(self, dagster_run: DagsterRun) -> DockerContainerContext:
        """The platform's additions first: the instance's and the code location's settings win.
        The environment is the run's own: the platform's settings and its tenants' secrets."""
        kwargs: dict[str, Any] = {}
        if self.volumes_from:
            kwargs["volumes_from"] = list(self.volumes_from)
        if self.memory_limit:
            kwargs["mem_limit"] = self.memory_limit
        if self.cpus:
            kwargs["nano_cpus"] = int(self.cpus * 1e9)
        tags = dagster_run.tags or {}
        env = forwarded_env(tags, registered_order(self._instance if self.has_instance else None, tags))
        ours = DockerContainerContext(env_vars=sorted(env), container_kwargs=kwargs)
        return ours.merge(super().get_container_context(dagster_run))


def _cpus(raw: str | None) -> float | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"run launcher config 'cpus': expected a positive number of CPUs, got {raw!r}")
    return value


def forwarded_env(tags: Mapping[str, str] | None = None, registered: Iterable[str] | None = None) -> set[str]:
    """Names of the variables a run's container gets from this process's environment (set ones
    only): the platform's settings (`ETL_*` but the admin key, alert channels and metrics tokens)
    and dlt's (`RUNTIME__*`, `DESTINATION__*`, ...), and the secrets of the tenants the run covers
    (their sources' `*_env` and `warehouse_url_env`), never another tenant's, nor any read-API key.

    Alerts are sent by the daemon's sensors, the read API serves the keys: a run needs neither."""
    environ = secrets.environment()
    tenants = registry_tenants()
    named = {n for tenant in tenants for n in env_fields(tenant)}
    platform = {n for n in environ if n.startswith(RUN_PREFIXES)} | platform_variables()
    names = {n for n in platform if n not in named and n not in PLATFORM_SECRETS and n not in CONTAINER_VARIABLES}
    for secret_names in covered_secret_names(tenants, tags or {}, registered).values():
        names |= {n for n in secret_names if n in environ}
    return names
