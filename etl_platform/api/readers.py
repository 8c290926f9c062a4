"""Which warehouse a tenant's reads go to: its own (`warehouse_url_env` in the tenants file, e.g. a
large tenant moved to a PostgreSQL database or server of its own) or the platform's
(ETL_WAREHOUSE_URL; on DuckDB the tenant's own file beside it), as `warehouse.warehouse_for` says
for loads.

One `Reader` (one connection pool) per warehouse URL, shared by the tenants on it, made on the
first request that needs it. A tenant whose variable is unset gets 503, as an unreachable
warehouse does, with the variable named in the log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from etl_platform.api.db import Reader
from etl_platform.config.registry import Registry
from etl_platform.warehouse import Warehouse, WarehouseError, warehouse_for

log = logging.getLogger(__name__)


class TenantReaders:
    """`for_tenant(id)`: the Reader of the tenant's warehouse; `default` is the platform's."""

    def __init__(self, registry: Registry, default: Reader, make: Callable[[Warehouse], Reader]) -> None:
        self.registry = registry
        self.default = default
        self._make = make
        self._by_url: dict[str, Reader] = {default.warehouse.url: default}
        self._lock = threading.Lock()

    def for_tenant(self, tenant_id: str) -> Reader:
        tenant = self.registry.tenant(tenant_id)
        if not tenant.warehouse_url_env:
            # DuckDB: the tenant's own file (a Reader holds no connection: each query opens the
            # file read-only and closes it, so the tenant's writers are never held up between requests)
            warehouse = self.default.warehouse.for_tenant(tenant_id)
            if warehouse.url == self.default.warehouse.url:
                return self.default
        else:
            try:
                warehouse = warehouse_for(tenant)
            except Exception as exc:  # the variable is unset, or not a warehouse URL
                log.error("tenant %s: no warehouse: %s", tenant_id, exc)
                raise WarehouseError(f"tenant {tenant_id!r}: {exc}") from exc
        with self._lock:
            reader = self._by_url.get(warehouse.url)
            if reader is None:
                reader = self._by_url[warehouse.url] = self._make(warehouse)
        return reader

    @property
    def readers(self) -> list[Reader]:
        """Every Reader made so far (the platform's first)."""
        with self._lock:
            return list(self._by_url.values())

    async def close(self) -> None:
        for reader in self.readers:
            await reader.close()
