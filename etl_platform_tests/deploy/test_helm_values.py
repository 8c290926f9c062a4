"""deploy/helm/values.yaml through Dagster's Helm chart (dagster/dagster), checked without a cluster.

deploy/helm/rendered.yaml is the chart's rendering of the values (.ci/check-helm makes and checks
it with helm, and validates every manifest with kubernetes-validate). Here: the values carry the
platform's settings (image everywhere, external PostgreSQL, the platform's queue with
deploy/dagster.yaml's per-tenant limits, secrets only through Secrets) and the rendering is of
these values; the instance dagster.yaml of the rendered ConfigMap is the platform's, and loads as
a real Dagster instance with the platform's PlatformK8sRunLauncher (dagster-k8s's K8sRunLauncher,
given a kubeconfig file instead of the in-cluster account) on a PostgreSQL test database; and the
Kubernetes Job that launcher creates for a run of the code location (its launch_run, the API call
recorded) carries the image, the Secrets, the tenants file, the limits, the security context and
the deadline. test_k8s_launcher.py checks which secrets such a Job holds per run.
test_k8s_job.py runs that Job's container in Docker.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from etl_platform_tests.support import helm_chart as helm

ROOT = Path(__file__).resolve().parents[2]
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|WAREHOUSE_URL", re.I)


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(helm.VALUES.read_text())


def _deployment(values: dict[str, Any]) -> dict[str, Any]:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


def test_values_carry_the_platform(values: dict[str, Any]) -> None:
    deployment = _deployment(values)
    assert deployment["name"] == helm.LOCATION
    image = helm.image_name(deployment["image"])
    # the webserver and the daemon run the platform's image: its queue class is the platform's
    for part in ("dagsterWebserver", "dagsterDaemon"):
        assert helm.image_name(values[part]["image"]) == image, part
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "etl_platform.definitions"]
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    # the platform's K8sRunLauncher: a run's pod gets the Secrets of run_env_secrets and its tenants' keys only
    assert values["runLauncher"]["type"] == "CustomRunLauncher"
    custom = values["runLauncher"]["config"]["customRunLauncher"]
    assert (custom["module"], custom["class"]) == helm.LAUNCHER
    assert custom["config"]["run_env_secrets"] == ["etl-platform"]
    assert custom["config"]["tenant_secret"] == "etl-tenant-secrets"
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
    # the code server: the warehouse and the alert channels (its sensors send alerts), no tenant's secret
    assert [s["name"] for s in deployment["envSecrets"]] == ["etl-platform", "etl-alerts"]
    mounts = {m["mountPath"]: m for m in deployment["volumeMounts"]}
    assert mounts["/opt/dagster/app/tenants.yaml"]["subPath"] == "tenants.yaml"
    # the code server's own resources would become every run's (includeConfigInLaunchedRuns)
    assert "resources" not in deployment


def test_rendering_is_of_these_values(values: dict[str, Any]) -> None:
    assert helm.rendered_values_digest() == helm.values_digest(values), (
        "deploy/helm/values.yaml changed since deploy/helm/rendered.yaml was rendered: run .ci/check-helm --write"
    )
    kinds = sorted({m["kind"] for m in helm.manifests()})
    assert kinds == ["ConfigMap", "Deployment", "Role", "RoleBinding", "Service", "ServiceAccount"], kinds
    # no Secret is rendered: the operator creates them (values.yaml's header); no bundled database
    assert not any("postgresql" in m["metadata"]["name"] for m in helm.manifests())


def test_rendered_instance_is_the_platforms(values: dict[str, Any]) -> None:
    """What matters in the chart's dagster.yaml, against the values it was rendered from."""
    config = helm.instance_config()
    pg = values["postgresql"]
    storage = {"username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
               "hostname": pg["postgresqlHost"], "db_name": pg["postgresqlDatabase"], "port": pg["service"]["port"],
               "params": pg["postgresqlParams"], "scheme": pg["postgresqlScheme"]}
    for key, cls in (("run_storage", "PostgresRunStorage"), ("event_log_storage", "PostgresEventLogStorage"),
                     ("schedule_storage", "PostgresScheduleStorage")):
        assert config[key]["class"] == cls and config[key]["config"] == {"postgres_db": storage}, key
    custom = values["dagsterDaemon"]["runCoordinator"]["config"]["customRunCoordinator"]
    assert config["run_coordinator"] == {
        "module": custom["module"], "class": custom["class"], "config": custom["config"]}
    launcher = config["run_launcher"]["config"]
    assert (config["run_launcher"]["module"], config["run_launcher"]["class"]) == helm.LAUNCHER
    assert launcher == values["runLauncher"]["config"]["customRunLauncher"]["config"]
    # a custom launcher gets no names from the chart: the values' must be the release's
    assert launcher["job_namespace"] == helm.NAMESPACE
    assert launcher["postgres_password_secret"] == values["global"]["postgresqlSecretName"]
    assert launcher["instance_config_map"] == f"{helm.RELEASE}-dagster-instance"
    assert helm.manifest("ConfigMap", launcher["instance_config_map"])
    assert helm.manifest("ServiceAccount", launcher["service_account_name"])
    assert launcher["dagster_home"] == values["global"]["dagsterHome"]
    assert launcher["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
    assert launcher["run_k8s_config"]["job_spec_config"] == {"activeDeadlineSeconds": 21600}
    # the code location's container context still names its Secrets: the launcher filters them
    assert helm.container_context()["k8s"]["env_secrets"] == ["etl-platform", "etl-alerts"]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_monitoring"]["poll_interval_seconds"] == monitoring["pollIntervalSeconds"]
    assert config["run_monitoring"]["start_timeout_seconds"] == monitoring["startTimeoutSeconds"]
    assert "run_retries" not in config  # the platform's retry sensor retries, not Dagster
    assert config["telemetry"] == {"enabled": False}
    assert config["compute_logs"]["class"] == "NoOpComputeLogManager"  # the chart's default: README says so


def test_the_daemon_reads_the_code_locations_tenants_file() -> None:
    """The daemon launches the runs: which secrets a tenant's run gets comes from the tenants file it
    reads, which must be the operator's (the ConfigMap), not the image's example."""
    def tenants_file(deployment: str) -> tuple[str, str]:
        pod = helm.manifest("Deployment", deployment)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/opt/dagster/app/tenants.yaml"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        return volume["configMap"]["name"], mount["subPath"]

    code = tenants_file(f"{helm.RELEASE}-dagster-user-deployments-{helm.LOCATION}")
    assert tenants_file(f"{helm.RELEASE}-dagster-daemon") == code == ("etl-tenants", "tenants.yaml")
    assert "ETL_TENANTS_FILE=/opt/dagster/app/tenants.yaml" in (ROOT / "Dockerfile").read_text()


@pytest.mark.postgres
def test_rendered_instance_loads_and_builds_a_run_job(values, pg_url, tmp_path, monkeypatch) -> None:
    from urllib.parse import urlsplit

    from dagster import DagsterInstance, DagsterRun
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin

    config = helm.instance_config()
    # the test's PostgreSQL instead of the values' placeholder host
    pg = urlsplit(pg_url)
    for key in ("run_storage", "event_log_storage", "schedule_storage"):
        config[key]["config"]["postgres_db"].update(
            hostname=pg.hostname, port=pg.port or 5432, username=pg.username or "postgres",
            db_name=pg.path.lstrip("/"), params={},
        )
    launcher_config = helm.run_launcher_config(config, tmp_path / "kubeconfig")
    config["run_launcher"]["config"] = launcher_config
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", pg.password or "unused")

    image = helm.image_name(_deployment(values)["image"])
    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_launcher).__name__ == "PlatformK8sRunLauncher"
        assert type(instance.run_coordinator).__name__ == "PlatformRunCoordinator"
        assert instance.run_monitoring_enabled and instance.run_monitoring_settings["poll_interval_seconds"] == 30
        # a run of the code location, as its gRPC server describes it (the rendered container context)
        origin = JobPythonOrigin("ingest", RepositoryPythonOrigin(
            executable_path="python", code_pointer=ModuleCodePointer("etl_platform.definitions", "defs", None),
            container_image=image, container_context=helm.container_context(),
        ))
        run = instance.add_run(DagsterRun(job_name="ingest", run_id="0123abcd-0000-4000-8000-000000000000",
                                          job_code_origin=origin))
        namespace, job = helm.launch_job(instance, run, launcher_config)
        assert instance.get_run_by_id(run.run_id).tags["dagster/image"] == image
    assert namespace == helm.NAMESPACE and job.metadata.name == "dagster-run-0123abcd-0000-4000-8000-000000000000"
    spec = job.spec.template.spec
    (container,) = spec.containers
    assert container.image == image
    assert container.args[:5] == ["python", "-m", "dagster", "api", "execute_run"]  # the origin's executable
    assert container.resources.limits == {"cpu": "2", "memory": "4Gi"}
    assert container.resources.requests == {"cpu": "1", "memory": "2Gi"}
    env_from = [(e.secret_ref or e.config_map_ref).name for e in container.env_from]
    # of the code location's Secrets only etl-platform; a run of no tenant reads no tenant's key
    assert env_from == ["etl-dagster-user-deployments-etl-platform-user-env", "etl-platform"]
    refs = [e.value_from.secret_key_ref for e in container.env if e.value_from and e.value_from.secret_key_ref]
    assert [r.name for r in refs] == [values["global"]["postgresqlSecretName"]]
    env = {e.name: e for e in container.env}
    assert env["DAGSTER_HOME"].value == values["global"]["dagsterHome"]
    assert env["DAGSTER_PG_PASSWORD"].value_from.secret_key_ref.name == values["global"]["postgresqlSecretName"]
    assert any(m.mount_path == "/opt/dagster/app/tenants.yaml" and m.sub_path == "tenants.yaml"
               for m in container.volume_mounts)
    # no instance ConfigMap in the run's pod: the run loads the launching instance from its args
    assert [v.config_map.name for v in spec.volumes] == ["etl-tenants"]
    assert '"InstanceRef"' in container.args[-1]
    assert spec.security_context.run_as_user == 10001 and spec.security_context.run_as_non_root is True
    assert spec.service_account_name == "etl-dagster-user-deployments-user-deployments"
    assert job.spec.active_deadline_seconds == 21600
    assert job.metadata.labels["app.kubernetes.io/part-of"] == "etl-platform"


def test_every_process_of_the_release_logs_json() -> None:
    """What the UI cannot show is in the logs: with the values, the webserver and the code server
    write Dagster's lines as JSON, through the variables their commands read for --log-format
    (the chart's commands take no such option), and the platform's lines (code server, daemon,
    webserver, every run: runs get the code server's env) are JSON too."""
    env_of = {name: helm.config_map(name) for name in (
        f"{helm.RELEASE}-dagster-webserver-env", f"{helm.RELEASE}-dagster-daemon-env",
        f"{helm.RELEASE}-dagster-user-deployments-{helm.LOCATION}-user-env")}
    assert all(env.get("ETL_LOG_FORMAT") == "json" for env in env_of.values()), env_of
    web, code = f"{helm.RELEASE}-dagster-webserver-env", f"{helm.RELEASE}-dagster-user-deployments-{helm.LOCATION}-user-env"
    commands = {"DAGSTER_WEBSERVER_LOG_FORMAT": (web, ["dagster-webserver"]),
                "DAGSTER_CLI_API_GRPC_LOG_FORMAT": (code, ["dagster", "api", "grpc"])}
    bin_dir = Path(sys.executable).parent
    for variable, (config_map, command) in commands.items():
        assert env_of[config_map].get(variable) == "json", (config_map, variable)
        # the command reads the variable as its --log-format: a wrong value is refused by name
        done = subprocess.run([str(bin_dir / command[0]), *command[1:]], capture_output=True, text=True, timeout=120,
                              env={**os.environ, variable: "not-a-format"})
        assert done.returncode != 0 and "Invalid value for '--log-format'" in done.stderr, (variable, done.stderr[-500:])
