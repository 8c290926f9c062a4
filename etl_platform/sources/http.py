"""Shared plumbing of the API sources (Jira, GitHub): dlt's RESTClient on dlt's retrying
session with bodies read as a stream (`pages.StreamingClient`: bounded memory, 204 and empty
bodies as empty pages, records nested too deep kept), auth that stays on the source's origin
(`guard.OriginGuard`), status handling (retryable vs permanent), secret redaction, and stamping
raw rows with lineage.

Retries: dlt's session retries connection errors, 429 and 5xx (honouring `Retry-After`, capped
by RUNTIME__REQUEST_MAX_RETRY_DELAY) plus whatever `retryable` says; other 4xx raise
`PermanentSourceError` at once.
"""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dlt.sources.helpers.requests import Client, HTTPError, Response
from dlt.sources.helpers.rest_client.exceptions import IgnoreResponseException
from dlt.sources.helpers.rest_client.paginators import BasePaginator
from requests.auth import AuthBase

from etl_platform.security import redaction
from etl_platform.sources.errors import PermanentSourceError
from etl_platform.sources.guard import OriginGuard, show
from etl_platform.sources.lineage import RECORD, RunContext
from etl_platform.sources.pages import ApiStats, StreamingClient

ResponseHook = Callable[..., Any]
EXCERPT_CHARS = 300  # of an error body, in a failure's message
EXCERPT_READ_BYTES = 4096  # read of an error body (streamed: never the whole of it)
EXCERPT_READ_SECONDS = 5.0


def redact(text: str | None, secrets: Iterable[str | None]) -> str | None:
    """`text` without the given and the remembered secrets (all their forms), URL user-info and
    secret-looking query parameters."""
    return redaction.redact(text, secrets)


class HeaderAuth(AuthBase):
    """Sets `Authorization` on requests to the source's own origin (and its `allowed_hosts`);
    a page link or redirect to any other origin fails the load (`guard.ForeignHostError`)."""

    def __init__(self, value: str, base_url: str, allowed_hosts: Iterable[str] = (), what: str = "source") -> None:
        self._value = value
        self._guard = OriginGuard(what, base_url, allowed_hosts)
        redaction.remember(self.credential)

    @classmethod
    def basic(
        cls, user: str, password: str, base_url: str, allowed_hosts: Iterable[str] = (), what: str = "source"
    ) -> HeaderAuth:
        redaction.remember_basic(user, password)
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return cls(f"Basic {token}", base_url, allowed_hosts, what)

    @classmethod
    def bearer(cls, token: str, base_url: str, allowed_hosts: Iterable[str] = (), what: str = "source") -> HeaderAuth:
        return cls(f"Bearer {token}", base_url, allowed_hosts, what)

    @property
    def credential(self) -> str:
        """The header value without its scheme (a secret to redact, e.g. base64 of user:password)."""
        return self._value.split(" ", 1)[-1]

    def __call__(self, request: Any) -> Any:
        self._guard.authorize(request)
        request.headers["Authorization"] = self._value
        return request

    def __repr__(self) -> str:
        return f"HeaderAuth(origins={sorted(map(show, self._guard.origins))}, value=***)"


def rest_client(
    base_url: str,
    *,
    auth: AuthBase | None,
    headers: dict[str, str] | None = None,
    retryable: Callable[[Response], bool] | None = None,
    stats: ApiStats | None = None,
    what: str = "API source",
) -> StreamingClient:
    """A streaming dlt RESTClient on dlt's retrying session (timeouts and attempts from
    RUNTIME__REQUEST_*), counting into `stats`."""

    def retry_condition(response: Response | None, exc: BaseException | None) -> bool:
        return response is not None and retryable is not None and retryable(response)

    session = Client(raise_for_status=False, retry_condition=retry_condition).session
    return StreamingClient(
        base_url.rstrip("/"), headers=headers, auth=auth, session=session, stats=stats, what=what
    )


def status_hook(
    what: str,
    secrets: Iterable[str | None],
    *,
    retryable: Callable[[Response], bool] | None = None,
    ignore: tuple[int, ...] = (),
) -> ResponseHook:
    """A response hook: statuses in `ignore` end the pagination with no rows; 408/429/5xx (and
    whatever `retryable` accepts) raise HTTPError, which dlt's session retries; any other 4xx
    raises PermanentSourceError (redacted URL and body excerpt)."""
    secrets = tuple(secrets)

    def hook(response: Response, *args: Any, **kwargs: Any) -> None:
        status = response.status_code
        if status < 400:
            return None
        url = redact(response.url, secrets)
        if status in ignore:
            raise IgnoreResponseException(f"{what}: HTTP {status} for {url}, no rows")
        body = redaction.excerpt(error_body(response), EXCERPT_CHARS, secrets)
        message = f"{what}: HTTP {status} {response.reason or ''} for {url}: {body}".strip()
        if status in (408, 429) or status >= 500 or (retryable is not None and retryable(response)):
            raise HTTPError(message, response=response)
        raise PermanentSourceError(message, url=url, status=status)

    return hook


def error_body(response: Response) -> str:
    """The beginning of an error answer's body: at most `EXCERPT_READ_BYTES`, read for at most
    `EXCERPT_READ_SECONDS` (a streamed body is never read whole: it may be huge or trickle)."""
    if getattr(response, "_content_consumed", True) or not hasattr(response.raw, "read1"):
        return response.text or ""
    parts, size, end = [], 0, time.monotonic() + EXCERPT_READ_SECONDS
    while size < EXCERPT_READ_BYTES and time.monotonic() < end:
        data = response.raw.read1(EXCERPT_READ_BYTES - size, decode_content=True)
        if not data:
            break
        parts.append(data)
        size += len(data)
    response._content = b"".join(parts)  # what was read: later readers (dlt's handler) see the same
    response._content_consumed = True
    return response.text or ""


def pages(
    client: StreamingClient,
    path: str,
    *,
    paginator: BasePaginator,
    hooks: list[ResponseHook],
    params: dict[str, Any] | None = None,
    data_selector: str = "$",
) -> Iterator[tuple[list[Any], str]]:
    """(items, request URL) per page."""
    for page in client.paginate(
        path, params=params, paginator=paginator, data_selector=data_selector, hooks={"response": hooks}
    ):
        yield list(page), page.response.url


def raw_row(
    ctx: RunContext,
    resource: str,
    record: dict[str, Any],
    *,
    day: dt.date,
    position: str | None,
    row_key: str,
    event_time: dt.datetime | None = None,
    flatten: bool = True,
    **columns: Any,
) -> dict[str, Any]:
    """A raw row: the record's fields (dlt flattens them; `flatten=False` leaves them out), extra
    plain columns (parent keys), the lineage columns and the record as received in `_etl_record`."""
    return {
        **(record if flatten else {}),
        **columns,
        **ctx.lineage(resource=resource, partition_date=day, position=position, row_key=row_key, event_time=event_time),
        RECORD: record,
    }

