"""PlatformK8sRunLauncher (deploy/helm/values.yaml's run launcher) without a cluster or Docker: the
Kubernetes Job its real `launch_run` builds for a run of the code location, from the rendered
instance ConfigMap and the container context the chart gives the code location
(`etl_platform_tests/support/helm_chart.py`), on a temporary SQLite instance.

Invariant: no tenant ever sees another tenant's secrets. A run's pod references, key by key in the
tenants' Secret, the secrets of the tenants the run covers and no other; of the code location's
Secrets it gets whole only `run_env_secrets` (etl-platform): never the alert channels (etl-alerts),
the read API's keys (etl-api) or the tenants' Secret whole. test_k8s_job.py runs such a Job.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance, DagsterRun
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._serdes import ConfigurableClassData

from etl_platform.instance.k8s_launcher import PlatformK8sRunLauncher
from etl_platform.runs.partitions import partition_key, tenant_date_partitions
from etl_platform.runs.tags import tenant_tags
from etl_platform_tests.support import helm_chart as helm
from etl_platform_tests.support.platform_runs import SECRET_TENANTS, write_tenants

TENANTS = SECRET_TENANTS
ALPHA = {"ALPHA_GITHUB_TOKEN", "ALPHA_WAREHOUSE_URL"}
BETA = {"BETA_GITHUB_TOKEN", "BETA_WAREHOUSE_URL"}
DAY = "2026-12-01"


@pytest.fixture
def setup(tmp_path, monkeypatch) -> Any:
    monkeypatch.setenv("ETL_TENANTS_FILE", str(write_tenants(tmp_path / "tenants.yaml", TENANTS)))
    monkeypatch.setenv("ETL_CACHE_DIR", str(tmp_path / "cache"))
    config = helm.instance_config()
    launcher_config = helm.run_launcher_config(config, tmp_path / "kubeconfig")
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        instance.add_dynamic_partitions("tenant", ["alpha", "beta", "gamma"])
        yield instance, launcher_config


def job_of(setup: Any, tags: dict[str, str]) -> Any:
    """The Kubernetes Job the launcher builds for a run of the code location with `tags`."""
    instance, launcher_config = setup
    origin = JobPythonOrigin("ingest", RepositoryPythonOrigin(
        executable_path="python", code_pointer=ModuleCodePointer("etl_platform.definitions", "defs", None),
        container_image="registry.example.com/etl-platform:0.1.0", container_context=helm.container_context(),
    ))
    run = instance.add_run(DagsterRun(job_name="ingest", run_id=str(uuid.uuid4()), tags=tags,
                                      job_code_origin=origin))
    _, job = helm.launch_job(instance, run, launcher_config)
    return job


def pod_of(setup: Any, tags: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    """(envFrom's Secrets, {env name: its secretKeyRef}) of the container of the run's Job."""
    (container,) = job_of(setup, tags).spec.template.spec.containers
    secrets = [e.secret_ref.name for e in container.env_from if e.secret_ref]
    refs = {e.name: e.value_from.secret_key_ref for e in container.env or [] if e.value_from}
    return secrets, refs


def tenant_refs(refs: dict[str, Any]) -> set[str]:
    """The env names read from the tenants' Secret, checked to read each its own key, optionally."""
    out = {name for name, ref in refs.items() if ref.name == "etl-tenant-secrets"}
    for name in out:
        assert refs[name].key == name and refs[name].optional is True, refs[name]
    return out


UI_PARTITION = tenant_date_partitions().get_tags_for_partition_key(str(partition_key("alpha", DAY)))


@pytest.mark.parametrize(
    "tags",
    [
        UI_PARTITION,  # a partition launched from the UI (before the queue adds etl/tenant)
        {**UI_PARTITION, **tenant_tags(["alpha"])},  # the same, as the queue launches it
        {"dagster/asset_partition_range_start": f"{DAY}|alpha",  # a one-tenant range (UI backfill)
         "dagster/asset_partition_range_end": "2026-12-03|alpha"},
        tenant_tags(["alpha"]),  # a scheduled chunk of one tenant
    ],
)
def test_a_tenants_run_pod_reads_its_own_secrets_only(setup, tags) -> None:
    secrets, refs = pod_of(setup, tags)
    assert tenant_refs(refs) == ALPHA
    # whole Secrets: the platform's only; the code server's alert channels never reach a run
    assert secrets == ["etl-platform"]
    assert refs["DAGSTER_PG_PASSWORD"].name == "etl-postgresql"
    assert {r.name for r in refs.values()} == {"etl-tenant-secrets", "etl-postgresql"}


def test_a_chunk_run_pod_reads_the_secrets_of_its_tenants_only(setup) -> None:
    secrets, refs = pod_of(setup, tenant_tags(["alpha", "beta"]))
    assert tenant_refs(refs) == ALPHA | BETA and secrets == ["etl-platform"]
    # a UI backfill's range over two tenants covers those between them in the partitions' order
    _, refs = pod_of(setup, {"dagster/asset_partition_range_start": f"{DAY}|alpha",
                             "dagster/asset_partition_range_end": f"{DAY}|beta"})
    assert tenant_refs(refs) == ALPHA | BETA


def test_a_run_of_no_tenant_reads_no_tenant_secret(setup) -> None:
    secrets, refs = pod_of(setup, {})
    assert tenant_refs(refs) == set() and secrets == ["etl-platform"]


def test_a_runs_own_k8s_config_cannot_add_other_secrets(setup) -> None:
    """A run's `dagster-k8s/config` tag (anyone who launches a run can set it) asking for the
    tenants' Secret whole or the read API's keys gets neither."""
    config = {"container_config": {
        "env_from": [{"secret_ref": {"name": "etl-tenant-secrets"}}, {"secretRef": {"name": "etl-api"}}],
        "env": [{"name": "ETL_ADMIN_API_KEY",
                 "valueFrom": {"secretKeyRef": {"name": "etl-api", "key": "ETL_ADMIN_API_KEY"}}},
                {"name": "BETA_GITHUB_TOKEN",
                 "valueFrom": {"secretKeyRef": {"name": "etl-tenant-secrets", "key": "BETA_GITHUB_TOKEN"}}}],
    }}
    secrets, refs = pod_of(setup, {**tenant_tags(["alpha"]), "dagster-k8s/config": json.dumps(config)})
    assert secrets == ["etl-platform"] and tenant_refs(refs) == ALPHA
    assert "ETL_ADMIN_API_KEY" not in refs


def test_a_runs_own_k8s_config_cannot_mount_other_secrets(setup) -> None:
    """The same through volumes: a Secret mounted as files (whole, or in a projected volume) reaches
    the pod only when the run may read it whole (run_env_secrets); the mounts of the volumes
    dropped go with them, and the other volumes stay."""
    config = {
        "pod_spec_config": {"volumes": [
            {"name": "all-tenants", "secret": {"secret_name": "etl-tenant-secrets"}},
            {"name": "api-keys", "secret": {"secretName": "etl-api"}},
            {"name": "bundle", "projected": {"sources": [
                {"configMap": {"name": "etl-ca"}}, {"secret": {"name": "etl-tenant-secrets"}}]}},
            {"name": "platform", "secret": {"secret_name": "etl-platform"}},
            {"name": "scratch", "empty_dir": {}},
        ],
            "init_containers": [{"name": "copy", "image": "busybox",
                                 "env_from": [{"secret_ref": {"name": "etl-tenant-secrets"}}],
                                 "volume_mounts": [{"name": "all-tenants", "mount_path": "/t"},
                                                   {"name": "scratch", "mount_path": "/scratch"}]}],
        },
        "container_config": {"volume_mounts": [
            {"name": "all-tenants", "mount_path": "/secrets/tenants"},
            {"name": "api-keys", "mountPath": "/secrets/api"},
            {"name": "bundle", "mount_path": "/secrets/bundle"},
            {"name": "platform", "mount_path": "/secrets/platform"},
            {"name": "scratch", "mount_path": "/scratch"},
        ]},
    }
    pod = job_of(setup, {**tenant_tags(["alpha"]), "dagster-k8s/config": json.dumps(config)}).spec.template.spec
    (container,) = pod.containers
    volumes = {v.name for v in pod.volumes or []}
    mounts = {m.name for m in container.volume_mounts or []}
    assert {"platform", "scratch"} <= volumes and not volumes & {"all-tenants", "api-keys", "bundle"}
    assert {"platform", "scratch"} <= mounts and not mounts & {"all-tenants", "api-keys", "bundle"}
    secrets_mounted = {v.secret.secret_name for v in pod.volumes or [] if v.secret}
    assert "etl-tenant-secrets" not in secrets_mounted
    (init,) = pod.init_containers  # a sidecar of the run's pod: the same rules
    assert not init.env_from and [m.name for m in init.volume_mounts] == ["scratch"]


def test_the_operators_own_secret_volumes_stay_but_never_the_tenants_secret(setup) -> None:
    """A Secret the launcher's own config mounts (a CA bundle for the warehouse, say) is the
    operator's choice and reaches every run's pod; the launcher refuses to mount the tenants'."""
    instance, launcher_config = setup
    own = {**launcher_config,
           "volumes": [*launcher_config.get("volumes", []),
                       {"name": "pg-ca", "secret": {"secretName": "warehouse-ca"}}],
           "volume_mounts": [*launcher_config.get("volume_mounts", []), {"name": "pg-ca", "mountPath": "/ca"}]}
    pod = job_of((instance, own), tenant_tags(["alpha"])).spec.template.spec
    assert "pg-ca" in {v.name for v in pod.volumes} and "pg-ca" in {m.name for m in pod.containers[0].volume_mounts}
    tenants_whole = {**launcher_config, "volumes": [{"name": "t", "secret": {"secret_name": "etl-tenant-secrets"}}]}
    with pytest.raises(ValueError, match="every tenant's secrets"):
        helm.build_launcher(tenants_whole)


def test_the_rendered_config_loads_through_the_launchers_schema(setup) -> None:
    _, launcher_config = setup
    rendered = helm.instance_config()["run_launcher"]
    launcher = ConfigurableClassData(rendered["module"], rendered["class"], yaml.safe_dump(launcher_config)).rehydrate(
        PlatformK8sRunLauncher)
    assert launcher.run_env_secrets == ["etl-platform"] and launcher.tenant_secret == "etl-tenant-secrets"
    assert launcher.job_namespace == helm.NAMESPACE and launcher.dagster_home == "/opt/dagster/dagster_home"
    # the defaults are the same; the tenants' Secret may not be given whole
    bare = {k: v for k, v in launcher_config.items() if k not in ("run_env_secrets", "tenant_secret")}
    default = ConfigurableClassData(rendered["module"], rendered["class"], yaml.safe_dump(bare)).rehydrate(
        PlatformK8sRunLauncher)
    assert (default.run_env_secrets, default.tenant_secret) == (["etl-platform"], "etl-tenant-secrets")
    with pytest.raises(ValueError, match="every tenant's secrets"):
        helm.build_launcher({**launcher_config, "run_env_secrets": ["etl-platform", "etl-tenant-secrets"]})
