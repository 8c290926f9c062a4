"""What the tenants file may not hold: credentials.

The operator writes the tenants file, but it is configuration, kept in git and shown in
listings: a secret in it would be persisted everywhere the configuration goes. So a secret
comes only through an environment variable named by a `*_env` field, and these are refused:

- credentials in a URL: user-info (`user:pass@`, `token@`, `:password@`) or a query parameter
  named like a key, token, secret, password or signature;
- literal `Authorization`, `Cookie` or API-key-like headers, and key/token/secret/password-like
  params, in a REST source (they belong in `auth`, which reads them from `*_env`);
- `*_env` names of the platform's own secrets (the admin key, the warehouse and Dagster
  databases, any `ETL_*` or `DAGSTER_*` setting): a source would send them to its API;
- one tenant's read-API key variable (`api_key_env`) used by another tenant; a read-API key or
  warehouse URL variable (`warehouse_url_env`) read by any source (`env_conflicts`, checked
  across the whole file by the registry).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from etl_platform.config.settings import ADMIN_KEY_ENV
from etl_platform.security.redaction import is_secret_name

SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
HEADERS_REFUSED = {"authorization", "proxy-authorization", "cookie", "set-cookie"}
# libpq's own variables (a PostgreSQL client reads them without being asked)
LIBPQ = {
    "PGPASSWORD", "PGPASSFILE", "PGUSER", "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGSERVICE",
    "PGSERVICEFILE", "PGSSLKEY", "PGSSLCERT", "PGSSLROOTCERT", "PGSSLPASSWORD", "DATABASE_URL",
}  # fmt: skip
PLATFORM_PREFIXES = ("ETL_", "DAGSTER_", "POSTGRES_", "DESTINATION__", "CREDENTIALS__")
TENANT_KEY = re.compile(r"^ETL_[A-Z0-9_]+_API_KEY$")  # e.g. ETL_DEMO_API_KEY: a tenant's read-API key


def url_credentials(value: str) -> str | None:
    """Why `value` (a URL, or a local path) carries a credential, or None."""
    if not SCHEME.match(value):
        return None
    parts = urlsplit(value)
    if "@" in parts.netloc:
        return "must not embed credentials (user:password@ or token@); use auth with *_env fields"
    names = sorted({name for name, _ in parse_qsl(parts.query, keep_blank_values=True) if is_secret_name(name)})
    if names:
        return f"query parameter(s) {names} would hold a literal credential; use auth with *_env fields"
    return None


def path_credentials(path: str) -> str | None:
    """Why a REST resource path (which may carry a query string) holds a credential, or None."""
    if "?" not in path:
        return None
    query = path.split("?", 1)[1]
    names = sorted({name for name, _ in parse_qsl(query, keep_blank_values=True) if is_secret_name(name)})
    if names:
        return f"query parameter(s) {names} would hold a literal credential; use auth (type api_key, location query)"
    return None


def header_credentials(headers: dict[str, str]) -> str | None:
    """Why literal request headers hold a credential, or None."""
    names = sorted(n for n in headers if n.lower() in HEADERS_REFUSED or is_secret_name(n))
    if names:
        return (
            f"header(s) {names} would hold a literal credential; use auth (bearer, http_basic, "
            "or api_key with location header) with *_env fields"
        )
    return None


def param_credentials(params: dict[str, Any]) -> str | None:
    """Why literal query params hold a credential, or None."""
    names = sorted(str(n) for n in params if is_secret_name(str(n)))
    if names:
        return f"param(s) {names} would hold a literal credential; use auth (type api_key, location query)"
    return None


def platform_env(name: str) -> bool:
    """Whether `name` is one of the platform's own variables (settings and secrets)."""
    return name in LIBPQ or name.startswith(PLATFORM_PREFIXES)


def source_env_refusal(name: str) -> str | None:
    """Why a source's credential field may not read `name`, or None."""
    if platform_env(name):
        return (
            f"{name} is one of the platform's own variables (ETL_*, DAGSTER_*, POSTGRES_*, PG*): a source "
            "would send it to its API; name a variable of the tenant's own"
        )
    return None


def api_key_env_refusal(name: str) -> str | None:
    """Why a tenant's read-API key may not be `name`, or None (ETL_<X>_API_KEY is allowed)."""
    if name == ADMIN_KEY_ENV:
        return f"{name} is the admin key; a tenant needs a key of its own"
    if platform_env(name) and not TENANT_KEY.match(name):
        return f"{name} is one of the platform's own variables; name a variable holding this tenant's key"
    return None


def _env_fields(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if str(key).endswith("_env") and isinstance(item, str):
                yield where, item
            else:
                yield from _env_fields(item, where)
    elif isinstance(value, list):
        for item in value:
            yield from _env_fields(item, path)


def env_conflicts(tenants: Iterable[Any]) -> list[str]:
    """Across the file: a tenant's `api_key_env` used by another tenant; a tenant's read-API key
    or warehouse URL variable read by any source."""
    errors: list[str] = []
    tenants = list(tenants)
    owners: dict[str, str] = {}
    warehouses = {t.warehouse_url_env: t.id for t in tenants if getattr(t, "warehouse_url_env", None)}
    for tenant in tenants:
        if tenant.api_key_env is None:
            continue
        first = owners.setdefault(tenant.api_key_env, tenant.id)
        if first != tenant.id:
            errors.append(
                f"tenant {tenant.id!r}, field 'api_key_env': {tenant.api_key_env} is already tenant {first!r}'s "
                "read-API key; every tenant needs a key of its own"
            )
    for tenant in tenants:
        for source in tenant.sources:
            for field, name in _env_fields(source.model_dump(exclude_none=True)):
                if name in owners:
                    errors.append(
                        f"tenant {tenant.id!r}, source {source.name!r}, field {field!r}: {name} is tenant "
                        f"{owners[name]!r}'s read-API key (api_key_env); a source may not send it to its API"
                    )
                elif name in warehouses:
                    errors.append(
                        f"tenant {tenant.id!r}, source {source.name!r}, field {field!r}: {name} is tenant "
                        f"{warehouses[name]!r}'s warehouse URL (warehouse_url_env); a source may not send it to its API"
                    )
    return errors


def allowed_host_refusal(entry: str) -> str | None:
    """Why an `allowed_hosts` entry is not an origin (`host`, `host:port`, `https://host[:port]`)."""
    url = entry if SCHEME.match(entry) else f"https://{entry}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"{entry!r} is not a host[:port] or scheme://host[:port] ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{entry!r}: only http and https origins"
    if "@" in parts.netloc:
        return f"{entry!r} must not embed credentials"
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{entry!r} is not a host[:port] or scheme://host[:port] (no path or query)"
    return None
