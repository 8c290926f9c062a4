"""Classify load errors as permanent (bad config, auth, schema contract) or transient,
and turn them into Dagster failures with secrets redacted."""

from __future__ import annotations

from typing import Any

from dagster import Failure, MetadataValue

from etl_platform.config.tenants import TenantsFileError
from etl_platform.sources.redact import redact_text

PERMANENT = "permanent"
TRANSIENT = "transient"
ERROR_KIND_KEY = "etl/error_kind"
PERMANENT_HTTP_STATUSES = {400, 401, 403, 404, 405, 410, 422}


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def http_status(exc: BaseException) -> int | None:
    for err in _chain(exc):
        response = getattr(err, "response", None)
        status = getattr(response, "status_code", None) or getattr(err, "status", None)
        if isinstance(status, int):
            return status
    return None


def classify(exc: BaseException) -> str:
    """`permanent` when retrying cannot help: bad config, auth, schema contract violation."""
    names = {type(e).__name__ for e in _chain(exc)}
    if names & {
        "TenantsFileError",
        "PermanentSourceError",
        "DataValidationError",
        "ValidationError",
        "KeyError",
        "FileNotFoundError",
        "UnicodeDecodeError",
    }:
        return PERMANENT
    if any(isinstance(e, (TenantsFileError, ValueError)) and "environment variable" in str(e) for e in _chain(exc)):
        return PERMANENT
    status = http_status(exc)
    if status in PERMANENT_HTTP_STATUSES:
        return PERMANENT
    return TRANSIENT


def _secrets_of(config: Any) -> list[str]:
    """Secret values the config points at (to scrub them from messages)."""
    import os

    values: list[str] = []

    def walk(obj: Any) -> None:
        if hasattr(obj, "model_dump"):
            obj = obj.model_dump()
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key.endswith("_env") and isinstance(value, str) and os.environ.get(value):
                    values.append(os.environ[value])
                else:
                    walk(value)
        elif isinstance(obj, list):
            for item in obj:
                walk(item)

    walk(config)
    return values


def root_message(exc: BaseException) -> str:
    """The most specific message in the chain (dlt wraps errors several times)."""
    chain = _chain(exc)
    for err in reversed(chain):
        text = str(err).strip()
        if text:
            return f"{type(err).__name__}: {text}"
    return type(exc).__name__


def failure_for(exc: BaseException, tenant: str, source: str, *, permanent: bool, config: Any = None) -> Failure:
    """A Dagster Failure naming tenant and source, classified, secrets redacted.
    Permanent failures skip step retries (allow_retries=False)."""
    extra = []
    if config is not None and getattr(getattr(config, "auth", None), "location", None) == "query":
        extra.append(config.auth.name)
    message = redact_text(root_message(exc), _secrets_of(config), extra)
    status = http_status(exc)
    kind = PERMANENT if permanent else TRANSIENT
    return Failure(
        description=f"[{kind}] tenant {tenant!r}, source {source!r}: {message}",
        metadata={
            ERROR_KIND_KEY: MetadataValue.text(kind),
            "tenant": MetadataValue.text(tenant),
            "source": MetadataValue.text(source),
            **({"http_status": MetadataValue.int(status)} if status else {}),
        },
        allow_retries=not permanent,
    )
