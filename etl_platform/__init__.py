"""etl-platform: multi-tenant ETL on Dagster and dlt."""

from etl_platform import quiet  # noqa: F401  (first: known Dagster warnings filtered before any asset is declared)

__version__ = "0.1.0"
