"""Optional bearer tokens of the metrics endpoints (the read API's /metrics, the exporter):
compared in constant time, as SHA-256 digests so that lengths never differ. Standard library only."""

from __future__ import annotations

import hashlib
import hmac

WWW_AUTHENTICATE = 'Bearer realm="metrics"'


def bearer_allows(authorization: str | None, token: str | None) -> bool:
    """True when no token is configured, or `authorization` is `Bearer <token>`."""
    if not token:
        return True
    scheme, _, presented = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    digest = hashlib.sha256(presented.strip().encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(digest, hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest())
