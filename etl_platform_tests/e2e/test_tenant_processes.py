"""No tenant's process outlives its run: a run worker (the `dagster` CLI, as CI runs it) that is
cancelled (SIGTERM, what Dagster sends to terminate a run) or killed (SIGKILL) takes its fork
server and the tenant's process with it, while the tenant is still loading from a slow source."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from etl_platform_tests.support.http_servers import LocalServer, Response
from etl_platform_tests.support.orchestration import quiet_home, rest_tenant
from etl_platform_tests.support.platform_runs import write_tenants

DAY = dt.date(2024, 5, 2)
ZYGOTE = "etl_platform.isolation.zygote"


def trickle():
    yield b'[{"id": 1, "title": "'
    for _ in range(600):
        time.sleep(0.5)
        yield b"a"
    yield b'"}]'


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (by /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["cancelled", "killed"])
def test_a_tenants_process_dies_with_its_run(tmp_path: Path, how: signal.Signals) -> None:
    home = quiet_home(tmp_path / "home")
    with LocalServer() as server:
        server.route("/slow", lambda req: Response(200, trickle(), {"Content-Type": "application/json"}))
        tenants = write_tenants(tmp_path / "tenants.yaml", [rest_tenant("slowco", server, "slow")])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "DAGSTER_"))}
        env.update(DAGSTER_HOME=str(home), ETL_TENANTS_FILE=str(tenants),
                   ETL_WAREHOUSE_URL=f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
        cli = Path(sys.executable).parent
        assert subprocess.run([str(cli / "etl-platform"), "tenants", "sync"], env=env, timeout=300).returncode == 0
        worker = subprocess.Popen(
            [str(cli / "dagster"), "asset", "materialize", "-m", "etl_platform.definitions", "--select", "*",
             "--partition", f"{DAY}|slowco"],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 180
            tenant_processes: set[int] = set()
            while time.monotonic() < deadline and not server.hits("/slow"):
                time.sleep(0.2)
            assert server.hits("/slow"), "the tenant's process never reached its source"
            tenant_processes = {p for p in _descendants(worker.pid) if ZYGOTE in _cmdline(p)}
            assert len(tenant_processes) == 2, tenant_processes  # the fork server and the tenant's child
            worker.send_signal(how)
            worker.wait(timeout=120)
            end = time.monotonic() + 30
            while time.monotonic() < end and any(_alive(p) for p in tenant_processes):
                time.sleep(0.2)
            assert not [p for p in tenant_processes if _alive(p)]
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
