"""etl-platform: multi-tenant ETL on Dagster and dlt."""

from etl_platform.observability import warnings  # noqa: F401  (first: known Dagster warnings filtered before any asset is declared)

__version__ = "0.1.0"

from etl_platform.observability.logs import configure_from_env as _configure_logs  # noqa: E402

_configure_logs()  # ETL_LOG_FORMAT=json: JSON lines from the platform's loggers
