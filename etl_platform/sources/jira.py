"""Jira source: issues (with changelog) by JQL over the partition window, their status
transitions, and snapshots of statuses and issue types.

Resources (tables):
- `issues`: one row per issue; row key = issue id (key when the API gives no id); event time
  `fields.updated`, else `fields.created`; an issue with neither is a snapshot row of every window
  day (counted in `etl_stats.event_time_fallbacks`).
- `issue_transitions`: one row per status change in an issue's changelog; parent keys
  `issue_id`, `issue_key`; row key `<issue id>|<history id>|<item index>`; event time = the
  history's `created`; partition day = the issue's (the changelog is re-read with the issue).
- `statuses`, `issue_types`: snapshots, one row per record per window day; row key = id.

Pagination: v2 `/search` with startAt/maxResults (next offset = returned startAt + items, so a
server capping maxResults loses nothing); stops on an empty page whatever `total` says, on
reaching `total`, and on a page that brings no issue not already seen (a server ignoring
startAt). v3 `/search/jql` with nextPageToken; stops on `isLast`, a missing token, a repeated
token or an empty page.

JQL datetimes are read in the Jira user's timezone, so the `updated` range is widened by 14 h
on both sides and rows are then placed by their own UTC-aware `updated`.

Stats (`source.etl_stats`, a `pages.ApiStats`): pages, bytes, empty pages, and every issue read
and not loaded with its reason (`skipped_by_reason`: outside the window, no id or key,
repeated), also logged at the end of the resource.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import dlt
from dlt.extract.source import DltSource
from dlt.sources.helpers.requests import Response
from dlt.sources.helpers.rest_client import RESTClient
from dlt.sources.helpers.rest_client.paginators import (
    JSONResponseCursorPaginator,
    OffsetPaginator,
    SinglePagePaginator,
)

from etl_platform.config.models import JiraSource, secret
from etl_platform.sources.http import HeaderAuth, pages, raw_row, redact, rest_client, status_hook
from etl_platform.sources.lineage import (
    PARTITION_DATE,
    POSITION,
    RECORD,
    RunContext,
    apply_raw_hints,
    content_key,
    parse_time,
)
from etl_platform.sources.pages import OUTSIDE_WINDOW, ApiStats

FIELDS = [
    "summary",
    "status",
    "issuetype",
    "assignee",
    "reporter",
    "created",
    "updated",
    "resolutiondate",
    "resolution",
    "labels",
    "priority",
    "project",
    "parent",
]
JQL_TIME = "%Y-%m-%d %H:%M"
JQL_SLACK = dt.timedelta(hours=14)  # the widest UTC offset of a Jira user's timezone
CHANGELOG_PAGE = 100


def jira_time(value: Any) -> dt.datetime | None:
    """Jira's `2020-12-03T14:05:20.974+0100` (offset without colon) as an aware UTC datetime."""
    if isinstance(value, str):
        value = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", value.strip())
    return parse_time(value)


def build_jql(config: JiraSource, start: dt.datetime, end: dt.datetime) -> str:
    """The configured JQL (or `project in (...)`) AND the widened `updated` range, ordered stably."""
    base = config.jql or ""
    if not base and config.projects:
        base = "project in (" + ", ".join(f'"{p}"' for p in config.projects) + ")"
    head, *tail = re.split(r"\border\s+by\b", base, maxsplit=1, flags=re.IGNORECASE)
    base, order = head.strip(), (tail[0].strip() if tail else "")
    window = (
        f'updated >= "{(start - JQL_SLACK).strftime(JQL_TIME)}" AND updated < "{(end + JQL_SLACK).strftime(JQL_TIME)}"'
    )
    where = f"({base}) AND {window}" if base else window
    return f"{where} ORDER BY {order or 'created ASC, key ASC'}"


def _issue_key(issue: dict[str, Any]) -> str:
    return str(issue.get("id") or issue.get("key") or "")


class StartAtPaginator(OffsetPaginator):
    """Jira startAt/maxResults paging that trusts neither `total` nor the page size."""

    def __init__(self, limit: int, key: Any = _issue_key) -> None:
        super().__init__(
            limit=limit,
            offset_param="startAt",
            limit_param="maxResults",
            total_path=None,
            stop_after_empty_page=True,
        )
        self._key = key
        self._seen: set[str] = set()

    def update_state(self, response: Response, data: list[Any] | None = None) -> None:
        body = response.json()
        body = body if isinstance(body, dict) else {}
        items = data or []
        keys = {self._key(item) for item in items}
        fresh = keys - self._seen
        self._seen |= keys
        start = body.get("startAt")
        self.current_value = (start if isinstance(start, int) else self.current_value) + len(items)
        total = body.get("total")
        if (
            not items
            or not fresh
            or body.get("isLast") is True
            or (isinstance(total, int) and self.current_value >= total)
        ):
            self._has_next_page = False


class TokenPaginator(JSONResponseCursorPaginator):
    """Jira v3 nextPageToken paging: stops on isLast, a missing or repeated token, an empty page."""

    def __init__(self) -> None:
        super().__init__(cursor_path="nextPageToken", cursor_param="nextPageToken", stop_after_empty_page=True)
        self._tokens: set[str] = set()

    def update_state(self, response: Response, data: list[Any] | None = None) -> None:
        super().update_state(response, data)
        token = self._next_reference
        if response.json().get("isLast") is True or token in self._tokens:
            self._has_next_page = False
        if token is not None:
            self._tokens.add(token)


def build_jira_source(config: JiraSource, ctx: RunContext) -> DltSource:
    """The dlt source of one Jira site for one run; no I/O until iterated."""
    site = _JiraSite(config, ctx)

    def issues() -> Iterator[list[dict[str, Any]]]:
        yield from site.issues()

    def transitions(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        yield from site.transitions(rows)

    def snapshot(resource: str, path: str) -> Any:
        def rows() -> Iterator[list[dict[str, Any]]]:
            yield from site.snapshot(resource, path)

        return dlt.resource(rows, name=resource)

    issues_resource = dlt.resource(issues, name="issues")
    resources = [
        issues_resource,
        dlt.transformer(transitions, data_from=issues_resource, name="issue_transitions"),
        snapshot("statuses", f"{site.api}/status"),
        snapshot("issue_types", f"{site.api}/issuetype"),
    ]
    for resource in resources:
        apply_raw_hints(resource, schema_contract=config.schema_contract)
    source = DltSource(dlt.Schema(config.name), "jira", resources)
    source.etl_stats = site.stats  # filled while extracting
    return source


class _JiraSite:
    """What the resources of one Jira source read for one run: the client (connected on first
    use), the window and the stats they fill."""

    def __init__(self, config: JiraSource, ctx: RunContext) -> None:
        self.config = config
        self.ctx = ctx
        self.window = ctx.window
        self.api = f"rest/api/{config.api_version}"
        self.stats = ApiStats()
        self.what = f"jira source {config.name!r}"
        self._connected: tuple[RESTClient, tuple[str, ...]] | None = None

    def connect(self) -> tuple[RESTClient, tuple[str, ...]]:
        """The client and the secrets to redact (read on first use, then kept)."""
        if self._connected is None:
            config, what = self.config, self.what
            if config.pat_env:
                token = secret(config.pat_env, what=f"{what} pat_env")
                auth, secrets = HeaderAuth.bearer(token, config.base_url, config.allowed_hosts, what), (token,)
            elif config.email_env or config.api_token_env:
                email = secret(config.email_env, what=f"{what} email_env", sensitive=False) or ""
                token = secret(config.api_token_env, what=f"{what} api_token_env") or ""
                auth = HeaderAuth.basic(email, token, config.base_url, config.allowed_hosts, what)
                secrets = (token, auth.credential)
            else:
                auth, secrets = None, ()
            headers = {"Accept": "application/json"}
            client = rest_client(config.base_url, auth=auth, headers=headers, stats=self.stats, what=what)
            self._connected = client, secrets
        return self._connected

    # --- issues --------------------------------------------------------------------------------

    def issues(self) -> Iterator[list[dict[str, Any]]]:
        """The issues the JQL search finds for the window, page by page, each placed on its day."""
        client, secrets = self.connect()
        seen: set[str] = set()
        path, paginator, params = self._search()
        hooks = [status_hook(self.what, secrets)]
        for items, url in pages(client, path, paginator=paginator, hooks=hooks, params=params, data_selector="issues"):
            position = redact(url, secrets)
            rows = [row for issue in items for row in self._issue_rows(issue, position, seen)]
            if rows:
                yield rows
        self.stats.log_skipped(self.config.name, "issues")

    def _search(self) -> tuple[str, Any, dict[str, Any]]:
        """(path, paginator, params) of the search: v2 pages by startAt, v3 by token."""
        config, window = self.config, self.window
        params: dict[str, Any] = {
            "jql": build_jql(config, window.start, window.end),
            "fields": ",".join(FIELDS),
            "expand": "changelog",
        }
        if config.api_version == 2:
            return f"{self.api}/search", StartAtPaginator(config.page_size), params
        params["maxResults"] = config.page_size
        return f"{self.api}/search/jql", TokenPaginator(), params

    def _issue_rows(self, issue: dict[str, Any], position: str, seen: set[str]) -> list[dict[str, Any]]:
        """One issue's rows (one per day it falls on); none, counted, when repeated or outside."""
        key = _issue_key(issue)
        if not key or key in seen:
            self.stats.skip("issues", "repeated" if key else "no id or key")
            return []
        seen.add(key)
        event_time, days = self._placed(issue)
        if not days:
            self.stats.skip("issues", OUTSIDE_WINDOW)
            return []
        # the changelog stays in _etl_record only (its status items are issue_transitions)
        columns = {k: v for k, v in issue.items() if k != "changelog"}
        return [
            raw_row(
                self.ctx,
                "issues",
                issue,
                flatten=False,
                day=day,
                position=position,
                row_key=key,
                event_time=event_time,
                **columns,
            )
            for day in days
        ]

    def _placed(self, issue: dict[str, Any]) -> tuple[dt.datetime | None, list[dt.date]]:
        """(event time, partition days): `updated`, else `created`, else every window day."""
        fields = issue.get("fields") or {}
        for name in ("updated", "created"):
            event_time = jira_time(fields.get(name))
            if event_time is not None:
                if name != "updated":
                    self.stats.event_time_fallbacks[f"issues: {name}"] += 1
                day = self.window.day_of(event_time)
                return event_time, [day] if day else []
        self.stats.event_time_fallbacks["issues: partition day"] += 1
        return None, list(self.window.days)

    # --- transitions ---------------------------------------------------------------------------

    def histories(self, issue: dict[str, Any]) -> list[dict[str, Any]]:
        """The issue's changelog histories; the rest are fetched when the search truncated them."""
        changelog = issue.get("changelog") or {}
        found = list(changelog.get("histories") or [])
        total = changelog.get("total")
        if not isinstance(total, int) or total <= len(found) or not issue.get("id"):
            return found
        client, secrets = self.connect()
        by_id = {str(h.get("id")): h for h in found}
        for items, _ in pages(
            client,
            f"{self.api}/issue/{issue['id']}/changelog",
            data_selector="values",
            paginator=StartAtPaginator(CHANGELOG_PAGE, key=lambda h: str(h.get("id"))),
            hooks=[status_hook(self.what, secrets, ignore=(404,))],
        ):
            by_id.update((str(h.get("id")), h) for h in items)
        start = self.window.start
        return sorted(by_id.values(), key=lambda h: (jira_time(h.get("created")) or start, str(h.get("id"))))

    def transitions(self, rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        """The status changes of the issues' changelogs, on their issue's day and page."""
        out = []
        for row in rows:
            issue = row[RECORD]
            for history in self.histories(issue):
                out.extend(self._transition_rows(row, issue, history))
        if out:
            yield out

    def _transition_rows(
        self, row: dict[str, Any], issue: dict[str, Any], history: dict[str, Any]
    ) -> Iterator[dict[str, Any]]:
        created = jira_time(history.get("created"))
        author = history.get("author") or {}
        for index, item in enumerate(history.get("items") or []):
            if (item.get("fieldId") or item.get("field")) != "status":
                continue
            yield raw_row(
                self.ctx,
                "issue_transitions",
                history,
                flatten=False,
                day=row[PARTITION_DATE],
                position=row[POSITION],
                row_key=f"{_issue_key(issue)}|{history.get('id')}|{index}",
                event_time=created,
                issue_id=issue.get("id"),
                issue_key=issue.get("key"),
                history_id=history.get("id"),
                item_index=index,
                created=history.get("created"),
                author_id=author.get("accountId") or author.get("key") or author.get("name"),
                author_name=author.get("displayName"),
                from_status_id=item.get("from"),
                from_status=item.get("fromString"),
                to_status_id=item.get("to"),
                to_status=item.get("toString"),
            )

    # --- snapshots -----------------------------------------------------------------------------

    def snapshot(self, resource: str, path: str) -> Iterator[list[dict[str, Any]]]:
        """A list endpoint read whole, one row per record per window day."""
        client, secrets = self.connect()
        hooks = [status_hook(self.what, secrets)]
        for items, url in pages(client, path, paginator=SinglePagePaginator(), hooks=hooks):
            position = redact(url, secrets)
            yield [
                raw_row(
                    self.ctx, resource, rec, day=day, position=position, row_key=str(rec.get("id") or content_key(rec))
                )
                for rec in items
                for day in self.window.days
            ]
