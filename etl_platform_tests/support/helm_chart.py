"""What Dagster's Helm chart (dagster/dagster) renders from deploy/helm/values.yaml, for the tests.

The rendering is deploy/helm/rendered.yaml: `.ci/check-helm --write` makes it with helm and the
chart, and `.ci/check-helm` checks it against the chart (where the chart is at hand) and
validates every manifest. Here: the manifests, the instance's dagster.yaml (its ConfigMap), the
code location's container context, and the Kubernetes Job that the platform's launcher (dagster-k8s's
K8sRunLauncher) creates for a run (its real `launch_run`, with the cluster's batch API replaced by one that keeps
the Job instead of sending it).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "deploy" / "helm" / "values.yaml"
RENDERED = ROOT / "deploy" / "helm" / "rendered.yaml"
RELEASE = "etl"
NAMESPACE = "etl"
LOCATION = "etl-platform"  # the user deployment's name in values.yaml
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: test, user: {token: not-a-token}}]
contexts: [{name: test, context: {cluster: test, user: test}}]
current-context: test
"""


def values_digest(values: dict[str, Any]) -> str:
    """What the rendering's header records of the values it was made from (comments do not count)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def rendered_values_digest() -> str:
    match = re.search(r"^# values-sha256: (\w+)$", RENDERED.read_text(), re.M)
    assert match, f"{RENDERED} has no values-sha256 header: render it with .ci/check-helm --write"
    return match.group(1)


@cache
def manifests() -> tuple[dict[str, Any], ...]:
    return tuple(doc for doc in yaml.safe_load_all(RENDERED.read_text()) if doc)


def manifest(kind: str, name: str) -> dict[str, Any]:
    found = [m for m in manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{RENDERED}: {len(found)} {kind} named {name}"
    return found[0]


def config_map(name: str) -> dict[str, str]:
    return manifest("ConfigMap", name).get("data") or {}


def instance_config() -> dict[str, Any]:
    """The dagster.yaml of the chart's instance ConfigMap."""
    return yaml.safe_load(config_map(f"{RELEASE}-dagster-instance")["dagster.yaml"])


def code_location_container() -> dict[str, Any]:
    """The code location's container (`dagster api grpc`) in the user deployment's Deployment."""
    deployment = manifest("Deployment", f"{RELEASE}-dagster-user-deployments-{LOCATION}")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def container_context() -> dict[str, Any]:
    """The container context the code location gives its runs (includeConfigInLaunchedRuns): the
    chart passes it to `dagster api grpc` in an environment variable."""
    env = {e["name"]: e.get("value") for e in code_location_container()["env"]}
    raw = env.get("DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT") or env.get("DAGSTER_CONTAINER_CONTEXT")
    assert raw, "the code location passes no container context to its runs"
    return json.loads(raw)


def image_name(image: dict[str, Any]) -> str:
    return f"{image['repository']}:{image['tag']}"


class RecordingBatchApi:
    """Stands in for the cluster's batch API: keeps the Jobs it is asked to create."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, Any]] = []

    def create_namespaced_job(self, body: Any, namespace: str, **_: Any) -> Any:
        self.jobs.append((namespace, body))
        return body


LAUNCHER = ("etl_platform.instance.k8s_launcher", "PlatformK8sRunLauncher")  # values.yaml's runLauncher


def run_launcher_config(instance_yaml: dict[str, Any], kubeconfig: Path) -> dict[str, Any]:
    """The rendered PlatformK8sRunLauncher config, pointed at a kubeconfig file instead of the
    in-cluster service account (there is no cluster here)."""
    launcher = instance_yaml["run_launcher"]
    assert (launcher["module"], launcher["class"]) == LAUNCHER, launcher
    kubeconfig.write_text(KUBECONFIG)
    return {**launcher["config"], "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}


def build_launcher(launcher_config: dict[str, Any], batch: Any = None) -> Any:
    """The rendered run launcher (PlatformK8sRunLauncher), its batch API `batch` if given."""
    # dagster-k8s is the `k8s` extra: imported by the tests that need it only
    from etl_platform.instance.k8s_launcher import PlatformK8sRunLauncher

    return PlatformK8sRunLauncher(**launcher_config, k8s_client_batch_api=batch)


def launch_job(instance: Any, run: Any, launcher_config: dict[str, Any]) -> tuple[str, Any]:
    """(namespace, V1Job) that PlatformK8sRunLauncher.launch_run (Dagster's K8sRunLauncher's)
    creates for `run` (a run of the code location: its origin carries the image and the container
    context)."""
    # Dagster's launch context has no public import path
    from dagster._core.launcher import LaunchRunContext

    batch = RecordingBatchApi()
    launcher = build_launcher(launcher_config, batch)
    launcher.register_instance(instance)
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    (job,) = batch.jobs
    return job
