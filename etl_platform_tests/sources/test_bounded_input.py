"""Bounded input (issue 22, item 2): a hostile source fails with a named limit, before the
expensive step, instead of taking its tenant's memory or time. Each attack from a local server
or file: a deeply nested page, gzip bombs (API page, feed, CSV file), a huge CSV field, a server
that sends a byte every 2 s. The invariant: a source cannot make its tenant's process spend more
than the limits say; the refusal is permanent and names the setting, the source and the position.
"""

from __future__ import annotations

import datetime as dt
import gzip
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etl_platform.config.models import FeedSource, RestApiSource
from etl_platform.security.redaction import exception_chain
from etl_platform.sources.bounds import DepthScan, InputLimitError
from etl_platform.sources.csv import source as csv_source
from etl_platform.sources.errors import PermanentSourceError
from etl_platform.sources.feeds import build_feed_source
from etl_platform.sources.lineage import RunContext, Window
from etl_platform.sources.rest_api import build_rest_api_source
from etl_platform_tests.support import csv_loads, dlt_loads
from etl_platform_tests.support.http_servers import LocalServer, Response

DAY = dt.date(2024, 1, 2)
CTX = RunContext("t1", "api", "run-1", Window((DAY,)))


def nested_page(depth: int = 50_000) -> bytes:
    """The issue's page: about 100 KB, 50,000 levels deep."""
    return b'[{"id":1,"x":' + b"[" * depth + b"]" * depth + b"}]"


def gzip_bomb(size: int, head: bytes = b'[{"id":1,"x":"', tail: bytes = b'"}]', fill: bytes = b"a") -> bytes:
    """A small gzip stream that expands to about `size` bytes (compressed a megabyte at a time)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = fill * (1 << 20)
    parts = [packer.compress(head)] + [packer.compress(chunk) for _ in range(size >> 20)]
    return b"".join(parts) + packer.compress(tail) + packer.flush()


def trickle(seconds: int = 20) -> Iterator[bytes]:
    """One byte every 2 s: never idle long enough for a read timeout."""
    yield b'[{"id":1,"title":"'
    for _ in range(seconds // 2):
        time.sleep(2)
        yield b"a"
    yield b'"}]'


def refusal(exc: BaseException) -> InputLimitError:
    """The InputLimitError along the cause chain (dlt wraps what a resource raises)."""
    found = [e for e in exception_chain(exc) if isinstance(e, InputLimitError)]
    assert found, f"no InputLimitError in {exc!r}"
    assert isinstance(found[0], PermanentSourceError)
    return found[0]


def rest(server: LocalServer, path: str = "items") -> Any:
    config = RestApiSource.model_validate(
        {
            "name": "api",
            "kind": "rest_api",
            "base_url": server.url,
            "resources": [{"name": "items", "path": path, "paginator": {"type": "single_page"}}],
        }
    )
    return build_rest_api_source(config, CTX)


def feed(location: str) -> Any:
    config = FeedSource.model_construct(name="news", kind="rss", url=location, snapshot=False, schema_contract="evolve")
    return build_feed_source(config, location, CTX)


def load_error(tmp_path: Path, source: Any, name: str = "api") -> InputLimitError:
    with pytest.raises(Exception) as caught:
        dlt_loads.pipeline(tmp_path, name).run(source)
    return refusal(caught.value)


# --- JSON depth -------------------------------------------------------------------------------------


def test_a_deeply_nested_page_is_refused_by_its_depth_before_any_parse(tmp_path: Path) -> None:
    body = nested_page()
    assert 99_000 < len(body) < 101_000
    with LocalServer() as server:
        server.route("/items", lambda req: Response(200, body, {"Content-Type": "application/json"}))
        tracemalloc.start()
        try:
            error = load_error(tmp_path, rest(server))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    message = str(error)
    assert "ETL_MAX_JSON_DEPTH = 512" in message and "source 'api'" in message and "page 1" in message
    assert f"{server.url}/items" in message
    assert peak < 50 << 20, peak  # ijson's way took gigabytes; the scan holds a chunk
    assert dlt_loads.table(tmp_path, "items") == []


def test_the_depth_scan_skips_strings_and_escapes_across_chunks() -> None:
    text = b'[{"a": "[[[[{{", "b": "\\"[[", "c": "\\\\", "d": [[1, {"e": "]]]}"}]]}]'
    for size in (1, 2, 3, 7, len(text)):
        scan = DepthScan(100, "here")
        for at in range(0, len(text), size):
            scan.feed(text[at : at + size])
        assert (scan.peak, scan.depth) == (5, 0), size
    with pytest.raises(InputLimitError, match="ETL_MAX_JSON_DEPTH = 4"):
        DepthScan(4, "here").feed(text)


def test_the_depth_limit_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_MAX_JSON_DEPTH", "3")
    with LocalServer() as server:
        server.route("/items", lambda req: Response(200, [{"id": 1, "a": {"b": [1]}}]))
        server.route("/flat", lambda req: Response(200, [{"id": 1, "a": [1]}]))
        error = load_error(tmp_path / "deep", rest(server))
        dlt_loads.pipeline(tmp_path / "flat", "api").run(rest(server, "flat"))
    assert "ETL_MAX_JSON_DEPTH = 3" in str(error)
    assert [r["id"] for r in dlt_loads.table(tmp_path / "flat", "items")] == [1]


# --- bytes after decompression ------------------------------------------------------------------------


def test_a_gzip_bomb_page_is_refused_by_the_page_cap(tmp_path: Path) -> None:
    bomb = gzip_bomb(512 << 20)
    assert len(bomb) < 1 << 20
    with LocalServer() as server:
        server.route("/items", lambda req: Response(200, bomb, {"Content-Type": "application/json",
                                                               "Content-Encoding": "gzip"}))
        started = time.monotonic()
        error = load_error(tmp_path, rest(server))
    assert "more than ETL_MAX_PAGE_BYTES = 64 MiB after decompression" in str(error)
    assert "source 'api'" in str(error) and "page 1" in str(error)
    assert time.monotonic() - started < 30  # stopped at 64 MiB, not 512


def test_a_gzip_bomb_feed_is_refused_by_the_feed_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_MAX_FEED_BYTES", str(4 << 20))
    bomb = gzip_bomb(64 << 20, b'<?xml version="1.0"?><rss version="2.0"><channel><title>', b"</title></channel></rss>")
    with LocalServer() as server:
        server.route("/feed", lambda req: Response(200, bomb, {"Content-Type": "application/rss+xml",
                                                              "Content-Encoding": "gzip"}))
        error = load_error(tmp_path, feed(f"{server.url}/feed"), "news")
    assert "more than ETL_MAX_FEED_BYTES = 4 MiB after decompression" in str(error)
    assert "source 'news'" in str(error) and f"{server.url}/feed" in str(error)


def test_a_gzip_bomb_csv_file_is_refused_by_the_file_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_MAX_FILE_BYTES", str(1 << 20))
    path = tmp_path / "orders.csv.gz"
    path.write_bytes(gzip.compress(b"id,note\n" + b"1,aaaa\n" * (2 << 20), 9))
    with pytest.raises(Exception) as caught:
        csv_loads.load(tmp_path, path)
    message = str(refusal(caught.value))
    assert "more than ETL_MAX_FILE_BYTES = 1 MiB after decompression" in message
    assert "source 'orders'" in message and str(path) in message


# --- CSV fields ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["fast path", "plain path"])
@pytest.mark.parametrize("multiline", [False, True], ids=["one line", "quoted lines"])
def test_a_huge_csv_field_is_refused_naming_its_line(
    fast: bool, multiline: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's 256 MB field, scaled down with the limit: 64 KiB allowed, 4 MB sent."""
    monkeypatch.setenv("ETL_MAX_CSV_FIELD_BYTES", str(64 << 10))
    monkeypatch.setattr(csv_source, "FAST_PASS", fast)
    huge = ("abcdefghi\n" * (400 << 10)) if multiline else "x" * (4 << 20)
    path = tmp_path / "orders.csv"
    path.write_text(f'id,note\n1,small\n2,"{huge}"\n3,after\n')
    with pytest.raises(Exception) as caught:
        csv_loads.load(tmp_path, path)
    message = str(refusal(caught.value))
    assert "ETL_MAX_CSV_FIELD_BYTES = 64 KiB" in message and "line 3" in message, message
    assert "source 'orders'" in message and str(path) in message


def test_fields_under_the_limit_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's csv module alone allows 128 KiB: the setting, not that, decides."""
    monkeypatch.setattr(csv_source, "FAST_PASS", False)
    path = tmp_path / "orders.csv"
    path.write_text(f'id,note\n1,"{"y" * (1 << 20)}"\n')
    pipeline, stats = csv_loads.load(tmp_path, path)
    assert (stats.rows_emitted, stats.rejects) == (1, 0)


# --- request deadline --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rest", "feed", "csv"])
def test_a_server_sending_a_byte_every_two_seconds_is_refused_by_the_request_deadline(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETL_HTTP_REQUEST_DEADLINE_S", "3")
    with LocalServer() as server:
        server.route("/items", lambda req: Response(200, trickle(), {"Content-Type": "application/json"}))
        url = f"{server.url}/items"
        started = time.monotonic()
        if kind == "csv":
            with pytest.raises(Exception) as caught:
                csv_loads.load(tmp_path, url)
            error = refusal(caught.value)
        else:
            error = load_error(tmp_path, rest(server) if kind == "rest" else feed(url))
        elapsed = time.monotonic() - started
    assert "took more than ETL_HTTP_REQUEST_DEADLINE_S = 3 s" in str(error)
    assert url in str(error)
    assert elapsed < 10, elapsed  # the per-read timeout alone never fires: 20 s


# --- redact before you cut --------------------------------------------------------------------------------


def test_a_secret_crossing_the_excerpt_cut_never_appears_even_as_a_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "tok_0123456789abcdefghijklmnopqrst"  # 34 characters
    monkeypatch.setenv("BOUNDED_TOKEN", token)
    config = RestApiSource.model_validate(
        {
            "name": "api",
            "kind": "rest_api",
            "base_url": "http://127.0.0.1:1",
            "auth": {"type": "bearer", "token_env": "BOUNDED_TOKEN"},
            "resources": [{"name": "items", "path": "items", "paginator": {"type": "single_page"}}],
        }
    )
    with LocalServer() as server:
        # the body echoes the token across character 300, where the excerpt is cut
        server.route("/items", lambda req: Response(403, "x" * 290 + token + " end"))
        config = config.model_copy(update={"base_url": server.url})
        with pytest.raises(Exception) as caught:
            dlt_loads.pipeline(tmp_path, "api").run(build_rest_api_source(config, CTX))
    errors = [e for e in exception_chain(caught.value) if isinstance(e, PermanentSourceError)]
    assert errors and "HTTP 403" in str(errors[0])
    text = " ".join(str(e) for e in exception_chain(caught.value))
    assert not any(token[:n] in text for n in range(4, len(token) + 1)), text
