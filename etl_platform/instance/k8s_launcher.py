"""`PlatformK8sRunLauncher`: Dagster's K8sRunLauncher (dagster-k8s, the `k8s` extra), whose run pods
hold only what the run needs (deploy/helm/values.yaml).

Dagster's launcher gives every run's pod the code location's Secrets (`includeConfigInLaunchedRuns`):
with the tenants' Secret among them, every run would hold every tenant's secrets. Here a run's pod gets:

- of the Secrets named by the code location, the run's tags or this launcher's own `env_secrets`, only
  those in `run_env_secrets` (default `etl-platform`: the warehouse URL) or in `env_secrets`: the code
  server's others (`etl-alerts`) never reach a run, nor does an `env` entry reading one of them;
- of the volumes, only those mounting no Secret but these (a Secret volume, or a projected volume
  with one among its sources; their mounts go with them), and its sidecars and init containers
  under the same rules (no config of the code location or of a run's `dagster-k8s/config` tag
  mounts the tenants' Secret, or the read API's keys, into a run's pod);
- for each tenant the run covers (its tags, as for the Docker launcher: `run_secrets.run_tenants`),
  one `env` entry per secret of that tenant (its sources' `*_env` and `warehouse_url_env`), read key
  by key from the Secret `tenant_secret` (default `etl-tenant-secrets`, `optional`: a tenant with an
  unset secret fails with the tenants file's own message). Nothing of any other tenant.

Select it in the chart's values with `runLauncher.type: CustomRunLauncher` (values.yaml).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import kubernetes.client
from dagster import Array, DagsterRun, Field, StringSource
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import UserDefinedDagsterK8sConfig
from dagster_k8s.models import k8s_snake_case_dict

from etl_platform.instance.run_launcher import configure_process
from etl_platform.instance.run_secrets import covered_secret_names, registered_order, registry_tenants

logger = logging.getLogger(__name__)
RUN_ENV_SECRETS = ("etl-platform",)
TENANT_SECRET = "etl-tenant-secrets"


class PlatformK8sRunLauncher(K8sRunLauncher):
    """K8sRunLauncher whose run pods get the allowed Secrets and their own tenants' secrets only."""

    def __init__(self, inst_data=None, run_env_secrets: Sequence[str] | None = None,  # noqa: ANN001
                 tenant_secret: str | None = None, **k8s_config: Any) -> None:
        configure_process()
        self.run_env_secrets = list(RUN_ENV_SECRETS if run_env_secrets is None else run_env_secrets)
        self.tenant_secret = tenant_secret or TENANT_SECRET
        # Secrets the operator mounts in this launcher's own `volumes` (a CA bundle, say) stay
        own_volumes = {name for v in k8s_config.get("volumes") or [] for name in _volume_secrets(_snake(v))}
        if self.tenant_secret in {*self.run_env_secrets, *(k8s_config.get("env_secrets") or []), *own_volumes}:
            raise ValueError(
                f"run launcher config: the tenants' Secret {self.tenant_secret!r} may not be in run_env_secrets, "
                "env_secrets or volumes (every run would get every tenant's secrets)"
            )
        self.volume_secrets = own_volumes
        super().__init__(inst_data=inst_data, **k8s_config)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            **K8sRunLauncher.config_type(),
            "run_env_secrets": Field(
                Array(str), is_required=False, default_value=list(RUN_ENV_SECRETS),
                description="The Secrets a run's pod may get whole (envFrom); the code location's others are dropped.",
            ),
            "tenant_secret": Field(
                StringSource, is_required=False, default_value=TENANT_SECRET,
                description="The Secret holding tenants' secrets by variable name: a run reads its tenants' keys only.",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value: Mapping[str, Any]) -> PlatformK8sRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def get_container_context_for_run(self, dagster_run: DagsterRun) -> K8sContainerContext:
        """Dagster's context for the run, its Secrets filtered, plus its tenants' secret references."""
        context = super().get_container_context_for_run(dagster_run)
        allowed = {*self.run_env_secrets, *self.env_secrets}
        mountable = allowed | self.volume_secrets
        tags = dagster_run.tags or {}
        registered = registered_order(self._instance if self.has_instance else None, tags)
        names = set().union(*covered_secret_names(registry_tenants(), tags, registered).values())
        config = context.run_k8s_config.to_dict()  # keys in snake_case, however they were given
        pod_spec = dict(config.get("pod_spec_config") or {})
        volumes = [v for v in pod_spec.get("volumes") or [] if _volume_secrets(v) <= mountable]
        dropped = {v.get("name") for v in pod_spec.get("volumes") or []} - {v.get("name") for v in volumes}
        if dropped:
            logger.warning("run %s: volumes dropped from its pod (they mount Secrets a run may not read): %s",
                           dagster_run.run_id, ", ".join(sorted(map(str, dropped))))
        container = _allowed_only(config.get("container_config") or {}, allowed, dropped)
        env = [e for e in container["env"] if e.get("name") not in names] + [
            {"name": n, "value_from": {"secret_key_ref": {"name": self.tenant_secret, "key": n, "optional": True}}}
            for n in sorted(names)
        ]
        container.update(env=env)
        if "volumes" in pod_spec:
            pod_spec["volumes"] = volumes
        for key in ("init_containers", "containers"):  # sidecars: the same Secrets only
            if pod_spec.get(key):
                pod_spec[key] = [_allowed_only(c, allowed, dropped) for c in pod_spec[key]]
        return K8sContainerContext(
            run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
                {**config, "container_config": container, "pod_spec_config": pod_spec}
            ),
            server_k8s_config=context.server_k8s_config,
            namespace=context.namespace,
            server_replica_count=context.server_replica_count,
        )


def _allowed_only(container: Mapping[str, Any], allowed: set[str], dropped_volumes: set[str]) -> dict[str, Any]:
    """A container's config reading only `allowed` Secrets (env_from, env) and mounting none of
    the volumes dropped."""
    out = dict(container)
    out["env_from"] = [e for e in out.get("env_from") or [] if _secret_of(e) in (None, *allowed)]
    out["env"] = [e for e in out.get("env") or [] if _secret_of(e.get("value_from") or {}) in (None, *allowed)]
    if out.get("volume_mounts"):
        out["volume_mounts"] = [m for m in out["volume_mounts"] if m.get("name") not in dropped_volumes]
    return out


def _snake(volume: Mapping[str, Any]) -> Mapping[str, Any]:
    """A volume as given in the launcher's config (camelCase or snake_case), in snake_case."""
    return k8s_snake_case_dict(kubernetes.client.V1Volume, volume)


def _volume_secrets(volume: Mapping[str, Any]) -> set[str]:
    """The Secrets a volume mounts: a secret volume's, or those among a projected volume's sources."""
    names = {(volume.get("secret") or {}).get("secret_name")}
    names |= {(s.get("secret") or {}).get("name") for s in (volume.get("projected") or {}).get("sources") or []}
    return names - {None}


def _secret_of(ref: Mapping[str, Any]) -> str | None:
    """The Secret an `env_from` entry or an env entry's `value_from` reads (None: not a Secret)."""
    for key in ("secret_ref", "secretRef", "secret_key_ref", "secretKeyRef"):
        if ref.get(key):
            return ref[key].get("name")
    return None
