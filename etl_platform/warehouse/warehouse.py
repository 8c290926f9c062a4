"""The warehouse: ETL_WAREHOUSE_URL → DuckDB (embedded) or PostgreSQL.

One object gives the dlt destination, SQL access and the per-tenant schema name.
DuckDB allows one writing process: writers take an exclusive file lock beside the
database file, readers a shared one, so runs in several processes queue instead of
failing with lock errors.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from etl_platform.config import secrets
from etl_platform.config.models import TenantsFileError
from etl_platform.config.names import tenant_schema
from etl_platform.config.settings import apply_dlt_defaults, get_settings

_LOCAL = threading.local()  # lock files this thread holds, with nesting depth


def _held() -> dict[str, int]:
    if not hasattr(_LOCAL, "held"):
        _LOCAL.held = {}
    return _LOCAL.held


def redact_url(url: str) -> str:
    """A URL safe for logs: password removed."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


class WarehouseError(RuntimeError):
    """The warehouse URL is invalid or the database cannot be reached."""


@dataclass(frozen=True)
class Warehouse:
    """A warehouse location parsed from a URL."""

    url: str

    def __post_init__(self) -> None:
        if self.kind not in ("duckdb", "postgres"):
            raise WarehouseError(
                f"ETL_WAREHOUSE_URL {redact_url(self.url)!r}: expected duckdb:///path/file.duckdb "
                "or postgresql://user@host:port/db"
            )

    @property
    def kind(self) -> str:
        scheme = urlsplit(self.url).scheme.split("+")[0]
        return {"duckdb": "duckdb", "postgresql": "postgres", "postgres": "postgres"}.get(scheme, scheme)

    @property
    def duckdb_path(self) -> Path:
        path = self.url.split("://", 1)[1]
        # duckdb:///abs/path -> /abs/path ; duckdb://rel/path -> rel/path
        return Path(path if not path.startswith("//") else path[1:])

    @property
    def postgres_dsn(self) -> str:
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(scheme="postgresql"))

    def __str__(self) -> str:
        return redact_url(self.url)

    def for_tenant(self, tenant_id: str) -> Warehouse:
        """Where a tenant's dataset lives: on DuckDB, a file of its own (`tenants/<id>.duckdb`
        beside this file; ETL_DUCKDB_TENANT_FILES), so tenants load and normalize in parallel
        and one tenant's file can be copied or dropped alone; on PostgreSQL, this database."""
        if self.kind != "duckdb" or not get_settings().duckdb_tenant_files:
            return self
        own = tenant_file(self.duckdb_path, tenant_id)
        if not own.exists():
            refuse_unmigrated(self.duckdb_path, tenant_id)
        return Warehouse(f"duckdb:///{own}")

    # --- dlt ---------------------------------------------------------------------------------

    def dlt_destination(self, connection: Any = None) -> Any:
        """The dlt destination for this warehouse (dlt's defaults for the platform applied first);
        on DuckDB, through `connection` when one is given (dlt then neither opens nor closes it)."""
        import dlt  # only where a pipeline loads: the read API and the sensors never import dlt

        apply_dlt_defaults()

        if self.kind == "duckdb":
            self.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
            # JSON rows reach DuckDB as Parquet that dlt's normalizer writes batch by batch, not as
            # INSERT statements, whose parsing DuckDB does not count against its memory cap: 20k
            # API records took 2 GB to load, 98k (50 MB) 440 MB as Parquet, and 197k the same.
            # (JSON lines fail: DuckDB's read_json wants 32 MB buffers per thread.)
            target = connection if connection is not None else str(self.duckdb_path)
            return dlt.destinations.duckdb(target, preferred_loader_file_format="parquet")
        parts = urlsplit(self.postgres_dsn)
        if parts.password is None:
            # dlt insists on a password; trust/peer auth ignores it (PGPASSWORD is honoured if set)
            password = secrets.value("PGPASSWORD") or "unused"
            user = parts.username or "postgres"
            host = parts.netloc.rsplit("@", 1)[-1]
            dsn = urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))
        else:
            dsn = self.postgres_dsn
        return dlt.destinations.postgres(credentials=dsn)

    @contextlib.contextmanager
    def writing(self, name: str = "") -> Iterator[Writing]:
        """The writer's lock (`lock(write=True, name=name)`) with one connection for all the work
        under it, dlt's included: on DuckDB dlt would open the file for each of its clients (about
        12 ms each, 5 per load; a tenant's run opened its file 22 times for three sources). The
        connection is opened when first used and closed with the lock, so readers never find the
        file open between writes."""
        with self.lock(write=True, name=name), contextlib.ExitStack() as stack:
            yield Writing(self, stack)

    # --- SQL ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(
        self, *, write: bool = False, timeout_s: float = 600.0, memory_mb: int | None = None
    ) -> Iterator[Connection]:
        """A short-lived connection; DuckDB writers and readers take the file lock. `memory_mb`
        (DuckDB): the connection's memory cap, beyond which it spills to a temp folder of its own."""
        if self.kind == "duckdb":
            with self.lock(write=write, timeout_s=timeout_s), self._spill(memory_mb) as config:
                import duckdb  # the DuckDB driver only where the warehouse is DuckDB

                self.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
                if not write and not self.duckdb_path.exists():
                    raw = duckdb.connect(":memory:", config=config)
                else:
                    raw = duckdb.connect(str(self.duckdb_path), read_only=not write, config=config)
                try:
                    yield Connection(raw, "duckdb")
                finally:
                    raw.close()
        else:
            try:
                raw = psycopg.connect(self.postgres_dsn, autocommit=True, connect_timeout=10)
            except psycopg.OperationalError as exc:
                raise WarehouseError(f"cannot connect to warehouse {self}: {exc}") from exc
            try:
                yield Connection(raw, "postgres")
            finally:
                raw.close()

    @contextlib.contextmanager
    def _spill(self, memory_mb: int | None) -> Iterator[dict[str, str]]:
        """DuckDB settings for a capped connection: `memory_limit` and a temp folder of this
        process and thread (ETL_DUCKDB_TEMP_DIR, default `tmp` beside the warehouse file; two
        processes never share spill files), removed afterwards."""
        if memory_mb is None:
            yield {}
            return
        base = get_settings().duckdb_temp_dir or self.duckdb_path.parent / "tmp"
        folder = base / f"{os.getpid()}-{threading.get_ident()}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            yield {"memory_limit": f"{int(memory_mb)}MB", "temp_directory": str(folder),
                   "preserve_insertion_order": "false"}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, *, write: bool = True, timeout_s: float = 600.0, name: str = "") -> Iterator[None]:
        """Exclusive (write) or shared (read) lock on the DuckDB file; PostgreSQL: a no-op
        unless `name` is given, then an advisory lock on that name (e.g. tenant/source)."""
        if self.kind == "postgres":
            if not name:
                yield
                return
            with self._pg_advisory_lock(name, timeout_s):
                yield
            return
        lock_path = self.duckdb_path.with_name(self.duckdb_path.name + (f".{name}" if name else "") + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        key, held = str(lock_path), _held()
        if held.get(key, 0) > 0:  # re-entrant within this thread (the writer already holds it)
            held[key] += 1
            try:
                yield
            finally:
                held[key] -= 1
            return
        handle = _acquire(lock_path, fcntl.LOCK_EX if write else fcntl.LOCK_SH, timeout_s)
        held[key] = 1
        try:
            yield
        finally:
            held[key] = 0
            _release(lock_path, handle)

    @contextlib.contextmanager
    def _pg_advisory_lock(self, name: str, timeout_s: float) -> Iterator[None]:
        key = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big", signed=True)
        with psycopg.connect(self.postgres_dsn, autocommit=True) as conn:
            conn.execute(f"SET lock_timeout = '{int(timeout_s * 1000)}ms'")
            deadline = time.monotonic() + timeout_s
            while not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchall()[0][0]:
                if time.monotonic() > deadline:
                    raise WarehouseError(f"timed out waiting for the lock {name!r}")
                time.sleep(0.1)
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def table_exists(self, schema: str, table: str) -> bool:
        with self.connect() as conn:
            return conn.table_exists(schema, table)

    def count(self, schema: str, table: str, where: str = "", params: Sequence[Any] = ()) -> int:
        with self.connect() as conn:
            if not conn.table_exists(schema, table):
                return 0
            sql = f"SELECT count(*) FROM {quote(schema)}.{quote(table)}" + (f" WHERE {where}" if where else "")
            return int(conn.query(sql, params)[0][0])


class Writing:
    """What `Warehouse.writing` gives: `conn` (opened on first use) and `destination` (dlt's, on
    DuckDB through `conn`)."""

    def __init__(self, warehouse: Warehouse, stack: contextlib.ExitStack) -> None:
        self._warehouse, self._stack = warehouse, stack
        self._conn: Connection | None = None
        self._destination: Any = None

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            self._conn = self._stack.enter_context(self._warehouse.connect(write=True))
        return self._conn

    @property
    def destination(self) -> Any:
        if self._destination is None:
            duck = self._warehouse.kind == "duckdb"
            self._destination = self._warehouse.dlt_destination(self.conn.raw if duck else None)
        return self._destination


def _acquire(lock_path: Path, mode: int, timeout_s: float) -> Any:
    """The lock file open and locked. A lock file is removed by its last holder (`_release`): a
    process that locked a file since removed retries on the one now at the path."""
    deadline = time.monotonic() + timeout_s
    while True:
        handle = open(lock_path, "a+")  # noqa: SIM115 - closed by `_release`
        try:
            while True:
                try:
                    fcntl.flock(handle, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise WarehouseError(
                            f"timed out after {timeout_s:.0f}s waiting for the warehouse lock {lock_path}"
                        ) from None
                    time.sleep(0.05)
            try:
                if os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino:
                    return handle
            except FileNotFoundError:
                pass
        except BaseException:
            handle.close()
            raise
        handle.close()  # the file was removed while we waited: lock the current one


def _release(lock_path: Path, handle: Any) -> None:
    """Unlock; the last holder (no one else holds or waits with the file open locked) removes
    the file, so lock files do not pile up (one per tenant that ever ran)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
    except BlockingIOError:
        pass  # another process holds it shared: the last of them removes it
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def tenant_file(platform_file: Path, tenant_id: str) -> Path:
    """The DuckDB file of a tenant's dataset beside the platform's file: `tenants/<id>.duckdb`."""
    return platform_file.parent.absolute() / TENANTS_FOLDER / f"{tenant_id}.duckdb"


TENANTS_FOLDER = "tenants"
_NOT_IN_PLATFORM_FILE: set[tuple[str, str]] = set()  # (platform file, tenant) checked: no data there


def refuse_unmigrated(platform_file: Path, tenant_id: str) -> None:
    """Refuse a tenant file where the tenant's data still sits in the platform's file (the layout
    before ETL_DUCKDB_TENANT_FILES): loads would start an empty file and reads would miss the data.
    A file another process is writing is not waited for (the check is then skipped)."""
    import duckdb  # only where a DuckDB file is opened: the read API on PostgreSQL never imports it

    key = (str(platform_file), tenant_id)
    if key in _NOT_IN_PLATFORM_FILE or not platform_file.exists():
        return
    try:
        with duckdb.connect(str(platform_file), read_only=True) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = ?", [tenant_schema(tenant_id)]
            ).fetchone()[0]
    except duckdb.Error:  # held by a writer: not knowable now
        return
    if tables:
        raise WarehouseError(
            f"tenant {tenant_id!r}: its data is in {platform_file} (schema {tenant_schema(tenant_id)}), the layout "
            "before a DuckDB file per tenant: run `etl-platform warehouse migrate` once (or set "
            "ETL_DUCKDB_TENANT_FILES=false to keep the single file)"
        )
    _NOT_IN_PLATFORM_FILE.add(key)


def quote(identifier: str) -> str:
    """Quote an SQL identifier (schema, table or column name)."""
    return '"' + identifier.replace('"', '""') + '"'


class Connection:
    """A DB-API-ish wrapper with one placeholder style (`?`) for both databases."""

    def __init__(self, raw: Any, dialect: str) -> None:
        self.raw = raw
        self.dialect = dialect

    def _sql(self, sql: str) -> str:
        if self.dialect == "postgres":
            sql = sql.replace("%", "%%")
            return re.sub(r"\?(?!\|)", "%s", sql)
        return sql

    def _run(self, sql: str, params: Sequence[Any]) -> Any:
        """Execute; SQL without params is sent as-is (generated SQL may contain '?' in regexes)."""
        if self.dialect == "postgres":
            if not params:
                return self.raw.execute(sql)
            return self.raw.execute(self._sql(sql), list(params))
        return self.raw.execute(sql, list(params)) if params else self.raw.execute(sql)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._run(sql, params)

    def delete(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a DELETE; the number of rows it removed."""
        cursor = self._run(sql, params)
        return int(cursor.rowcount if self.dialect == "postgres" else cursor.fetchall()[0][0])

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._run(sql, params).fetchall()

    def query_dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._run(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def table_exists(self, schema: str, table: str) -> bool:
        rows = self.query(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        )
        return bool(rows)

    def columns(self, schema: str, table: str) -> dict[str, str]:
        """column -> data type, in table order."""
        rows = self.query(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [schema, table],
        )
        return {r[0]: r[1] for r in rows}

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self.dialect == "postgres":
            with self.raw.transaction():
                yield
        else:
            self.raw.execute("BEGIN TRANSACTION")
            try:
                yield
            except BaseException:
                self.raw.execute("ROLLBACK")
                raise
            self.raw.execute("COMMIT")


def warehouse_for(tenant: Any = None) -> Warehouse:
    """The warehouse holding a tenant's data: its own (`warehouse_url_env` in the tenants file,
    a PostgreSQL database or server of its own) or the platform's (ETL_WAREHOUSE_URL; on DuckDB the
    tenant's own file beside it, `Warehouse.for_tenant`)."""
    env = getattr(tenant, "warehouse_url_env", None)
    if env:
        url = secrets.value(env)
        if not url:
            raise TenantsFileError(
                f"tenant {tenant.id!r}, field 'warehouse_url_env': environment variable {env} is not set"
            )
        return Warehouse(url)
    platform = get_warehouse()
    return platform.for_tenant(tenant.id) if tenant is not None else platform


def get_warehouse(url: str | None = None) -> Warehouse:
    """The warehouse named by ETL_WAREHOUSE_URL (or `url`)."""
    if url is None:
        url = get_settings().warehouse_url
    return Warehouse(url)
