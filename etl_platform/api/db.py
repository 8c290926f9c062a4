"""Read-only warehouse access for the API: pooled PostgreSQL connections, or a short
DuckDB connection per request (shared file lock, so the single writer is respected).
Both sessions use the UTC time zone, so timestamps are read in UTC."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import orjson
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import set_json_loads

from etl_platform.warehouse import Connection, Warehouse, WarehouseError

T = TypeVar("T")


class PgPool:
    """A small thread-safe pool of autocommit, read-only psycopg connections."""

    def __init__(self, dsn: str, size: int = 8, *, connect_timeout_s: int = 5, statement_timeout_ms: int = 0,
                 wait_timeout_s: float = 10.0) -> None:
        self.dsn = dsn
        self.wait_timeout_s = wait_timeout_s
        self.connect_timeout_s = connect_timeout_s
        options = "-c default_transaction_read_only=on -c TimeZone=UTC"
        if statement_timeout_ms:
            options += f" -c statement_timeout={int(statement_timeout_ms)}"
        self._options = options
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()

    def _connect(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(
                self.dsn, autocommit=True, connect_timeout=self.connect_timeout_s,
                options=self._options, application_name="etl-platform-api",
            )
        except psycopg.OperationalError as exc:
            raise WarehouseError(f"cannot connect to the warehouse: {str(exc).strip()}") from exc
        set_json_loads(orjson.loads, conn)  # JSONB `attributes` on every row: the fast parser
        return conn

    def run(self, fn: Callable[[Connection], T]) -> T:
        """Call `fn` with a pooled connection; a reused connection found broken (server
        restarted) is replaced once."""
        if not self._slots.acquire(timeout=self.wait_timeout_s):
            raise WarehouseError("no free warehouse connection (pool exhausted)")
        try:
            for attempt in (0, 1):
                with self._lock:
                    raw = self._idle.pop() if self._idle and attempt == 0 else None
                reused = raw is not None
                raw = raw or self._connect()
                try:
                    result = fn(Connection(raw, "postgres"))
                except psycopg.OperationalError as exc:
                    broken = raw.broken
                    raw.close()
                    if reused and broken:
                        continue
                    raise WarehouseError(f"warehouse query failed: {str(exc).strip()}") from exc
                except BaseException:
                    self._release(raw)
                    raise
                self._release(raw)
                return result
            raise AssertionError("unreachable")
        finally:
            self._slots.release()

    def _release(self, raw: psycopg.Connection) -> None:
        if raw.closed or raw.info.transaction_status != TransactionStatus.IDLE:
            raw.close()
            return
        with self._lock:
            self._idle.append(raw)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for raw in idle:
            raw.close()


class Reader:
    """`run(fn)`: call `fn(connection)` on the warehouse, read-only."""

    def __init__(self, warehouse: Warehouse, *, pool_size: int = 8, statement_timeout_ms: int = 15000,
                 duckdb_lock_timeout_s: float = 30.0) -> None:
        self.warehouse = warehouse
        self.duckdb_lock_timeout_s = duckdb_lock_timeout_s
        self.pool = (
            PgPool(warehouse.postgres_dsn, pool_size, statement_timeout_ms=statement_timeout_ms)
            if warehouse.kind == "postgres"
            else None
        )

    def run(self, fn: Callable[[Connection], T], *, lock_timeout_s: float | None = None) -> T:
        if self.pool is not None:
            return self.pool.run(fn)
        with self._duckdb(lock_timeout_s) as conn:
            return fn(conn)

    @contextlib.contextmanager
    def _duckdb(self, lock_timeout_s: float | None) -> Iterator[Connection]:
        import duckdb

        path = self.warehouse.duckdb_path
        if not path.exists():  # nothing loaded yet: an empty database, and no folder created
            raw = duckdb.connect(":memory:")
            try:
                yield Connection(raw, "duckdb")
            finally:
                raw.close()
            return
        timeout = self.duckdb_lock_timeout_s if lock_timeout_s is None else lock_timeout_s
        try:
            with self.warehouse.connect(timeout_s=timeout) as conn:
                conn.raw.execute("SET TimeZone = 'UTC'")  # timestamps come back in UTC, as from PostgreSQL
                yield conn
        except duckdb.IOException as exc:
            raise WarehouseError(f"cannot open the warehouse: {exc}") from exc

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
