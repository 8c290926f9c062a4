"""Secrets out of every text the platform keeps.

The process remembers each secret value it reads (`config.models.secret()` calls `remember`),
in every form it travels in (plain, URL-encoded, base64, JSON-escaped). `redact()` replaces
those values and secret-looking URL parts (user-info, query parameters named like a key, token,
password or signature) with ``***``. Exceptions are scrubbed in place (`scrub_exception`), so
that whatever serializes them later (Dagster's event log, dlt's trace, a traceback on stderr)
sees redacted text; every log record is redacted when it is created (`install_log_redaction`).

Standard library only: every layer (config, sources, failures, the API) imports it.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_LENGTH = 4  # shorter values are not secrets worth the damage of replacing them everywhere

# Words that make a parameter or header name a secret's (split on _, -, . and camelCase).
SECRET_WORDS = frozenset(
    {
        "token", "secret", "password", "passwd", "pwd", "passphrase", "sig", "signature",
        "credential", "credentials", "apikey", "auth", "authorization", "cookie", "jwt", "bearer",
    }
)  # fmt: skip
# `key` alone, or after one of these, is a credential (`api_key`, `X-Api-Key`, `subscription-key`);
# `sort_key`, `partition_key` or `Idempotency-Key` are not.
KEY_QUALIFIERS = frozenset(
    {
        "api", "access", "secret", "private", "client", "app", "application", "subscription", "auth",
        "master", "license", "consumer", "developer", "dev", "service", "account", "signing", "shared", "x",
    }
)  # fmt: skip
# `page_token`, `nextPageToken`, `continuation_token`: pagination cursors, not secrets.
CURSOR_WORDS = frozenset({"page", "next", "continuation", "cursor", "sync", "resume", "prev", "previous"})

_LOCK = threading.Lock()
_VALUES: set[str] = set()
_PATTERN: list[re.Pattern[str] | None] = [None]
_INSTALLED = [False]

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s@'\"<>]+@")
_PARAM = re.compile(r"([?&;])([^=&#\s'\"<>?;]+)=([^&#\s'\"<>;]*)")


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def is_secret_name(name: str) -> bool:
    """Whether a query parameter or header named `name` carries a credential."""
    words = _words(name)
    for i, word in enumerate(words):
        before = words[i - 1] if i else ""
        if word == "token" and before in CURSOR_WORDS:
            continue
        if word in SECRET_WORDS:
            return True
        if word == "key" and (len(words) == 1 or before in KEY_QUALIFIERS):
            return True
    return False


def forms(value: str) -> set[str]:
    """The ways a secret appears in text: plain, URL-encoded, base64 (standard and URL-safe,
    with or without padding) and JSON-escaped."""
    raw = value.encode("utf-8", "surrogatepass")
    b64 = base64.b64encode(raw).decode("ascii")
    b64url = base64.urlsafe_b64encode(raw).decode("ascii")
    out = {
        value,
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        b64,
        b64.rstrip("="),
        b64url,
        b64url.rstrip("="),
        json.dumps(value)[1:-1],
    }
    return {f for f in out if len(f) >= MIN_LENGTH}


def remember(*values: str | None) -> None:
    """Add secret values this process has read (and their forms) to what `redact` removes.
    The first call installs log redaction."""
    added = False
    with _LOCK:
        for value in values:
            if value and len(value) >= MIN_LENGTH:
                new = forms(value) - _VALUES
                if new:
                    _VALUES.update(new)
                    added = True
        if added:
            _PATTERN[0] = None
    install_log_redaction()


def remember_basic(username: str | None, password: str | None) -> None:
    """HTTP basic credentials: the password, and `user:password` as its header carries it."""
    remember(password)
    if username and password:
        remember(f"{username}:{password}")


def known() -> frozenset[str]:
    """Every remembered secret form (tests scan storage for them)."""
    with _LOCK:
        return frozenset(_VALUES)


def _known_pattern() -> re.Pattern[str] | None:
    with _LOCK:
        if _PATTERN[0] is None and _VALUES:
            alternatives = sorted(_VALUES, key=len, reverse=True)  # longest first: no partial masks
            _PATTERN[0] = re.compile("|".join(re.escape(v) for v in alternatives))
        return _PATTERN[0]


def redact(
    text: str | None, secrets: Iterable[str | None] = (), params: Iterable[str] = (), *, urls: bool = True
) -> str | None:
    """`text` without remembered secrets, the given `secrets`, URL user-info and the values of
    secret-looking query parameters (plus those named in `params`). `urls=False` removes
    secret values only (for data, where URLs are kept as received)."""
    if not text:
        return text
    pattern = _known_pattern()
    if pattern is not None:
        text = pattern.sub(MASK, text)
    for value in secrets:
        if value and len(value) >= MIN_LENGTH:
            for form in sorted(forms(value), key=len, reverse=True):
                text = text.replace(form, MASK)
    if not urls:
        return text
    if "@" in text:
        text = _USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    if "=" in text:
        extra = {p.lower() for p in params}

        def param(m: re.Match[str]) -> str:
            name = m.group(2)
            secret = name.lower() in extra or is_secret_name(name)
            return f"{m.group(1)}{name}={MASK}" if secret and m.group(3) else m.group(0)

        text = _PARAM.sub(param, text)
    return text


def redact_value(value: Any, *, urls: bool = False) -> Any:
    """A JSON-like value (records, dlt trace entries) with secrets removed from every string."""
    if isinstance(value, str):
        return redact(value, urls=urls)
    if isinstance(value, dict):
        return {redact_value(k, urls=urls): redact_value(v, urls=urls) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, urls=urls) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(redact_value(v, urls=urls) for v in value)
    return value


def contains_secret(data: bytes | str) -> bool:
    """Whether `data` holds a remembered secret (a cheap test before redacting a whole page)."""
    pattern = _known_pattern()
    if pattern is None:
        return False
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    return pattern.search(data) is not None


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and its causes and contexts, each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend([current.__context__, current.__cause__])


def scrub_exception(exc: BaseException | None) -> None:
    """Redact the messages of `exc` and of every exception it was raised from, in place, so
    that a traceback or serialized error made from them later holds no secret."""
    for err in exception_chain(exc):
        try:
            text = str(err)
        except Exception:  # noqa: BLE001 - an exception that cannot print has nothing to leak here
            continue
        if redact(text) == text:
            continue
        args = []
        for arg in err.args:
            shown = arg if isinstance(arg, str) else str(arg)
            clean = redact(shown)
            args.append(arg if clean == shown else clean)
        try:
            err.args = tuple(args)
        except (AttributeError, TypeError):
            pass
        for name in ("msg", "message", "reason", "url"):  # attributes some exceptions print from
            attr = getattr(err, name, None)
            if isinstance(attr, str) and redact(attr) != attr:
                try:
                    setattr(err, name, redact(attr))
                except (AttributeError, TypeError):
                    pass


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken record is logging's problem, not a leak
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[1] is not None:
        scrub_exception(record.exc_info[1])


def install_log_redaction() -> None:
    """Redact every log record of this process when it is created (message, arguments and
    exception), before any handler (stderr, Dagster's compute logs and event log) sees it.
    A record factory rather than a handler filter: it also covers handlers added later."""
    with _LOCK:
        if _INSTALLED[0]:
            return
        _INSTALLED[0] = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    logging.setLogRecordFactory(factory)
