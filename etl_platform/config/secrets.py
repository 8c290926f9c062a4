"""Secret values, read from the environment by the variable name the configuration gives: the
tenants file's `*_env` fields (sources' credentials, read-API keys, `warehouse_url_env`, alert
channels), the platform's alert channels and admin key, libpq's PGPASSWORD.

Besides `settings.py`, the only reader of the environment. Values are read when used and never
kept in configuration, cursors or logs (whoever reads a secret remembers it for redaction).
"""

from __future__ import annotations

import os


def value(name: str) -> str | None:
    """The value of the variable `name`; None when it is not set."""
    return os.environ.get(name)


def is_set(name: str) -> bool:
    """The variable `name` is set (an empty value counts as set, as in the environment)."""
    return name in os.environ


def environment() -> dict[str, str]:
    """The whole environment, as a copy: what a tenant's process inherits is chosen from it
    (`isolation.environment`: the platform's settings, and that tenant's own secrets)."""
    return dict(os.environ)


def replace_environment(env: dict[str, str]) -> None:
    """Make `env` this process's whole environment (a tenant's process takes the one the run
    worker chose for it: the platform's settings and that tenant's own secrets)."""
    os.environ.clear()
    os.environ.update(env)
