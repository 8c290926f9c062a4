"""Credentials go only to the source's own origin and the hosts the tenants file allows.

`OriginGuard` knows a source's allowed origins: the scheme, host and port of its `base_url`,
plus its `allowed_hosts`. Every auth object of every source calls `guard.authorize(request)`
before adding its credential: a request to any other origin (a next-page link from the API)
raises `ForeignHostError`, and a response hook does the same for a redirect to another origin
before it is followed. The run then fails as permanent, naming the foreign host: the credential
is never sent there (dlt's auth would add it to any URL; `requests` strips only
`Authorization` on redirects, not an API key header or query parameter).

The dlt auth classes below (bearer, API key in a header or the query, HTTP basic, OAuth2 client
credentials) are dlt's own, with the guard in front; the REST source uses them, and
`http.HeaderAuth` (Jira, GitHub) uses the same guard.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit

from dlt.common.configuration.specs.base_configuration import configspec
from dlt.common.pendulum import pendulum
from dlt.sources.helpers.rest_client.auth import APIKeyAuth, BearerTokenAuth, HttpBasicAuth, OAuth2ClientCredentials

from etl_platform.security import redaction
from etl_platform.sources import bounds
from etl_platform.sources.errors import PermanentSourceError

DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int | None]


class ForeignHostError(PermanentSourceError):
    """A page link or redirect leads to an origin that may not receive the source's credential."""


def origin(url: str) -> Origin:
    """(scheme, host, port) of a URL, the port defaulted from the scheme."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or DEFAULT_PORTS.get(scheme)


def show(o: Origin) -> str:
    scheme, host, port = o
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port == DEFAULT_PORTS.get(scheme) else f":{port}")


def allowed_origin(entry: str, base_url: str) -> Origin:
    """An `allowed_hosts` entry as an origin: `host`, `host:port` (the base URL's scheme) or
    `scheme://host[:port]`."""
    if not re.match(r"^[a-z][a-z0-9+.-]*://", entry, re.IGNORECASE):
        entry = f"{urlsplit(base_url).scheme}://{entry}"
    return origin(entry)


class OriginGuard:
    """The origins a source's credential may go to; `what` names the source in errors."""

    def __init__(self, what: str, base_url: str, allowed_hosts: Iterable[str] = ()) -> None:
        self.what = what
        self.home = origin(base_url)
        self.origins = {self.home} | {allowed_origin(h, base_url) for h in allowed_hosts}

    def allows(self, url: str) -> bool:
        scheme, host, port = origin(url)
        if (scheme, host, port) in self.origins:
            return True
        # the same host upgraded to https on the default port, as requests allows for redirects
        return scheme == "https" and port == 443 and ("http", host, 80) in self.origins

    def check(self, url: str, how: str) -> None:
        if self.allows(url):
            return
        foreign = origin(url)
        raise ForeignHostError(
            f"{self.what}: {how} leads to {show(foreign)}{urlsplit(url).path or ''}, which is not the source's "
            f"origin {show(self.home)}: the source's credential is never sent there, so the load stops. "
            f"If {show(foreign)} belongs to this API, add it to the source's allowed_hosts in the tenants file.",
            url=redaction.redact(url),
        )

    def redirect_hook(self, response: Any, *args: Any, **kwargs: Any) -> None:
        """A response hook: a redirect to another origin stops here, before it is followed."""
        location = response.headers.get("Location") if 300 <= response.status_code < 400 else None
        if location:
            self.check(urljoin(response.url, location), f"a redirect (HTTP {response.status_code})")

    def authorize(self, request: Any) -> None:
        """Before a credential is added to `request`: refuse foreign origins, watch redirects."""
        self.check(request.url, "a request (page link)")
        request.register_hook("response", self.redirect_hook)


class _Guarded:
    """Mixin for dlt's auth classes: the guard runs before the credential is added."""

    _guard: OriginGuard

    def bind(self, guard: OriginGuard) -> _Guarded:
        self._guard = guard
        return self

    def __call__(self, request: Any) -> Any:
        self._guard.authorize(request)
        return super().__call__(request)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(origins={sorted(map(show, self._guard.origins))}, credential=***)"


@configspec
class GuardedBearer(_Guarded, BearerTokenAuth):
    """dlt's bearer token auth, for allowed origins only."""


@configspec
class GuardedApiKey(_Guarded, APIKeyAuth):
    """dlt's API key auth (header or query), for allowed origins only."""


@configspec
class GuardedBasic(_Guarded, HttpBasicAuth):
    """dlt's HTTP basic auth, for allowed origins only."""


@configspec
class GuardedOAuth2(_Guarded, OAuth2ClientCredentials):
    """dlt's OAuth2 client credentials flow: the access token goes to allowed origins only; the
    client secret goes only to `access_token_url` (a redirect of the token request is refused);
    the access token granted is remembered as a secret."""

    def obtain_token(self) -> None:
        limits = bounds.limits()
        endpoint = redaction.redact(self.access_token_url)
        where = f"{self._guard.what}: the OAuth2 token endpoint {endpoint}"
        response = self.session.post(
            self.access_token_url, allow_redirects=False, stream=True, **self.build_access_token_request()
        )
        deadline = bounds.Deadline(limits.request_deadline_s, where)
        if 300 <= response.status_code < 400:
            raise PermanentSourceError(
                f"{self._guard.what}: the OAuth2 token endpoint {redaction.redact(self.access_token_url)} answered "
                f"HTTP {response.status_code} (a redirect); the client credentials are not sent elsewhere",
                url=redaction.redact(self.access_token_url),
                status=response.status_code,
            )
        response.raise_for_status()
        content = bytearray()
        for chunk in bounds.response_chunks(response, deadline):  # bounded: time and size
            content += chunk
            if len(content) > limits.page_bytes:
                raise bounds.InputLimitError(
                    f"{deadline.where}: more than ETL_MAX_PAGE_BYTES = {bounds.size(limits.page_bytes)}: refused"
                )
        response._content = bytes(content)
        body = response.json()
        self.parse_native_representation(self.parse_access_token(body))
        redaction.remember(self.access_token)
        self.token_expiry = pendulum.now().add(seconds=self.parse_expiration_in_seconds(body))
