"""Structured logs: one JSON object per line, with request id, tenant, run id and partition.

- `JsonFormatter` renders any record: time, level, logger, message (URL secrets redacted), the
  run id, tenant and partition of the run step it was logged in, the fields bound with
  `log_context(...)`, `extra={"fields": {...}}`, and, for Dagster's run logs, job and step
  from the record's Dagster metadata.
- `log_context(tenant=..., partition=...)` binds fields to every record logged inside it (the
  read API binds `request_id`; run steps may bind `tenant` and `partition`).
- `configure_from_env()`: with ETL_LOG_FORMAT=json the `etl_platform` loggers write JSON lines
  to stderr (the Compose stack sets it); otherwise nothing changes, so `dagster dev` stays
  human-readable. The entry points call it (`definitions.py`, `cli.py`'s `main`, the read API's
  app factory, the run coordinator and launchers that dagster.yaml plugs in). Dagster's own run
  logs become JSON through `python_logs` in deploy/dagster.yaml.
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


def configure_from_env(logger_name: str = "etl_platform") -> bool:
    """ETL_LOG_FORMAT=json: JSON lines on stderr for the platform's loggers (idempotent);
    anything else leaves logging alone. True when JSON is on."""
    if log_format() != "json":
        return False
    logger = logging.getLogger(logger_name)
    if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        logger.addHandler(json_handler())
        logger.propagate = False  # the root logger's (human) handlers would print it again
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    return True
