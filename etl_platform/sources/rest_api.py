"""Paginated JSON APIs through dlt's declarative `rest_api` source.

The tenants file's `rest_api` source is translated into a dlt `RESTAPIConfig`: dlt's
paginators and its retrying HTTP client (429 with Retry-After, 5xx, connection errors,
exponential backoff) do the work. This module adds what dlt does not: secrets read from
environment variables and sent only to the source's origin (`guard.py`), errors and page URLs
without secrets, a guard against paginators that repeat themselves, the partition window, and
raw-row lineage (page URL, row key, original record).
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from dlt.extract.items_transform import ItemTransform
from dlt.sources import DltSource
from dlt.sources.helpers.rest_client.paginators import BasePaginator
from dlt.sources.rest_api import rest_api_source

from etl_platform.config.models import ApiKeyAuth, BasicAuth, BearerAuth, Paginator, RestApiSource, RestResource, secret
from etl_platform.config.models import OAuth2ClientCredentials as OAuth2Config
from etl_platform.redaction import contains_secret, redact_value, remember_basic
from etl_platform.sources import lineage
from etl_platform.sources.guard import GuardedApiKey, GuardedBasic, GuardedBearer, GuardedOAuth2, OriginGuard
from etl_platform.sources.http import status_hook
from etl_platform.sources.redact import redact_url

DEFAULT_PAGINATOR = Paginator(type="header_link")


@dataclass
class RestStats:
    """Counters filled while the source is iterated (reported as asset metadata)."""

    pages: int = 0
    bytes: int = 0
    rows: int = 0
    outside_window: int = 0
    repeated_pages_stopped: int = 0
    pages_by_resource: dict[str, int] = field(default_factory=dict)
    current_url: dict[str, str] = field(default_factory=dict)
    tainted: dict[str, bool] = field(default_factory=dict)  # the current page holds a secret


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
    from dlt.sources.rest_api.config_setup import create_paginator

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


def _endpoint(
    resource: RestResource, source: RestApiSource, ctx: lineage.RunContext, stats: RestStats, auth: Any
) -> dict:
    params = dict(resource.params)
    endpoint: dict[str, Any] = {
        "path": resource.path,
        "params": params,
        "paginator": _paginator(resource.paginator or source.paginator or DEFAULT_PAGINATOR, stats),
        "response_actions": [
            status_hook(f"rest_api source {source.name!r}, resource {resource.name!r}", ()),
            _page_recorder(resource.name, stats, secret_query_params(source), auth),
        ],
    }
    if resource.data_selector:
        endpoint["data_selector"] = resource.data_selector
    if resource.incremental:
        inc = resource.incremental
        endpoint["incremental"] = {
            "cursor_path": inc.cursor_path,
            "initial_value": _iso(ctx.window.start),
            "end_value": _iso(ctx.window.end),
            **({"start_param": inc.start_param} if inc.start_param else {}),
            **({"end_param": inc.end_param} if inc.end_param else {}),
        }
    return endpoint


def _page_recorder(resource: str, stats: RestStats, secret_params: list[str], auth: Any) -> Any:
    def record_page(response: Any, *args: Any, **kwargs: Any) -> Any:
        stats.pages += 1
        stats.pages_by_resource[resource] = stats.pages_by_resource.get(resource, 0) + 1
        stats.bytes += len(response.content or b"")
        stats.current_url[resource] = redact_url(response.url, secret_params)
        # an API that echoes the credential into its data: this page's records are redacted
        stats.tainted[resource] = contains_secret(response.content or b"", own_secrets(auth))
        return response

    return record_page


def _stamp(resource: RestResource, source: RestApiSource, ctx: lineage.RunContext, stats: RestStats, auth: Any) -> Any:
    """A yield-map step: original record + lineage; one row per day for snapshots."""
    cursor = resource.incremental.cursor_path if resource.incremental else source.event_time
    pk = resource.primary_key
    pk_fields = [pk] if isinstance(pk, str) else list(pk or [])

    def stamp(item: dict[str, Any]) -> list[dict[str, Any]]:
        stats.rows += 1
        if stats.tainted.get(resource.name):
            item = redact_value(item, own_secrets(auth))
        original = copy.deepcopy(item)
        row_key = lineage.key_of(item, pk_fields) if pk_fields else None
        if row_key is None:
            row_key = lineage.content_key(item)
        position = stats.current_url.get(resource.name)
        if cursor:
            event_time = lineage.parse_time(lineage_value(item, cursor))
            day = ctx.window.day_of(event_time)
            if day is None:
                stats.outside_window += 1
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
    client: dict[str, Any] = {"base_url": config.base_url.rstrip("/") + "/"}
    if config.headers:
        client["headers"] = dict(config.headers)
    auth = _auth(config) if with_secrets and config.auth is not None else None
    if auth is not None:
        client["auth"] = auth
    rest_config: dict[str, Any] = {
        "client": client,
        "resources": [
            {
                "name": r.name,
                "endpoint": _endpoint(r, config, ctx, stats, auth),
                **({"primary_key": r.primary_key} if r.primary_key else {}),
            }
            for r in config.resources
        ],
    }
    source = rest_api_source(rest_config, name=config.name, max_table_nesting=1)
    by_name = {r.name: r for r in config.resources}
    for name, resource in source.resources.items():
        resource.add_step(_StampPage(_stamp(by_name[name], config, ctx, stats, auth)))
        lineage.apply_raw_hints(resource, schema_contract=config.schema_contract)
    source.etl_stats = stats  # type: ignore[attr-defined]
    return source
