"""Locations are data, not shell (issue 22, item 5): the tenants file cannot make a source read
the platform's environment or files outside the data root. Refused at load, every error named
(tenant, source, field), and again when the file is opened (a symlink may change in between).

The invariant: a tenant's rows hold only what its own files say; no platform secret or system
file reaches its `records`, its errors or an alert.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
import yaml

from etl_platform.config.models import TenantsFileError
from etl_platform.config.registry import load_registry
from etl_platform.config.settings import SAMPLES_DIR
from etl_platform.security.redaction import exception_chain
from etl_platform.sources.bounds import LocationRefused
from etl_platform.sources.build import build_source
from etl_platform.sources.lineage import RunContext, Window
from etl_platform_tests.support import dlt_loads

REPO_TENANTS = Path(__file__).resolve().parents[2] / "tenants.yaml"
ADMIN_KEY = "admin-key-never-in-a-location-0001"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root of its own (the tests' default root is the whole temporary folder)."""
    root = tmp_path / "files"
    root.mkdir()
    (root / "ok.csv").write_text("id,name\n1,one\n")
    monkeypatch.setenv("ETL_DATA_ROOT", str(root))
    monkeypatch.setenv("ETL_ADMIN_API_KEY", ADMIN_KEY)
    monkeypatch.setenv("ETL_CACHE_DIR", str(tmp_path / "cache"))
    return root


def _load(folder: Path, sources: list[dict]) -> object:
    path = folder / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": [{"id": "acme", "sources": sources}]}))
    return load_registry(path)


def _problems(folder: Path, sources: list[dict]) -> str:
    with pytest.raises(TenantsFileError) as err:
        _load(folder, sources)
    return str(err.value)


@pytest.mark.parametrize(
    "location",
    ["${ETL_ADMIN_API_KEY}.csv", "$ETL_ADMIN_API_KEY/x.csv", "data/${HOME}.csv", "http://x.test/${ETL_ADMIN_API_KEY}"],
)
def test_a_variable_in_a_location_is_refused_at_load(root: Path, location: str) -> None:
    message = _problems(root, [{"name": "crm", "kind": "csv", "location": location}])
    assert "tenant 'acme', source 'crm', field 'location': must not contain '$'" in message
    assert ADMIN_KEY not in message


def test_every_location_problem_is_named_at_once(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_text("id\n1\n")
    (root / "escape.csv").symlink_to(outside)
    message = _problems(
        root,
        [
            {"name": "env", "kind": "csv", "location": "/proc/self/environ"},
            {"name": "dev", "kind": "rss", "url": "file:///dev/zero"},
            {"name": "up", "kind": "csv", "location": "../outside.csv"},
            {"name": "abs", "kind": "csv", "location": str(outside)},
            {"name": "link", "kind": "csv", "location": "escape.csv"},
            {"name": "fine", "kind": "csv", "location": "ok.csv"},
        ],
    )
    assert "(5 problems)" in message, message
    assert "source 'env', field 'location': must not point into /proc, /sys or /dev" in message
    assert "source 'dev', field 'url': must not point into /proc, /sys or /dev" in message
    assert "source 'up', field 'location': must not contain '..'" in message
    assert f"source 'abs', field 'location': {outside} resolves to {outside}, outside the data root" in message
    assert f"source 'link', field 'location': {root / 'escape.csv'} resolves to {outside}, outside" in message
    assert "source 'fine'" not in message


def test_a_symlink_changed_after_the_load_is_refused_when_opened(root: Path, tmp_path: Path) -> None:
    """The file passed at load; the link is then pointed at the process's environment."""
    link = root / "orders.csv"
    link.symlink_to(root / "ok.csv")
    registry = _load(root, [{"name": "orders", "kind": "csv", "location": "orders.csv"}])
    link.unlink()
    link.symlink_to("/proc/self/environ")
    config = registry.tenant("acme").source("orders")
    source = build_source(config, registry, RunContext("acme", "orders", "run-1", Window((dt.date(2024, 1, 2),))))
    with pytest.raises(Exception) as caught:
        dlt_loads.pipeline(tmp_path, "orders").run(source)
    refused = [e for e in exception_chain(caught.value) if isinstance(e, LocationRefused)]
    assert refused and "resolves to /proc/" in str(refused[0]) and "source 'orders'" in str(refused[0])
    assert ADMIN_KEY not in " ".join(str(e) for e in exception_chain(caught.value))
    assert dlt_loads.table(tmp_path, "rows") == []


def test_locations_are_not_expanded(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(root))
    registry = _load(root, [{"name": "crm", "kind": "csv", "location": "ok.csv"}])
    assert registry.resolve("~/ok.csv") == str(root / "~" / "ok.csv")  # no user expansion either


def test_the_demo_samples_load_with_any_data_root(root: Path) -> None:
    """The quick start's tenants file reads the package's samples, whatever ETL_DATA_ROOT says."""
    registry = load_registry(REPO_TENANTS)
    demo = registry.tenant("demo")
    for source in demo.sources:
        location = registry.resolve(getattr(source, "location", None) or source.url)
        assert Path(location).resolve().is_relative_to(SAMPLES_DIR), location


def test_the_default_data_root_is_under_dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from etl_platform.config.settings import data_roots

    monkeypatch.delenv("ETL_DATA_ROOT", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert data_roots() == ((tmp_path / "data" / "files").resolve(), SAMPLES_DIR)
    monkeypatch.setenv("ETL_DATA_ROOT", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert data_roots()[:2] == ((tmp_path / "a").resolve(), (tmp_path / "b").resolve())
