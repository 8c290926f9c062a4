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
import functools
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
_ORDERED: list[tuple[str, ...]] = [()]  # _VALUES, longest first (a longer form may hold a shorter one)
_INSTALLED = [False]

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s@'\"<>]+@")
_PARAM = re.compile(r"([?&;])([^=&#\s'\"<>?;]+)=([^&#\s'\"<>;]*)")


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


@functools.lru_cache(maxsize=4096)
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


@functools.lru_cache(maxsize=4096)
def forms(value: str) -> frozenset[str]:
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
    return frozenset(f for f in out if len(f) >= MIN_LENGTH)


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
            _ORDERED[0] = tuple(sorted(_VALUES, key=len, reverse=True))
    install_log_redaction()


def remember_basic(username: str | None, password: str | None) -> None:
    """HTTP basic credentials: the password, and `user:password` as its header carries it."""
    remember(password)
    if username and password:
        remember(f"{username}:{password}")


def _ordered(secrets: Iterable[str | None]) -> tuple[str, ...]:
    values = {f for v in secrets if v and len(v) >= MIN_LENGTH for f in forms(v)}
    return tuple(sorted(values, key=len, reverse=True))


def _mask(text: str, ordered: Iterable[str]) -> str:
    # one substring search per form (C speed, linear in the text) rather than one regex of
    # thousands of alternatives, which costs their number at every position of the text
    for form in ordered:
        if form in text:
            text = text.replace(form, MASK)
    return text


def redact(
    text: str | None,
    secrets: Iterable[str | None] = (),
    params: Iterable[str] = (),
    *,
    urls: bool = True,
    remembered: bool = True,
) -> str | None:
    """`text` without the remembered secrets (`remembered=False`: only the given `secrets`), URL
    user-info and the values of secret-looking query parameters (plus those named in `params`).
    `urls=False` removes secret values only (for data, where URLs are kept as received)."""
    if not text:
        return text
    if remembered:
        text = _mask(text, _ORDERED[0])
    if secrets:
        text = _mask(text, _ordered(secrets))
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


def mask_tail(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with its end masked when that end (at least `MIN_LENGTH` characters) is the
    beginning of a remembered or given secret (any form): what a cut made of a secret."""
    if not text:
        return text
    cut = len(text)
    for form in (*_ORDERED[0], *_ordered(secrets)):
        head = form[0]
        start = max(0, len(text) - len(form) + 1)
        at = text.find(head, start)
        while at != -1 and len(text) - at >= MIN_LENGTH:
            if at < cut and form.startswith(text[at:]):
                cut = at
                break
            at = text.find(head, at + 1)
    return text if cut == len(text) else text[:cut] + MASK


def excerpt(text: str | None, limit: int, secrets: Iterable[str | None] = (), *, ellipsis: str = "") -> str:
    """At most `limit` characters of `text` (then `ellipsis`), redacted before the cut, and with
    a cut secret's beginning masked (`mask_tail`): redact before you cut."""
    if not text:
        return text or ""
    secrets = tuple(secrets)
    clean = redact(text, secrets) or ""
    if len(clean) <= limit:
        return mask_tail(clean, secrets)
    return mask_tail(clean[:limit], secrets) + ellipsis


def redact_url(url: str, extra_params: Iterable[str] = ()) -> str:
    """The URL without user-info, secret-looking query values and remembered secrets."""
    return redact(url, params=extra_params) or url


def redact_text(text: str, secrets: Iterable[str | None] = (), extra_params: Iterable[str] = ()) -> str:
    """A message without remembered or given secrets and secret URL parameters."""
    return redact(text, secrets, extra_params) or text


def redact_value(value: Any, secrets: Iterable[str | None] | None = None, *, urls: bool = False) -> Any:
    """A JSON-like value (records, dlt trace entries) with secrets removed from every string and
    key: the given `secrets` only, or every remembered one when None."""
    ordered = _ORDERED[0] if secrets is None else _ordered(secrets)

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            item = _mask(item, ordered)
            return redact(item, remembered=False) if urls else item
        if isinstance(item, dict):
            return {walk(k): walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        if isinstance(item, tuple) and not hasattr(item, "_fields"):
            return tuple(walk(v) for v in item)
        return item

    return walk(value)


def contains_secret(data: bytes | str, secrets: Iterable[str | None]) -> bool:
    """Whether `data` holds one of `secrets` in any form (a cheap test before redacting a page)."""
    ordered = _ordered(secrets)
    if isinstance(data, bytes):
        return any(form.encode("utf-8", "surrogatepass") in data for form in ordered)
    return any(form in data for form in ordered)


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
