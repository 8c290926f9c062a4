"""No tenant sees, waits for or dies of another tenant, inside one shared run: each tenant's work
runs in a process of its own, with only its own secrets and its own limits.

The attacks of issue 22, each from a local server: a deeply nested page, a gzip bomb, a server
that sends one byte at a time, next to a normal tenant in the same run.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
import zlib
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from etl_platform.assets import ingest
from etl_platform_tests.support.http_servers import LocalServer, Response
from etl_platform_tests.support.orchestration import quiet_home, rest_tenant
from etl_platform_tests.support.platform_runs import materialize_range, partition_materialization
from etl_platform_tests.support.processes import memory_holds, pid_of_connection

DAY = dt.date(2024, 5, 2)
RAW = AssetKey(["raw", "api", "api_items"])
ITEMS = [{"id": i, "title": f"item {i}"} for i in range(1, 6)]


def nested_page(depth: int = 50_000) -> bytes:
    return b'[{"id":1,"x":' + b"[" * depth + b"]" * depth + b"}]"


def gzip_bomb(size: int = 512 << 20) -> bytes:
    """About 0.5 MB that expands to `size` bytes of a JSON string (compressed a megabyte at a time)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip format
    chunk = b"a" * (1 << 20)
    parts = [packer.compress(b'[{"id":1,"x":"')]
    parts += [packer.compress(chunk) for _ in range(size >> 20)]
    parts.append(packer.compress(b'"}]') + packer.flush())
    out = b"".join(parts)
    assert len(out) < 1 << 20
    return out


def trickle(seconds: int = 120):
    """One byte a second: never idle long enough for a read timeout."""
    yield b'[{"id":1,"title":"'
    for _ in range(seconds):
        time.sleep(1)
        yield b"a"
    yield b'"}]'


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = quiet_home(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("ETL_WAREHOUSE_URL", f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    monkeypatch.setenv("ETL_STEP_RETRIES", "0")
    return home


def _tenants_file(tmp_path: Path, tenants: list[dict]) -> Path:
    from etl_platform_tests.support.platform_runs import write_tenants

    return write_tenants(tmp_path / "tenants.yaml", tenants)


def _failure_of(instance: DagsterInstance, run_id: str, tenant: str) -> str:
    from etl_platform.runs.failures import run_failures

    return " ".join(f.message for f in run_failures(instance, run_id) if f.tenant == tenant)


def test_hostile_tenants_fail_alone_with_named_limits_and_the_normal_one_loads(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = gzip_bomb()
    limits = {"memory_mb": 400, "deadline_minutes": 0.25}
    with LocalServer() as server:
        server.route("/deep", lambda req: Response(200, nested_page(), {"Content-Type": "application/json"}))
        server.route("/bomb", lambda req: Response(200, bomb, {"Content-Type": "application/json",
                                                            "Content-Encoding": "gzip"}))
        server.route("/slow", lambda req: Response(200, trickle(), {"Content-Type": "application/json"}))
        server.route("/ok", lambda req: Response(200, ITEMS))
        tenants = [
            rest_tenant("a_deep", server, "deep", limits=limits),
            rest_tenant("b_bomb", server, "bomb", limits=limits),
            rest_tenant("c_slow", server, "slow", limits=limits),
            rest_tenant("d_good", server, "ok", limits=limits),
        ]
        monkeypatch.setenv("ETL_TENANTS_FILE", str(_tenants_file(tmp_path, tenants)))
        instance = DagsterInstance.get()
        started = time.monotonic()
        result = materialize_range(instance, f"{DAY}|a_deep", f"{DAY}|d_good", raise_on_error=False)
        elapsed = time.monotonic() - started
    assert not result.success
    # the normal tenant of the run is loaded and materialized
    good = partition_materialization(instance, RAW, "d_good", DAY)
    assert good is not None and good.metadata["dagster/row_count"].value == len(ITEMS)
    assert partition_materialization(instance, ["normalized", "records"], "d_good", DAY) is not None
    # each hostile tenant failed alone, refused by the input limit it went over (bounded input:
    # before the parse, not killed by the memory watchdog after it)
    named = {"a_deep": "ETL_MAX_JSON_DEPTH = 512 levels", "b_bomb": "ETL_MAX_PAGE_BYTES = 64 MiB after decompression"}
    for tenant, limit in named.items():
        reason = _failure_of(instance, result.run_id, tenant)
        assert limit in reason and "source 'api'" in reason and "page 1" in reason, (tenant, reason)
        assert "memory limit" not in reason, (tenant, reason)
        assert partition_materialization(instance, RAW, tenant, DAY) is None
    slow = _failure_of(instance, result.run_id, "c_slow")
    assert "deadline of 15 s reached while loading source 'api' (page 1)" in slow  # the page: a progress note
    # no tenant's text reaches another's failure
    for tenant in ("a_deep", "b_bomb", "c_slow"):
        others = {"a_deep", "b_bomb", "c_slow", "d_good"} - {tenant}
        assert not any(other in _failure_of(instance, result.run_id, tenant) for other in others)
    # the slow server held its own tenant for its deadline, not the others for its 2 minutes
    assert elapsed < 90
    peaks = ingest.fork_server(None).peaks  # the run worker's record of each tenant's peak memory
    assert peaks and max(peaks.values()) < (400 + 150) << 20, peaks


def test_a_tenants_process_holds_its_own_secrets_only(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While tenant A's process fetches, its memory holds A's token and none of B's, nor the
    platform's admin key or the tenants' read keys; the fork server holds none of them."""
    values = {name: f"{name.lower()}-{secrets.token_hex(12)}" for name in
              ("A_TOKEN", "B_TOKEN", "ETL_ADMIN_API_KEY", "ETL_A_API_KEY", "ETL_B_API_KEY")}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    seen: dict[str, dict[bytes, bool]] = {}

    def answer(tenant: str):
        def handler(req):
            pid = pid_of_connection(req.client[1])
            seen[tenant] = memory_holds(pid, [v.encode() for v in values.values()])
            return Response(200, ITEMS)

        return handler

    with LocalServer() as server:
        server.route("/a", answer("a"))
        server.route("/b", answer("b"))
        tenants = []
        for tenant in ("a", "b"):
            spec = rest_tenant(tenant, server, tenant, api_key_env=f"ETL_{tenant.upper()}_API_KEY")
            spec["sources"][0]["auth"] = {"type": "bearer", "token_env": f"{tenant.upper()}_TOKEN"}
            tenants.append(spec)
        monkeypatch.setenv("ETL_TENANTS_FILE", str(_tenants_file(tmp_path, tenants)))
        instance = DagsterInstance.get()
        result = materialize_range(instance, f"{DAY}|a", f"{DAY}|b")
    assert result.success
    mine = {"a": values["A_TOKEN"], "b": values["B_TOKEN"]}
    for tenant, found in seen.items():
        held = {value for value, present in zip(values.values(), found.values()) if present}
        assert held == {mine[tenant]}, (tenant, held)
    zygote = ingest.fork_server(None).process.pid
    assert not any(memory_holds(zygote, [v.encode() for v in values.values()]).values())
