"""A Docker Compose stack for tests: the project's docker-compose.yml plus a test override file,
under a project name of its own, driven with the Docker CLI and Compose v2.

`compose_command()` finds Compose (ETL_DOCKER_COMPOSE, which .ci/docker-setup prints, else the
`docker compose` plugin, else `docker-compose`); `engine_problem()` says why Docker cannot be
used here, or None.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCKER = shutil.which("docker", path="/usr/bin") or shutil.which("docker") or "docker"


def docker(*args: str, check: bool = True, timeout: float = 300) -> str:
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def compose_command() -> list[str] | None:
    configured = os.environ.get("ETL_DOCKER_COMPOSE")
    if configured:
        return [configured]
    try:
        if subprocess.run([DOCKER, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
            return [DOCKER, "compose"]
    except (OSError, subprocess.TimeoutExpired):
        pass
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def engine_problem() -> str | None:
    """Why containers cannot run here (no CLI, no engine, no Compose), or None."""
    try:
        docker("info", "--format", "{{.ServerVersion}}", timeout=30)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"no Docker engine answers ({exc}); run .ci/docker-setup"
    if compose_command() is None:
        return "no Docker Compose v2 (set ETL_DOCKER_COMPOSE; .ci/docker-setup installs one)"
    return None


class ComposeStack:
    """`docker compose -p <project> -f docker-compose.yml -f <override> --env-file <env>`."""

    def __init__(self, project: str, override: Path, env_file: Path) -> None:
        self.project = project
        self.files = [ROOT / "docker-compose.yml", override]
        self.env_file = env_file
        self.command = compose_command() or ["docker", "compose"]

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [*self.command, "--project-directory", str(ROOT), "-p", self.project, "--env-file", str(self.env_file)]
        for file in self.files:
            cmd += ["-f", str(file)]
        done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if check and done.returncode != 0:
            raise RuntimeError(f"docker compose {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return done

    def container(self, service: str) -> str:
        """The id of the service's (first) container."""
        ids = self.compose("ps", "-a", "-q", service).stdout.split()
        if not ids:
            raise LookupError(f"no container for service {service}")
        return ids[0]

    def inspect(self, container: str) -> dict[str, Any]:
        return json.loads(docker("inspect", container))[0]

    def health(self, service: str) -> str:
        """healthy | unhealthy | starting | exited(<code>) | ... for the service's container."""
        state = self.inspect(self.container(service))["State"]
        if state.get("Running") and state.get("Health"):
            return state["Health"]["Status"]
        return f"{state['Status']}({state.get('ExitCode')})"

    def healths(self, services: Sequence[str]) -> dict[str, str]:
        return {s: self.health(s) for s in services}

    def logs(self, tail: int = 60) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), check=False, timeout=120).stdout

    def down(self, *, volumes: bool = False) -> None:
        self.compose("down", "--timeout", "20", *(["--volumes"] if volumes else []), "--remove-orphans", timeout=300)
