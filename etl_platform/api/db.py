"""Read-only warehouse access for the API: `await reader.query(sql, params, tenant=..., timeout_ms=...)`.

PostgreSQL: a small pool of asynchronous psycopg connections (no thread per query), each tenant
limited to its share of them (`fairness.TenantGate`). DuckDB: a short read-only connection per
query in a worker thread, through `Warehouse.connect()` (shared file lock, so the single writer is
respected). Both: a query past its time limit is cancelled (QueryTimeout), and sessions use the UTC
time zone, so timestamps are read in UTC.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import set_json_loads
from starlette.concurrency import run_in_threadpool

from etl_platform.api.fairness import TenantGate
from etl_platform.warehouse import Warehouse, WarehouseError

Row = tuple[Any, ...]


def pg_sql(sql: str) -> str:
    """`?` placeholders to psycopg's `%s` (as `warehouse.Connection` does)."""
    return re.sub(r"\?(?!\|)", "%s", sql.replace("%", "%%"))


class QueryTimeout(WarehouseError):
    """A query ran longer than its route's limit and was cancelled (HTTP 504)."""

    def __init__(self, timeout_ms: int) -> None:
        super().__init__(f"the query ran longer than {timeout_ms / 1000:g}s and was cancelled")
        self.timeout_ms = timeout_ms


class AsyncPgPool:
    """Autocommit, read-only AsyncConnections; at most `size` in use at once (per event loop), at most
    `per_tenant` of them for one tenant (`TenantGate`). Each query has a statement timeout: its own
    `timeout_ms` or `statement_timeout_ms` (0: none); past it the server cancels it (QueryTimeout)."""

    def __init__(self, dsn: str, size: int = 8, *, connect_timeout_s: int = 5, statement_timeout_ms: int = 0,
                 wait_timeout_s: float = 10.0, per_tenant: int | None = None) -> None:
        self.dsn = dsn
        self.size = size
        self.wait_timeout_s = wait_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_ms = int(statement_timeout_ms)
        # no parallel workers: a query uses one server process, so a tenant's share of connections
        # is also its share of the server's CPUs
        self.options = "-c default_transaction_read_only=on -c TimeZone=UTC -c max_parallel_workers_per_gather=0"
        if statement_timeout_ms:
            self.options += f" -c statement_timeout={int(statement_timeout_ms)}"
        self.gate = TenantGate(size, per_tenant or default_tenant_share(size), wait_timeout_s)
        self._idle: list[psycopg.AsyncConnection] = []
        self._sessions: dict[int, tuple[int, bool]] = {}  # id(connection) -> (statement_timeout ms, indexes_only)

    async def _connect(self) -> psycopg.AsyncConnection:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=self.connect_timeout_s,
                options=self.options, application_name="etl-platform-api",
            )
        except psycopg.OperationalError as exc:
            raise WarehouseError(f"cannot connect to the warehouse: {str(exc).strip()}") from exc
        set_json_loads(orjson.loads, conn)
        self._sessions[id(conn)] = (self.statement_timeout_ms, False)
        return conn

    async def _run(self, conn: psycopg.AsyncConnection, sql: str, params: Sequence[Any], session: tuple[int, bool]
                   ) -> list[Row]:
        if self._sessions.get(id(conn)) != session:  # set only when this connection's kind of query changes
            timeout_ms, indexes_only = session
            await conn.execute(
                "SELECT set_config('statement_timeout', %s, false), set_config('enable_seqscan', %s, false)",
                [str(timeout_ms), "off" if indexes_only else "on"],
            )
            self._sessions[id(conn)] = session
        cursor = await conn.execute(sql, params)
        return await cursor.fetchall()

    async def fetch(self, sql: str, params: Sequence[Any], *, tenant: str | None = None,
                    timeout_ms: int | None = None, indexes_only: bool = False) -> list[Row]:
        """Rows of one query, in `tenant`'s share of the pool (None: a shared slot only); a pooled
        connection the server has dropped is replaced once. `indexes_only`: planned without sequential
        scans (`enable_seqscan` off), for queries built around an index, so that a table the planner has
        no statistics for (never analyzed) is still read through it."""
        session = (self.statement_timeout_ms if timeout_ms is None else int(timeout_ms), indexes_only)
        async with self.gate.slot(tenant):
            for attempt in (0, 1):
                conn = self._idle.pop() if self._idle and attempt == 0 else None
                reused = conn is not None
                conn = conn or await self._connect()
                try:
                    rows = await self._run(conn, sql, params, session)
                except psycopg.errors.QueryCanceled as exc:
                    await self._release(conn)
                    if "statement timeout" not in str(exc):  # cancelled by an administrator
                        raise WarehouseError(f"warehouse query cancelled: {str(exc).strip()}") from exc
                    raise QueryTimeout(session[0]) from exc
                except psycopg.OperationalError as exc:
                    broken = conn.broken
                    await self._close(conn)
                    if reused and broken:
                        continue
                    raise WarehouseError(f"warehouse query failed: {str(exc).strip()}") from exc
                except BaseException:
                    await self._release(conn)
                    raise
                await self._release(conn)
                return rows
            raise AssertionError("unreachable")

    def stats(self) -> dict[str, int]:
        """Slots in use, queries waiting for one (in a tenant's queue or the shared one), idle
        connections, the size, a tenant's share (for /metrics)."""
        return {"size": self.size, "in_use": self.gate.in_use, "waiting": self.gate.waiting,
                "idle": len(self._idle), "tenant_share": self.gate.per_tenant}

    async def _close(self, conn: psycopg.AsyncConnection) -> None:
        self._sessions.pop(id(conn), None)
        await conn.close()

    async def _release(self, conn: psycopg.AsyncConnection) -> None:
        if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE or len(self._idle) >= self.size:
            await self._close(conn)
        else:
            self._idle.append(conn)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._close(conn)


def default_tenant_share(size: int, cpus: int | None = None) -> int:
    """A tenant's default share of `size` connections: a quarter, and no more than half of `cpus`
    (this host's, by default: the database is sized like the API's host), at least one. Each query
    is one busy server process; a tenant holding every core would delay every other tenant's."""
    cpus = cpus or os.cpu_count() or 2
    return max(1, min(size // 4, cpus // 2))


class Reader:
    """`await query(sql, params, tenant=..., timeout_ms=...)`: rows from the warehouse, read-only
    (`?` placeholders). PostgreSQL: in the tenant's share of the pool. Both: bounded by `timeout_ms`
    (default `statement_timeout_ms`), past which the query is cancelled with QueryTimeout."""

    def __init__(self, warehouse: Warehouse, *, pool_size: int = 8, statement_timeout_ms: int = 15000,
                 duckdb_lock_timeout_s: float = 30.0, tenant_connections: int | None = None) -> None:
        self.warehouse = warehouse
        self.dialect = warehouse.kind
        self.duckdb_lock_timeout_s = duckdb_lock_timeout_s
        self.statement_timeout_ms = int(statement_timeout_ms)
        self.pool = (
            AsyncPgPool(warehouse.postgres_dsn, pool_size, statement_timeout_ms=statement_timeout_ms,
                        per_tenant=tenant_connections)
            if warehouse.kind == "postgres"
            else None
        )

    async def query(self, sql: str, params: Sequence[Any] = (), *, tenant: str | None = None,
                    timeout_ms: int | None = None, indexes_only: bool = False,
                    lock_timeout_s: float | None = None) -> list[Row]:
        if self.pool is not None:
            return await self.pool.fetch(pg_sql(sql), list(params), tenant=tenant, timeout_ms=timeout_ms,
                                         indexes_only=indexes_only)
        timeout = self.duckdb_lock_timeout_s if lock_timeout_s is None else lock_timeout_s
        limit_ms = self.statement_timeout_ms if timeout_ms is None else int(timeout_ms)
        return await run_in_threadpool(self._duckdb_query, sql, list(params), timeout, limit_ms)

    def _duckdb_query(self, sql: str, params: list[Any], lock_timeout_s: float, timeout_ms: int) -> list[Row]:
        import duckdb  # the DuckDB driver only where the warehouse is DuckDB (the API mostly reads PostgreSQL)

        if not self.warehouse.duckdb_path.exists():  # nothing loaded yet: empty, and no folder created
            with duckdb.connect(":memory:") as raw:
                return raw.execute(sql, params).fetchall()
        try:
            with self.warehouse.connect(timeout_s=lock_timeout_s) as conn:
                conn.raw.execute("SET TimeZone = 'UTC'")
                return _interrupt_after(conn.raw, timeout_ms, lambda: conn.raw.execute(sql, params).fetchall())
        except duckdb.InterruptException as exc:
            raise QueryTimeout(timeout_ms) from exc
        except duckdb.IOException as exc:
            raise WarehouseError(f"cannot open the warehouse: {exc}") from exc

    def pool_stats(self) -> dict[str, int] | None:
        """The PostgreSQL pool's state (None on DuckDB: no pool)."""
        return self.pool.stats() if self.pool is not None else None

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()


def _interrupt_after(raw: Any, timeout_ms: int, run: Any) -> list[Row]:
    """`run()` on a DuckDB connection, interrupted after `timeout_ms` (0: never)."""
    if not timeout_ms:
        return run()
    timer = threading.Timer(timeout_ms / 1000, raw.interrupt)
    timer.start()
    try:
        return run()
    finally:
        timer.cancel()
