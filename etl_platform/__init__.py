"""etl-platform: multi-tenant ETL on Dagster and dlt."""

__version__ = "0.1.0"
