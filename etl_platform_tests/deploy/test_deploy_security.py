"""The Compose stack publishes the Dagster UI (which has no login) and the read API on the
host's loopback only, unless the operator says otherwise."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _published(service: str) -> list[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return [str(p) for p in compose["services"][service].get("ports", [])]


def test_ui_and_api_bind_to_loopback_by_default() -> None:
    for service, variable in (("webserver", "DAGSTER_WEBSERVER_BIND"), ("api", "ETL_API_BIND")):
        ports = _published(service)
        assert ports and all(p.startswith(f"${{{variable}:-127.0.0.1}}:") for p in ports), (service, ports)
        example = (ROOT / ".env.example").read_text()
        assert re.search(rf"^{variable}=127\.0\.0\.1$", example, re.MULTILINE), variable


def test_the_database_is_not_published() -> None:
    assert _published("postgres") == []
