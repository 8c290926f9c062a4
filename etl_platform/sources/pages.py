"""API pages read as a stream, for every API source (REST, Jira, GitHub).

dlt's `RESTClient.paginate` holds a whole response in memory twice (the bytes and the parsed
JSON; paginators parse it again), which took a 200 MB page to 3.9 GB. `StreamingClient` keeps
dlt's requests, hooks, auth and paginators, and reads each body differently:

- the body goes to a temporary file as it arrives (`Body`); its items are parsed from there by
  `ijson` (yajl2_c backend) one by one and handed on in batches of `BATCH_ITEMS`, so memory
  holds a batch, not the page. Paginators that read the body (`response.json()`) get the page
  without its items (`Body.envelope`); bodies up to `SMALL_BODY` are parsed whole as before.
- an empty body (204 No Content, or an empty 200) is an empty page, not a failure.
- bounded input (`bounds`), checked while the body arrives, before any parse: at most
  ETL_MAX_PAGE_BYTES after decompression, nested at most ETL_MAX_JSON_DEPTH levels (a byte scan),
  within ETL_HTTP_REQUEST_DEADLINE_S; a refusal names the limit, the source, the page and its URL.
  Each request first notes its page number (`isolation.progress`), so that a tenant's limit
  (memory, deadline) names where it was.
- a record nested deeper than `MAX_DEPTH` keeps everything below that level as JSON text
  (`limit_depth`): the record and its siblings load, nothing of it is lost, and dlt (which
  writes JSON with orjson, limited to 255 levels) never meets the depth.

`ApiStats` counts what a source read and what it skipped, with the reason, for the asset layer.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

import ijson
from dlt.common import jsonpath
from dlt.sources.helpers.rest_client import RESTClient
from dlt.sources.helpers.rest_client.client import PageData
from dlt.sources.helpers.rest_client.detector import find_response_page_data
from dlt.sources.helpers.rest_client.exceptions import IgnoreResponseException
from dlt.sources.helpers.rest_client.paginators import BasePaginator
from requests import Response

from etl_platform.config.settings import InputLimits
from etl_platform.isolation import progress
from etl_platform.security.redaction import redact_url
from etl_platform.sources import bounds

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 16
BATCH_ITEMS = 1000
SMALL_BODY = 8 << 20  # bodies up to this size are parsed whole (exact dlt semantics, any JSONPath)
MAX_DEPTH = 64  # container levels kept as JSON in a record; deeper subtrees become JSON text
_COMPLEX_SELECTOR = set("[]*?()@,:'\"")
_VALUE_EVENTS = frozenset({"start_map", "start_array", "string", "number", "boolean", "null"})


@dataclass
class ApiStats:
    """What an API source read (pages, bytes, rows) and did not load, with the reason."""

    pages: int = 0
    bytes: int = 0
    rows: int = 0
    empty_pages: int = 0  # 204 No Content or an empty body
    deep_records: int = 0  # records with subtrees below MAX_DEPTH kept as JSON text
    outside_window: int = 0
    skipped_by_reason: Counter[str] = field(default_factory=Counter)  # "<resource>: <why>" -> rows
    # rows placed by another time than their own event time: "<resource>: <what was used>" -> rows
    event_time_fallbacks: Counter[str] = field(default_factory=Counter)
    warning: str | None = None

    def skip(self, resource: str, reason: str, count: int = 1) -> None:
        """Count rows not loaded (and not rejected): `outside_window` is one reason of them."""
        self.skipped_by_reason[f"{resource}: {reason}"] += count
        if reason == OUTSIDE_WINDOW:
            self.outside_window += count

    def log_skipped(self, source: str, resource: str) -> None:
        """Log a resource's rows read and not loaded, by reason (once its pages are read)."""
        for reason, count in sorted(self.skipped_by_reason.items()):
            if reason.startswith(f"{resource}: "):
                logger.info("%s.%s: %d rows not loaded: %s", source, resource, count, reason.split(": ", 1)[1])

    def reset(self) -> None:
        self.__dict__.update(type(self)().__dict__)

    def as_metadata(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped_by_reason"] = dict(self.skipped_by_reason)
        data["event_time_fallbacks"] = dict(self.event_time_fallbacks)
        return data


OUTSIDE_WINDOW = "outside the window"


def _json_text(value: Any) -> str:
    """`value` as compact JSON, without recursion (any depth)."""

    class Raw(str):
        pass

    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Raw):
            out.append(item)
        elif isinstance(item, dict):
            pairs = list(item.items())
            stack.append(Raw("}"))
            for index in range(len(pairs) - 1, -1, -1):
                key, child = pairs[index]
                stack.append(child)
                stack.append(Raw(("," if index else "") + json.dumps(str(key), ensure_ascii=False) + ":"))
            out.append("{")
        elif isinstance(item, list):
            stack.append(Raw("]"))
            for index in range(len(item) - 1, -1, -1):
                stack.append(item[index])
                if index:
                    stack.append(Raw(","))
            out.append("[")
        else:
            out.append(json.dumps(item, ensure_ascii=False, default=str))
    return "".join(out)


def limit_depth(record: Any, limit: int = MAX_DEPTH) -> int:
    """Replace, in place, each non-empty container nested deeper than `limit` levels by its JSON
    text; the number replaced."""
    if not isinstance(record, (dict, list)):
        return 0
    cut = 0
    stack = [(record, 1)]
    while stack:
        node, depth = stack.pop()
        for key, child in list(node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(child, (dict, list)) and child:
                if depth >= limit:
                    node[key] = _json_text(child)
                    cut += 1
                else:
                    stack.append((child, depth + 1))
    return cut


def _prefix(selector: str) -> str | None:
    """The ijson prefix of a simple selector ('data.items', '$', '$.data'); None for JSONPath
    that needs the whole document (filters, wildcards, slices)."""
    path = selector.strip()
    path = path[1:] if path.startswith("$") else path
    path = path.lstrip(".")
    if _COMPLEX_SELECTOR & set(path):
        return None
    return path


class Body:
    """A response body spooled to a temporary file (see the module docstring)."""

    def __init__(
        self,
        response: Response,
        limits: InputLimits | None = None,
        deadline: bounds.Deadline | None = None,
        where: str = "API page",
    ) -> None:
        limits = limits or InputLimits()
        deadline = deadline or bounds.Deadline(limits.request_deadline_s, where)
        depth = bounds.DepthScan(limits.json_depth, where)
        self._file: IO[bytes] = tempfile.TemporaryFile()
        self.size = 0
        first = b""
        try:
            for chunk in bounds.response_chunks(response, deadline, CHUNK_BYTES):
                if not first:
                    first = chunk.lstrip()[:1]
                self.size += len(chunk)
                if self.size > limits.page_bytes:
                    raise bounds.InputLimitError(
                        f"{where}: more than ETL_MAX_PAGE_BYTES = {bounds.size(limits.page_bytes)} after "
                        "decompression: refused"
                    )
                depth.feed(chunk)
                self._file.write(chunk)
        except BaseException:
            self._file.close()
            raise
        self.first = first  # the first non-blank byte ("" for an empty body)
        self._whole: Any = None
        self._parsed = False
        self._skip: str | None = None  # the ijson prefix of the items (large bodies)

    def close(self) -> None:
        self._file.close()

    @property
    def empty(self) -> bool:
        return not self.first

    def _stream(self) -> IO[bytes]:
        self._file.seek(0)
        return self._file

    def whole(self) -> Any:
        """The parsed body; {} when empty. Python's parser (as requests uses) unless the body
        nests deeper than its recursion limit."""
        if not self._parsed:
            if self.empty:
                self._whole = {}
            else:
                try:
                    self._whole = json.loads(self._stream().read())
                except RecursionError:
                    self._whole = next(_items(self._stream, ""))
            self._parsed = True
        return self._whole

    def items(self, selector: str | None) -> Iterator[Any]:
        """The page's items (dlt's semantics: the selected list, or the selected value as one item)."""
        if self.empty:
            return
        prefix = _prefix(selector) if selector else None
        if self.size <= SMALL_BODY or (selector and prefix is None):
            yield from _selected(self.whole(), selector)
            return
        if prefix is None:  # no selector: a top-level list, or where dlt's detector finds the list
            prefix = "" if self.first == b"[" else self._detected_prefix()
        kind = self._kind_at(prefix)
        if kind == "start_array":
            self._skip = f"{prefix}.item" if prefix else "item"
            yield from _items(self._stream, self._skip)
        elif kind is not None and kind != "null":
            yield from _items(self._stream, prefix)

    def _detected_prefix(self) -> str:
        """Where dlt's detector finds the page's list, judged on a skeleton of the body in which
        each list holds only as many Nones as it has items (one pass of ijson events)."""
        builder, sizes = ijson.ObjectBuilder(), Counter[str]()
        for prefix, event, value in _events(self._stream):
            parts = prefix.split(".")
            if "item" in parts:
                if parts[-1] == "item" and "item" not in parts[:-1] and event in _VALUE_EVENTS:
                    sizes[prefix[: -len(".item")]] += 1
                continue
            builder.event(event, value)
        skeleton = getattr(builder, "value", {})
        for at, size in sizes.items():
            parent = skeleton
            *path, last = at.split(".")
            for key in path:
                parent = parent[key]
            parent[last] = [None] * size
        path, _ = find_response_page_data(skeleton) if isinstance(skeleton, dict) else ((), None)
        return _prefix(".".join(path)) or ""

    def _kind_at(self, prefix: str) -> str | None:
        for at, event, _ in _events(self._stream):
            if at == prefix and event not in ("map_key", "end_map", "end_array"):
                return event
        return None

    def envelope(self) -> Any:
        """The body for paginators: whole when small, else without the items (their list empty)."""
        if self._skip is None:
            return self.whole()
        return _without(self._stream, self._skip)


def _items(stream: Callable[[], IO[bytes]], prefix: str) -> Iterator[Any]:
    """The values at `prefix` (ijson)."""
    return _tolerant(lambda backend: backend.items(stream(), prefix, use_float=True))


def _events(stream: Callable[[], IO[bytes]]) -> Iterator[tuple[str, str, Any]]:
    """ijson's (prefix, event, value) of the body."""
    return _tolerant(lambda backend: backend.parse(stream(), use_float=True))


def _tolerant(read: Callable[[Any], Iterator[Any]]) -> Iterator[Any]:
    """`read(ijson)`. yajl cannot hold an integer beyond 64 bits: from where it stopped, ijson's
    Python backend (slower, exact) reads the rest."""
    done = 0
    try:
        for value in read(ijson):
            yield value
            done += 1
    except ijson.JSONError as exc:
        if "integer overflow" not in str(exc):
            raise
        for index, value in enumerate(read(ijson.get_backend("python"))):
            if index >= done:
                yield value


def _selected(document: Any, selector: str | None) -> list[Any]:
    if not selector:
        path, _ = find_response_page_data(document) if isinstance(document, dict) else ((), None)
        selector = ".".join(path) or "$"
    data: Any = jsonpath.find_values(selector, document)
    data = data[0] if isinstance(data, list) and len(data) == 1 else data
    if data is None:
        return []
    return data if isinstance(data, list) else [data]


def _without(stream: Callable[[], IO[bytes]], skip: str) -> Any:
    """The document with the list at `skip`'s parent left empty (built from ijson events)."""
    builder = ijson.ObjectBuilder()
    inside = skip + "."
    for prefix, event, value in _events(stream):
        if prefix == skip or prefix.startswith(inside):
            continue
        builder.event(event, value)
    return getattr(builder, "value", {})


class StreamingClient(RESTClient):
    """dlt's RESTClient, with bodies read as a stream (see the module docstring)."""

    def __init__(
        self,
        *args: Any,
        stats: ApiStats | None = None,
        batch_items: int = BATCH_ITEMS,
        what: str = "API source",
        limits: InputLimits | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.stats = stats or ApiStats()
        self.batch_items = batch_items
        self.what = what  # names the source in a refusal
        self.limits = limits or InputLimits.from_env()

    def paginate(  # type: ignore[override]
        self,
        path: str = "",
        method: str = "GET",
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        auth: Any = None,
        paginator: BasePaginator | None = None,
        data_selector: str | None = None,
        hooks: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        data: Any = None,
        **kwargs: Any,
    ) -> Iterator[PageData[Any]]:
        """dlt's `paginate`, a page at a time in batches; the paginator sees the page after its items."""
        paginator = paginator if paginator else copy.deepcopy(self.paginator)
        auth = auth or self.auth
        data_selector = data_selector or self.data_selector
        hooks = hooks or {}
        if "response" not in hooks:
            hooks["response"] = [self._create_response_handler()]
        request = self._create_request(
            path, method, headers=headers, params=params, json=json, data=data, auth=auth, hooks=hooks
        )
        if paginator:
            paginator.init_request(request)
        page = 0
        while True:
            page += 1
            progress.note(page=page)
            try:
                response = self._send_request(request, stream=True, **kwargs)
            except IgnoreResponseException:
                break
            # from the answer on: dlt's retries and a rate limit's wait come before (their own settings)
            where = f"{self.what}, page {page} ({redact_url(response.url)})"
            body = Body(response, self.limits, bounds.Deadline(self.limits.request_deadline_s, where), where)
            try:
                self.stats.pages += 1
                self.stats.bytes += body.size
                self.stats.empty_pages += body.empty
                response.json = _once(body.envelope)  # type: ignore[method-assign]
                count, sample = 0, []
                for batch in _batches(body.items(data_selector), self.batch_items):
                    self.stats.deep_records += sum(limit_depth(item) > 0 for item in batch)
                    count += len(batch)
                    sample = sample or batch[:1]
                    yield PageData(batch, request=request, response=response, paginator=paginator, auth=auth)
                if paginator is None:
                    paginator = self.detect_paginator(response, sample)
                paginator.update_state(response, _PageItems(body, data_selector, count))
                paginator.update_request(request)
            finally:
                body.close()
            if not paginator.has_next_page:
                break


def _once(compute: Callable[[], Any]) -> Callable[..., Any]:
    """`compute()` on the first call, the same value after (paginators may ask several times)."""
    done: list[Any] = []

    def value(*args: Any, **kwargs: Any) -> Any:
        if not done:
            done.append(compute())
        return done[0]

    return value


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _PageItems:
    """The items of a page for a paginator: their count, read again from the body when iterated."""

    def __init__(self, body: Body, selector: str | None, count: int) -> None:
        self._body, self._selector, self._count = body, selector, count

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[Any]:
        return iter(self._body.items(self._selector))

