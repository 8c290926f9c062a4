"""The Kubernetes Job that dagster-k8s builds for a run, from Dagster's Helm chart rendering of
deploy/helm/values.yaml, run for real in the Docker engine: as close to a pod as this machine
allows (there is no Kubernetes here).

1. The image is built from the Dockerfile as values.yaml says (`--build-arg ETL_EXTRAS=k8s`).
2. The operator's objects that values.yaml's header lists are made as a cluster would hold them:
   the Secrets etl-postgresql, etl-platform (ETL_WAREHOUSE_URL: a fresh database on the test
   PostgreSQL), etl-alerts (an alert channel), etl-api (the admin and read-API keys) and
   etl-tenant-secrets (one key per secret of a tenant's loading), and the ConfigMap etl-tenants:
   the repository's tenants.yaml with a `warehouse_url_env` for every tenant (the demo's names the
   same fresh database), so that the run needs its tenant's secret to load at all.
3. The launching instance is the rendered instance ConfigMap's dagster.yaml, with only its storage
   pointed at a fresh database on the test PostgreSQL (127.0.0.1, no TLS: the values' managed
   server is not here). A partition run of `ingest` (today | demo) is created for the code
   location's origin: this image and the rendered container context.
4. The platform's PlatformK8sRunLauncher (Dagster's K8sRunLauncher) builds the Job
   (helm.launch_job); its pod spec becomes a `docker run`
   (pod_as_docker_run): the same image, command and args (`python -m dagster api execute_run
   <run, instance ref>`), the environment resolved as the kubelet does (envFrom ConfigMaps and
   Secrets in order, then env, valueFrom secretKeyRef), the ConfigMap volumes with their subPath
   mounts, the pod's user, group and fsGroup, and the CPU and memory limits; on the host's network
   (the test PostgreSQL is on 127.0.0.1).
5. The container exits 0; Dagster's run storage says SUCCESS; the demo tenant's raw rows carry
   the run's id and its records are in the warehouse. The container's environment holds the demo's
   secret and no other tenant's, no admin or read-API key, no alert channel (invariant: no tenant
   ever sees another tenant's secrets).

Not verified here (no cluster): scheduling, image pulls, the service account and its token, RBAC,
fsGroup's volume ownership, probes, evictions, Services and cluster DNS, the Job controller's
retries and deadline.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from etl_platform_tests.conftest import create_pg_database, drop_pg_database
from etl_platform_tests.support import helm_chart as helm
from etl_platform_tests.support.compose_stack import DOCKER, docker

pytestmark = [pytest.mark.docker, pytest.mark.postgres, pytest.mark.timeout(2400)]

IMAGE = "k8s-etl-platform:job-test"
TENANT = "demo"


@pytest.fixture
def engine() -> None:
    try:
        docker("info", "--format", "{{.ServerVersion}}", timeout=30)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"no Docker engine answers: {exc} (.ci/docker-setup starts one)")
        pytest.skip(f"no Docker engine answers: {exc}")


def _quantity_to_docker(memory: str) -> str:
    """Kubernetes memory (4Gi, 512Mi) as Docker's (4g, 512m)."""
    match = re.fullmatch(r"(\d+)([KMGT])i", memory)
    assert match, f"memory limit {memory!r} has no Docker equivalent here"
    return f"{match.group(1)}{match.group(2).lower()}"


def pod_as_docker_run(pod: dict[str, Any], secrets: dict[str, dict[str, str]],
                      config_maps: dict[str, dict[str, str]], files: Path, name: str) -> list[str]:
    """`docker run` arguments for a Job's pod spec (one container): what the kubelet would give it."""
    (container,) = pod["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
        else:
            ref = source["secretRef"]
            if ref["name"] in secrets or not ref.get("optional"):
                env.update(secrets[ref["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            value = secrets.get(ref["name"], {}).get(ref["key"])
            if value is None:  # the kubelet leaves an optional reference out; else the pod does not start
                assert ref.get("optional"), f"{var['name']}: {ref} is not there and not optional"
                continue
            env[var["name"]] = value
    env_file = files / "env"  # not on the command line: it holds the Secrets' values
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    env_file.chmod(0o600)
    args = ["run", "--name", name, "--label", f"k8s-job-test={name}", "--network", "host", "--env-file", str(env_file)]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert set(volume) == {"name", "configMap"}, f"volume {volume} is not a ConfigMap: not translated"
        data = config_maps[volume["configMap"]["name"]]
        folder = files / mount["name"]
        folder.mkdir(exist_ok=True)
        for key, text in data.items():
            (folder / key).write_text(text)
            (folder / key).chmod(0o644)
        source = folder / mount["subPath"] if mount.get("subPath") else folder
        args += ["-v", f"{source}:{mount['mountPath']}{':ro' if mount.get('readOnly') else ''}"]
    security = pod.get("securityContext") or {}
    if "runAsUser" in security:
        args += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"]
    if "fsGroup" in security:
        args += ["--group-add", str(security["fsGroup"])]
    limits = (container.get("resources") or {}).get("limits") or {}
    if "cpu" in limits:
        args += ["--cpus", str(limits["cpu"])]
    if "memory" in limits:
        args += ["--memory", _quantity_to_docker(limits["memory"])]
    command = container.get("command") or []
    if command:
        args += ["--entrypoint", command[0]]
    if container.get("workingDir"):
        args += ["--workdir", container["workingDir"]]
    return [*args, container["image"], *command[1:], *container.get("args", [])]


def test_rendered_run_job_runs_a_partition_in_docker(engine, tmp_path: Path, monkeypatch) -> None:
    from urllib.parse import urlsplit

    from dagster import DagsterInstance, DagsterRunStatus
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from kubernetes.client import ApiClient

    from etl_platform.automation.onboarding import sync_tenants
    from etl_platform.config.registry import load_registry
    from etl_platform.definitions import build_definitions
    from etl_platform.isolation.environment import tenant_secret_names
    from etl_platform.runs.partitions import partition_key
    from etl_platform.warehouse import Warehouse

    started = time.monotonic()
    docker("build", "--network", "host", "--build-arg", "ETL_EXTRAS=k8s", "-t", IMAGE, str(helm.ROOT), timeout=1800)
    built = time.monotonic()
    dagster_url = create_pg_database("k8s_job_dagster")
    warehouse_url = create_pg_database("k8s_job_wh")
    name = f"k8s-job-{uuid.uuid4().hex[:8]}"
    try:
        # every tenant with a warehouse of its own (the demo's: the test database), so that the
        # run needs its tenant's secret; relative paths resolve beside the file, as in the image
        tenants_yaml = yaml.safe_load((helm.ROOT / "tenants.yaml").read_text())
        for tenant in tenants_yaml["tenants"]:
            tenant["warehouse_url_env"] = f"{tenant['id'].upper()}_WAREHOUSE_URL"
        tenants_text = yaml.safe_dump(tenants_yaml, sort_keys=False)
        tenants_file = tmp_path / "tenants.yaml"
        tenants_file.write_text(tenants_text)
        (tmp_path / "etl_platform").symlink_to(helm.ROOT / "etl_platform")
        monkeypatch.setenv("ETL_TENANTS_FILE", str(tenants_file))
        registry = load_registry()
        loading = sorted({n for t in registry.tenants for n in tenant_secret_names(t)})
        api_keys = sorted({t.api_key_env for t in registry.tenants if t.api_key_env})
        assert f"{TENANT.upper()}_WAREHOUSE_URL" in loading and len(loading) > 1, loading
        secrets = {
            "etl-postgresql": {"postgresql-password": "unused"},  # the test server trusts local connections
            "etl-platform": {"ETL_WAREHOUSE_URL": warehouse_url},
            "etl-alerts": {"ETL_ALERT_WEBHOOK_URL": "http://127.0.0.1:9/k8s-job-alerts"},
            "etl-api": {key: f"k8s-job-{key.lower()}" for key in ["ETL_ADMIN_API_KEY", *api_keys]},
            "etl-tenant-secrets": {key: f"k8s-job-{key.lower()}" for key in loading}
            | {f"{TENANT.upper()}_WAREHOUSE_URL": warehouse_url},
        }
        config_maps = {m["metadata"]["name"]: m.get("data") or {} for m in helm.manifests() if m["kind"] == "ConfigMap"}
        config_maps["etl-tenants"] = {"tenants.yaml": tenants_text}

        config = helm.instance_config()
        pg = urlsplit(dagster_url)
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
        monkeypatch.setenv("DAGSTER_PG_PASSWORD", secrets["etl-postgresql"]["postgresql-password"])
        monkeypatch.setenv("ETL_WAREHOUSE_URL", warehouse_url)
        # the executable the code server in this image reports for its runs
        python = docker("run", "--rm", "--entrypoint", "python", IMAGE, "-c", "import sys; print(sys.executable)")
        day = dt.datetime.now(dt.timezone.utc).date()

        with DagsterInstance.from_config(str(home)) as instance:
            sync_tenants(instance, load_registry())
            job_def = build_definitions().resolve_job_def("ingest")
            origin = JobPythonOrigin("ingest", RepositoryPythonOrigin(
                executable_path=python, code_pointer=ModuleCodePointer("etl_platform.definitions", "defs", None),
                container_image=IMAGE, container_context=helm.container_context(),
            ))
            key = str(partition_key(TENANT, day))
            run = instance.create_run_for_job(
                job_def, tags=job_def.partitions_def.get_tags_for_partition_key(key), job_code_origin=origin
            )
            namespace, job = helm.launch_job(instance, run, launcher_config)
            assert namespace == helm.NAMESPACE
            pod = ApiClient().sanitize_for_serialization(job)["spec"]["template"]["spec"]
            files = tmp_path / "pod"
            files.mkdir()
            command = pod_as_docker_run(pod, secrets, config_maps, files, name)
            assert command[command.index(IMAGE) + 1:][:5] == [python, "-m", "dagster", "api", "execute_run"]
            deadline = job.spec.active_deadline_seconds
            launched = time.monotonic()
            finished = subprocess.run([DOCKER, *command], capture_output=True, text=True, timeout=deadline)
            ran = time.monotonic()
            logs = (finished.stdout + finished.stderr)[-6000:]
            assert finished.returncode == 0, f"the run's container exited {finished.returncode}:\n{logs}"
            inspect = yaml.safe_load(docker("inspect", name))[0]
            assert inspect["Config"]["User"] == "10001:10001" and inspect["HostConfig"]["NanoCpus"] == 2_000_000_000
            assert inspect["HostConfig"]["Memory"] == 4 * 1024**3
            # the run's own tenant's secret (its warehouse: the run loaded with it), no other tenant's,
            # no admin or read-API key, no alert channel
            env = dict(item.split("=", 1) for item in inspect["Config"]["Env"])
            assert env[f"{TENANT.upper()}_WAREHOUSE_URL"] == warehouse_url
            assert set(env) & set(secrets["etl-tenant-secrets"]) == {f"{TENANT.upper()}_WAREHOUSE_URL"}
            assert not set(env) & {*secrets["etl-api"], *secrets["etl-alerts"]}
            assert env["ETL_WAREHOUSE_URL"] == warehouse_url  # etl-platform, whole

            record = instance.get_run_by_id(run.run_id)
            assert record.status == DagsterRunStatus.SUCCESS, logs
            assert record.tags["dagster/partition"] == key and record.tags["dagster/image"] == IMAGE

        with Warehouse(warehouse_url).connect() as conn:
            records = conn.query(f"SELECT count(*) FROM tenant_{TENANT}.records WHERE event_date = ?", [day])[0][0]
            raw = conn.query(
                f"SELECT count(*) FROM tenant_{TENANT}.support_tickets_tickets WHERE _etl_run_id = ?", [run.run_id]
            )[0][0]
        assert records > 0 and raw > 0, (records, raw)
        print(f"the rendered Job's container ran partition {key}: {raw} raw tickets, {records} records of the day; "
              f"image build {built - started:.0f}s, container {ran - launched:.0f}s")
    finally:
        docker("rm", "-f", name, check=False)
        drop_pg_database(warehouse_url)
        drop_pg_database(dagster_url)
