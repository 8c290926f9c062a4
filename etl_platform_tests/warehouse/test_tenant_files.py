"""The embedded layout: a DuckDB file per tenant (`tenants/<id>.duckdb` beside the platform's file).

Invariant: no tenant waits for another. A writer holding one tenant's file (a long load) does not
hold up another tenant's run or the read API's answers for the other tenant; the API holds no
tenant file between requests; lock files do not pile up; a single-file warehouse of the earlier
layout moves over with `etl-platform warehouse migrate`, its rows unchanged, and until it has, no run
or read starts an empty tenant file beside the tenant's data (the error names the command).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance

from etl_platform.cli import main
from etl_platform.config.names import tenant_schema
from etl_platform.warehouse import Warehouse
from etl_platform.warehouse.warehouse import WarehouseError
from etl_platform.warehouse.migrate import migrate_to_tenant_files
from etl_platform_tests.support.platform_runs import materialize
from etl_platform_tests.support.read_api import auth, client, insert, row

DAY = dt.date(2024, 3, 1)
CSV = "id,name,updated_at\n" + "".join(f"{i},{'item'} {i},2024-03-01T10:00:00Z\n" for i in range(1, 21))
HOLD = (
    "import sys\nfrom etl_platform.warehouse import Warehouse\n"
    "with Warehouse(sys.argv[1]).connect(write=True) as conn:\n"
    "    conn.execute('CREATE TABLE IF NOT EXISTS held (x INTEGER)')\n"
    "    print('held', flush=True)\n    sys.stdin.read()\n"
)


@pytest.fixture
def files_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_DUCKDB_TENANT_FILES", "true")


@pytest.fixture
def two_tenants(tmp_path: Path, platform_env, files_layout) -> str:
    csv = tmp_path / "items.csv"
    csv.write_text(CSV)
    source = {"name": "items", "kind": "csv", "location": str(csv), "primary_key": ["id"]}
    url = f"duckdb:///{tmp_path / 'data' / 'warehouse.duckdb'}"
    platform_env([{"id": t, "sources": [source]} for t in ("alpha", "beta")], url)
    return url


class Holder:
    """Another process holding a DuckDB file as its writer (file lock and DuckDB's own lock)."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0


def _records(url: str, tenant: str) -> int:
    with Warehouse(url).connect() as conn:
        return conn.query(f'SELECT count(*) FROM "{tenant_schema(tenant)}"."records"')[0][0]


def _locks(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.lock"))


def test_a_tenant_runs_while_another_tenants_file_is_held(two_tenants: str) -> None:
    platform = Warehouse(two_tenants)
    alpha, beta = platform.for_tenant("alpha"), platform.for_tenant("beta")
    assert alpha.duckdb_path == platform.duckdb_path.parent / "tenants" / "alpha.duckdb"
    holder = Holder(alpha.url)  # alpha's writer, busy for as long as the test says
    try:
        with DagsterInstance.get() as instance:
            started = time.monotonic()
            assert materialize(instance, "beta", DAY).success
            assert time.monotonic() - started < 120
        assert _records(beta.url, "beta") == 20
    finally:
        holder.release()
    with DagsterInstance.get() as instance:
        assert materialize(instance, "alpha", DAY).success
    assert _records(alpha.url, "alpha") == 20
    # each tenant's dataset in its own file only; the platform's file holds no tenant's tables
    with duckdb.connect(str(beta.duckdb_path), read_only=True) as conn:
        assert not conn.execute("SELECT * FROM duckdb_schemas() WHERE schema_name = 'tenant_alpha'").fetchall()
    if platform.duckdb_path.exists():
        with duckdb.connect(str(platform.duckdb_path), read_only=True) as conn:
            assert not conn.execute("SELECT * FROM duckdb_schemas() WHERE schema_name LIKE 'tenant_%'").fetchall()
    assert _locks(platform.duckdb_path.parent) == []  # no lock file left behind by the runs


def test_two_tenants_write_at_once(tmp_path: Path, files_layout) -> None:
    """Two writers of two tenants' files hold them at the same time: neither waits."""
    platform = Warehouse(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    inside, both = threading.Barrier(2, timeout=20), []

    def write(tenant: str) -> None:
        with platform.for_tenant(tenant).connect(write=True, timeout_s=20) as conn:
            conn.execute("CREATE TABLE t AS SELECT 1 AS x")
            inside.wait()  # both writers inside at once, or the barrier times out
            both.append(tenant)

    threads = [threading.Thread(target=write, args=(t,)) for t in ("alpha", "beta")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(both) == ["alpha", "beta"]
    assert (tmp_path / "tenants" / "alpha.duckdb").exists() and (tmp_path / "tenants" / "beta.duckdb").exists()
    assert _locks(tmp_path) == []


def test_the_api_reads_a_tenant_while_another_tenants_writer_holds_its_file(tmp_path: Path, files_layout) -> None:
    platform = Warehouse(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    insert(platform.for_tenant("acme"), "acme", [row("acme", n) for n in range(3)])
    insert(platform.for_tenant("globex"), "globex", [row("globex", n, source="feed", record_type="entry")
                                                    for n in range(4)])
    api = client(platform)
    holder = Holder(platform.for_tenant("acme").url)
    try:
        started = time.monotonic()
        response = api.get("/data", headers=auth("globex"))
        assert response.status_code == 200 and len(response.json()["data"]) == 4
        assert time.monotonic() - started < 5  # not waiting for acme's writer
    finally:
        holder.release()
    assert len(api.get("/data", headers=auth("acme")).json()["data"]) == 3
    # the API holds no tenant file between requests: a writer opens it at once
    with platform.for_tenant("acme").connect(write=True, timeout_s=0):
        pass
    duckdb.connect(str(platform.for_tenant("acme").duckdb_path)).close()
    assert _locks(tmp_path) == []


def test_lock_files_are_removed_by_their_last_holder_and_still_exclude(tmp_path: Path) -> None:
    """Writers of one file, in threads, one at a time, while each release may remove the file."""
    warehouse = Warehouse(f"duckdb:///{tmp_path / 'w.duckdb'}")
    inside, most, errors = [0], [0], []
    guard = threading.Lock()

    def work() -> None:
        try:
            for _ in range(15):
                with warehouse.lock(write=True, name="tenant_x", timeout_s=30):
                    with guard:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                    time.sleep(0.002)
                    with guard:
                        inside[0] -= 1
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and most[0] == 1
    assert _locks(tmp_path) == []


def test_migrate_moves_a_single_file_warehouse_to_tenant_files(
    two_tenants: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    platform = Warehouse(two_tenants)
    monkeypatch.setenv("ETL_DUCKDB_TENANT_FILES", "false")  # the earlier layout: one file
    with DagsterInstance.get() as instance:
        for tenant in ("alpha", "beta"):
            assert materialize(instance, tenant, DAY).success
    with platform.connect() as conn:
        before = {t: conn.query(f'SELECT * FROM "{tenant_schema(t)}"."items_rows" ORDER BY id') for t in
                  ("alpha", "beta")}
    assert not (platform.duckdb_path.parent / "tenants").exists()

    monkeypatch.setenv("ETL_DUCKDB_TENANT_FILES", "true")
    # upgraded but not migrated: a run refuses to start an empty tenant file beside the data
    with DagsterInstance.get() as instance:
        refused = materialize(instance, "alpha", DAY, raise_on_error=False)
    assert not refused.success
    assert not (platform.duckdb_path.parent / "tenants" / "alpha.duckdb").exists()
    with pytest.raises(WarehouseError, match="etl-platform warehouse migrate"):
        platform.for_tenant("beta")
    assert main(["warehouse", "migrate"]) == 0
    assert "2 tenants moved" in capsys.readouterr().out
    for tenant in ("alpha", "beta"):
        own = platform.for_tenant(tenant)
        with own.connect() as conn:
            assert conn.query(f'SELECT * FROM "{tenant_schema(tenant)}"."items_rows" ORDER BY id') == before[tenant]
        assert _records(own.url, tenant) == 20
    with platform.connect() as conn:
        assert not conn.query("SELECT * FROM duckdb_schemas() WHERE schema_name LIKE 'tenant_%'")
    assert migrate_to_tenant_files(platform) == []  # once: nothing left to move
    # the moved tenants load on in their own files (dlt's state came along), and upsert
    with DagsterInstance.get() as instance:
        assert materialize(instance, "alpha", DAY).success
    assert _records(platform.for_tenant("alpha").url, "alpha") == 20
    assert _locks(platform.duckdb_path.parent) == []


def test_a_tenants_file_is_free_while_its_own_source_is_still_sending(
    tmp_path: Path, platform_env, files_layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load holds its tenant's file only while it writes: while the tenant's API is slow to
    answer, the read API opens the file at once. And a source's load opens the file twice (dlt's
    state sync, then the load and the slice's bookkeeping on one connection), not once per dlt
    client: every open of a DuckDB file costs ~12 ms of CPU, for every source of every tenant."""
    from etl_platform.config.registry import load_registry
    from etl_platform.loading.raw import load_source
    from etl_platform.warehouse import warehouse_for
    from etl_platform_tests.support.http_servers import LocalServer
    from etl_platform_tests.support.jsonplaceholder import collection_handler

    items = [{"id": i, "title": f"item {i}", "updated": "2024-03-01T10:00:00Z"} for i in range(1, 8)]
    asked, answer = threading.Event(), threading.Event()
    with LocalServer() as server:
        serve = collection_handler(items, f"{server.url}/acme", "/items")

        def slow(request):
            asked.set()
            assert answer.wait(30)
            return serve(request)

        server.route("/acme/items", slow)
        source = {
            "name": "items", "kind": "rest_api", "base_url": f"{server.url}/acme",
            "paginator": {"type": "header_link"},
            "resources": [{"name": "items", "path": "items", "params": {"_page": 1, "_limit": 5},
                           "primary_key": "id"}],
        }
        platform_env([{"id": "acme", "sources": [source]}], f"duckdb:///{tmp_path / 'data' / 'warehouse.duckdb'}")
        registry = load_registry()
        tenant = registry.tenant("acme")
        warehouse = warehouse_for(tenant)

        def load(run_id: str):
            return load_source(run_id, registry, warehouse, tenant, tenant.source("items"), [DAY], ["items"])

        answer.set()
        assert load("run-1").slices[0].rows == {DAY: 7}
        asked.clear()
        answer.clear()
        opened: list[str] = []
        real_connect = duckdb.connect

        def counting_connect(*args, **kwargs):
            opened.append(str(args[0] if args else kwargs.get("database")))
            return real_connect(*args, **kwargs)

        monkeypatch.setattr(duckdb, "connect", counting_connect)
        done: list = []
        loading = threading.Thread(target=lambda: done.append(load("run-2")))
        loading.start()
        try:
            assert asked.wait(30)  # the load is extracting: waiting for the tenant's API
            started = time.monotonic()
            with warehouse.connect(timeout_s=5) as conn:  # as the read API opens it: read-only
                rows = conn.query(f'SELECT count(*) FROM "{tenant.dataset}"."items_items"')[0][0]
            assert rows == 7 and time.monotonic() - started < 5
        finally:
            answer.set()
            loading.join(60)
        assert done and done[0].slices[0].rows == {DAY: 7}
        mine = [p for p in opened if p == str(warehouse.duckdb_path)]
        assert len(mine) == 3, opened  # the read above, the state sync, the load with its bookkeeping
    assert _locks(tmp_path) == []
