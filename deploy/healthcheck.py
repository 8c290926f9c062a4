"""The image's HEALTHCHECK: exit 0 when this container's process answers, 1 when not.

What is checked depends on the container's role, ETL_ROLE (set per service in
docker-compose.yml), else guessed from the running commands:

  code-server  the gRPC code server answers its health check (DAGSTER_CODE_SERVER_PORT, 4000)
  webserver    dagster-webserver answers GET /server_info (DAGSTER_WEBSERVER_PORT, 3000)
  daemon       `dagster-daemon liveness-check`: every daemon sent a heartbeat lately
  api          the read API answers GET /health with 200 (ok or degraded; 503 is unhealthy)
  init         a one-shot job: always healthy
  run          a run's own container (DockerRunLauncher): Dagster's run monitoring watches it,
               so healthy while it runs
  celery-worker  a Celery worker (`dagster-celery worker start`) of this container answers a
               ping through the broker (deploy/celery/worker.yaml)

Usage: python deploy/healthcheck.py [ROLE]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

MARKERS = {  # command-line fragments -> role, for containers started without ETL_ROLE
    "api grpc": "code-server",
    "code-server start": "code-server",
    "dagster-webserver": "webserver",
    "dagster-daemon run": "daemon",
    "etl-platform serve": "api",
    "api execute_run": "run",
    "api resume_run": "run",
    "dagster_celery.app worker": "celery-worker",
}


def guess_role() -> str | None:
    for proc in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdline = proc.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        for marker, role in MARKERS.items():
            if marker in cmdline and "healthcheck" not in cmdline:
                return role
    return None


def http_ok(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status == 200, f"{url}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code} {exc.read()[:300].decode(errors='replace')}"
    except OSError as exc:
        return False, f"{url}: {exc}"


def check(role: str) -> tuple[bool, str]:
    if role == "code-server":
        from dagster._grpc.client import DagsterGrpcClient

        port = int(os.environ.get("DAGSTER_CODE_SERVER_PORT", "4000"))
        try:
            reply = DagsterGrpcClient(port=port, host="127.0.0.1").ping("healthcheck")
        except Exception as exc:
            return False, f"gRPC code server on port {port}: {exc}"
        return True, f"gRPC code server on port {port}: ping {reply['echo']!r}"
    if role == "webserver":
        return http_ok(f"http://127.0.0.1:{os.environ.get('DAGSTER_WEBSERVER_PORT', '3000')}/server_info")
    if role == "api":
        return http_ok(f"http://127.0.0.1:{os.environ.get('ETL_API_PORT', '8000')}/health")
    if role == "daemon":
        beside = Path(sys.executable).parent / "dagster-daemon"  # a venv; else PATH (/usr/local/bin)
        daemon = str(beside) if beside.exists() else shutil.which("dagster-daemon") or "dagster-daemon"
        done = subprocess.run(
            [daemon, "liveness-check"],
            capture_output=True, text=True, timeout=60,
        )
        return done.returncode == 0, (done.stdout + done.stderr).strip()[-500:]
    if role == "init":
        return True, "one-shot job"
    if role == "run":
        return True, "run worker (watched by Dagster's run monitoring)"
    if role == "celery-worker":
        return celery_worker_ok()
    return False, f"unknown role {role!r} (expected code-server, webserver, daemon, api, init, run or celery-worker)"


def celery_worker_ok() -> tuple[bool, str]:
    """A worker of this host answers a ping sent through the broker."""
    import socket

    from dagster_celery.cli import get_validated_config
    from dagster_celery.make_app import make_app

    config = get_validated_config(str(Path(__file__).resolve().parent / "celery" / "worker.yaml"))
    app = make_app({"broker": config["broker"], "backend": config["backend"]})
    host = socket.gethostname()
    try:
        replies = app.control.ping(timeout=10)
    finally:
        app.close()
    mine = [name for reply in replies for name in reply if name.endswith(f"@{host}")]
    return bool(mine), f"Celery workers of {host} answering: {mine or 'none'}"


def main(argv: list[str]) -> int:
    role = (argv[1] if len(argv) > 1 else "") or os.environ.get("ETL_ROLE", "") or guess_role()
    if not role:
        print("healthcheck: no ETL_ROLE and no known process running")
        return 1
    ok, detail = check(role)
    print(f"healthcheck {role}: {'ok' if ok else 'FAILING'}: {detail}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
