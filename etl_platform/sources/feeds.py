"""RSS and Atom feeds as a dlt source with one resource, ``entries``.

``build_feed_source(config, location, ctx)`` does no I/O: the feed is fetched (http(s) with dlt's
retrying ``requests`` client, or a local file) and parsed by ``feedparser`` when dlt iterates the
resource. feedparser handles encodings, namespaces and every RSS/RDF/Atom version.

One row per entry and partition day:

- ``_etl_record``: feedparser's entry as a JSON object, field names unchanged; the time tuples
  (``*_parsed``) become ISO-8601 UTC strings, and ``_etl_feed`` holds the feed's title, link, id
  and version. The entry's top-level text fields (``title``, ``link``, ``published``...) are also
  plain columns; nested ones (``links``, ``tags``, ``content``...) live only in the record.
- ``_etl_row_key``: the entry id (guid / atom:id / rdf:about), else its link, else a content hash.
- ``_etl_event_time``: published, else updated (UTC). A dated entry belongs to the window day of
  its event time; entries outside the window are skipped and counted. An undated entry is a
  snapshot row stamped with every day of the window, so a multi-day run loads the same rows as
  one run per day. ``_etl_position`` is the feed URL or path.

An ill-formed feed that still yields entries is loaded, with feedparser's complaint kept as a
warning. A document that yields no entries and is empty, ill-formed or not a feed raises
``FeedFormatError`` (a ``PermanentSourceError``) naming tenant, source and location; a well-formed
feed without entries loads nothing. Fetch failures raise ``FeedError`` with the cause chained.
URLs in rows and messages are redacted (``redact_url``).

Stats: the returned source carries ``etl_stats``, a ``FeedStats`` filled while dlt iterates
(reset at each iteration) for materialization metadata (``etl_stats.as_metadata()``):
``entries_read``, ``rows_emitted``, ``outside_window`` (dated entries outside the window),
``duplicates`` (repeated row keys within a day, dropped), ``bytes`` (document size), ``warning``
(feedparser's bozo text, or None), ``version``, ``feed_title``, ``encoding`` (what feedparser
read) and ``encoding_source``: ``declared`` (a BOM, the XML declaration or the HTTP charset),
``utf-8 (valid)``, or ``detected``: a document that declares nothing and is not valid UTF-8 is
read in the encoding `charset-normalizer` finds (feedparser alone would guess windows-1252 and
store mojibake).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import dlt
import feedparser
from dlt.extract.source import DltSource
from dlt.sources.helpers import requests

from etl_platform.config.models import FeedSource
from etl_platform.security.redaction import redact_text, redact_url
from etl_platform.sources import bounds
from etl_platform.sources.content import bom_encoding, detect_encoding, is_utf8
from etl_platform.sources.errors import PermanentSourceError
from etl_platform.sources.lineage import RECORD, RunContext, apply_raw_hints, content_key

logger = logging.getLogger(__name__)

RESOURCE = "entries"
FEED_KEY = "_etl_feed"  # feed-level info added to each record
ACCEPT = "application/atom+xml, application/rss+xml, application/rdf+xml, application/xml;q=0.9, */*;q=0.5"
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
_CHARSET = re.compile(r"charset\s*=", re.IGNORECASE)


class FeedError(RuntimeError):
    """The feed could not be fetched or read; the message names tenant, source and location.
    The cause is chained (an HTTP 404 stays permanent, a 5xx after retries transient)."""


class FeedFormatError(PermanentSourceError, FeedError):
    """Not a usable feed (empty, ill-formed without entries, not a feed, unsupported URL scheme):
    retrying cannot help."""


@dataclass
class FeedStats:
    """What one iteration of the feed did (see the module docstring)."""

    entries_read: int = 0
    rows_emitted: int = 0
    outside_window: int = 0
    duplicates: int = 0
    bytes: int = 0
    warning: str | None = None  # feedparser's bozo complaint about a feed it could still read
    version: str | None = None
    feed_title: str | None = None
    encoding: str | None = None
    encoding_source: str | None = None

    def reset(self) -> None:
        self.__dict__.update(asdict(FeedStats()))

    def as_metadata(self) -> dict[str, Any]:
        return asdict(self)


def build_feed_source(config: FeedSource, location: str, ctx: RunContext) -> DltSource:
    """The dlt source of one feed: resource ``entries`` with the raw-table hints."""
    stats = FeedStats()
    position = redact_url(location)  # a private feed's token stays out of rows and messages
    where = f"tenant {ctx.tenant_id!r}, source {config.name!r}, feed {position}"

    def entries() -> Iterator[dict[str, Any]]:
        stats.reset()
        data, headers = _fetch(location, where)
        stats.bytes = len(data)
        parsed = _parse(data, headers, where, stats)
        yield from _rows(parsed, position, ctx, stats, snapshot=config.snapshot)

    resource = apply_raw_hints(dlt.resource(entries, name=RESOURCE), schema_contract=config.schema_contract)

    @dlt.source(name=config.name, section="feeds")
    def feed() -> Any:
        return resource

    source = feed()
    source.etl_stats = stats
    return source


def _fetch(location: str, where: str) -> tuple[bytes, dict[str, str]]:
    """The document's bytes and the HTTP headers feedparser uses (charset, base URL). Bounded
    (`bounds`): at most ETL_MAX_FEED_BYTES after decompression, read as it arrives; an http(s)
    request within ETL_HTTP_REQUEST_DEADLINE_S; a local path only inside the data root."""
    limits = bounds.limits()
    cap = limits.feed_bytes
    too_big = f"{where}: more than ETL_MAX_FEED_BYTES = {bounds.size(cap)} after decompression: refused"
    scheme = urlsplit(location).scheme.lower()
    if scheme in ("http", "https"):
        try:
            response = requests.get(location, headers={"Accept": ACCEPT}, stream=True)
            deadline = bounds.Deadline(limits.request_deadline_s, where)  # from the answer (after dlt's retries)
            headers = {"content-location": redact_url(response.url)}  # the base of relative links
            if response.headers.get("Content-Type"):
                headers["content-type"] = response.headers["Content-Type"]
            data = bytearray()
            for chunk in bounds.response_chunks(response, deadline):
                data += chunk
                if len(data) > cap:
                    raise bounds.InputLimitError(too_big)
        except requests.RequestException as exc:
            raise FeedError(f"{where}: could not fetch the feed: {redact_text(str(exc))}") from exc
        return bytes(data), headers
    if scheme == "file":
        location = url2pathname(urlsplit(location).path)
    elif scheme:
        raise FeedFormatError(f"{where}: unsupported URL scheme {scheme!r} (expected http(s) or a path)")
    path = bounds.open_local(location, where)  # at open time: a symlink may have changed since the load
    try:
        with open(path, "rb") as handle:
            data = handle.read(cap + 1)
    except OSError as exc:
        raise FeedError(f"{where}: could not read the feed file: {exc}") from exc
    if len(data) > cap:
        raise bounds.InputLimitError(too_big)
    return data, {}


def _declare_encoding(data: bytes, headers: dict[str, str], stats: FeedStats) -> dict[str, str]:
    """`headers` for feedparser, with the charset `charset-normalizer` finds when the document
    declares none (no BOM, XML declaration or HTTP charset) and is not valid UTF-8."""
    if bom_encoding(data) or _XML_ENCODING.match(data) or _CHARSET.search(headers.get("content-type", "")):
        stats.encoding_source = "declared"
        return headers
    if is_utf8(data, complete=True):
        stats.encoding_source = "utf-8 (valid)"
        return headers
    detected = detect_encoding(data)
    if detected is None:
        return headers
    stats.encoding_source = "detected"
    media = headers.get("content-type", "application/xml").split(";")[0].strip() or "application/xml"
    return {**headers, "content-type": f"{media}; charset={detected}"}


def _parse(data: bytes, headers: dict[str, str], where: str, stats: FeedStats) -> Any:
    if not data.strip():
        raise FeedFormatError(f"{where}: empty document (0 entries)")
    headers = _declare_encoding(data, headers, stats)
    parsed = feedparser.parse(data, response_headers=headers)
    exc = parsed.get("bozo_exception") if parsed.bozo else None
    reason = f"{type(exc).__name__}: {exc}" if exc is not None else None
    if not parsed.entries:
        # a mislabelled charset alone does not make a feed unreadable
        if reason and not isinstance(exc, feedparser.CharacterEncodingOverride):
            raise FeedFormatError(f"{where}: not a well-formed feed and no entries found ({reason})")
        if not parsed.get("version"):
            raise FeedFormatError(f"{where}: not an RSS or Atom feed (feedparser recognised no format)")
    if reason:
        logger.warning("%s: feed is not well-formed, loading what feedparser read: %s", where, reason)
    stats.warning = reason
    stats.version = parsed.get("version") or None
    stats.feed_title = parsed.feed.get("title")
    stats.encoding = parsed.get("encoding") or None
    if stats.encoding_source == "detected":
        logger.warning("%s: no encoding declared and not UTF-8: read as %s (detected)", where, stats.encoding)
    return parsed


def _rows(
    parsed: Any, position: str, ctx: RunContext, stats: FeedStats, snapshot: bool = False
) -> Iterator[dict[str, Any]]:
    feed_info = {k: parsed.feed.get(k) for k in ("title", "link", "id")} | {"version": stats.version}
    seen: set[tuple[dt.date, str]] = set()
    for entry in parsed.entries:
        stats.entries_read += 1
        entry = dict(entry)  # plain lookups: FeedParserDict maps 'updated' to 'published'
        event_time = _event_time(entry)
        if event_time is None or snapshot:  # snapshot feeds: every entry on each loaded day
            days = ctx.window.days
        else:
            day = ctx.window.day_of(event_time)
            if day is None:
                stats.outside_window += 1
                continue
            days = (day,)
        record = _jsonable(entry) | {FEED_KEY: feed_info}
        columns = {k: v for k, v in record.items() if isinstance(v, (str, int, float, bool))}
        key = _row_key(entry)
        for day in days:
            if (day, key) in seen:
                stats.duplicates += 1
                continue
            seen.add((day, key))
            stats.rows_emitted += 1
            lineage = ctx.lineage(
                resource=RESOURCE, partition_date=day, position=position, row_key=key, event_time=event_time
            )
            yield columns | lineage | {RECORD: record}


def _row_key(entry: dict[str, Any]) -> str:
    if entry.get("id") or entry.get("link"):
        return str(entry.get("id") or entry.get("link"))
    contents = [c.get("value") for c in entry.get("content", [])]
    return content_key(entry.get("title"), entry.get("summary"), entry.get("published"), entry.get("updated"), contents)


def _event_time(entry: dict[str, Any]) -> dt.datetime | None:
    """Published, else updated: feedparser's parsed times are UTC tuples."""
    for name in ("published_parsed", "updated_parsed"):
        if entry.get(name):
            return _utc(entry[name])
    return None


def _utc(value: time.struct_time) -> dt.datetime:
    return dt.datetime(*value[:6], tzinfo=dt.timezone.utc)


def _jsonable(value: Any) -> Any:
    """feedparser's dicts as plain JSON values; time tuples as ISO strings."""
    if isinstance(value, time.struct_time):
        return _utc(value).isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
