"""What the deployment files promise, checked without a Docker engine (test_containers.py runs
them): the image builds offline, Prometheus is the release CI tests and reports its health, and
the test stacks' ports never collide with clients' local ports."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from etl_platform_tests.support.ports import ephemeral_range, service_port

ROOT = Path(__file__).resolve().parents[2]


def test_the_dockerfile_needs_no_frontend_from_docker_hub() -> None:
    """A `# syntax=` directive makes BuildKit pull docker/dockerfile first: `docker compose up -d
    --build` then fails where Docker Hub is out of reach."""
    head = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("#")]
    assert not any(re.match(r"#\s*syntax\s*=", line, re.IGNORECASE) for line in head)


def test_prometheus_is_the_release_ci_builds_and_has_a_healthcheck() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.observability.yaml").read_text())
    prometheus = compose["services"]["prometheus"]
    setup = (ROOT / ".ci" / "docker-setup").read_text()
    pinned = re.search(r"^PROMETHEUS_IMAGE=(\S+)", setup, re.MULTILINE).group(1)
    assert prometheus["image"] == pinned == "prom/prometheus:v2.42.0"  # Debian bookworm's release
    test = prometheus["healthcheck"]["test"]
    assert test[0] == "CMD" and "http://127.0.0.1:9090/-/healthy" in test
    assert "wget" in setup.split("bootstrap \"$rootfs\" prometheus", 1)[1].splitlines()[0]


def test_every_long_running_service_has_a_healthcheck() -> None:
    services = {
        **yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"],
        **yaml.safe_load((ROOT / "deploy" / "compose.observability.yaml").read_text())["services"],
    }
    image_has_one = "\nHEALTHCHECK " in (ROOT / "Dockerfile").read_text()  # the platform's image
    missing = [name for name, service in services.items()
               if name != "init" and "profiles" not in service and "healthcheck" not in service
               and not ("etl-platform" in str(service.get("image")) and image_has_one)]  # fmt: skip
    assert not missing


def test_service_ports_are_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    ports = [service_port() for _ in range(20)]
    assert len(set(ports)) == 20 and all(not low <= p <= high and p >= 10000 for p in ports)
