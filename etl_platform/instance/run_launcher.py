"""Run launchers of the deployed stack.

`PlatformDockerRunLauncher` (the Compose stack's, deploy/dagster.yaml): Dagster's
DockerRunLauncher, so that every run gets its own container from the platform's image (a run's
memory, crash or hang cannot take down the code server or other tenants' runs; Dagster's run
monitoring checks the container). It adds what the instance config cannot say by itself:

- per-run limits from the environment: `memory_limit` ("4g") and `cpus` ("2"), both `{env: ...}`;
- `volumes_from`: the containers whose volumes each run mounts (the code server's: the tenants
  file, the run logs and dlt's working folders), so no host path is written twice;
- the environment a run needs besides `env_vars`: every `ETL_*` setting of the launching process
  (but ETL_ROLE and the per-container ports) and every variable the tenants file names in its
  `*_env` fields (sources' secrets, tenants' API keys and warehouse URLs) that is set.

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
import logging
from collections.abc import Iterator, Mapping
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
from etl_platform.config.registry import load_registry
from etl_platform.config.settings import platform_variables
from etl_platform.observability import logs
from etl_platform.observability import warnings as known_warnings

HEALTH_CHECK_TIMEOUT_S = 10
log = logging.getLogger(__name__)


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
        """The platform's additions first: the instance's and the code location's settings win."""
        kwargs: dict[str, Any] = {}
        if self.volumes_from:
            kwargs["volumes_from"] = list(self.volumes_from)
        if self.memory_limit:
            kwargs["mem_limit"] = self.memory_limit
        if self.cpus:
            kwargs["nano_cpus"] = int(self.cpus * 1e9)
        ours = DockerContainerContext(env_vars=sorted(forwarded_env()), container_kwargs=kwargs)
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


def _env_fields(value: Any) -> Iterator[str]:
    """Values of every `*_env` field in a dumped tenant config."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith("_env") and isinstance(item, str):
                yield item
            else:
                yield from _env_fields(item)
    elif isinstance(value, list):
        for item in value:
            yield from _env_fields(item)


_NAMES: dict[str, frozenset[str]] = {}  # tenants file content hash -> *_env names


def tenant_env_names() -> frozenset[str]:
    """The variables the tenants file names (`*_env`), computed once per file content."""
    registry = load_registry()
    key = registry.content_hash or str(id(registry))
    if key not in _NAMES:
        _NAMES[key] = frozenset(name for t in registry.tenants for name in _env_fields(t.model_dump()))
    return _NAMES[key]


def forwarded_env() -> set[str]:
    """Names of the variables a run's container gets from this process's environment (set ones only)."""
    names = platform_variables()
    try:
        names |= {n for n in tenant_env_names() if secrets.is_set(n)}
    except Exception as exc:  # a broken tenants file must not stop health checks and terminations
        log.warning("run containers get no tenant secrets: cannot read the tenants file: %s", exc)
    return names
