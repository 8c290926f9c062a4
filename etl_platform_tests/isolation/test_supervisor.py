"""One tenant's process cannot take others down: limits stop it alone, with a named reason,
its environment holds only its own secrets, and no process outlives the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from etl_platform.isolation.environment import platform_environment, tenant_secrets
from etl_platform.isolation.limits import ChildDied, LimitExceeded, Limits
from etl_platform.isolation.supervisor import ForkServer

ROOT = Path(__file__).resolve().parents[2]
TARGETS = "etl_platform_tests.isolation.targets"
GENEROUS = Limits(memory_bytes=1 << 30, deadline_s=60, cpu_s=60)


def _env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture(scope="module")
def server():
    with ForkServer(_env(ETL_PLATFORM_SETTING="kept"), preload=[TARGETS]) as fork_server:
        yield fork_server


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_memory_limit_stops_the_tenant_and_names_what_it_was_doing(server):
    limits = Limits(memory_bytes=300 << 20, deadline_s=60, cpu_s=60)
    with pytest.raises(LimitExceeded) as caught:
        list(server.run(f"{TARGETS}:grow", None, {}, limits))
    assert caught.value.limit == "memory"
    assert str(caught.value) == "memory limit 300 MiB reached while loading source 'api' (page 3)"
    # killed close to the limit: the watchdog polls often enough for a fast allocator
    assert server.last_peak_bytes < 300 * (1 << 20) + 200 * (1 << 20)


def test_deadline_stops_a_tenant_that_hangs(server):
    started = time.monotonic()
    with pytest.raises(LimitExceeded, match=r"^deadline of 1 s reached while loading source 'slow'$"):
        list(server.run(f"{TARGETS}:sleep_forever", None, {}, Limits(1 << 30, 1, 60)))
    assert time.monotonic() - started < 5


def test_cpu_limit_is_the_kernels(server):
    with pytest.raises(LimitExceeded, match=r"^CPU time limit of 1 s reached while normalizing$") as caught:
        list(server.run(f"{TARGETS}:spin", None, {}, Limits(1 << 30, 60, 1)))
    assert caught.value.limit == "cpu"


def test_a_crash_is_reported_and_the_next_tenant_runs(server):
    with pytest.raises(ChildDied, match="ValueError: the loading code broke"):
        list(server.run(f"{TARGETS}:fail", None, {}, GENEROUS))
    messages = list(server.run(f"{TARGETS}:report_env", ["TENANT_TOKEN"], {"TENANT_TOKEN": "t1"}, GENEROUS))
    assert messages[0]["values"] == {"TENANT_TOKEN": "t1"}


def test_a_child_holds_its_own_secrets_only(server):
    first = list(server.run(f"{TARGETS}:report_env", ["A_TOKEN", "B_TOKEN"], {"A_TOKEN": "aaaa"}, GENEROUS))
    second = list(server.run(f"{TARGETS}:report_env", ["A_TOKEN", "B_TOKEN"], {"B_TOKEN": "bbbb"}, GENEROUS))
    assert first[0]["values"] == {"A_TOKEN": "aaaa", "B_TOKEN": None}
    assert second[0]["values"] == {"A_TOKEN": None, "B_TOKEN": "bbbb"}
    # the process's environment block (what /proc/self/environ shows) holds no tenant secret at all
    for message in first + second:
        assert "aaaa" not in message["block"] and "bbbb" not in message["block"]
        assert "ETL_PLATFORM_SETTING=kept" in message["block"]


def test_leaving_early_kills_the_child(server):
    runs = server.run(f"{TARGETS}:pid_then_sleep", None, {}, GENEROUS)
    pid = next(runs)["pid"]
    runs.close()  # the consumer stops (a cancelled run)
    for _ in range(50):
        if not _alive(pid):
            break
        time.sleep(0.05)
    assert not _alive(pid)


def test_no_process_outlives_a_killed_run_worker(tmp_path: Path):
    """kill -9 of the run worker: the fork server and the tenant's child die with it."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from etl_platform.isolation.supervisor import ForkServer
        from etl_platform.isolation.limits import Limits
        server = ForkServer({{"PATH": os.environ["PATH"], "PYTHONPATH": {str(ROOT)!r}}}, preload=[{TARGETS!r}])
        runs = server.run("{TARGETS}:pid_then_sleep", None, {{}}, Limits(1 << 30, 600, 600))
        print(server.process.pid, next(runs)["pid"], flush=True)
        sys.stdin.read()
    """))
    worker = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    fork_server, child = (int(x) for x in worker.stdout.readline().split())
    assert _alive(fork_server) and _alive(child)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    for _ in range(100):
        if not _alive(fork_server) and not _alive(child):
            break
        time.sleep(0.05)
    assert not _alive(fork_server) and not _alive(child)


class _Tenant:
    def __init__(self, sources, warehouse_url_env=None, api_key_env=None):
        self.sources, self.warehouse_url_env, self.api_key_env = sources, warehouse_url_env, api_key_env

    def model_dump(self):
        return {"api_key_env": self.api_key_env, "warehouse_url_env": self.warehouse_url_env,
                "sources": [s.model_dump() for s in self.sources]}


class _Source:
    def __init__(self, token_env):
        self.token_env = token_env

    def model_dump(self):
        return {"auth": {"token_env": self.token_env}}


def test_the_fork_servers_environment_holds_no_tenant_variable_and_no_platform_secret():
    acme = _Tenant([_Source("ACME_TOKEN")], api_key_env="ETL_ACME_API_KEY")
    beta = _Tenant([_Source("BETA_TOKEN")], warehouse_url_env="BETA_WAREHOUSE_URL")
    environ = {
        "PATH": "/bin", "ETL_WAREHOUSE_URL": "duckdb:///w", "RUNTIME__REQUEST_TIMEOUT": "5", "DAGSTER_HOME": "/h",
        "ACME_TOKEN": "a", "BETA_TOKEN": "b", "ETL_ACME_API_KEY": "k", "BETA_WAREHOUSE_URL": "postgresql://b",
        "ETL_ADMIN_API_KEY": "admin", "ETL_ALERT_WEBHOOK_URL": "https://hook", "DAGSTER_PG_PASSWORD": "pg",
        "AWS_SECRET_ACCESS_KEY": "aws",
    }
    assert platform_environment(environ, [acme, beta]) == {
        "PATH": "/bin", "ETL_WAREHOUSE_URL": "duckdb:///w", "RUNTIME__REQUEST_TIMEOUT": "5", "DAGSTER_HOME": "/h",
    }
    assert tenant_secrets(environ, acme) == {"ACME_TOKEN": "a"}
    assert tenant_secrets(environ, beta) == {"BETA_TOKEN": "b", "BETA_WAREHOUSE_URL": "postgresql://b"}


def test_a_tenants_process_starts_warm():
    """A tenant's process pays no start-up of its own: what its first load would import (dlt's
    destination clients, their drivers, SQLAlchemy, Parquet) and dlt's plugin registry (a scan of
    every installed package) were built once by the run's fork server, before it forked (the
    platform's PRELOAD; the benchmark in RESULTS.md measures what it saves per tenant)."""
    from etl_platform.assets.ingest import PRELOAD
    from etl_platform.loading.warm import MODULES

    code = f"""
import json, sys
from etl_platform.isolation.supervisor import ForkServer
from etl_platform.isolation.limits import Limits
with ForkServer({{"PATH": {os.environ["PATH"]!r}, "PYTHONPATH": {str(ROOT)!r}}}, preload=[*{list(PRELOAD)!r}, {TARGETS!r}]) as s:
    (m,) = list(s.run({TARGETS + ":report_warm"!r}, {list(MODULES)!r}, {{}}, Limits(1 << 30, 60, 60)))
print(json.dumps(m))
"""
    # a fresh interpreter: the test process's own imports must not count
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["plugins"] is True
    assert [name for name, loaded in report["modules"].items() if not loaded] == []
