"""The environment of tenants' processes: what the platform needs, and one tenant's secrets.

The fork server starts with the platform's own settings and the system's basics only: no
tenant's secret, no tenant's read-API key, no admin key, no alert channel, no Dagster storage
password (children never touch Dagster's storage). Each child then gets the variables its own
tenant's sources and warehouse name (`*_env` fields), and nothing of any other tenant.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

# Kept by name: what Python, TLS, proxies and the locale need.
SYSTEM = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
        "PYTHONPATH", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PYTHONIOENCODING",
        "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
        "DAGSTER_HOME",
        # libpq's own variables: the platform's warehouse may rely on them
        "PGPASSWORD", "PGPASSFILE", "PGUSER", "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGSERVICE",
        "PGSERVICEFILE", "PGSSLKEY", "PGSSLCERT", "PGSSLROOTCERT", "PGSSLMODE",
    }
)  # fmt: skip
# Kept by prefix: the platform's settings and dlt's configuration (its warehouse credentials).
PREFIXES = ("ETL_", "RUNTIME__", "NORMALIZE__", "DATA_WRITER__", "LOAD__", "EXTRACT__", "DESTINATION__", "DLT_", "LC_")
# Platform secrets a tenant's work never needs (they serve the API, alerts and metrics).
PLATFORM_SECRETS = frozenset(
    {
        "ETL_ADMIN_API_KEY", "ETL_ALERT_WEBHOOK_URL", "ETL_ALERT_SLACK_WEBHOOK_URL", "ETL_ALERT_SMTP_URL",
        "ETL_METRICS_TOKEN", "ETL_EXPORTER_TOKEN",
    }
)  # fmt: skip


def env_fields(value: Any) -> Iterator[str]:
    """The variable names of every `*_env` field in a dumped configuration."""
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith("_env") and isinstance(item, str):
                yield item
            else:
                yield from env_fields(item)
    elif isinstance(value, list):
        for item in value:
            yield from env_fields(item)


def tenant_secret_names(tenant: Any) -> set[str]:
    """What one tenant's loading reads: its sources' `*_env` and its `warehouse_url_env` (not
    its read-API key or alert channels, which serve the API and the daemon)."""
    names = {n for source in tenant.sources for n in env_fields(source)}
    if getattr(tenant, "warehouse_url_env", None):
        names.add(tenant.warehouse_url_env)
    return names


def platform_environment(environ: Mapping[str, str], tenants: Iterable[Any]) -> dict[str, str]:
    """The fork server's environment: the platform's settings and the system's basics, without
    any variable a tenant names (`*_env`) and without the platform's own secrets."""
    named = {n for tenant in tenants for n in env_fields(tenant)}
    out = {}
    for name, value in environ.items():
        if name in named or name in PLATFORM_SECRETS:
            continue
        if name in SYSTEM or name.startswith(PREFIXES):
            out[name] = value
    return out


def tenant_secrets(environ: Mapping[str, str], tenant: Any) -> dict[str, str]:
    """The values of the tenant's own secrets that are set."""
    return {n: environ[n] for n in sorted(tenant_secret_names(tenant)) if n in environ}
