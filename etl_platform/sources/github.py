"""GitHub source (github.com or GitHub Enterprise): pull requests updated in the partition window
with their reviews and commits, releases and deployments, for each configured repository.

Resources (tables), every row with a plain `repository` ("owner/name") column:
- `pull_requests`: row key `<owner/name>#<number>`; event time `updated_at`. Pages are read newest
  first (`sort=updated&direction=desc`) and reading stops at the first PR older than the window.
- `reviews`, `commits`: children of each PR in the window, with parent keys `repository`,
  `pull_number`; row keys: review id, `<owner/name>#<number>@<sha>`; event times `submitted_at`
  and the commit's committer (else author) date; partition day = the PR's (they are re-read
  with the PR; a PR's commits usually predate its update, so placing them by their own date
  would drop them).
- `releases` (event time `published_at`, drafts `created_at`) and `deployments` (`created_at`):
  row key = id; newest first, reading stops after a page entirely older than the window; a 404
  (deployments not enabled / no access) yields no rows.

Paging follows `Link: rel="next"` URLs exactly as given (another path or host is fine; the token
is only sent to the configured host) and stops on a next URL already requested.
Rate limits: on `X-RateLimit-Remaining: 0` the source sleeps until `X-RateLimit-Reset` (+1 s),
at most ETL_GITHUB_MAX_RATE_LIMIT_WAIT_SECONDS (default 900); a 403/429 that is a (secondary)
rate limit is retried after `Retry-After`; 401 and other 403s raise PermanentSourceError.
A 204 No Content (or an empty body) is an empty page.

Stats (`source.etl_stats`, a `pages.ApiStats`): pages, bytes, empty pages, and every row read and
not loaded with its reason (`skipped_by_reason`: outside the window, repeated),
also logged at the end of each resource.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urljoin

import dlt
from dlt.extract.source import DltSource
from dlt.sources.helpers.requests import Response
from dlt.sources.helpers.rest_client import RESTClient
from dlt.sources.helpers.rest_client.paginators import HeaderLinkPaginator

from etl_platform.config.models import GithubSource, secret
from etl_platform.config.settings import github_max_rate_limit_wait_s
from etl_platform.sources.http import HeaderAuth, pages, raw_row, redact, rest_client, status_hook
from etl_platform.sources.lineage import PARTITION_DATE, RECORD, RunContext, apply_raw_hints, parse_time
from etl_platform.sources.pages import OUTSIDE_WINDOW, ApiStats

SECONDARY_LIMIT_WAIT = 60.0  # GitHub: without Retry-After, wait at least a minute
HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}


def is_rate_limited(response: Response) -> bool:
    """A 403/429 that is GitHub's primary or secondary rate limit, not a permission problem."""
    if response.status_code not in (403, 429):
        return False
    headers = response.headers
    return (
        headers.get("X-RateLimit-Remaining") == "0"
        or "Retry-After" in headers
        or "rate limit" in (response.text or "").lower()
    )


def wait_for_rate_limit(response: Response, *args: Any, **kwargs: Any) -> None:
    """Response hook: sleep until the rate limit resets (capped) when it is exhausted."""
    headers, cap = response.headers, github_max_rate_limit_wait_s()
    if "Retry-After" in headers:
        return  # dlt's retry waits Retry-After
    if headers.get("X-RateLimit-Remaining") == "0":
        try:
            reset = float(headers.get("X-RateLimit-Reset") or 0)
        except ValueError:
            reset = 0.0
        reset = reset / 1000 if reset > 1e11 else reset  # milliseconds
        wait = min(max(reset - time.time(), 0.0) + 1.0, cap)
    elif is_rate_limited(response):
        wait = min(SECONDARY_LIMIT_WAIT, cap)
    else:
        return
    time.sleep(wait)


class LinkPaginator(HeaderLinkPaginator):
    """Link rel="next" paging that stops on a next URL already requested."""

    def __init__(self) -> None:
        super().__init__()
        self._requested: set[str] = set()

    def update_state(self, response: Response, data: list[Any] | None = None) -> None:
        self._requested.add(response.url)
        super().update_state(response, data)
        if self._next_reference and urljoin(response.url, self._next_reference) in self._requested:
            self._next_reference = None


def commit_time(commit: dict[str, Any]) -> dt.datetime | None:
    info = commit.get("commit") or {}
    return parse_time((info.get("committer") or {}).get("date")) or parse_time((info.get("author") or {}).get("date"))


def build_github_source(config: GithubSource, ctx: RunContext) -> DltSource:
    """The dlt source of some GitHub repositories for one run; no I/O until iterated."""
    github = _Repositories(config, ctx)

    def pull_requests() -> Iterator[list[dict[str, Any]]]:
        yield from github.pull_requests()

    pulls = dlt.resource(pull_requests, name="pull_requests")

    def children(resource: str, endpoint: str, event_time: Callable[[dict[str, Any]], Any], row_key: Any) -> Any:
        def rows(prs: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
            yield from github.children(prs, resource, endpoint, event_time, row_key)

        return dlt.transformer(rows, data_from=pulls, name=resource)

    def dated(
        resource: str, endpoint: str, event_time: Callable[[dict[str, Any]], Any], ignore: tuple[int, ...] = ()
    ) -> Any:
        def rows() -> Iterator[list[dict[str, Any]]]:
            yield from github.dated(resource, endpoint, event_time, ignore)

        return dlt.resource(rows, name=resource)

    resources = [
        pulls,
        children("reviews", "reviews", lambda r: parse_time(r.get("submitted_at")), lambda _, __, r: str(r.get("id"))),
        children("commits", "commits", commit_time, lambda repo, n, r: f"{repo}#{n}@{r.get('sha')}"),
        dated("releases", "releases", lambda r: r.get("published_at") or r.get("created_at")),
        dated("deployments", "deployments", lambda r: r.get("created_at"), ignore=(404,)),
    ]
    for resource in resources:
        apply_raw_hints(resource, schema_contract=config.schema_contract)
    source = DltSource(dlt.Schema(config.name), "github", resources)
    source.etl_stats = github.stats  # filled while extracting
    return source


class _Repositories:
    """What the resources of one GitHub source read for one run: the client (connected on first
    use), the window and the stats they fill."""

    def __init__(self, config: GithubSource, ctx: RunContext) -> None:
        self.config = config
        self.ctx = ctx
        self.window = ctx.window
        self.stats = ApiStats()
        self.what = f"github source {config.name!r}"
        self.per_page = {"per_page": config.page_size}
        self._connected: tuple[RESTClient, tuple[str, ...], list[Any]] | None = None

    def connect(self) -> tuple[RESTClient, tuple[str, ...], list[Any]]:
        """The client, the secrets to redact and the response hooks (on first use, then kept)."""
        if self._connected is None:
            config, what = self.config, self.what
            token = secret(config.token_env, what=f"{what} token_env")
            auth = HeaderAuth.bearer(token, config.base_url, config.allowed_hosts, what) if token else None
            secrets = (token,) if token else ()
            client = rest_client(
                config.base_url, auth=auth, headers=HEADERS, retryable=is_rate_limited, stats=self.stats, what=what
            )
            hooks = [wait_for_rate_limit, status_hook(what, secrets, retryable=is_rate_limited)]
            self._connected = client, secrets, hooks
        return self._connected

    def pull_requests(self) -> Iterator[list[dict[str, Any]]]:
        """Each repository's pull requests updated in the window, newest first, until older ones."""
        client, secrets, hooks = self.connect()
        params = {"state": "all", "sort": "updated", "direction": "desc", **self.per_page}
        for repo in self.config.repositories:
            seen: set[str] = set()
            for items, url in pages(
                client, f"repos/{repo}/pulls", params=params, paginator=LinkPaginator(), hooks=hooks
            ):
                rows, older = self._pull_request_rows(repo, items, redact(url, secrets), seen)
                if rows:
                    yield rows
                if older:
                    break
        self.stats.log_skipped(self.config.name, "pull_requests")

    def _pull_request_rows(
        self, repo: str, items: list[dict[str, Any]], position: str, seen: set[str]
    ) -> tuple[list[dict[str, Any]], bool]:
        """The rows of one page of pull requests, and whether it reached those older than the window."""
        rows: list[dict[str, Any]] = []
        for index, pr in enumerate(items):
            updated = parse_time(pr.get("updated_at"))
            if updated is not None and updated < self.window.start:  # newest first: the rest is older
                self.stats.skip("pull_requests", OUTSIDE_WINDOW, len(items) - index)
                return rows, True
            key = f"{repo}#{pr.get('number')}"
            day = self.window.day_of(updated)
            if key in seen:
                self.stats.skip("pull_requests", "repeated")
                continue
            if day is None:
                self.stats.skip("pull_requests", OUTSIDE_WINDOW if updated else "no updated_at")
                continue
            seen.add(key)
            rows.append(
                raw_row(
                    self.ctx,
                    "pull_requests",
                    pr,
                    day=day,
                    position=position,
                    row_key=key,
                    event_time=updated,
                    repository=repo,
                )
            )
        return rows, False

    def children(
        self,
        prs: list[dict[str, Any]],
        resource: str,
        endpoint: str,
        event_time: Callable[[dict[str, Any]], Any],
        row_key: Any,
    ) -> Iterator[list[dict[str, Any]]]:
        """A list under each pull request (reviews, commits), on the pull request's day."""
        client, secrets, hooks = self.connect()
        for pr in prs:
            repo, number = pr["repository"], pr[RECORD].get("number")
            path = f"repos/{repo}/pulls/{number}/{endpoint}"
            for items, url in pages(client, path, params=self.per_page, paginator=LinkPaginator(), hooks=hooks):
                position = redact(url, secrets)
                out = [
                    raw_row(
                        self.ctx,
                        resource,
                        rec,
                        day=pr[PARTITION_DATE],
                        position=position,
                        row_key=row_key(repo, number, rec),
                        event_time=event_time(rec),
                        repository=repo,
                        pull_number=number,
                    )
                    for rec in items
                ]
                if out:
                    yield out

    def dated(
        self, resource: str, endpoint: str, event_time: Callable[[dict[str, Any]], Any], ignore: tuple[int, ...]
    ) -> Iterator[list[dict[str, Any]]]:
        """Newest-first lists; stop after a page with nothing created or dated at/after window start."""
        client, secrets, hooks = self.connect()
        hooks = hooks[:-1] + [status_hook(self.what, secrets, retryable=is_rate_limited, ignore=ignore)]
        for repo in self.config.repositories:
            for items, url in pages(
                client, f"repos/{repo}/{endpoint}", params=self.per_page, paginator=LinkPaginator(), hooks=hooks
            ):
                out, current = self._dated_rows(resource, repo, items, redact(url, secrets), event_time)
                if out:
                    yield out
                if not current:
                    break
        self.stats.log_skipped(self.config.name, resource)

    def _dated_rows(
        self,
        resource: str,
        repo: str,
        items: list[dict[str, Any]],
        position: str,
        event_time: Callable[[dict[str, Any]], Any],
    ) -> tuple[list[dict[str, Any]], bool]:
        """The rows of one page in the window, and whether the page had anything current."""
        out, current = [], False
        for rec in items:
            at = parse_time(event_time(rec))
            created = parse_time(rec.get("created_at"))
            current |= any(t is None or t >= self.window.start for t in (at, created))
            day = self.window.day_of(at)
            if day is None:
                self.stats.skip(resource, OUTSIDE_WINDOW if at else "no event time")
                continue
            out.append(
                raw_row(
                    self.ctx,
                    resource,
                    rec,
                    day=day,
                    position=position,
                    row_key=str(rec.get("id")),
                    event_time=at,
                    repository=repo,
                )
            )
        return out, current
