"""No secret persisted anywhere, and none sent to a host that is not the source's.

A local API that fails in every way (500s, then a 401 whose body echoes the credential; 503
forever; a next link, a JSON next link and a redirect to a second host on 127.0.0.2; data that
echoes the credential, with next links carrying it; a port nobody listens on) is loaded through Dagster with every auth
type of the REST source: bearer, API key in a header, API key in the query, HTTP basic and OAuth2
client credentials. Then DAGSTER_HOME (run and event-log storage, compute logs, the dlt pipeline
folders, the compiled tenants file), every warehouse table, the process output, `etl-platform
runs` and the read API's /stats are searched for each secret in plain, URL-encoded and base64
form: zero hits. The second host never receives a request.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance

from etl_platform.runs.failures import run_failures
from etl_platform_tests.support.http_servers import LocalServer, Request, Response
from etl_platform_tests.support.platform_runs import materialize, write_tenants
from etl_platform_tests.support.secret_scan import hits, scan_files, scan_warehouse, secret_forms

DAY = dt.date(2024, 5, 1)
SCENARIOS = ("flaky", "down", "link", "jsonlink", "redirect", "ok")  # "refused": no server at all
FOREIGN = ("link", "jsonlink", "redirect")


def _secret(prefix: str) -> str:
    """A recognisable secret whose URL-encoded and base64 forms differ from the plain one."""
    return f"{prefix}/S3cr3t+{secrets.token_hex(6)}=x"


SECRETS = {
    "bearer": _secret("bt"),
    "header_key": _secret("hk"),
    "query_key": _secret("qk"),
    "basic_password": _secret("pw"),
    "client_id": _secret("ci"),
    "client_secret": _secret("cs"),
    "access_token": _secret("at"),
}
AUTH = {  # tenant -> auth of every source of that tenant
    "t_bearer": {"type": "bearer", "token_env": "SEC_BEARER"},
    "t_header": {"type": "api_key", "name": "X-Api-Key", "location": "header", "api_key_env": "SEC_HEADER_KEY"},
    "t_query": {"type": "api_key", "name": "api_key", "location": "query", "api_key_env": "SEC_QUERY_KEY"},
    "t_basic": {"type": "http_basic", "username_env": "SEC_USER", "password_env": "SEC_PASSWORD"},
    "t_oauth": {"type": "oauth2_client_credentials", "token_url": "", "client_id_env": "SEC_CLIENT_ID",
                "client_secret_env": "SEC_CLIENT_SECRET"},
}  # fmt: skip
ENV = {
    "SEC_BEARER": SECRETS["bearer"],
    "SEC_HEADER_KEY": SECRETS["header_key"],
    "SEC_QUERY_KEY": SECRETS["query_key"],
    "SEC_USER": "svc-user",
    "SEC_PASSWORD": SECRETS["basic_password"],
    "SEC_CLIENT_ID": SECRETS["client_id"],
    "SEC_CLIENT_SECRET": SECRETS["client_secret"],
}
API_KEYS = {tenant: f"read-key-{tenant}-{secrets.token_hex(8)}" for tenant in AUTH}


def _echo(req: Request) -> dict[str, Any]:
    """What the client sent, as an API that echoes its input would answer it."""
    return {"headers": req.headers, "query": req.query, "path": req.path}


class Origin:
    """The source's API on 127.0.0.1: every scenario's misbehaviour, per path."""

    def __init__(self, server: LocalServer, foreign: LocalServer) -> None:
        self.server, self.foreign = server, foreign
        self.calls: dict[str, int] = {}
        server.route("/oauth/token", self.token)
        server.route("*", self.handle)

    def token(self, req: Request) -> Response:
        return Response(200, {"access_token": SECRETS["access_token"], "expires_in": 3600, "token_type": "bearer"})

    def handle(self, req: Request) -> Response:
        scenario = req.path.strip("/").split("/")[0]
        self.calls[scenario] = n = self.calls.get(scenario, 0) + 1
        echo = _echo(req)
        if scenario == "flaky":
            return Response(500, "try again") if n <= 2 else Response(401, {"error": "unauthorized", "you_sent": echo})
        if scenario == "down":
            return Response(503, {"error": "down", "you_sent": echo})
        if scenario == "link":
            return Response(200, [{"id": 1}], {"Link": f'<{self.foreign.url}/link/items?page=2>; rel="next"'})
        if scenario == "jsonlink":
            return Response(200, {"data": [{"id": 1}], "next": f"{self.foreign.url}/jsonlink/items?page=2"})
        if scenario == "redirect":
            return Response(302, b"", {"Location": f"{self.foreign.url}/redirect/items"})
        if scenario == "ok":  # echoes the credential in its data and in its next link
            query = "&".join(f"{k}={v[0]}" for k, v in req.query.items() if k != "page")
            rows = [{"id": 10 * n + i, "note": f"request seen: {json.dumps(echo)}"} for i in range(2)]
            if req.arg("page") == "2":
                return Response(200, rows)
            return Response(200, rows, {"Link": f'<{self.server.url}/ok/items?page=2&{query}>; rel="next"'})
        return Response(404, {"error": "no such scenario", "you_sent": echo})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sources(base_url: str, auth: dict[str, Any], refused_url: str) -> list[dict[str, Any]]:
    def source(scenario: str, paginator: dict[str, Any], **resource: Any) -> dict[str, Any]:
        return {
            "name": scenario, "kind": "rest_api", "base_url": refused_url if scenario == "refused" else base_url,
            "auth": auth,
            "resources": [{"name": "items", "path": f"{scenario}/items", "primary_key": "id",
                           "paginator": paginator, **resource}],
        }  # fmt: skip

    single = {"type": "single_page"}
    return [
        source("flaky", single),
        source("down", single),
        source("link", {"type": "header_link"}),
        source("jsonlink", {"type": "json_link", "next_url_path": "next"}, data_selector="data"),
        source("redirect", single),
        source("ok", {"type": "header_link"}),
        source("refused", single),  # connection errors name the URL, query key included
    ]


def _tenants(origin: LocalServer, tenants: list[str]) -> list[dict[str, Any]]:
    refused = f"http://127.0.0.1:{_closed_port()}"
    out = []
    for tenant in tenants:
        auth = AUTH[tenant]
        if auth["type"] == "oauth2_client_credentials":
            auth = {**auth, "token_url": f"{origin.url}/oauth/token"}
        sources = _sources(origin.url, auth, refused)
        out.append({"id": tenant, "api_key_env": f"{tenant.upper()}_API_KEY", "sources": sources})
    return out


def _home(path: Path) -> Path:
    """A DAGSTER_HOME on SQLite with compute logs captured to files."""
    path.mkdir()
    (path / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "compute_logs:\n  module: dagster._core.storage.local_compute_log_manager\n"
        f"  class: LocalComputeLogManager\n  config:\n    base_dir: {path / 'compute_logs'}\n"
    )
    return path


@pytest.mark.timeout(900)
def test_no_secret_persisted_and_none_sent_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warehouse_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    # every auth type on DuckDB; on PostgreSQL the query key, whose page URLs reach the warehouse
    tenants = list(AUTH) if warehouse_url.startswith("duckdb") else ["t_query"]
    home = _home(tmp_path / "dagster_home")
    env = {**ENV, "DAGSTER_HOME": str(home), "ETL_WAREHOUSE_URL": warehouse_url, "ETL_STEP_RETRIES": "0",
           "ETL_START_DATE": "2024-01-01", "ETL_ADMIN_API_KEY": "admin-" + secrets.token_hex(8),
           **{f"{t.upper()}_API_KEY": k for t, k in API_KEYS.items()}}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    basic = f"{ENV['SEC_USER']}:{SECRETS['basic_password']}"
    forms = secret_forms(*SECRETS.values(), basic)

    with LocalServer() as server, LocalServer("127.0.0.2") as foreign:
        foreign.route("*", lambda req: Response(200, [{"id": 99, "stolen": _echo(req)}]))
        origin = Origin(server, foreign)
        tenants_file = write_tenants(tmp_path / "tenants.yaml", _tenants(server, tenants))
        monkeypatch.setenv("ETL_TENANTS_FILE", str(tenants_file))
        run_ids = {}
        with DagsterInstance.get() as instance:
            for tenant in tenants:
                origin.calls.clear()
                result = materialize(instance, tenant, DAY, raise_on_error=False)
                run_ids[tenant] = result.run_id
                assert not result.success
                assert set(origin.calls) == set(SCENARIOS), (tenant, origin.calls)  # every scenario ran
                assert origin.calls["flaky"] == 3 and origin.calls["down"] == 4  # retried, then given up
                failures = {f.source: f for f in run_failures(instance, run_ids[tenant])}
                for scenario in FOREIGN:
                    failure = failures[scenario]
                    assert failure.permanent and foreign.url in failure.message, failure
                    assert "allowed_hosts" in failure.message, failure
                assert failures["flaky"].permanent and "401" in failures["flaky"].message
                assert not failures["down"].permanent and "503" in failures["down"].message
                assert not failures["refused"].permanent
                assert "ok" not in failures
        # the credentials were used where they belong ...
        sent = "\n".join(json.dumps(_echo(r)) + r.body.decode("utf-8", "replace") for r in server.requests)
        used = {"t_bearer": ["bearer"], "t_header": ["header_key"], "t_query": ["query_key"], "t_basic": [],
                "t_oauth": ["client_id", "client_secret", "access_token"]}  # fmt: skip
        for name in (n for t in tenants for n in used[t]):
            assert hits(sent, secret_forms(SECRETS[name])), f"{name} was never sent to its API"
        assert "t_basic" not in tenants or base64.b64encode(basic.encode()).decode() in sent
        # ... and the second host never received a request, let alone a credential
        assert foreign.requests == []
    process_output = capfd.readouterr()

    # --- what the platform kept ----------------------------------------------------------------
    files = scan_files(home, forms)
    assert files == {}, files
    compute_logs = [p for p in (home / "compute_logs").rglob("*") if p.is_file() and p.stat().st_size]
    assert compute_logs, "compute logs were not captured"
    assert any((home / "data" / "dlt_pipelines").rglob("trace.pickle")), "no dlt trace written"
    warehouse, rows = scan_warehouse(warehouse_url, forms)
    assert warehouse == {}, warehouse
    assert rows > 0
    assert hits(process_output.out + process_output.err, forms) == set()

    # the rows of the `ok` source are there, their page URLs and echoed data redacted
    from etl_platform.warehouse import Warehouse

    with Warehouse(warehouse_url).connect() as conn:
        positions = {r[0] for r in conn.query('SELECT DISTINCT "_etl_position" FROM "tenant_t_query"."ok_items"')}
        notes = [r[0] for r in conn.query('SELECT "note" FROM "tenant_t_query"."ok_items"')]
    assert any("api_key=***" in p and "page=2" in p for p in positions), positions
    assert len(notes) == 4 and all("***" in n for n in notes)

    # --- what operators and tenants read -------------------------------------------------------
    cli = subprocess.run(
        [sys.executable, "-m", "etl_platform.cli", "runs", "--limit", "50"],
        env={**os.environ}, capture_output=True, text=True, timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert all(run_id[:8] in cli.stdout for run_id in run_ids.values())
    assert hits(cli.stdout + cli.stderr, forms) == set()

    from fastapi.testclient import TestClient

    from etl_platform.api import create_app
    from etl_platform.config.settings import ApiSettings

    with DagsterInstance.get() as instance:
        api = TestClient(create_app(instance=instance, settings=ApiSettings(rate_limit_per_minute=0)))
        answers = [api.get("/stats", headers={"Authorization": f"Bearer {API_KEYS[t]}"}) for t in tenants]
        answers.append(api.get("/admin/stats", headers={"Authorization": f"Bearer {env['ETL_ADMIN_API_KEY']}"}))
        answers.append(api.get("/health", headers={"Authorization": f"Bearer {env['ETL_ADMIN_API_KEY']}"}))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    stats = answers[0].json()
    assert any(s["last_failure"] for s in stats["sources"]), stats  # failures are reported, redacted
    assert hits("\n".join(a.text for a in answers), forms) == set()
