"""What Dagster's Helm chart (dagster/dagster) makes of deploy/helm/values.yaml, for tests that
cannot run `helm template` (no chart and no cluster here).

`instance_config` builds the `dagster.yaml` of the chart's instance ConfigMap from the values, as
the chart's templates/configmap-instance.yaml and templates/helpers/instance/*.tpl do for the
parts the values set (storage on an external PostgreSQL, the K8sRunLauncher, a custom run
coordinator, run monitoring, sensors, schedules, telemetry). `user_container_context` builds the
container context the chart's user-deployments subchart gives a code location with
`includeConfigInLaunchedRuns` (its `dagsterUserDeployments.k8sContainerContext` helper). Both
follow the templates of dagster-io/dagster at commit a07d616 (run launcher) and 031a3e8
(user deployments); keys the chart does not render are not rendered here either.
"""

from __future__ import annotations

from typing import Any

CHART = "dagster"


def fullname(release: str, chart: str = CHART) -> str:
    return release if chart in release else f"{release}-{chart}"


def _names(items: list[dict[str, Any]] | None) -> list[str]:
    return [item["name"] for item in items or [] if "name" in item]


def postgres_config(values: dict[str, Any]) -> dict[str, Any]:
    pg = values["postgresql"]
    config = {
        "username": pg["postgresqlUsername"],
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": pg["postgresqlHost"],
        "db_name": pg["postgresqlDatabase"],
        "port": pg["service"]["port"],
        "params": pg.get("postgresqlParams") or {},
    }
    if pg.get("postgresqlScheme"):
        config["scheme"] = pg["postgresqlScheme"]
    return {"postgres_db": config}


def k8s_run_launcher(values: dict[str, Any], release: str, namespace: str) -> dict[str, Any]:
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    config: dict[str, Any] = {
        "load_incluster_config": k8s["loadInclusterConfig"],
        "job_namespace": k8s.get("jobNamespace") or namespace,
        "image_pull_policy": k8s["imagePullPolicy"],
        "service_account_name": fullname(release),
        "dagster_home": values["global"]["dagsterHome"],
        "instance_config_map": f"{fullname(release)}-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
    }
    if k8s.get("kubeconfigFile"):
        config["kubeconfig_file"] = k8s["kubeconfigFile"]
    renames = {"envVars": "env_vars", "volumeMounts": "volume_mounts", "volumes": "volumes", "labels": "labels",
               "resources": "resources", "securityContext": "security_context", "schedulerName": "scheduler_name"}
    if _names(k8s.get("envConfigMaps")):
        config["env_config_maps"] = _names(k8s["envConfigMaps"])
    if _names(k8s.get("envSecrets")):
        config["env_secrets"] = _names(k8s["envSecrets"])
    for key, name in renames.items():
        if k8s.get(key):
            config[name] = k8s[key]
    if k8s.get("failPodOnRunFailure"):
        config["fail_pod_on_run_failure"] = True
    run_k8s = k8s.get("runK8sConfig") or {}
    parts = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
             "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobSpecConfig": "job_spec_config",
             "jobMetadata": "job_metadata"}
    if run_k8s:
        config["run_k8s_config"] = {name: run_k8s[key] for key, name in parts.items() if run_k8s.get(key)}
    return {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}


def instance_config(values: dict[str, Any], release: str = "etl", namespace: str = "etl") -> dict[str, Any]:
    """The chart's dagster.yaml for these values (the parts they set)."""
    storage = postgres_config(values)
    daemon = values["dagsterDaemon"]
    out: dict[str, Any] = {
        "schedule_storage": {"module": "dagster_postgres.schedule_storage", "class": "PostgresScheduleStorage",
                             "config": storage},
        "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage", "config": storage},
        "event_log_storage": {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage",
                              "config": storage},
    }
    if values["runLauncher"]["type"] == "K8sRunLauncher":
        out["run_launcher"] = k8s_run_launcher(values, release, namespace)
    coordinator = daemon["runCoordinator"]
    if coordinator["enabled"] and coordinator["type"] == "CustomRunCoordinator":
        custom = coordinator["config"]["customRunCoordinator"]
        out["run_coordinator"] = {"module": custom["module"], "class": custom["class"], "config": custom["config"]}
    monitoring = daemon.get("runMonitoring") or {}
    if monitoring.get("enabled"):
        out["run_monitoring"] = {"enabled": True, "start_timeout_seconds": monitoring["startTimeoutSeconds"],
                                 "poll_interval_seconds": monitoring["pollIntervalSeconds"]}
        if monitoring.get("maxResumeRunAttempts"):
            out["run_monitoring"]["max_resume_run_attempts"] = monitoring["maxResumeRunAttempts"]
    if (daemon.get("runRetries") or {}).get("enabled"):
        out["run_retries"] = {"enabled": True}
    for key in ("sensors", "schedules"):
        if (daemon.get(key) or {}).get("useThreads"):
            out[key] = {"use_threads": True, "num_workers": daemon[key]["numWorkers"]}
    out["telemetry"] = {"enabled": values.get("telemetry", {}).get("enabled", True)}
    return out


def user_container_context(values: dict[str, Any], deployment: dict[str, Any], release: str = "etl",
                           namespace: str = "etl") -> dict[str, Any]:
    """The container context a user deployment with includeConfigInLaunchedRuns gives its runs."""
    k8s: dict[str, Any] = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{fullname(release, 'dagster-user-deployments')}-{deployment['name']}-user-env",
                            *_names(deployment.get("envConfigMaps"))],
        "namespace": namespace,
        "service_account_name": f"{fullname(release, 'dagster-user-deployments')}-user-deployments",
    }
    for key, name in (("envSecrets", "env_secrets"),):
        if _names(deployment.get(key)):
            k8s[name] = _names(deployment[key])
    for key, name in (("volumeMounts", "volume_mounts"), ("volumes", "volumes"), ("labels", "labels"),
                      ("resources", "resources"), ("schedulerName", "scheduler_name")):
        if deployment.get(key):
            k8s[name] = deployment[key]
    return {"k8s": k8s}


def image_name(image: dict[str, Any]) -> str:
    return f"{image['repository']}:{image['tag']}"
