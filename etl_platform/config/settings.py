"""Every setting of the platform read from the environment, in one place: each with its variable,
default and meaning.

- `get_settings()`: the platform's core (tenants file, warehouse, partitions, schedules, retries,
  leases, chunks, the dead-run sweep);
- `ApiSettings.from_env()`: the read API;
- `AlertSettings.from_env()`: failure alerts (the channels' URLs are secrets: `secrets.py`);
- `exporter_lookback_hours()`, `exporter_refresh_s()`, `log_format()`, `listen_address()`,
  `github_max_rate_limit_wait_s()`, `platform_variables()`: operations;
- `apply_dlt_defaults()`: dlt's configuration for the platform.

Settings are read when used, never at import. Secret values (read by the variable name the
configuration gives) are `secrets.py`'s.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path


def project_root() -> Path:
    """The folder holding the tenants file and dagster.yaml: DAGSTER_HOME, else cwd."""
    home = os.environ.get("DAGSTER_HOME")
    return Path(home) if home else Path.cwd()


@dataclass(frozen=True)
class Settings:
    """Environment-driven settings; every field documents its variable."""

    tenants_file: Path  # ETL_TENANTS_FILE
    warehouse_url: str  # ETL_WAREHOUSE_URL
    start_date: dt.date  # ETL_START_DATE (first daily partition)
    timezone: str  # ETL_TIMEZONE (schedules, partition days)
    late_data_hours: int  # ETL_LATE_DATA_HOURS: hours after midnight that also refresh yesterday
    rebackfill_days: int  # ETL_REBACKFILL_DAYS: days the daily re-backfill covers
    retry_max_attempts: int  # ETL_RETRY_MAX_ATTEMPTS
    retry_base_delay_s: int  # ETL_RETRY_BASE_DELAY_SECONDS
    retry_max_delay_s: int  # ETL_RETRY_MAX_DELAY_SECONDS
    retry_sensor_interval_s: int  # ETL_RETRY_SENSOR_INTERVAL_SECONDS (read when definitions load)
    step_retries: int  # ETL_STEP_RETRIES: in-run retries of a step after a transient error
    step_retry_delay_s: int  # ETL_STEP_RETRY_DELAY_SECONDS: first step retry delay (doubling)
    tenant_lease_timeout_s: int  # ETL_TENANT_LEASE_TIMEOUT_SECONDS: wait for a tenant busy in another run
    chunk_size: int  # ETL_CHUNK_SIZE: tenants per scheduled run
    # ETL_DEAD_RUN_GRACE_SECONDS: a started run younger than this may not have recorded its worker yet
    dead_run_grace_s: int
    dead_run_sensor_interval_s: int  # ETL_DEAD_RUN_SENSOR_INTERVAL_SECONDS (read when definitions load)
    hourly_cron: str  # ETL_HOURLY_CRON: the hourly ingest (default "0 * * * *")
    rebackfill_cron: str  # ETL_REBACKFILL_CRON: the daily re-backfill (default "30 2 * * *")
    freshness_cron: str  # ETL_FRESHNESS_CRON: the tenant freshness check (default "45 * * * *")
    # each tenant's process in a run (a tenant's own `limits:` in the tenants file wins)
    tenant_memory_mb: int  # ETL_TENANT_MEMORY_LIMIT_MB: resident memory
    tenant_deadline_minutes: float  # ETL_TENANT_DEADLINE_MINUTES: wall-clock time of its work in one run
    tenant_cpu_minutes: float  # ETL_TENANT_CPU_MINUTES: CPU time (all its threads) in one run
    retention_days: int  # ETL_RETENTION_DAYS: runs and events older than this are purged (0: never)
    retention_cron: str  # ETL_RETENTION_CRON: when the daily purge runs
    retention_batch_size: int  # ETL_RETENTION_BATCH_SIZE: rows per delete statement of the purge
    normalize_memory_mb: int | None  # ETL_NORMALIZE_MEMORY_MB: DuckDB's cap in a normalization (0: none)
    duckdb_tenant_files: bool  # ETL_DUCKDB_TENANT_FILES: a DuckDB file per tenant (default true)
    duckdb_temp_dir: Path | None  # ETL_DUCKDB_TEMP_DIR: DuckDB's spill folder (default: `tmp` by the warehouse file)

    @property
    def data_dir(self) -> Path:
        return project_root() / "data"

    @property
    def cache_dir(self) -> Path:
        """ETL_CACHE_DIR: the compiled tenants file (default `data/cache`)."""
        return Path(os.environ.get("ETL_CACHE_DIR") or self.data_dir / "cache")


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from exc


def _positive(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"environment variable {name} must be a positive number, got {raw!r}")
    return value


def get_settings() -> Settings:
    """Read settings now (not cached: tests and the CLI change the environment)."""
    root = project_root()
    local = Path.cwd() / "tenants.yaml"
    tenants_file = Path(os.environ.get("ETL_TENANTS_FILE") or (local if local.exists() else root / "tenants.yaml"))
    default_db = root / "data" / "warehouse.duckdb"
    start_raw = os.environ.get("ETL_START_DATE", "2024-01-01")
    try:
        start_date = dt.date.fromisoformat(start_raw)
    except ValueError as exc:
        raise ValueError(f"ETL_START_DATE must be YYYY-MM-DD, got {start_raw!r}") from exc
    return Settings(
        tenants_file=tenants_file,
        warehouse_url=os.environ.get("ETL_WAREHOUSE_URL") or f"duckdb:///{default_db}",
        start_date=start_date,
        timezone=os.environ.get("ETL_TIMEZONE", "UTC"),
        late_data_hours=_int("ETL_LATE_DATA_HOURS", 3),
        rebackfill_days=_int("ETL_REBACKFILL_DAYS", 7),
        retry_max_attempts=_int("ETL_RETRY_MAX_ATTEMPTS", 3),
        retry_base_delay_s=_int("ETL_RETRY_BASE_DELAY_SECONDS", 300),
        retry_max_delay_s=_int("ETL_RETRY_MAX_DELAY_SECONDS", 1800),
        retry_sensor_interval_s=_int("ETL_RETRY_SENSOR_INTERVAL_SECONDS", 30),
        step_retries=_int("ETL_STEP_RETRIES", 2),
        step_retry_delay_s=_int("ETL_STEP_RETRY_DELAY_SECONDS", 5),
        tenant_lease_timeout_s=_int("ETL_TENANT_LEASE_TIMEOUT_SECONDS", 1800),
        chunk_size=max(1, _int("ETL_CHUNK_SIZE", 50)),
        dead_run_grace_s=_int("ETL_DEAD_RUN_GRACE_SECONDS", 30),
        dead_run_sensor_interval_s=_int("ETL_DEAD_RUN_SENSOR_INTERVAL_SECONDS", 30),
        hourly_cron=os.environ.get("ETL_HOURLY_CRON", "0 * * * *"),
        rebackfill_cron=os.environ.get("ETL_REBACKFILL_CRON", "30 2 * * *"),
        freshness_cron=os.environ.get("ETL_FRESHNESS_CRON", "45 * * * *"),
        tenant_memory_mb=max(64, _int("ETL_TENANT_MEMORY_LIMIT_MB", 2048)),
        tenant_deadline_minutes=_positive("ETL_TENANT_DEADLINE_MINUTES", 15),
        tenant_cpu_minutes=_positive("ETL_TENANT_CPU_MINUTES", 30),
        retention_days=_int("ETL_RETENTION_DAYS", 30),
        retention_cron=os.environ.get("ETL_RETENTION_CRON") or "0 3 * * *",
        retention_batch_size=max(1, _int("ETL_RETENTION_BATCH_SIZE", 1000)),
        normalize_memory_mb=max(64, _int("ETL_NORMALIZE_MEMORY_MB", 448)) if _int("ETL_NORMALIZE_MEMORY_MB", 448) else None,
        duckdb_tenant_files=(os.environ.get("ETL_DUCKDB_TENANT_FILES") or "true").strip().lower()
        not in ("0", "false", "no", "off"),
        duckdb_temp_dir=Path(os.environ["ETL_DUCKDB_TEMP_DIR"]) if os.environ.get("ETL_DUCKDB_TEMP_DIR") else None,
    )


# --- the read API -------------------------------------------------------------------------------

ADMIN_KEY_ENV = "ETL_ADMIN_API_KEY"  # the read API's admin key (/admin/stats, every tenant): a secret
# optional bearer tokens (secrets) of the read API's GET /metrics and of the platform exporter:
# when set, a scrape without `Authorization: Bearer <token>` gets 401
METRICS_TOKEN_ENV = "ETL_METRICS_TOKEN"
EXPORTER_TOKEN_ENV = "ETL_EXPORTER_TOKEN"


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
    health_rate_per_s: float = 10.0  # ETL_HEALTH_RATE_LIMIT_PER_SECOND: anonymous /health per client address (0: off)
    health_burst: float = 20.0  # ETL_HEALTH_RATE_LIMIT_BURST
    health_cache_s: float = 1.5  # ETL_HEALTH_CACHE_SECONDS: one check of the components serves callers this long

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
            health_rate_per_s=_number("ETL_HEALTH_RATE_LIMIT_PER_SECOND", cls.health_rate_per_s),
            health_burst=_number("ETL_HEALTH_RATE_LIMIT_BURST", cls.health_burst),
            health_cache_s=_number("ETL_HEALTH_CACHE_SECONDS", cls.health_cache_s),
        )


# --- failure alerts -------------------------------------------------------------------------------

# The platform-wide default channels (every tenant's, unless its `alerts:` opts out). Their URLs
# are secrets: a channel names its variable, and the value is read when an alert is sent
# (`secrets.value`).
ALERT_WEBHOOK_ENV = "ETL_ALERT_WEBHOOK_URL"  # a generic JSON webhook
ALERT_SLACK_ENV = "ETL_ALERT_SLACK_WEBHOOK_URL"  # a Slack incoming webhook
ALERT_SMTP_URL_ENV = "ETL_ALERT_SMTP_URL"  # smtp://, smtp+starttls:// or smtps://[user:password@]host[:port]


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be a number of seconds, got {raw!r}") from exc


@dataclass(frozen=True)
class AlertSettings:
    """How failure alerts behave; `from_env()` reads the variables named in the comments."""

    lookback_s: float = 3600.0  # ETL_ALERT_LOOKBACK_SECONDS: the first tick reads finished runs this far back
    # ETL_ALERT_RETRY_GRACE_SECONDS: a failed run the retry sensor left undecided this long past its
    # retry delay alerts anyway
    retry_grace_s: float = 900.0
    max_pending_s: float = 24 * 3600.0  # ETL_ALERT_MAX_PENDING_SECONDS: an undeliverable alert is dropped after
    ui_url: str = "http://127.0.0.1:3000"  # ETL_DAGSTER_UI_URL: the Dagster UI in alert links
    email_from: str = "etl-platform@localhost"  # ETL_ALERT_EMAIL_FROM: the sender of alert e-mails
    email_to: tuple[str, ...] = ()  # ETL_ALERT_EMAIL_TO: the platform's recipients, comma-separated

    @classmethod
    def from_env(cls) -> AlertSettings:
        return cls(
            lookback_s=_seconds("ETL_ALERT_LOOKBACK_SECONDS", cls.lookback_s),
            retry_grace_s=_seconds("ETL_ALERT_RETRY_GRACE_SECONDS", cls.retry_grace_s),
            max_pending_s=_seconds("ETL_ALERT_MAX_PENDING_SECONDS", cls.max_pending_s),
            ui_url=(os.environ.get("ETL_DAGSTER_UI_URL") or cls.ui_url).rstrip("/"),
            email_from=os.environ.get("ETL_ALERT_EMAIL_FROM") or cls.email_from,
            email_to=tuple(a.strip() for a in (os.environ.get("ETL_ALERT_EMAIL_TO") or "").split(",") if a.strip()),
        )


# --- operations ---------------------------------------------------------------------------------

# ETL_* variables that describe the container they are set in, not the platform: not forwarded to
# a run's container
CONTAINER_VARIABLES = frozenset({"ETL_ROLE", "ETL_API_PORT"})


def platform_variables() -> set[str]:
    """Names of the ETL_* settings set in this process (the run launcher forwards them to every
    run's container), those describing this container aside."""
    return {n for n in os.environ if n.startswith("ETL_") and n not in CONTAINER_VARIABLES}


def log_format() -> str:
    """ETL_LOG_FORMAT: `json` (JSON lines from the platform's loggers) or `text` (the default)."""
    value = (os.environ.get("ETL_LOG_FORMAT") or "text").strip().lower()
    if value not in ("json", "text"):
        raise ValueError(f"environment variable ETL_LOG_FORMAT must be json or text, got {value!r}")
    return value


def listen_address(prefix: str, port: int) -> tuple[str, int]:
    """<prefix>_HOST and <prefix>_PORT (ETL_API_*: the read API, ETL_EXPORTER_*: the metrics
    exporter), else 127.0.0.1 and `port`."""
    return os.environ.get(f"{prefix}_HOST", "127.0.0.1"), int(os.environ.get(f"{prefix}_PORT", str(port)))


def exporter_lookback_hours() -> float | None:
    """ETL_EXPORTER_LOOKBACK_HOURS: how far back the exporter's first refresh reads (unset: the
    longest freshness window + 1 h, at least 25 h)."""
    raw = os.environ.get("ETL_EXPORTER_LOOKBACK_HOURS", "").strip()
    return float(raw) if raw else None


def exporter_refresh_s() -> float:
    """ETL_EXPORTER_REFRESH_SECONDS: seconds between the exporter's refreshes (default 15)."""
    return float(os.environ.get("ETL_EXPORTER_REFRESH_SECONDS", "15"))


GITHUB_MAX_WAIT_ENV = "ETL_GITHUB_MAX_RATE_LIMIT_WAIT_SECONDS"


def github_max_rate_limit_wait_s() -> float:
    """ETL_GITHUB_MAX_RATE_LIMIT_WAIT_SECONDS: the longest wait for GitHub's rate-limit reset
    before a load fails (default 900)."""
    return float(os.environ.get(GITHUB_MAX_WAIT_ENV) or 900.0)


# --- dlt's configuration ---------------------------------------------------------------------


def apply_dlt_defaults() -> None:
    """dlt's configuration for the platform, where the environment does not set it already
    (idempotent). Called where a dlt destination is made (`Warehouse.dlt_destination`), before
    any pipeline of the process runs; dlt reads these variables when a pipeline starts and loads."""
    os.environ.setdefault("DLT_TELEMETRY_DISABLED", "1")
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    # Arrow/Parquet loads (CSV) get the _dlt_load_id column JSON loads have (the normalizer and
    # the stale-row sweep rely on it; dlt's extract step writes it), but no random _dlt_id per row:
    # nothing reads it, and making it would make dlt rewrite every Parquet file it could just link
    # (and, on PostgreSQL, keep a unique index over 1M random strings per million rows).
    os.environ.setdefault("NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID", "true")
    os.environ.setdefault("NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_ID", "false")
    os.environ.setdefault("NORMALIZE__DATA_WRITER__DISABLE_COMPRESSION", "true")
    # The same for the Parquet files Arrow rows (CSV) are extracted to: Snappy costs ~25% of the
    # extract step of a large CSV and saves nothing worth having on a local, deleted-after-load file.
    os.environ.setdefault("DATA_WRITER__COMPRESSION", "none")
    os.environ.setdefault("LOAD__DELETE_COMPLETED_JOBS", "true")
    # DuckDB takes up to 80% of RAM by default and keeps what it read and wrote cached: a 1M-row CSV
    # load peaked at ~1.3 GB in the loading process. dlt's loading connections skip keeping
    # insertion order (raw rows have none; DuckDB then loads Parquet in parallel and streams it with
    # far less memory) and get `duckdb_load_memory_mb()`, beyond which DuckDB spills to disk.
    # Override with this variable (JSON of DuckDB settings).
    if "DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG" not in os.environ:  # worked out once
        os.environ["DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG"] = (
            f'{{"memory_limit": "{duckdb_load_memory_mb()}MB", "preserve_insertion_order": false}}'
        )


def duckdb_load_memory_mb() -> int:
    """DuckDB's memory in a load: 128 MB per CPU this process may run on, at least 256 MB and at
    most a quarter of a tenant's memory limit (the tenant's process holds its own ~250 MB besides).

    Each DuckDB thread builds its own row group (~55 MB for the benchmark's rows): on 2 cores the
    1M-row insert took 3.5 s at 128 MB and 2.8 s from 192 MB up, and the tenant's process peaked
    at ~485 MB at 256 MB (benchmarks/RESULTS.md)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(256, min(128 * cpus, get_settings().tenant_memory_mb // 4))


# --- bounded input (what one source may send) ----------------------------------------------------

MIB = 1 << 20
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"  # the demo's files, shipped in the package


@dataclass(frozen=True)
class InputLimits:
    """What one source may send before it is refused (a permanent error naming the setting);
    `from_env()` reads the variables named in the comments."""

    page_bytes: int = 64 * MIB  # ETL_MAX_PAGE_BYTES: one API page, after decompression
    file_bytes: int = 1024 * MIB  # ETL_MAX_FILE_BYTES: one CSV file, after decompression
    feed_bytes: int = 64 * MIB  # ETL_MAX_FEED_BYTES: one RSS/Atom document, after decompression
    csv_field_bytes: int = 16 * MIB  # ETL_MAX_CSV_FIELD_BYTES: one CSV field (and one physical line)
    json_depth: int = 512  # ETL_MAX_JSON_DEPTH: nesting of an API page ([ and {), counted before any parse
    request_deadline_s: float = 300.0  # ETL_HTTP_REQUEST_DEADLINE_S: one HTTP request, body included

    @classmethod
    def from_env(cls) -> InputLimits:
        return cls(
            page_bytes=int(_positive("ETL_MAX_PAGE_BYTES", cls.page_bytes)),
            file_bytes=int(_positive("ETL_MAX_FILE_BYTES", cls.file_bytes)),
            feed_bytes=int(_positive("ETL_MAX_FEED_BYTES", cls.feed_bytes)),
            csv_field_bytes=int(_positive("ETL_MAX_CSV_FIELD_BYTES", cls.csv_field_bytes)),
            json_depth=int(_positive("ETL_MAX_JSON_DEPTH", cls.json_depth)),
            request_deadline_s=_positive("ETL_HTTP_REQUEST_DEADLINE_S", cls.request_deadline_s),
        )


def data_roots() -> tuple[Path, ...]:
    """ETL_DATA_ROOT: the folders local CSV files and feeds may be read from, separated by ':'
    (default `$DAGSTER_HOME/data/files`), resolved; the demo's samples folder is always one."""
    raw = os.environ.get("ETL_DATA_ROOT", "").strip()
    roots = [Path(p) for p in raw.split(os.pathsep) if p.strip()] if raw else [project_root() / "data" / "files"]
    return tuple(dict.fromkeys(p.expanduser().resolve() for p in [*roots, SAMPLES_DIR]))
