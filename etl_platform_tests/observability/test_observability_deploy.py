"""deploy/: the Prometheus rules pass promtool (syntax and unit tests), the Grafana dashboard
references only metrics the API and the exporter really serve, and a real Prometheus scraping
a real API fires the shipped latency and database alerts when the API slows down or fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from dagster import DagsterInstance
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from etl_platform.config.settings import ApiSettings
from etl_platform.observability.exporter import PlatformCollector
from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.orchestration import stop_process, wait_for
from etl_platform_tests.support.read_api import KEYS, auth, client, insert, registry, row

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "etl-platform.json"
METRIC = re.compile(r"\b(etl_[a-z0-9_]+|up)\b")
PROMETHEUS_MISSING = "promtool/prometheus not installed (Debian package `prometheus`; .ci/run installs it)"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            raise AssertionError(f"{name} is missing in CI: {PROMETHEUS_MISSING}")
        pytest.skip(PROMETHEUS_MISSING)
    return path


def _families(text: str) -> set[str]:
    """Sample names a query may use: counters as *_total, histograms as *_bucket/_sum/_count."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


def _queried_metrics(exprs: list[str]) -> set[str]:
    return {m for expr in exprs for m in METRIC.findall(re.sub(r"\{[^}]*\}|\"[^\"]*\"", "", expr))}


@pytest.mark.prometheus
def test_rules_and_config_pass_promtool() -> None:
    promtool = _tool("promtool")
    for args in (["check", "rules", str(RULES)], ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                 ["test", "rules", str(DEPLOY / "prometheus" / "rules.test.yml")]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert {"EtlRunFailureRateHigh", "EtlApiLatencyHigh", "EtlDatabaseConnectionErrors", "EtlTenantStale"} <= names


def test_dashboard_and_rules_reference_only_served_metrics(duckdb_url: str, dagster_home: Path) -> None:
    """Against the live /metrics of the API (after a request) and the exporter's output."""
    wh = Warehouse(duckdb_url)
    insert(wh, "acme", [row("acme", 1)])
    with DagsterInstance.get() as instance:
        api = client(wh, instance)
        assert api.get("/data", headers=auth("acme")).status_code == 200
        served = _families(api.get("/metrics").text)
        collector = PlatformCollector(instance, registry_loader=registry)
        collector.refresh()
        exported = CollectorRegistry()
        exported.register(collector)
        served |= _families(generate_latest(exported).decode())
    served.add("up")  # Prometheus' own, per scrape target

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    assert len(exprs) > 15 and all(t.get("datasource", {}).get("uid") == "prometheus"
                                   for p in dashboard["panels"] for t in p.get("targets", []))
    used = _queried_metrics(exprs)
    assert {"etl_runs_total", "etl_rows_loaded_total", "etl_rejects_total",
            "etl_api_request_duration_seconds_bucket"} <= used
    assert used - served == set(), f"the dashboard queries metrics nobody serves: {sorted(used - served)}"
    rule_exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert _queried_metrics(rule_exprs) - served == set()


# --- a real Prometheus ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiServer:
    """A read API served by uvicorn in a thread (real HTTP for Prometheus to scrape)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ApiServer:
        self.thread.start()
        wait_for(lambda: self.server.started, 30, 0.1, "uvicorn")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _fast_rules(target: Path) -> None:
    """The shipped rules with test-sized windows: `for: 0s`, ranges of 20 s."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = "0s"
            rule["expr"] = re.sub(r"\[\d+[mh]\]", "[20s]", rule["expr"])
    target.write_text(yaml.safe_dump(rules))


def _start_prometheus(workdir: Path, base: str, targets: list[str]) -> subprocess.Popen:
    """Prometheus scraping `targets` every second, with the shipped rules at test speed."""
    _fast_rules(workdir / "rules.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(workdir / "rules.yml")],
        "scrape_configs": [{"job_name": "etl-api", "static_configs": [{"targets": targets}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(workdir / "prometheus.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [_tool("prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address={base.split('//')[1]}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _firing(base: str) -> set[str]:
    alerts = httpx.get(f"{base}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


@pytest.mark.prometheus
def test_prometheus_fires_when_the_api_slows_down_and_fails(tmp_path: Path, duckdb_url: str, dagster_home) -> None:
    _tool("prometheus")
    base, workdir = f"http://127.0.0.1:{_free_port()}", tmp_path
    wh = Warehouse(duckdb_url)
    insert(wh, "acme", [row("acme", n) for n in range(1, 5)])
    with DagsterInstance.get() as instance:
        slow_app = client(wh, instance).app
        broken_app = client(Warehouse("postgresql://postgres@127.0.0.1:1/nowhere"), instance,
                            ApiSettings(rate_limit_per_minute=0)).app
        with ApiServer(slow_app) as slow, ApiServer(broken_app) as broken:
            proc = _start_prometheus(workdir, base, [f"127.0.0.1:{slow.port}", f"127.0.0.1:{broken.port}"])
            try:
                def ready():
                    assert proc.poll() is None, (workdir / "prometheus.log").read_text()
                    try:
                        up = httpx.get(f"{base}/api/v1/query", params={"query": "up"}, timeout=2).json()
                    except httpx.TransportError:
                        return False
                    return len([r for r in up["data"]["result"] if r["value"][1] == "1"]) == 2

                wait_for(ready, 60, what="Prometheus scraping both APIs")
                # healthy and fast: nothing fires
                for _ in range(5):
                    assert httpx.get(f"{slow.url}/data", headers=auth("acme"), timeout=10).status_code == 200
                time.sleep(3)
                assert not _firing(base) & {"EtlApiLatencyHigh", "EtlDatabaseConnectionErrors"}

                # slow: a writer holds the DuckDB file for 2.5 s while requests wait for it
                def request() -> None:
                    httpx.get(f"{slow.url}/data", headers=auth("acme"), timeout=30)

                for _ in range(2):
                    threads = [threading.Thread(target=request) for _ in range(4)]
                    with wh.connect(write=True):
                        for t in threads:
                            t.start()
                        time.sleep(2.5)
                    for t in threads:
                        t.join(30)
                wait_for(lambda: "EtlApiLatencyHigh" in _firing(base), 30, 1, "EtlApiLatencyHigh firing")

                # failing: the other API's warehouse is unreachable -> 503s, until the alerts fire
                stop = threading.Event()

                def fail_requests() -> None:
                    while not stop.is_set():
                        assert httpx.get(f"{broken.url}/data", headers=auth("acme"), timeout=10).status_code == 503
                        stop.wait(0.5)

                failing = threading.Thread(target=fail_requests)
                failing.start()
                try:
                    wait_for(lambda: {"EtlDatabaseConnectionErrors", "EtlApiErrorRateHigh"} <= _firing(base), 30, 1,
                             "database and error-rate alerts firing")
                finally:
                    stop.set()
                    failing.join(15)
            finally:
                stop_process(proc)
    assert KEYS["acme"] not in (workdir / "prometheus.log").read_text()


@pytest.mark.prometheus
def test_the_shipped_scrape_config_sends_the_bearer_tokens(tmp_path: Path) -> None:
    """deploy/prometheus/prometheus.yml with token files: a scrape holding the right token is
    served (up), one whose file is empty meets a token-protected endpoint and is refused (401:
    down); the shipped (empty) files keep a deployment without tokens working."""
    from prometheus_client import Gauge

    from etl_platform.observability.exporter import start_server
    from etl_platform_tests.support.ports import service_port

    prometheus_bin = _tool("prometheus")
    assert all((DEPLOY / "prometheus" / "tokens" / f).read_text() == "" for f in ("metrics_token", "exporter_token"))
    registry = CollectorRegistry()
    Gauge("etl_runs_queued", "test", registry=registry).set(0)
    servers, ports = [], []
    for token in ("api-token-0123456789abcdef", "exporter-token-0123456789ab"):
        ports.append(_free_port())
        servers.append(start_server(registry, "127.0.0.1", ports[-1], token))
    workdir = tmp_path / "prometheus"
    (workdir / "tokens").mkdir(parents=True)
    (workdir / "tokens" / "metrics_token").write_text("api-token-0123456789abcdef")
    (workdir / "tokens" / "exporter_token").write_text("")  # the exporter's token not given: refused
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config.pop("rule_files", None)
    for job, port in zip(config["scrape_configs"], ports):
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    web = service_port()  # bound late, by Prometheus: outside the ephemeral range
    log = open(workdir / "prometheus.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [prometheus_bin, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web}"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def health() -> dict[str, str] | None:
            try:
                targets = httpx.get(f"http://127.0.0.1:{web}/api/v1/targets", timeout=5).json()["data"]
            except (httpx.TransportError, ValueError, KeyError):  # not up yet
                assert proc.poll() is None, (workdir / "prometheus.log").read_text()
                return None
            found = {t["labels"]["job"]: t["health"] for t in targets["activeTargets"]}
            return found if set(found.values()) <= {"up", "down"} and len(found) == 2 else None

        found = wait_for(health, 60, what="both targets scraped")
        assert found == {"etl-api": "up", "etl-exporter": "down"}, found
    finally:
        stop_process(proc)
        log.close()
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(5)
