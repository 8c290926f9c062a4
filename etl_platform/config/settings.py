"""Platform settings read from the environment (one place, typed)."""

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
    )


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
    # load peaked at ~1.3 GB in the loading process (which is also the Dagster step's). dlt's loading
    # connections skip keeping insertion order (raw rows have none; DuckDB then loads Parquet in
    # parallel and streams it with far less memory) and get 64 MB per DuckDB thread (threads = cores,
    # at least 128 MB), beyond which DuckDB spills to disk: on 2 cores a 1M-row load peaked ~110 MB
    # lower than at 256 MB a thread, at the same speed. Override with this variable (JSON of DuckDB
    # settings).
    os.environ.setdefault(
        "DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG",
        f'{{"memory_limit": "{max(128, 64 * (os.cpu_count() or 1))}MB", "preserve_insertion_order": false}}',
    )
