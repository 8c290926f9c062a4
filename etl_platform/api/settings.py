"""Read-API settings from the environment (every field names its variable)."""

from __future__ import annotations

import os
from dataclasses import dataclass

ADMIN_KEY_ENV = "ETL_ADMIN_API_KEY"


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be a number, got {raw!r}") from exc
    if value < 0:
        raise ValueError(f"environment variable {name} must not be negative, got {raw!r}")
    return value


def _flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"environment variable {name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class ApiSettings:
    """How the read API behaves; `from_env()` reads the variables named in the comments."""

    rate_limit_per_minute: float = 1200.0  # ETL_API_RATE_LIMIT_PER_MINUTE (0: no limit)
    rate_limit_burst: float = 200.0  # ETL_API_RATE_LIMIT_BURST (default: 10 s worth)
    cors_origins: tuple[str, ...] = ()  # ETL_API_CORS_ORIGINS, comma-separated ('*': any)
    health_require_daemon: bool = False  # ETL_HEALTH_REQUIRE_DAEMON: no/stale heartbeat -> 503
    daemon_max_age_s: float = 300.0  # ETL_HEALTH_DAEMON_MAX_AGE_SECONDS: older heartbeat is stale
    pg_pool_size: int = 8  # ETL_API_PG_POOL_SIZE: pooled PostgreSQL connections
    # ETL_API_PG_TENANT_CONNECTIONS: one tenant's share (0: a quarter of the pool, at most half the CPUs)
    pg_tenant_connections: int = 0
    statement_timeout_ms: int = 15000  # ETL_API_STATEMENT_TIMEOUT_MS: longest query (/stats); 0: no limit
    data_timeout_ms: int = 5000  # ETL_API_DATA_TIMEOUT_MS: longest /data query (then 504); 0: no limit
    duckdb_lock_timeout_s: float = 30.0  # ETL_API_DUCKDB_LOCK_TIMEOUT_SECONDS: wait for a writer
    max_header_bytes: int = 16384  # ETL_API_MAX_HEADER_BYTES: request line + headers; larger: 400, connection closed

    @classmethod
    def from_env(cls) -> ApiSettings:
        per_minute = _number("ETL_API_RATE_LIMIT_PER_MINUTE", cls.rate_limit_per_minute)
        origins = os.environ.get("ETL_API_CORS_ORIGINS", "")
        return cls(
            rate_limit_per_minute=per_minute,
            rate_limit_burst=_number("ETL_API_RATE_LIMIT_BURST", max(1.0, per_minute / 6)),
            cors_origins=tuple(o.strip() for o in origins.split(",") if o.strip()),
            health_require_daemon=_flag("ETL_HEALTH_REQUIRE_DAEMON"),
            daemon_max_age_s=_number("ETL_HEALTH_DAEMON_MAX_AGE_SECONDS", cls.daemon_max_age_s),
            pg_pool_size=max(1, int(_number("ETL_API_PG_POOL_SIZE", cls.pg_pool_size))),
            pg_tenant_connections=int(_number("ETL_API_PG_TENANT_CONNECTIONS", cls.pg_tenant_connections)),
            statement_timeout_ms=int(_number("ETL_API_STATEMENT_TIMEOUT_MS", cls.statement_timeout_ms)),
            data_timeout_ms=int(_number("ETL_API_DATA_TIMEOUT_MS", cls.data_timeout_ms)),
            duckdb_lock_timeout_s=_number("ETL_API_DUCKDB_LOCK_TIMEOUT_SECONDS", cls.duckdb_lock_timeout_s),
            max_header_bytes=max(1024, int(_number("ETL_API_MAX_HEADER_BYTES", cls.max_header_bytes))),
        )
