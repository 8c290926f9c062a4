"""Dagster resources: the warehouse and dlt, configured from the environment."""

from __future__ import annotations

from dagster import ConfigurableResource

from etl_platform.warehouse import Warehouse, get_warehouse


class WarehouseResource(ConfigurableResource):
    """The warehouse the assets write; `url` defaults to ETL_WAREHOUSE_URL at run time."""

    url: str | None = None

    def get(self) -> Warehouse:
        return get_warehouse(self.url)


def platform_resources() -> dict[str, object]:
    return {"warehouse": WarehouseResource()}
