"""Remove secrets from URLs and messages before they reach logs, errors or metadata."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SECRET_PARAMS = {
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "password",
    "secret",
    "client_secret",
    "sig",
    "signature",
    "auth",
}


def redact_url(url: str, extra_params: Iterable[str] = ()) -> str:
    """The URL with userinfo and secret-looking query values replaced by '***'."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    secret_names = SECRET_PARAMS | {p.lower() for p in extra_params}
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.split("@", 1)[1]
    query = urlencode(
        [(k, "***" if k.lower() in secret_names else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe="*",
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_text(text: str, secrets: Iterable[str | None] = (), extra_params: Iterable[str] = ()) -> str:
    """A message with known secret values and secret URL parameters removed."""
    for value in secrets:
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return re.sub(r"https?://[^\s'\"<>]+", lambda m: redact_url(m.group(0), extra_params), text)
