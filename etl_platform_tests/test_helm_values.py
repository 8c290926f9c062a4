"""deploy/helm/values.yaml (Dagster's Helm chart, dagster/dagster) checked without a cluster.

There is no chart and no Kubernetes here, so `helm template` and an install are not run. What is
checked: the values carry the platform's settings (image everywhere, external PostgreSQL, the
platform's queue with deploy/dagster.yaml's per-tenant limits, secrets only through Secrets);
the dagster.yaml the chart renders from them (etl_platform_tests/helm.py follows the chart's
templates) loads as a real Dagster instance with dagster-k8s's K8sRunLauncher (pointed at a
kubeconfig file instead of the in-cluster one) on a PostgreSQL test database; and the Kubernetes
Job that launcher builds for a run of the code location carries the image, the Secrets, the
tenants file, the limits and the deadline.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from etl_platform_tests import helm

ROOT = Path(__file__).resolve().parents[1]
VALUES = ROOT / "deploy" / "helm" / "values.yaml"
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|WAREHOUSE_URL", re.I)
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: test, user: {token: not-a-token}}]
contexts: [{name: test, context: {cluster: test, user: test}}]
current-context: test
"""


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def _deployment(values: dict[str, Any]) -> dict[str, Any]:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def test_values_carry_the_platform(values: dict[str, Any]) -> None:
    deployment = _deployment(values)
    image = helm.image_name(deployment["image"])
    # the webserver and the daemon run the platform's image: its queue class is the platform's
    for part in ("dagsterWebserver", "dagsterDaemon"):
        assert helm.image_name(values[part]["image"]) == image, part
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "etl_platform.definitions"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    # external PostgreSQL; the password only in the Secret
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlPassword"] == ""
    assert values["generatePostgresqlPasswordSecret"] is False
    # the same queue and per-tenant limits as the Compose stack's instance
    deploy = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())["run_coordinator"]
    custom = values["dagsterDaemon"]["runCoordinator"]["config"]["customRunCoordinator"]
    assert (custom["module"], custom["class"]) == (deploy["module"], deploy["class"])
    assert custom["config"]["tag_concurrency_limits"] == deploy["config"]["tag_concurrency_limits"]
    # no secret as a plain value; settings are the platform's documented variables
    documented = set(re.findall(r"^#?\s*(\w+)=", (ROOT / ".env.example").read_text(), re.M))
    for name, value in deployment["env"].items():
        assert not SECRETISH.search(name), f"{name} must come from a Secret (envSecrets), not env"
        assert name in documented, f"{name} is not a variable .env.example documents"
        assert isinstance(value, str), f"{name}: Kubernetes env values are strings"
    assert [s["name"] for s in deployment["envSecrets"]] == ["etl-platform", "etl-tenant-secrets"]
    mounts = {m["mountPath"]: m for m in deployment["volumeMounts"]}
    assert mounts["/opt/dagster/app/tenants.yaml"]["subPath"] == "tenants.yaml"
    # the code server's own resources would become every run's (includeConfigInLaunchedRuns)
    assert "resources" not in deployment


@pytest.mark.postgres
def test_rendered_instance_loads_and_builds_a_run_job(values, pg_url, tmp_path, monkeypatch) -> None:
    from urllib.parse import urlsplit

    from dagster import DagsterInstance, DagsterRun
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.job import construct_dagster_k8s_job

    config = helm.instance_config(values, release="etl", namespace="etl")
    # the test's PostgreSQL instead of the values' placeholder host, a kubeconfig file instead of
    # the in-cluster service account
    pg = urlsplit(pg_url)
    config["run_storage"]["config"]["postgres_db"].update(
        hostname=pg.hostname, port=pg.port or 5432, username=pg.username or "postgres", db_name=pg.path.lstrip("/"),
        params={},
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    config["run_launcher"]["config"].update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", pg.password or "unused")

    with DagsterInstance.from_config(str(home)) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, K8sRunLauncher)
        assert type(instance.run_coordinator).__name__ == "PlatformRunCoordinator"
        assert instance.run_monitoring_enabled and instance.run_monitoring_settings["poll_interval_seconds"] == 30
        assert launcher.job_namespace == "etl" and launcher.instance_config_map == "etl-dagster-instance"

        # a run of the code location, as the user deployment's gRPC server describes it
        deployment = _deployment(values)
        image = helm.image_name(deployment["image"])
        origin = JobPythonOrigin("ingest", RepositoryPythonOrigin(
            executable_path="python", code_pointer=ModuleCodePointer("etl_platform.definitions", "defs", None),
            container_image=image, container_context=helm.user_container_context(values, deployment),
        ))
        run = DagsterRun(job_name="ingest", run_id="0123abcd-0000-4000-8000-000000000000", job_code_origin=origin)
        context = launcher.get_container_context_for_run(run)
        job = construct_dagster_k8s_job(
            job_config=context.get_k8s_job_config(job_image=image, run_launcher=launcher),
            args=["dagster", "api", "execute_run", "{}"], job_name="dagster-run-0123abcd",
            pod_name="dagster-run-0123abcd", component="run_worker", user_defined_k8s_config=context.run_k8s_config,
        )
    spec = job.spec.template.spec
    (container,) = spec.containers
    assert container.image == image
    assert container.resources.limits == {"cpu": "2", "memory": "4Gi"}
    assert container.resources.requests == {"cpu": "1", "memory": "2Gi"}
    env_from = {(e.secret_ref or e.config_map_ref).name for e in container.env_from}
    assert {"etl-platform", "etl-tenant-secrets", "etl-dagster-user-deployments-etl-platform-user-env"} <= env_from
    assert {"DAGSTER_PG_PASSWORD", "DAGSTER_HOME"} <= {e.name for e in container.env}
    assert any(m.mount_path == "/opt/dagster/app/tenants.yaml" and m.sub_path == "tenants.yaml"
               for m in container.volume_mounts)
    assert any(v.config_map and v.config_map.name == "etl-tenants" for v in spec.volumes)
    assert spec.security_context.run_as_user == 10001 and spec.security_context.run_as_non_root is True
    assert job.spec.active_deadline_seconds == 21600
    assert job.metadata.labels["app.kubernetes.io/part-of"] == "etl-platform"


def test_chart_renders_the_instance_built_here(values: dict[str, Any]) -> None:
    """The dagster.yaml of the chart's instance ConfigMap (deploy/helm/rendered.yaml, rendered by
    .ci/check-helm) holds everything helm.instance_config builds, equal; what it adds are the
    chart's defaults, which Dagster applies anyway."""
    rendered_docs = [d for d in yaml.safe_load_all((ROOT / "deploy/helm/rendered.yaml").read_text()) if d]
    (instance_map,) = [d for d in rendered_docs if d["kind"] == "ConfigMap"
                       and d["metadata"]["name"] == "etl-dagster-instance"]
    rendered = yaml.safe_load(instance_map["data"]["dagster.yaml"])
    built = helm.instance_config(values, release="etl", namespace="etl")
    for key, section in built.items():
        if key != "run_monitoring":
            assert rendered[key] == section, key
    assert rendered["run_monitoring"] == {**built["run_monitoring"], "max_resume_run_attempts": 0,
                                          "free_slots_after_run_end_seconds": 0}
    extra = set(rendered) - set(built)
    assert extra == {"scheduler", "compute_logs"}, extra
    assert rendered["scheduler"]["class"] == "DagsterDaemonScheduler"
    assert rendered["compute_logs"]["class"] == "NoOpComputeLogManager"
