"""Structured logs: one JSON object per line, with request id, tenant, run id and partition.

- `JsonFormatter` renders any record: time, level, logger, message (URL secrets redacted), the
  run id, tenant and partition of the run step it was logged in, the fields bound with
  `log_context(...)`, `extra={"fields": {...}}`, and, for Dagster's run logs, job and step
  from the record's Dagster metadata.
- `log_context(tenant=..., partition=...)` binds fields to every record logged inside it (the
  read API binds `request_id`; run steps may bind `tenant` and `partition`).
- `configure_from_env()`: with ETL_LOG_FORMAT=json the `etl_platform` loggers and Python's
  warnings write JSON lines to stderr (the Compose stack sets it); otherwise only the sensor
  daemon's per-tick chatter moves to DEBUG, so `dg dev` stays human-readable and quiet. The entry
  points call it (`definitions.py`, `cli.py`'s `main`, the read API's app factory, the run
  coordinator and launchers that dagster.yaml plugs in, hence the daemon and the webserver too).
  A run's lines: the jobs' `console` logger (run_logger.py), and Dagster's default console
  logger of runs whose config names none (`JsonConsoleLogger`); Dagster's processes: their
  `--log-format json` flag, or, without it (the daemon under Dagster's Helm chart), the same
  JsonConsoleLogger on their `dagster` logger; a sensor's or schedule's `context.log`: `tick_log(context.log)`.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from etl_platform.config.settings import log_format
from etl_platform.security.redaction import redact_text

_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("etl_log_context", default=None)
_HANDLER_NAME = "etl-json"
# the sensor daemon's lines of every tick, whatever the sensor did: DEBUG (a sensor that acts
# says so itself, and the daemon logs the runs it creates and launches at INFO)
_SENSOR_DAEMON = "dagster.daemon.SensorDaemon"
# the loggers Dagster's processes print their own lines with (the daemon's, the webserver's):
# coloured unless started with --log-format json, which Dagster's Helm chart cannot pass to the
# daemon; with ETL_LOG_FORMAT=json their coloured handlers write JSON lines too
_DAGSTER_PROCESS_LOGGERS = ("dagster", "dagit", "dagster-webserver")
_TICK_CHATTER = ("Checking for new runs for sensor: ", "Sensor ")
_TICK_SKIPPED = " skipped: "
# Dagster tags worth a field of their own
_DAGSTER_TAGS = {"etl/tenant": "tenant", "etl/tenants": "tenants", "dagster/partition": "partition",
                 "etl/attempt": "attempt"}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` to every record logged inside the block (this thread or task)."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _dagster_fields(record: logging.LogRecord) -> dict[str, Any]:
    meta = getattr(record, "dagster_meta", None)
    if not isinstance(meta, dict):
        return {}
    out = {k: meta.get(k) for k in ("run_id", "job_name", "step_key") if meta.get(k)}
    tags = meta.get("job_tags") or {}
    out.update({field: tags[tag] for tag, field in _DAGSTER_TAGS.items() if tags.get(tag)})
    event = meta.get("dagster_event")
    if event is not None and getattr(event, "event_type_value", None):
        out["event"] = event.event_type_value
    return out


def _run_fields() -> dict[str, Any]:
    """Inside a run step: the run id, tenant and partition of Dagster's current context."""
    try:
        # Dagster's current step context has no public accessor; imported here so that logging
        # (the read API's too) needs no Dagster until a record is formatted
        from dagster._core.execution.context.compute import current_execution_context

        context = current_execution_context.get()
        if context is None:
            return {}
        run = context.run
        out: dict[str, Any] = {"run_id": run.run_id}
        out.update({field: run.tags[tag] for tag, field in _DAGSTER_TAGS.items() if run.tags.get(tag)})
        return out
    except Exception:  # noqa: BLE001 - logging never fails for want of context
        return {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the record's context fields."""

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None)
        message = meta.get("orig_message") if isinstance(meta, dict) and meta.get("orig_message") else None
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact_text(message or record.getMessage()),
        }
        out.update(_run_fields())
        out.update(_CONTEXT.get() or {})
        out.update(_dagster_fields(record))
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["error"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


def json_handler(stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.set_name(_HANDLER_NAME)
    return handler


class TickChatterToDebug(logging.Filter):
    """The sensor daemon's "Checking for new runs for sensor: X" and "Sensor X skipped: ..." (two
    INFO lines per sensor and tick) become DEBUG records; the daemon's handlers (INFO) drop them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(_TICK_CHATTER[0]) or (message.startswith(_TICK_CHATTER[1]) and _TICK_SKIPPED in message):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def _json_logger(logger: logging.Logger) -> None:
    if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        logger.addHandler(json_handler())
        logger.propagate = False  # the root logger's (human) handlers would print it again
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


def configure_from_env(logger_name: str = "etl_platform") -> bool:
    """The sensor daemon's tick chatter at DEBUG; with ETL_LOG_FORMAT=json, JSON lines on stderr
    for the platform's loggers and for Python's warnings (idempotent). True when JSON is on."""
    daemon = logging.getLogger(_SENSOR_DAEMON)
    if not any(isinstance(f, TickChatterToDebug) for f in daemon.filters):
        daemon.addFilter(TickChatterToDebug())
    if log_format() != "json":
        return False
    _json_logger(logging.getLogger(logger_name))
    if logging.getLoggerClass() is logging.Logger:
        logging.setLoggerClass(JsonConsoleLogger)
    for name in _DAGSTER_PROCESS_LOGGERS:
        _json_console(logging.getLogger(name))
    logging.captureWarnings(True)  # a warning is a `py.warnings` record: one JSON line, not two text lines
    _json_logger(logging.getLogger("py.warnings"))
    return True


def _json_console(logger: logging.Logger) -> None:
    """`logger` (one that exists already) becomes a JsonConsoleLogger: its coloured handlers, now
    and later, write JSON lines."""
    if type(logger) is logging.Logger:
        logger.__class__ = JsonConsoleLogger
    for handler in logger.handlers:
        _json_formatted(handler)


def _json_formatted(handler: logging.Handler) -> None:
    if type(handler.formatter).__module__.startswith("coloredlogs"):
        handler.setFormatter(JsonFormatter())


class JsonConsoleLogger(logging.Logger):
    """The logger class while ETL_LOG_FORMAT=json: a coloured console handler added to it
    (coloredlogs) writes JSON lines instead. A run whose config names no logger (Dagster's
    implicit asset job: the UI's Materialize, backfills, `dg launch`) gets Dagster's default
    console logger, which Dagster builds from `logging.getLoggerClass()` and coloredlogs; with
    this class its lines are the same JSON lines as the platform jobs' `console` logger's."""

    def addHandler(self, handler: logging.Handler) -> None:  # noqa: N802 - logging's name
        _json_formatted(handler)
        super().addHandler(handler)


def tick_log(log: logging.Logger, **fields: Any) -> logging.Logger:
    """A sensor's or schedule's `context.log` (Dagster's instigation logger): unchanged in text
    mode; with ETL_LOG_FORMAT=json its console copy is a JSON line (with `fields`) instead of
    Dagster's coloured one. The tick's own log, shown in the UI, is kept either way."""
    if log_format() != "json" or any(h.get_name() == _HANDLER_NAME for h in log.handlers):
        return log
    for handler in list(log.handlers):
        # Dagster's console copy (its handler dispatches to a coloured console logger); the
        # tick's captured log handler stays
        if type(handler).__name__ == "DispatchingLogHandler":
            log.removeHandler(handler)
    handler = json_handler()
    handler.setLevel(logging.INFO)
    handler.addFilter(_Fields(fields))
    log.addHandler(handler)
    return log


class _Fields(logging.Filter):
    """Adds fixed `fields` to every record (the sensor's name)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        record.fields = {**self.fields, **(getattr(record, "fields", None) or {})}
        return True
