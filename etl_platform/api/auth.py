"""API keys: one per tenant (named by `api_key_env` in the tenants file) plus an admin key.

Presented keys are compared in constant time against every configured key (SHA-256
digests, so lengths never differ); a key maps to exactly one tenant.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from etl_platform.api.ratelimit import retry_after
from etl_platform.config import secrets
from etl_platform.config.registry import Registry
from etl_platform.config.settings import ADMIN_KEY_ENV
from etl_platform.security.redaction import remember

log = logging.getLogger(__name__)
bearer = HTTPBearer(auto_error=False, description="A tenant's API key (or the admin key for /admin)")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, or the admin (tenant None); `key_id` names the key in logs."""

    tenant_id: str | None
    key_id: str

    @property
    def is_admin(self) -> bool:
        return self.tenant_id is None


class KeyRing:
    """The configured keys, as digests; `identify` finds the owner of a presented key."""

    def __init__(self, tenant_keys: Mapping[str, str], admin_key: str | None = None) -> None:
        self._tenants = [(tenant, _digest(key)) for tenant, key in tenant_keys.items() if key]
        owners: dict[bytes, str] = {}
        for tenant, digest in self._tenants:
            if digest in owners:
                raise ValueError(f"tenants {owners[digest]!r} and {tenant!r} have the same API key")
            owners[digest] = tenant
        self._admin = _digest(admin_key) if admin_key else None

    @classmethod
    def from_env(cls, registry: Registry, environ: Mapping[str, str] | None = None) -> KeyRing:
        """Read each tenant's key from its `api_key_env` variable and the admin key from
        ETL_ADMIN_API_KEY; tenants without a key cannot use the API (logged, by variable name)."""
        read = secrets.value if environ is None else environ.get
        remember(read(ADMIN_KEY_ENV))  # keys this process holds never reach its logs or errors
        keys: dict[str, str] = {}
        for tenant in registry.tenants:
            value = read(tenant.api_key_env) if tenant.api_key_env else None
            if value:
                keys[tenant.id] = value
                remember(value)
            else:
                log.warning(
                    "tenant %s has no API key (%s)", tenant.id, tenant.api_key_env or "api_key_env not set"
                )
        return cls(keys, read(ADMIN_KEY_ENV) or None)

    def identify(self, presented: str) -> Principal | None:
        """The tenant (or admin) owning `presented`; every configured key is compared."""
        digest = _digest(presented)
        found: str | None = None
        for tenant, key in self._tenants:
            if hmac.compare_digest(digest, key):
                found = tenant
        key_id = digest[:6].hex()
        if found is not None:
            return Principal(found, key_id)
        if self._admin is not None and hmac.compare_digest(digest, self._admin):
            return Principal(None, key_id)
        return None


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _principal(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """The caller, rate limited per key (failed attempts: per client address)."""
    state = request.app.state
    principal = state.keyring.identify(credentials.credentials) if credentials else None
    bucket = f"key:{principal.key_id}" if principal else f"ip:{request.client.host if request.client else '-'}"
    wait = state.limiter.take(bucket)
    if wait > 0:
        raise HTTPException(429, "rate limit exceeded", headers={"Retry-After": retry_after(wait)})
    if credentials is None:
        raise _unauthorized("missing bearer API key")
    if principal is None:
        raise _unauthorized("invalid API key")
    request.state.principal = principal.tenant_id or "admin"
    return principal


async def tenant_principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> Principal:
    """Dependency: a tenant's key (the admin key is not a tenant's and gets 401 here)."""
    principal = _principal(request, credentials)
    if principal.is_admin:
        raise _unauthorized("the admin key has no tenant data; use a tenant's key")
    return principal


async def admin_principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> Principal:
    """Dependency: the admin key (ETL_ADMIN_API_KEY); a tenant's key gets 401."""
    principal = _principal(request, credentials)
    if not principal.is_admin:
        raise _unauthorized("admin key required")
    return principal


async def optional_principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> Principal | None:
    """Dependency: None without a key; a presented key must be valid (401 otherwise)."""
    return None if credentials is None else _principal(request, credentials)
