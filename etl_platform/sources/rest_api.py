"""Paginated JSON APIs, declared in the tenants file and read with dlt's REST client.

Each configured resource is one dlt resource over `pages.StreamingClient`: dlt's paginators
(created from the same declarations as dlt's `rest_api` source), auth and retrying session (429
with Retry-After, 5xx, connection errors, exponential backoff), with bodies read as a stream
(bounded memory for huge pages; 204 and empty bodies are empty pages; records nested too deep
keep their deep parts as JSON text). This module adds what dlt does not: secrets read from
environment variables and sent only to the source's origin (`guard.py`), errors and page URLs
without secrets, a guard against paginators that repeat themselves, the partition window
(sent as the resource's start/end parameters and enforced on each record's cursor), and raw-row
lineage (page URL, row key, original record).

Stats (`source.etl_stats`, a `RestStats`): pages, bytes, rows, empty pages, records nested too
deep, and every record not loaded with its reason (`skipped_by_reason`, `outside_window`).
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dlt
import orjson
from dlt.extract.items_transform import ItemTransform
from dlt.sources import DltSource
from dlt.sources.helpers.rest_client.paginators import BasePaginator
from dlt.sources.rest_api.config_setup import create_paginator

from etl_platform.config.models import ApiKeyAuth, BasicAuth, BearerAuth, Paginator, RestApiSource, RestResource, secret
from etl_platform.config.models import OAuth2ClientCredentials as OAuth2Config
from etl_platform.security.redaction import contains_secret, redact_url, redact_value, remember_basic
from etl_platform.sources import lineage
from etl_platform.sources.guard import GuardedApiKey, GuardedBasic, GuardedBearer, GuardedOAuth2, OriginGuard
from etl_platform.sources.http import status_hook
from etl_platform.sources.pages import OUTSIDE_WINDOW, ApiStats, StreamingClient

DEFAULT_PAGINATOR = Paginator(type="header_link")


@dataclass
class RestStats(ApiStats):
    """Counters filled while the source is iterated (reported as asset metadata)."""

    repeated_pages_stopped: int = 0
    pages_by_resource: dict[str, int] = field(default_factory=dict)
    current_url: dict[str, str] = field(default_factory=dict)  # the page being read, per resource

    def as_metadata(self) -> dict[str, Any]:
        return {k: v for k, v in super().as_metadata().items() if k != "current_url"}


class LoopGuard(BasePaginator):
    """Wraps a dlt paginator and stops when the next request repeats one already made
    (a cursor or next link that comes back twice would otherwise loop forever)."""

    def __init__(self, inner: BasePaginator, stats: RestStats) -> None:
        super().__init__()
        self.inner = inner
        self.stats = stats
        self._seen: set[str] = set()

    def init_request(self, request: Any) -> None:
        self.inner.init_request(request)

    def update_state(self, response: Any, data: list[Any] | None = None) -> None:
        self.inner.update_state(response, data)
        self._has_next_page = self.inner.has_next_page
        if not self._has_next_page:
            return
        fingerprint = repr(sorted((k, repr(v)) for k, v in vars(self.inner).items()))
        if fingerprint in self._seen:
            self.stats.repeated_pages_stopped += 1
            self._has_next_page = False
        self._seen.add(fingerprint)

    def update_request(self, request: Any) -> None:
        self.inner.update_request(request)

    def __str__(self) -> str:
        return f"LoopGuard({self.inner})"


def _paginator(config: Paginator, stats: RestStats) -> LoopGuard:
    return LoopGuard(create_paginator(config.to_dlt()), stats)


def _auth(source: RestApiSource) -> Any:
    """dlt's auth object for the source, bound to its origin and `allowed_hosts`."""
    what = f"source {source.name!r} auth"
    auth = source.auth
    if auth is None:
        return None
    guard = OriginGuard(f"rest_api source {source.name!r}", source.base_url, source.allowed_hosts)
    if isinstance(auth, BearerAuth):
        return GuardedBearer(token=secret(auth.token_env, what=what)).bind(guard)
    if isinstance(auth, ApiKeyAuth):
        key = secret(auth.api_key_env, what=what)
        return GuardedApiKey(name=auth.name, api_key=key, location=auth.location).bind(guard)
    if isinstance(auth, BasicAuth):
        username = secret(auth.username_env, what=what, sensitive=False)
        password = secret(auth.password_env, what=what)
        remember_basic(username, password)
        return GuardedBasic(username=username, password=password).bind(guard)
    if isinstance(auth, OAuth2Config):
        return GuardedOAuth2(
            access_token_url=auth.token_url,
            client_id=secret(auth.client_id_env, what=what),
            client_secret=secret(auth.client_secret_env, what=what),
            default_token_expiration=3600,
        ).bind(guard)
    raise ValueError(f"{what}: unsupported auth {auth!r}")


def secret_query_params(source: RestApiSource) -> list[str]:
    """Query parameter names that carry a secret for this source (for redaction)."""
    if isinstance(source.auth, ApiKeyAuth) and source.auth.location == "query":
        return [source.auth.name]
    return []


def _iso(ts: dt.datetime) -> str:
    return ts.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def own_secrets(auth: Any) -> list[str]:
    """The secret values `auth` sends (the OAuth2 access token once granted): what an API that
    echoes its input would put into its pages."""
    if auth is None:
        return []
    values = [getattr(auth, name, None) for name in ("token", "api_key", "password", "client_secret", "access_token")]
    if isinstance(auth, GuardedBasic):
        values.append(f"{auth.username}:{auth.password}")
    return [v for v in values if isinstance(v, str)]


def _fetch(resource: RestResource, source: RestApiSource, ctx: lineage.RunContext, client: StreamingClient) -> Any:
    """The resource's pages (lists of records) for the run's window."""
    stats: RestStats = client.stats  # type: ignore[assignment]
    secret_params = secret_query_params(source)
    statuses = status_hook(f"rest_api source {source.name!r}, resource {resource.name!r}", ())

    def record_page(response: Any, *args: Any, **kwargs: Any) -> Any:
        stats.pages_by_resource[resource.name] = stats.pages_by_resource.get(resource.name, 0) + 1
        stats.current_url[resource.name] = redact_url(response.url, secret_params)
        return response

    def pages() -> Iterator[list[Any]]:
        params = dict(resource.params)
        if resource.incremental and resource.incremental.start_param:
            params[resource.incremental.start_param] = _iso(ctx.window.start)
        if resource.incremental and resource.incremental.end_param:
            params[resource.incremental.end_param] = _iso(ctx.window.end)
        paginator = _paginator(resource.paginator or source.paginator or DEFAULT_PAGINATOR, stats)
        # redacted, classified errors first (dlt's own handler would name the URL with its key)
        hooks = {"response": [record_page, statuses, client._create_response_handler()]}
        yield from client.paginate(
            resource.path, params=params, paginator=paginator, data_selector=resource.data_selector, hooks=hooks
        )
        stats.log_skipped(source.name, resource.name)

    return pages


def _stamp(resource: RestResource, source: RestApiSource, ctx: lineage.RunContext, stats: RestStats, auth: Any) -> Any:
    """A yield-map step: original record + lineage; one row per day for snapshots."""
    cursor = resource.incremental.cursor_path if resource.incremental else source.event_time
    pk = resource.primary_key
    pk_fields = [pk] if isinstance(pk, str) else list(pk or [])

    def stamp(item: Any) -> list[dict[str, Any]]:
        stats.rows += 1
        if not isinstance(item, dict):
            item = {"value": item}
        original = _copy(item, own_secrets(auth))  # dlt flattens `item`; the record stays as received
        if original is not item and secrets_echoed(item, own_secrets(auth)):
            item = redact_value(item, own_secrets(auth))  # an API that echoes the credential
        row_key = lineage.key_of(item, pk_fields) if pk_fields else None
        if row_key is None:
            row_key = lineage.content_key(item)
        position = stats.current_url.get(resource.name)
        if cursor:
            event_time = lineage.parse_time(lineage_value(item, cursor))
            if event_time is None:
                stats.skip(resource.name, f"no event time in {cursor!r}")
                return []
            day = ctx.window.day_of(event_time)
            if day is None:
                stats.skip(resource.name, OUTSIDE_WINDOW)
                return []
            days = [day]
        else:
            event_time, days = None, list(ctx.window.days)
        return [
            {
                **item,
                lineage.RECORD: original,
                **ctx.lineage(
                    resource=resource.name,
                    partition_date=day,
                    position=position,
                    row_key=row_key,
                    event_time=event_time,
                ),
            }
            for day in days
        ]

    return stamp


def _copy(item: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    """The record as received (a copy), its echoed credentials removed."""
    try:
        raw = orjson.dumps(item)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits
        return redact_value(copy.deepcopy(item), secrets) if secrets else copy.deepcopy(item)
    if secrets and contains_secret(raw, secrets):
        return redact_value(orjson.loads(raw), secrets)
    return orjson.loads(raw)  # 5x faster than deepcopy


def secrets_echoed(item: dict[str, Any], secrets: list[str]) -> bool:
    if not secrets:
        return False
    try:
        return contains_secret(orjson.dumps(item), secrets)
    except orjson.JSONEncodeError:
        return True


class _StampPage(ItemTransform):
    """Stamps a whole page eagerly (a generator step would run after later pages were
    requested, and the page URL recorded by the response hook would be a later page's)."""

    def __call__(self, item: Any, meta: Any = None) -> Any:
        rows = [row for i in (item if isinstance(item, list) else [item]) for row in self._f(i)]
        return rows or None


def lineage_value(item: dict[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def build_rest_api_source(config: RestApiSource, ctx: lineage.RunContext) -> DltSource:
    """The tenant's REST API as a dlt source named after the configured source.

    Secrets are read from the environment only when the source is built for a run; at
    definition time (no secrets present) callers pass `with_secrets=False` via
    `template_rest_api_source`.
    """
    return _build(config, ctx, with_secrets=True)


def template_rest_api_source(config: RestApiSource, ctx: lineage.RunContext) -> DltSource:
    """The same source without reading secrets: for asset definitions only."""
    return _build(config, ctx, with_secrets=False)


def _build(config: RestApiSource, ctx: lineage.RunContext, *, with_secrets: bool) -> DltSource:
    stats = RestStats()
    auth = _auth(config) if with_secrets and config.auth is not None else None
    client = StreamingClient(
        config.base_url.rstrip("/") + "/",
        headers=dict(config.headers) or None,
        auth=auth,
        stats=stats,
        what=f"rest_api source {config.name!r}",
    )
    resources = []
    for spec in config.resources:
        resource = dlt.resource(_fetch(spec, config, ctx, client), name=spec.name, primary_key=spec.primary_key)
        resource.add_step(_StampPage(_stamp(spec, config, ctx, stats, auth)))
        resources.append(lineage.apply_raw_hints(resource, schema_contract=config.schema_contract))
    source = DltSource(dlt.Schema(config.name), "rest_api", resources)
    source.max_table_nesting = 1
    source.etl_stats = stats  # type: ignore[attr-defined]
    return source
