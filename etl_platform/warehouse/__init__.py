"""The warehouse: DuckDB or PostgreSQL behind one `Warehouse` (dlt destination, SQL, locks), and
the indexes that keep per-partition work O(partition) (`indexes.py`).

The names below are the room's public face: `from etl_platform.warehouse import Warehouse`.
"""

from etl_platform.warehouse.warehouse import (
    Connection,
    Warehouse,
    WarehouseError,
    get_warehouse,
    quote,
    redact_url,
    warehouse_for,
)

__all__ = [
    "Connection",
    "Warehouse",
    "WarehouseError",
    "get_warehouse",
    "quote",
    "redact_url",
    "warehouse_for",
]
