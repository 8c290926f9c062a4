"""Read-only warehouse access for the API: `await reader.query(sql, params)`.

PostgreSQL: a small pool of asynchronous psycopg connections (no thread per query).
DuckDB: a short read-only connection per query in a worker thread, through
`Warehouse.connect()` (shared file lock, so the single writer is respected).
Both sessions use the UTC time zone, so timestamps are read in UTC.
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import set_json_loads
from starlette.concurrency import run_in_threadpool

from etl_platform.warehouse import Warehouse, WarehouseError

Row = tuple[Any, ...]


def pg_sql(sql: str) -> str:
    """`?` placeholders to psycopg's `%s` (as `warehouse.Connection` does)."""
    return re.sub(r"\?(?!\|)", "%s", sql.replace("%", "%%"))


class AsyncPgPool:
    """Autocommit, read-only AsyncConnections; at most `size` in use at once (per event loop)."""

    def __init__(self, dsn: str, size: int = 8, *, connect_timeout_s: int = 5, statement_timeout_ms: int = 0,
                 wait_timeout_s: float = 10.0) -> None:
        self.dsn = dsn
        self.size = size
        self.wait_timeout_s = wait_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.options = "-c default_transaction_read_only=on -c TimeZone=UTC"
        if statement_timeout_ms:
            self.options += f" -c statement_timeout={int(statement_timeout_ms)}"
        self._idle: list[psycopg.AsyncConnection] = []
        self._in_use = 0  # queries holding a slot (for metrics)
        self._waiting = 0  # queries waiting for a slot
        self._limits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def _limit(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self._limits:
            self._limits[loop] = asyncio.Semaphore(self.size)
        return self._limits[loop]

    async def _connect(self) -> psycopg.AsyncConnection:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=self.connect_timeout_s,
                options=self.options, application_name="etl-platform-api",
            )
        except psycopg.OperationalError as exc:
            raise WarehouseError(f"cannot connect to the warehouse: {str(exc).strip()}") from exc
        set_json_loads(orjson.loads, conn)
        return conn

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[Row]:
        """Rows of one query; a pooled connection the server has dropped is replaced once."""
        limit = self._limit()
        self._waiting += 1
        try:
            await asyncio.wait_for(limit.acquire(), self.wait_timeout_s)
        except asyncio.TimeoutError:
            raise WarehouseError("no free warehouse connection (pool exhausted)") from None
        finally:
            self._waiting -= 1
        self._in_use += 1
        try:
            for attempt in (0, 1):
                conn = self._idle.pop() if self._idle and attempt == 0 else None
                reused = conn is not None
                conn = conn or await self._connect()
                try:
                    cursor = await conn.execute(sql, params)
                    rows = await cursor.fetchall()
                except psycopg.OperationalError as exc:
                    broken = conn.broken
                    await conn.close()
                    if reused and broken:
                        continue
                    raise WarehouseError(f"warehouse query failed: {str(exc).strip()}") from exc
                except BaseException:
                    await self._release(conn)
                    raise
                await self._release(conn)
                return rows
            raise AssertionError("unreachable")
        finally:
            self._in_use -= 1
            limit.release()

    def stats(self) -> dict[str, int]:
        """Slots in use, queries waiting for one, idle connections, the size (for /metrics)."""
        return {"size": self.size, "in_use": self._in_use, "waiting": self._waiting, "idle": len(self._idle)}

    async def _release(self, conn: psycopg.AsyncConnection) -> None:
        if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE or len(self._idle) >= self.size:
            await conn.close()
        else:
            self._idle.append(conn)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


class Reader:
    """`await query(sql, params)`: rows from the warehouse, read-only (`?` placeholders)."""

    def __init__(self, warehouse: Warehouse, *, pool_size: int = 8, statement_timeout_ms: int = 15000,
                 duckdb_lock_timeout_s: float = 30.0) -> None:
        self.warehouse = warehouse
        self.dialect = warehouse.kind
        self.duckdb_lock_timeout_s = duckdb_lock_timeout_s
        self.pool = (
            AsyncPgPool(warehouse.postgres_dsn, pool_size, statement_timeout_ms=statement_timeout_ms)
            if warehouse.kind == "postgres"
            else None
        )

    async def query(self, sql: str, params: Sequence[Any] = (), *, lock_timeout_s: float | None = None) -> list[Row]:
        if self.pool is not None:
            return await self.pool.fetch(pg_sql(sql), list(params))
        timeout = self.duckdb_lock_timeout_s if lock_timeout_s is None else lock_timeout_s
        return await run_in_threadpool(self._duckdb_query, sql, list(params), timeout)

    def _duckdb_query(self, sql: str, params: list[Any], lock_timeout_s: float) -> list[Row]:
        import duckdb

        if not self.warehouse.duckdb_path.exists():  # nothing loaded yet: empty, and no folder created
            with duckdb.connect(":memory:") as raw:
                return raw.execute(sql, params).fetchall()
        try:
            with self.warehouse.connect(timeout_s=lock_timeout_s) as conn:
                conn.raw.execute("SET TimeZone = 'UTC'")
                return conn.raw.execute(sql, params).fetchall()
        except duckdb.IOException as exc:
            raise WarehouseError(f"cannot open the warehouse: {exc}") from exc

    def pool_stats(self) -> dict[str, int] | None:
        """The PostgreSQL pool's state (None on DuckDB: no pool)."""
        return self.pool.stats() if self.pool is not None else None

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
