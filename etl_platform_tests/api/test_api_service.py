"""The service around the endpoints: /health failure modes, rate limits, request IDs, CORS,
access logs without secrets, settings from the environment, and `serve()` for real."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from dagster import DagsterInstance
from dagster._daemon.types import DaemonHeartbeat

from etl_platform.api import queries
from etl_platform.api.middleware import JsonFormatter
from etl_platform.api.ratelimit import RateLimiter
from etl_platform.config.settings import ApiSettings
from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.http_servers import first_answer
from etl_platform_tests.support.read_api import ADMIN_KEY, KEYS, auth, client, insert, row

CLOSED_PG = "postgresql://postgres@127.0.0.1:1/nowhere"


ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def instance(dagster_home: Path) -> DagsterInstance:
    with DagsterInstance.get() as inst:
        yield inst


def test_healthy_with_daemon_missing_is_degraded(warehouse_url: str, instance: DagsterInstance) -> None:
    wh = Warehouse(warehouse_url)
    insert(wh, "acme", [row("acme", 1)])
    response = client(wh, instance).get("/health")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "degraded" and body["failing"] == [] and body["degraded"] == ["daemon"]
    assert body["components"]["warehouse"]["ok"] and body["components"]["dagster"]["ok"]
    assert "heartbeat_age_s" not in body["components"]["daemon"]  # no key: status only
    assert body["last_runs"] is None  # no key: no tenant named
    admin = client(wh, instance).get("/health", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert admin["last_runs"] == {"acme": None, "globex": None}
    assert admin["components"]["daemon"]["heartbeat_age_s"] is None
    assert "acme item" not in response.text


def test_daemon_heartbeat_and_require_daemon(duckdb_url: str, instance: DagsterInstance) -> None:
    wh = Warehouse(duckdb_url)
    required = ApiSettings(rate_limit_per_minute=0, health_require_daemon=True, daemon_max_age_s=60)
    response = client(wh, instance, required).get("/health")
    assert response.status_code == 503 and response.json()["failing"] == ["daemon"]
    instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - 5, "SENSOR", "d1"))
    body = client(wh, instance, required).get("/health", headers=ADMIN).json()
    assert body["status"] == "ok" and 4 < body["components"]["daemon"]["heartbeat_age_s"] < 60
    instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - 600, "SENSOR", "d1"))
    stale = client(wh, instance, required).get("/health", headers=ADMIN)
    assert stale.status_code == 503 and "600" in stale.json()["components"]["daemon"]["detail"]


def test_require_daemon_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ApiSettings.from_env().health_require_daemon is False
    monkeypatch.setenv("ETL_HEALTH_REQUIRE_DAEMON", "true")
    monkeypatch.setenv("ETL_API_RATE_LIMIT_PER_MINUTE", "60")
    monkeypatch.setenv("ETL_API_CORS_ORIGINS", "https://a.example, https://b.example")
    settings = ApiSettings.from_env()
    assert settings.health_require_daemon is True
    assert settings.rate_limit_per_minute == 60 and settings.rate_limit_burst == 10
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    monkeypatch.setenv("ETL_HEALTH_REQUIRE_DAEMON", "perhaps")
    with pytest.raises(ValueError, match="ETL_HEALTH_REQUIRE_DAEMON"):
        ApiSettings.from_env()


def test_postgres_down_is_503_naming_warehouse(instance: DagsterInstance) -> None:
    api = client(Warehouse(CLOSED_PG), instance)
    response = api.get("/health")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "unhealthy" and body["failing"] == ["warehouse"]
    assert not body["components"]["warehouse"]["ok"] and body["components"]["dagster"]["ok"]
    data = api.get("/data", headers=auth("acme"))
    assert data.status_code == 503 and data.json() == {"detail": "warehouse unavailable"}
    assert data.headers["retry-after"] == "5"


def test_missing_duckdb_folder_is_503_and_not_created(tmp_path: Path, instance: DagsterInstance) -> None:
    folder = tmp_path / "no-such-dir"
    response = client(Warehouse(f"duckdb:///{folder / 'w.duckdb'}"), instance).get("/health", headers=ADMIN)
    assert response.status_code == 503 and response.json()["failing"] == ["warehouse"]
    assert "does not exist" in response.json()["components"]["warehouse"]["detail"]
    assert not folder.exists()


def test_duckdb_writer_holding_the_lock_is_busy_not_down(duckdb_url: str, instance: DagsterInstance) -> None:
    wh = Warehouse(duckdb_url)
    insert(wh, "acme", [row("acme", 1)])
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with wh.lock(write=True):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        held.wait(5)
        body = client(wh, instance).get("/health", headers=ADMIN).json()
    finally:
        release.set()
        thread.join()
    assert body["components"]["warehouse"] == {"ok": True, "detail": "busy: a writer holds the DuckDB lock",
                                               "latency_ms": None}


def test_dagster_unreachable(duckdb_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    api = client(Warehouse(duckdb_url))
    body = api.get("/health", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert body["failing"] == ["dagster"] and body["last_runs"] == {}
    stats = api.get("/stats", headers=auth("acme"))
    assert stats.status_code == 503 and stats.json() == {"detail": "Dagster storage unavailable"}


def test_rate_limit_429_with_retry_after(duckdb_url: str) -> None:
    api = client(Warehouse(duckdb_url), settings=ApiSettings(rate_limit_per_minute=60, rate_limit_burst=3))
    codes = [api.get("/data", headers=auth("acme")).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = api.get("/data", headers=auth("acme"))
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 2
    assert limited.headers["x-request-id"]
    assert api.get("/data", headers=auth("globex")).status_code == 200  # buckets are per key
    bad = [api.get("/data", headers={"Authorization": "Bearer x"}).status_code for _ in range(4)]
    assert bad == [401, 401, 401, 429]  # failed attempts: per client address


def test_token_bucket_refills() -> None:
    limiter = RateLimiter(per_minute=600, burst=2)  # 10 tokens/s
    assert [limiter.take("k") for _ in range(2)] == [0, 0]
    wait = limiter.take("k")
    assert 0 < wait <= 0.1
    time.sleep(wait + 0.01)
    assert limiter.take("k") == 0
    assert RateLimiter(per_minute=0, burst=1).take("k") == 0


def test_request_id_echo_or_generated(duckdb_url: str) -> None:
    api = client(Warehouse(duckdb_url))
    echoed = api.get("/data", headers={**auth("acme"), "X-Request-ID": "abc.DEF_123-x"})
    assert echoed.headers["x-request-id"] == "abc.DEF_123-x"
    assert echoed.json()["metadata"]["request_id"] == "abc.DEF_123-x"
    for bad in ("has space", "x" * 65, "semi;colon", ""):
        response = api.get("/data", headers={**auth("acme"), "X-Request-ID": bad})
        assert response.headers["x-request-id"] != bad
        assert len(response.headers["x-request-id"]) == 32
    for path in ("/data", "/nowhere", "/health"):
        assert api.get(path, headers={"X-Request-ID": "r1"}).headers["x-request-id"] == "r1"
    invalid = api.get("/data?limit=0", headers={**auth("acme"), "X-Request-ID": "r2"})
    assert invalid.status_code == 422 and invalid.headers["x-request-id"] == "r2"


def test_unhandled_error_is_json_500_with_request_id(duckdb_url: str, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(queries, "fetch_page", boom)
    response = client(Warehouse(duckdb_url)).get("/data", headers={**auth("acme"), "X-Request-ID": "r500"})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error", "request_id": "r500"}
    assert response.headers["x-request-id"] == "r500"


def test_cors(duckdb_url: str) -> None:
    settings = ApiSettings(rate_limit_per_minute=0, cors_origins=("https://app.example",))
    api = client(Warehouse(duckdb_url), settings=settings)
    preflight = api.options("/data", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    response = api.get("/data", headers={**auth("acme"), "Origin": "https://app.example"})
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
    other = api.get("/data", headers={**auth("acme"), "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    assert "access-control-allow-origin" not in client(Warehouse(duckdb_url)).get(
        "/data", headers={**auth("acme"), "Origin": "https://app.example"}).headers


def test_access_log_is_json_without_secrets(duckdb_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="etl_platform.api.access")
    api = client(Warehouse(duckdb_url))
    api.get("/data?limit=5", headers={**auth("acme"), "X-Request-ID": "log1"})
    api.get("/data", headers={"Authorization": "Bearer wrong-secret-key"})
    api.get("/data?api_key=leaked&limit=5", headers=auth("acme"))
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name.endswith("access")]
    assert len(lines) == 3
    first = lines[0]
    assert first["request_id"] == "log1" and first["status"] == 200 and first["principal"] == "acme"
    assert first["path"] == "/data" and first["query"] == "limit=5" and first["duration_ms"] > 0
    assert lines[1]["status"] == 401 and lines[1]["principal"] is None
    assert lines[2]["status"] == 422 and lines[2]["query"] == "api_key=%2A%2A%2A&limit=5"
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    for secret in (KEYS["acme"], "wrong-secret-key", "Bearer", "leaked"):
        assert secret not in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_uvicorn_from_env(tmp_path: Path, dagster_home: Path, duckdb_url: str) -> None:
    """`serve()` with everything from the environment: tenants file, warehouse, DAGSTER_HOME, keys."""
    (tmp_path / "tenants.yaml").write_text(
        "tenants:\n  - id: acme\n    api_key_env: ACME_API_KEY\n  - id: globex\n    api_key_env: GLOBEX_API_KEY\n"
    )
    insert(Warehouse(duckdb_url), "acme", [row("acme", 1)])
    port = _free_port()
    env = {**os.environ, "ETL_TENANTS_FILE": str(tmp_path / "tenants.yaml"), "ETL_WAREHOUSE_URL": duckdb_url,
           "ACME_API_KEY": KEYS["acme"], "GLOBEX_API_KEY": KEYS["globex"], "DAGSTER_HOME": str(dagster_home)}
    log_path = tmp_path / "api.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", f"from etl_platform.api import serve; serve('127.0.0.1', {port})"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        health = first_answer(f"{base}/health", proc, log_path)
        assert health.status_code == 200 and health.json()["degraded"] == ["daemon"]
        data = httpx.get(f"{base}/data", headers=auth("acme"), timeout=5).json()
        assert [r["record_id"] for r in data["data"]] == ["github/pull_request/000001"]
        assert httpx.get(f"{base}/data", headers=auth("globex"), timeout=5).json()["data"] == []
        assert httpx.get(f"{base}/docs", timeout=5).status_code == 200
        assert "/data" in httpx.get(f"{base}/openapi.json", timeout=5).json()["paths"]
    finally:
        proc.terminate()
        proc.wait(10)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("path") == "/data" and line.get("principal") == "acme" for line in lines)
    assert KEYS["acme"] not in log_path.read_text()


def test_keyring_from_env(caplog: pytest.LogCaptureFixture) -> None:
    from etl_platform.api.auth import KeyRing
    from etl_platform_tests.support.read_api import registry

    env = {"ACME_API_KEY": "k-acme", "ETL_ADMIN_API_KEY": "k-admin"}
    with caplog.at_level(logging.WARNING, logger="etl_platform.api.auth"):
        ring = KeyRing.from_env(registry(), env)
    assert ring.identify("k-acme").tenant_id == "acme"
    assert ring.identify("k-admin").is_admin
    assert ring.identify("") is None and ring.identify("k-acme ") is None
    assert "GLOBEX_API_KEY" in caplog.text and "k-acme" not in caplog.text  # globex has no key: named, not shown
    with pytest.raises(ValueError, match="'acme' and 'globex' have the same API key"):
        KeyRing.from_env(registry(), {"ACME_API_KEY": "same", "GLOBEX_API_KEY": "same"})
    assert KeyRing.from_env(registry(), {}).identify("anything") is None


@pytest.mark.postgres
def test_pool_replaces_connections_the_server_closed(pg_url: str) -> None:
    """After the server drops the pooled connections (restart, failover), requests still succeed."""
    import psycopg

    wh = Warehouse(pg_url)
    insert(wh, "acme", [row("acme", 1)])
    api = client(wh)
    assert api.get("/data", headers=auth("acme")).status_code == 200
    with psycopg.connect(pg_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'etl-platform-api'"
        ).fetchall()
    assert killed
    time.sleep(0.2)
    response = api.get("/data", headers=auth("acme"))
    assert response.status_code == 200 and len(response.json()["data"]) == 1


@pytest.mark.postgres
def test_concurrent_requests_share_a_bounded_pool(pg_url: str) -> None:
    """40 concurrent pages with a pool of 3: all answer, over at most 3 server connections."""
    import asyncio

    import psycopg

    wh = Warehouse(pg_url)
    insert(wh, "acme", [row("acme", n) for n in range(120)])
    settings = ApiSettings(rate_limit_per_minute=0, pg_pool_size=3)
    app = client(wh, settings=settings).app
    peak = []

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            async def one(n: int) -> int:
                response = await api.get("/data", params={"limit": 1 + n % 50}, headers=auth("acme"))
                return len(response.json()["data"]) if response.status_code == 200 else -response.status_code

            async def watch() -> None:
                with psycopg.connect(pg_url) as conn:
                    for _ in range(20):
                        peak.append(conn.execute("SELECT count(*) FROM pg_stat_activity "
                                                 "WHERE application_name = 'etl-platform-api'").fetchone()[0])
                        await asyncio.sleep(0.01)

            results = await asyncio.gather(*(one(n) for n in range(40)), watch())
            return results[:-1]

    assert asyncio.run(main()) == [1 + n % 50 for n in range(40)]
    assert max(peak) <= 3
