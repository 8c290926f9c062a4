"""Fair use of the API's warehouse connections: `TenantGate.slot(tenant)`.

At most `size` queries run at once, and at most `per_tenant` of them for one tenant. A tenant over
its share waits on its own queue (never in the shared one), so its backlog never delays another
tenant: the shared queue only ever holds one waiter per tenant slot. Per event loop, as asyncio
primitives are (the pool serves one loop per process in production; tests may use several).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from etl_platform.warehouse import WarehouseError


class TenantBusy(WarehouseError):
    """The tenant already runs its share of warehouse queries and waited too long for one (HTTP 429)."""

    def __init__(self, tenant: str, share: int, waited_s: float) -> None:
        super().__init__(f"tenant {tenant!r} already runs {share} warehouse queries at once (its share); "
                         f"waited {waited_s:.1f}s for one to finish")
        self.tenant, self.share = tenant, share


class PoolExhausted(WarehouseError):
    """No warehouse connection freed up within the wait (every slot busy; HTTP 503)."""


@dataclass
class _Queue:
    semaphore: asyncio.Semaphore
    users: int = 0  # holders and waiters: the queue is dropped when none is left


@dataclass
class _LoopState:
    shared: asyncio.Semaphore
    tenants: dict[str, _Queue] = field(default_factory=dict)


class TenantGate:
    """`async with gate.slot(tenant):` a turn on the warehouse; `tenant=None` (health) takes a
    shared slot only. Waiting longer than `wait_timeout_s` raises TenantBusy or PoolExhausted."""

    def __init__(self, size: int, per_tenant: int, wait_timeout_s: float) -> None:
        self.size = size
        self.per_tenant = max(1, min(per_tenant, size))
        self.wait_timeout_s = wait_timeout_s
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
        self.in_use = 0  # slots held now (all loops; for metrics)
        self.waiting = 0  # requests waiting for a slot, in a tenant's queue or the shared one

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState(asyncio.Semaphore(self.size))
        return state

    @asynccontextmanager
    async def slot(self, tenant: str | None) -> AsyncIterator[None]:
        state = self._state()
        started = time.monotonic()
        queue = None
        if tenant is not None:
            queue = state.tenants.get(tenant)
            if queue is None:
                queue = state.tenants[tenant] = _Queue(asyncio.Semaphore(self.per_tenant))
            queue.users += 1
        self.waiting += 1
        waiting = True
        try:
            if queue is not None:
                try:
                    await asyncio.wait_for(queue.semaphore.acquire(), self.wait_timeout_s)
                except asyncio.TimeoutError:
                    raise TenantBusy(tenant or "", self.per_tenant, time.monotonic() - started) from None
            try:
                left = max(0.0, self.wait_timeout_s - (time.monotonic() - started))
                try:
                    await asyncio.wait_for(state.shared.acquire(), left)
                except asyncio.TimeoutError:
                    raise PoolExhausted("no free warehouse connection (pool exhausted)") from None
                self.waiting, self.in_use, waiting = self.waiting - 1, self.in_use + 1, False
                try:
                    yield
                finally:
                    self.in_use -= 1
                    state.shared.release()
            finally:
                if queue is not None:
                    queue.semaphore.release()
        finally:
            if waiting:
                self.waiting -= 1
            if queue is not None:
                queue.users -= 1
                if queue.users == 0:
                    del state.tenants[tenant]
