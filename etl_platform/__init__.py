"""etl-platform: multi-tenant ETL on Dagster and dlt."""

__version__ = "0.1.0"

from etl_platform.observability.logs import configure_from_env as _configure_logs  # noqa: E402

_configure_logs()  # ETL_LOG_FORMAT=json: JSON lines from the platform's loggers
