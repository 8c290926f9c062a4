"""What a tenant's failure means: permanent (retrying cannot help: configuration, credentials,
data that will fail the same way again, a limit the tenant went over) or transient (network,
429/5xx, an unreachable database), classified by type along the whole cause chain, with
secrets redacted. Dagster-free: tenants' processes classify their own failures; the run worker,
the retry sensor and the alerts read them back (`runs.failures`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from etl_platform.config import secrets
from etl_platform.config.models import TenantsFileError
from etl_platform.isolation.limits import LimitExceeded
from etl_platform.security.redaction import redact, scrub_exception
from etl_platform.sources.errors import PERMANENT_HTTP_STATUSES, PermanentSourceError

PERMANENT = "permanent"
TRANSIENT = "transient"


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, as Python reports them (`raise … from None` ends the chain)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return seen


def http_status(exc: BaseException) -> int | None:
    for err in _chain(exc):
        response = getattr(err, "response", None)
        status = getattr(response, "status_code", None) or getattr(err, "status", None)
        if isinstance(status, int):
            return status
    return None


def _permanent_types() -> tuple[type[BaseException], ...]:
    """Exception types that fail the same way on every attempt (subclasses included)."""
    # dlt and DuckDB only when a failure is classified: the read API and the exporter import
    # this module too
    import duckdb
    from dlt.common.schema.exceptions import DataValidationError

    return (
        TenantsFileError,  # the tenants file or a secret it names
        # 4xx, bad query, a file that is not a feed (FeedFormatError), CSV configuration
        # (CsvConfigError: unknown encoding, unsupported compression, missing columns, a file not found)
        PermanentSourceError,
        DataValidationError,  # a schema contract (freeze) refused the data
        ValidationError,
        FileNotFoundError,
        UnicodeError,
        LookupError,  # KeyError, an unknown codec
        RecursionError,  # data nested deeper than the parser can follow
        MemoryError,
        LimitExceeded,  # the tenant's memory, deadline or CPU-time limit: the same work needs the same again
        duckdb.OutOfMemoryException,  # DuckDB's memory cap: the same input needs the same memory again
    )


def classify(exc: BaseException) -> str:
    """`permanent` when retrying cannot help (configuration, auth, schema contract, data that
    cannot be read); `transient` otherwise (network, 429/5xx, an unreachable database)."""
    status = http_status(exc)
    if status in PERMANENT_HTTP_STATUSES:
        return PERMANENT
    if status is not None and (status in (408, 429) or status >= 500):
        return TRANSIENT
    permanent = _permanent_types()
    if any(isinstance(err, permanent) for err in _chain(exc)):
        return PERMANENT
    return TRANSIENT


def secrets_of(config: Any) -> list[str]:
    """Secret values the config points at (to scrub them from messages)."""
    values: list[str] = []

    def walk(obj: Any) -> None:
        if hasattr(obj, "model_dump"):
            obj = obj.model_dump()
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key.endswith("_env") and isinstance(value, str) and secrets.value(value):
                    values.append(secrets.value(value))
                else:
                    walk(value)
        elif isinstance(obj, list):
            for item in obj:
                walk(item)

    walk(config)
    return values


def root_message(exc: BaseException, config: Any = None) -> str:
    """The most specific message in the chain (dlt wraps errors several times), redacted:
    remembered secrets, the secrets `config` names, URL user-info and secret query values."""
    chain = _chain(exc)
    for err in reversed(chain):
        text = str(err).strip()
        if text:
            return _redacted(f"{type(err).__name__}: {text}", config)
    return type(exc).__name__


def _redacted(text: str, config: Any) -> str:
    extra = []
    if config is not None and getattr(getattr(config, "auth", None), "location", None) == "query":
        extra.append(config.auth.name)
    return redact(text, secrets_of(config), extra)


@dataclass(frozen=True)
class TenantFailure:
    """One tenant's failure within a run: which source (None: the tenant as a whole, e.g. its
    normalization), permanent or transient, the error class and its redacted message, and the
    partition days it concerned."""

    tenant: str
    source: str | None
    kind: str
    error: str
    message: str
    days: tuple[str, ...] = ()
    http_status: int | None = None

    @property
    def permanent(self) -> bool:
        return self.kind == PERMANENT

    def describe(self) -> str:
        where = f"tenant {self.tenant!r}" + (f", source {self.source!r}" if self.source else "")
        return f"[{self.kind}] {where}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "days": list(self.days)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TenantFailure:
        return cls(**{**data, "days": tuple(data.get("days") or ())})


def tenant_failure(
    exc: BaseException, tenant: str, source: str | None, days: Iterable[Any] = (), *, config: Any = None
) -> TenantFailure:
    """Classify and redact one failure (secrets of `config` and URL secrets removed; `exc`'s
    chain is scrubbed in place as well)."""
    scrub_exception(exc)
    return TenantFailure(
        tenant=tenant,
        source=source,
        kind=classify(exc),
        error=type(_chain(exc)[-1]).__name__,
        message=root_message(exc, config),
        days=tuple(str(getattr(d, "isoformat", lambda d=d: d)()) for d in days),
        http_status=http_status(exc),
    )
