"""Shared fixtures: real PostgreSQL databases, DuckDB files, third-party data, Dagster homes."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("DLT_TELEMETRY_DISABLED", "1")
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
# fail fast in tests: few, short HTTP retries (production keeps dlt's defaults)
os.environ.setdefault("RUNTIME__REQUEST_MAX_ATTEMPTS", "4")
os.environ.setdefault("RUNTIME__REQUEST_BACKOFF_FACTOR", "0.05")
os.environ.setdefault("RUNTIME__REQUEST_MAX_RETRY_DELAY", "2")
os.environ.setdefault("RUNTIME__REQUEST_TIMEOUT", "5")

# local CSV files and feeds are read inside a data root only (ETL_DATA_ROOT): in tests, the temporary
# folders, the repository's test data and the third-party fixtures (tests of the confinement set their own)
os.environ.setdefault(
    "ETL_DATA_ROOT",
    os.pathsep.join(
        filter(None, [tempfile.gettempdir(), str(Path(__file__).parent / "data"), os.environ.get("ETL_FIXTURES")])
    ),
)
# The suite's tests read a tenant's rows from the one DuckDB file they name; the per-tenant files
# of the embedded default (ETL_DUCKDB_TENANT_FILES) are tested where they turn it on
# (etl_platform_tests/warehouse/test_tenant_files.py).
os.environ.setdefault("ETL_DUCKDB_TENANT_FILES", "false")

PG_ADMIN_URL = os.environ.get("ETL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_admin():
    """A connection to the test server. Outside CI an unreachable server skips the test (a
    user's machine may have none); in CI (CI=true) it fails."""
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} (set ETL_TEST_POSTGRES_URL): {exc}")


def create_pg_database(prefix: str = "etl_test") -> str:
    """Create a fresh database on the test server; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def duckdb_url(tmp_path: Path) -> str:
    return f"duckdb:///{tmp_path / 'warehouse.duckdb'}"


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on DuckDB and on the real PostgreSQL."""
    if request.param == "duckdb":
        yield f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    else:
        url = create_pg_database()
        try:
            yield url
        finally:
            drop_pg_database(url)


@pytest.fixture
def fixtures_dir() -> Path:
    """Third-party data (../shared/fixtures); .ci/run always sets ETL_FIXTURES."""
    value = os.environ.get("ETL_FIXTURES")
    if not value:
        pytest.skip("ETL_FIXTURES is not set (third-party fixtures live outside the repo)")
    path = Path(value)
    assert path.is_dir(), f"ETL_FIXTURES={value} is not a folder"
    return path


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty DAGSTER_HOME (SQLite storage) for one test."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def platform_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dagster_home: Path):
    """Point the platform at a tenants file and a warehouse for one test; returns a setter."""

    def configure(tenants: list[dict], warehouse_url: str) -> Path:
        from etl_platform_tests.support.platform_runs import write_tenants

        path = write_tenants(tmp_path / "tenants.yaml", tenants)
        monkeypatch.setenv("ETL_TENANTS_FILE", str(path))
        monkeypatch.setenv("ETL_WAREHOUSE_URL", warehouse_url)
        return path

    return configure


@pytest.fixture(autouse=True)
def _no_stale_defs_state_storage():
    """An instance not closed in its own context (async tests) leaves Dagster's context-wide
    defs-state storage pointing at a dead instance; loading definitions later then fails.
    Each test starts without one, as a fresh process would. A generator abandoned inside
    `with instance:` resets the storage whenever the garbage collector closes it, so that is
    done first (else it could happen mid-test, restoring an earlier test's dead instance)."""
    import gc

    from dagster._core.storage.defs_state.base import _current_storage

    gc.collect()
    token = _current_storage.set(None)
    yield
    try:
        _current_storage.reset(token)
    except ValueError:
        _current_storage.set(None)
