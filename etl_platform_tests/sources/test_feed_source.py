"""The RSS/Atom source on real feeds: feedparser's corpus, our own feeds, a local server, DuckDB and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dlt
import duckdb
import feedparser
import pytest

from etl_platform.config.models import FeedSource
from etl_platform.loading.failures import tenant_failure
from etl_platform.sources.feeds import FeedError, FeedFormatError, FeedStats, build_feed_source
from etl_platform.sources.lineage import WRITE_DISPOSITION, RunContext, Window, contract
from etl_platform_tests.support.http_servers import LocalServer, Response

DATA = Path(__file__).resolve().parents[1] / "data" / "feeds"
DATASET = "tenant_t1"
UTC = dt.timezone.utc
MAR = {day: dt.date(2024, 3, day) for day in range(1, 6)}
SNAPSHOT_DAYS = (dt.date(2024, 1, 1), dt.date(2024, 1, 2))
HASH = re.compile(r"^[0-9a-f]{40}$")

# feedparser's corpus: the window day of each dated feed (None: undated, loaded as snapshot rows)
# and the row keys expected (HASH: no id and no link, so a content hash).
WELLFORMED: dict[str, tuple[dt.date | None, list[Any]]] = {
    "docs_example__atom03.xml": (dt.date(2004, 4, 20), ["tag:feedparser.org,2004-04-20:/docs/examples/atom03.xml:3"]),
    "docs_example__atom10.xml": (dt.date(2005, 11, 9), ["tag:feedparser.org,2005-11-09:/docs/examples/atom10.xml:3"]),
    "docs_example__base.xml": (dt.date(2004, 4, 20), ["tag:example.org,2004-04-20:/archives/000001.html"]),
    "docs_example__hcard.xml": (None, [HASH]),
    "docs_example__nonstandard_prefix.rdf": (None, ["http://www.example.org/1"]),
    "docs_example__prism.rdf": (None, ["http://www.example.org/1"]),
    "docs_example__rss10.rdf": (dt.date(2004, 5, 30), ["http://www.example.org/1"]),  # dc:date, UTC
    "docs_example__rss20.xml": (dt.date(2002, 9, 5), ["http://example.org/guid/1"]),
    "docs_example__rss20dc.xml": (dt.date(2002, 9, 4), ["1983@example.org"]),  # 13:54-05:00 -> 18:54Z
    "rdf__rss_version_10.xml": (None, []),
    "rss__rss_version_090.xml": (None, []),
    "rss__rss_version_091_netscape.xml": (None, []),
    "rss__rss_version_091_userland.xml": (None, []),
    "rss__rss_version_092.xml": (None, []),
    "rss__rss_version_093.xml": (None, []),
}


# --- helpers ------------------------------------------------------------------------------------


def context(*days: dt.date, timezone: str = "UTC", run_id: str = "run-1") -> RunContext:
    return RunContext(tenant_id="t1", source="news", run_id=run_id, window=Window(days, timezone))


def feed_source(location: str | Path, ctx: RunContext, contract: str = "evolve") -> Any:
    # the tenants file refuses a token in a URL; the location may still carry one (redaction tests)
    config = FeedSource(name="news", kind="rss", url=str(location).split("?", 1)[0], schema_contract=contract)
    return build_feed_source(config, str(location), ctx)


def load(source: Any, tmp_path: Path, db: str = "warehouse.duckdb") -> list[dict[str, Any]]:
    """Run a real dlt pipeline into a DuckDB file; the rows of tenant_t1.entries."""
    pipeline = dlt.pipeline(
        pipeline_name=f"feeds_{Path(db).stem}",
        destination=dlt.destinations.duckdb(str(tmp_path / db)),
        dataset_name=DATASET,
        pipelines_dir=str(tmp_path / "pipelines"),
    )
    pipeline.run(source)
    return duckdb_rows(tmp_path / db)


def duckdb_rows(path: Path) -> list[dict[str, Any]]:
    with duckdb.connect(str(path), read_only=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = 'entries'",
            [DATASET],
        ).fetchone()[0]
        if not found:
            return []
        cursor = conn.execute(f"SELECT * FROM {DATASET}.entries ORDER BY _etl_partition_date, _etl_row_key")
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    for row in rows:
        row["_etl_record"] = json.loads(row["_etl_record"])
    return rows


def feed_error(excinfo: pytest.ExceptionInfo[BaseException]) -> FeedError:
    """Our error, wherever dlt wrapped it."""
    exc: BaseException | None = excinfo.value
    while exc is not None and not isinstance(exc, FeedError):
        exc = exc.__cause__ or exc.__context__
    assert exc is not None, f"no FeedError behind {excinfo.value!r}"
    return exc


def expect_line(path: Path) -> str | None:
    """The `Expect:` condition in the leading comment of a feedparser test file."""
    match = re.search(rb"<!--(.*?)-->", path.read_bytes(), re.S)
    found = match and re.search(r"^\s*Expect:\s*(.+?)\s*$", match.group(1).decode("utf-8"), re.M)
    return found.group(1) if found else None


def iso(value: time.struct_time) -> str:
    return dt.datetime(*value[:6], tzinfo=UTC).isoformat()


# --- building -----------------------------------------------------------------------------------


def test_building_the_source_does_no_io(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.xml"
    source = feed_source(missing, context(MAR[1]), contract="freeze")
    assert source.name == "news"
    assert list(source.resources) == ["entries"]
    resource = source.resources["entries"]
    assert resource.table_name == "entries"
    assert resource.write_disposition == WRITE_DISPOSITION
    assert resource.schema_contract == contract("freeze")
    assert source.etl_stats == FeedStats()
    with pytest.raises(Exception) as excinfo:
        list(source)
    message = str(feed_error(excinfo))
    assert "tenant 't1'" in message and "source 'news'" in message and str(missing) in message
    # the tenants file refuses other schemes; the source guards on its own too
    with pytest.raises(ValueError, match="must be an http"):
        FeedSource(name="news", kind="rss", url="ftp://example.com/feed.xml")
    config = FeedSource(name="news", kind="rss", url="feed.xml")
    with pytest.raises(Exception) as excinfo:
        list(build_feed_source(config, "ftp://example.com/feed.xml", context(MAR[1])))
    assert "unsupported URL scheme 'ftp'" in str(feed_error(excinfo))
    assert tenant_failure(excinfo.value, "t1", "news").permanent  # not retried


# --- feedparser's corpus ------------------------------------------------------------------------


def test_expect_lines_of_the_feedparser_corpus(fixtures_dir: Path) -> None:
    """feedparser's convention: each test file's `Expect:` line holds over its parse result."""
    checked = 0
    for path in sorted((fixtures_dir / "feeds").glob("*/*.*")):
        condition = expect_line(path)
        if condition is None:  # the docs examples carry no Expect line
            continue
        result = feedparser.parse(path.read_bytes())
        assert eval(condition, {"__builtins__": {}}, result), f"{path.name}: {condition}"  # noqa: S307
        checked += 1
    assert checked >= 8


def test_corpus_is_the_one_these_tests_describe(fixtures_dir: Path) -> None:
    assert sorted(p.name for p in (fixtures_dir / "feeds/wellformed").iterdir()) == sorted(WELLFORMED)


@pytest.mark.parametrize("name", sorted(WELLFORMED))
def test_wellformed_feed_loads_into_duckdb(fixtures_dir: Path, tmp_path: Path, name: str) -> None:
    path = fixtures_dir / "feeds/wellformed" / name
    day, keys = WELLFORMED[name]
    days = (day,) if day else SNAPSHOT_DAYS
    parsed = feedparser.parse(path.read_bytes())
    assert not parsed.bozo
    condition = expect_line(path)
    if condition:
        assert eval(condition, {"__builtins__": {}}, parsed)  # noqa: S307

    source = feed_source(path, context(*days))
    rows = load(source, tmp_path)

    assert len(rows) == len(keys) * len(days)
    for row, (partition_day, key) in zip(rows, [(d, k) for d in days for k in keys]):
        assert row["_etl_partition_date"] == partition_day
        assert HASH.match(row["_etl_row_key"]) if key is HASH else row["_etl_row_key"] == key
        assert (row["_etl_tenant_id"], row["_etl_source"], row["_etl_resource"]) == ("t1", "news", "entries")
        assert row["_etl_position"] == str(path)
        assert row["_etl_run_id"] == "run-1"
        if day:
            assert row["_etl_event_time"].astimezone(UTC).date() == day
        else:
            assert row["_etl_event_time"] is None
        # the record is feedparser's entry: same field names, same values, times as ISO strings
        entry = dict(parsed.entries[0])
        record = row["_etl_record"]
        assert set(record) == set(entry) | {"_etl_feed"}
        for field, value in entry.items():
            if isinstance(value, time.struct_time):
                assert record[field] == iso(value), field
            else:
                assert record[field] == json.loads(json.dumps(value)), field
        assert record["_etl_feed"]["title"] == parsed.feed.get("title")
        assert record["_etl_feed"]["version"] == parsed.version
        if "title" in entry:
            assert row["title"] == entry["title"]  # top-level text fields are columns too

    stats = source.etl_stats
    assert (stats.entries_read, stats.rows_emitted, stats.outside_window) == (len(keys), len(rows), 0)
    assert stats.warning is None and stats.bytes == path.stat().st_size and stats.version == parsed.version

    if day:  # the same feed for another day: nothing in the window, every dated entry counted
        other = feed_source(path, context(day + dt.timedelta(days=1)))
        assert list(other) == []
        assert (other.etl_stats.entries_read, other.etl_stats.outside_window) == (len(keys), len(keys))


def test_illformed_document_without_entries_fails_clearly(fixtures_dir: Path) -> None:
    path = fixtures_dir / "feeds/malformed/aaa_illformed.xml"
    assert feedparser.parse(path.read_bytes()).bozo
    source = feed_source(path, context(MAR[1]))
    with pytest.raises(Exception) as excinfo:
        list(source)
    error = feed_error(excinfo)
    failure = tenant_failure(excinfo.value, "t1", "news")  # how the platform reports it: not retried
    assert isinstance(error, FeedFormatError) and failure.permanent and failure.error == "FeedFormatError"
    message = str(error)
    assert "tenant 't1'" in message and "source 'news'" in message and str(path) in message
    assert "not a well-formed feed" in message and "unclosed token" in message


def test_empty_document_fails_the_pipeline_clearly(fixtures_dir: Path, tmp_path: Path) -> None:
    path = fixtures_dir / "feeds/malformed/rss_empty_document.xml"
    with pytest.raises(Exception) as excinfo:
        load(feed_source(path, context(MAR[1])), tmp_path)
    message = str(feed_error(excinfo))
    assert str(path) in message and "no element found" in message
    assert "no element found" in str(excinfo.value)  # visible in dlt's own error too


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty document"),
        (b"  \n", "empty document"),
        (b"<html><head><title>Login</title></head><body><p>Please sign in</p></body></html>", "not an RSS or Atom"),
    ],
)
def test_empty_or_non_feed_documents_fail(tmp_path: Path, body: bytes, reason: str) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(body)
    with pytest.raises(Exception) as excinfo:
        list(feed_source(path, context(MAR[1])))
    assert reason in str(feed_error(excinfo))


# --- our feeds ----------------------------------------------------------------------------------


def test_illformed_feed_with_entries_loads_with_a_warning(tmp_path: Path) -> None:
    source = feed_source(DATA / "illformed_entries.xml", context(MAR[1]))
    rows = load(source, tmp_path)
    assert [r["_etl_row_key"] for r in rows] == ["http://example.com/1", "http://example.com/2"]
    assert rows[0]["_etl_record"]["title"] == "Cod & haddock"
    assert source.etl_stats.warning and "not well-formed" in source.etl_stats.warning
    assert source.etl_stats.rows_emitted == 2


def test_latin1_feed_with_namespaces(tmp_path: Path) -> None:
    source = feed_source(DATA / "latin1_namespaces.xml", context(MAR[1]))
    rows = load(source, tmp_path)
    assert [r["_etl_row_key"] for r in rows] == ["http://example.com/recettes/1", "recette-2"]
    first, second = (r["_etl_record"] for r in rows)
    assert first["title"] == "Crème brûlée" and rows[0]["title"] == "Crème brûlée"
    assert first["author"] == "José Müller"  # dc:creator
    assert first["authors"] == [{"name": "José Müller"}]
    assert "très apprécié" in first["content"][0]["value"]  # content:encoded
    assert first["ex_difficulty"] == "facile"  # unknown namespace, feedparser's prefix_name
    assert first["published_parsed"] == "2024-03-01T09:00:00+00:00"  # +0100 -> UTC
    assert first["_etl_feed"]["title"] == "Café gourmand"
    assert second["author"] == "Zoë Ångström"
    assert rows[1]["_etl_event_time"] == dt.datetime(2024, 3, 1, 22, 30, tzinfo=UTC)
    assert source.etl_stats.feed_title == "Café gourmand"


def test_windows_1252_feed() -> None:
    source = feed_source(DATA / "cp1252.xml", context(MAR[2]))
    (row,) = list(source)
    assert row["_etl_record"]["title"] == "Coffee now costs 3 €"
    assert row["_etl_record"]["summary"] == "It’s “only” a 10 % rise – for now."
    assert row["_etl_record"]["_etl_feed"]["title"] == "Prices – “weekly”"
    assert row["_etl_event_time"] == dt.datetime(2024, 3, 2, 8, tzinfo=UTC)  # updated only


RUSSIAN = {  # title -> description: the KOI8-R case of the issue (stored as mojibake before)
    "Погода в Москве": "Завтра ожидается снег и сильный ветер.",
    "Курс рубля": "Центральный банк опубликовал новые данные.",
}
JAPANESE = {  # the Shift_JIS case
    "東京の天気": "明日は雪が降る見込みです。",
    "円相場": "日本銀行が新しいデータを発表しました。",
}


def undeclared_feed(entries: dict[str, str], title: str, declaration: str = "") -> str:
    items = "".join(
        f"<item><title>{t}</title><guid>urn:x:{i}</guid><description>{d}</description>"
        f"<pubDate>Fri, 01 Mar 2024 0{i}:00:00 GMT</pubDate></item>"
        for i, (t, d) in enumerate(entries.items(), 1)
    )
    return (
        f'<?xml version="1.0"{declaration}?>\n<rss version="2.0"><channel><title>{title}</title>'
        f"<link>https://example.org/</link><description>{title}</description>{items}</channel></rss>"
    )


@pytest.mark.parametrize(
    ("encoding", "entries", "title", "found"),
    [
        ("koi8-r", RUSSIAN, "Новости", "koi8_r"),
        ("shift_jis", JAPANESE, "ニュース", "cp932"),
    ],
)
def test_a_feed_declaring_no_encoding_is_read_in_the_detected_one(
    encoding: str, entries: dict[str, str], title: str, found: str, tmp_path: Path
) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(undeclared_feed(entries, title).encode(encoding))
    assert feedparser.parse(path.read_bytes()).entries[0].title != next(iter(entries))  # feedparser alone: mojibake
    source = feed_source(path, context(MAR[1]))
    rows = load(source, tmp_path)
    assert [(r["title"], r["_etl_record"]["summary"]) for r in rows] == list(entries.items())
    assert rows[0]["_etl_record"]["_etl_feed"]["title"] == title
    assert (source.etl_stats.encoding, source.etl_stats.encoding_source) == (found, "detected")
    assert source.etl_stats.as_metadata()["encoding_source"] == "detected"


def test_a_declared_encoding_is_not_second_guessed(tmp_path: Path) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(undeclared_feed(RUSSIAN, "Новости", ' encoding="koi8-r"').encode("koi8-r"))
    source = feed_source(path, context(MAR[1]))
    assert [r["title"] for r in source] == list(RUSSIAN)
    assert (source.etl_stats.encoding, source.etl_stats.encoding_source) == ("koi8-r", "declared")
    path.write_bytes(undeclared_feed(RUSSIAN, "Новости").encode("utf-8"))
    source = feed_source(path, context(MAR[1]))
    assert [r["title"] for r in source] == list(RUSSIAN)
    assert source.etl_stats.encoding_source == "utf-8 (valid)"


def test_feed_failures_are_classified(tmp_path: Path) -> None:
    from etl_platform.loading.failures import classify

    empty = tmp_path / "empty.xml"
    empty.write_bytes(b"")
    for location, kind in ((empty, "permanent"), (tmp_path / "missing.xml", "permanent")):
        with pytest.raises(Exception) as excinfo:
            list(feed_source(location, context(MAR[1])))
        assert classify(excinfo.value) == kind, location
    with LocalServer() as server:
        server.route("/gone", lambda req: Response(404, "no"))
        server.route("/down", lambda req: Response(503, "later"))
        for path, kind in (("/gone", "permanent"), ("/down", "transient")):
            with pytest.raises(Exception) as excinfo:
                list(feed_source(server.url + path, context(MAR[1])))
            assert classify(excinfo.value) == kind, path


def test_row_keys_fall_back_to_link_then_content_hash() -> None:
    source = feed_source(DATA / "fallback_keys.xml", context(MAR[1]))
    rows = list(source)
    keys = [r["_etl_row_key"] for r in rows]
    assert keys[:2] == ["guid-a", "http://example.com/b"]
    assert all(HASH.match(k) for k in keys[2:]) and keys[2] != keys[3]
    assert len(rows) == 4 and source.etl_stats.duplicates == 1  # the repeated guid
    again = [r["_etl_row_key"] for r in feed_source(DATA / "fallback_keys.xml", context(MAR[2]))]
    assert again == keys  # hashes are stable across runs
    assert all(r["_etl_event_time"] is None and r["_etl_partition_date"] == MAR[1] for r in rows)


def test_event_time_decides_the_partition_day() -> None:
    path = DATA / "windows.xml"

    def rows(*days: dt.date, timezone: str = "UTC") -> tuple[list[tuple[dt.date, str]], FeedStats]:
        source = feed_source(path, context(*days, timezone=timezone))
        return [(r["_etl_partition_date"], r["_etl_row_key"][-1]) for r in source], source.etl_stats

    day1, stats = rows(MAR[1])
    # published wins over updated (entry 1); the undated entry 5 is a snapshot row
    assert day1 == [(MAR[1], "1"), (MAR[1], "2"), (MAR[1], "5")]
    assert (stats.entries_read, stats.rows_emitted, stats.outside_window) == (5, 3, 2)

    day2, _ = rows(MAR[2])
    assert day2 == [(MAR[2], "3"), (MAR[2], "5")]  # dated by <updated> only

    both, stats = rows(MAR[1], MAR[2])
    assert sorted(both) == sorted(day1 + day2)  # a 2-day run is two 1-day runs
    assert (stats.rows_emitted, stats.outside_window) == (5, 1)

    berlin, _ = rows(MAR[2], timezone="Europe/Berlin")  # 23:30Z on March 1st is March 2nd there
    assert berlin == [(MAR[2], "2"), (MAR[2], "3"), (MAR[2], "5")]

    nothing, stats = rows(dt.date(2023, 1, 1))
    assert nothing == [(dt.date(2023, 1, 1), "5")] and stats.outside_window == 4


def test_multi_day_run_loads_the_same_rows_as_single_days(tmp_path: Path) -> None:
    path = DATA / "windows.xml"
    multi = load(feed_source(path, context(MAR[1], MAR[2])), tmp_path, "multi.duckdb")
    load(feed_source(path, context(MAR[1])), tmp_path, "single.duckdb")
    single = load(feed_source(path, context(MAR[2])), tmp_path, "single.duckdb")

    def comparable(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted(
            (r["_etl_partition_date"], r["_etl_row_key"], r["_etl_event_time"], json.dumps(r["_etl_record"]))
            for r in rows
        )

    assert len(multi) == 5
    assert comparable(multi) == comparable(single)


def test_loading_the_same_partition_twice_keeps_one_copy(tmp_path: Path) -> None:
    path = DATA / "windows.xml"
    first = load(feed_source(path, context(MAR[1], run_id="run-1")), tmp_path)
    second = load(feed_source(path, context(MAR[1], run_id="run-2")), tmp_path)
    assert len(first) == len(second) == 3
    assert {r["_etl_run_id"] for r in second} == {"run-2"}  # the slice was replaced
    assert [r["_etl_row_key"] for r in second] == [r["_etl_row_key"] for r in first]


# --- over HTTP ----------------------------------------------------------------------------------


def test_feed_over_http_with_retry_after_a_server_error(tmp_path: Path) -> None:
    body = (DATA / "latin1_namespaces.xml").read_bytes()
    answers = iter([Response(500, b"try again")])

    with LocalServer() as server:
        server.route(
            "/feed.rss",
            lambda req: next(answers, None) or Response(200, body, {"Content-Type": "application/rss+xml"}),
        )
        url = f"{server.url}/feed.rss"
        source = feed_source(url, context(MAR[1]))
        assert server.requests == []  # nothing fetched while building
        rows = load(source, tmp_path)
        assert len(server.hits("/feed.rss")) == 2

    assert [r["_etl_record"]["title"] for r in rows] == ["Crème brûlée", "Pâte à crêpes"]
    assert {r["_etl_position"] for r in rows} == {url}
    assert source.etl_stats.bytes == len(body) and source.etl_stats.warning is None


def test_http_charset_header_is_respected(tmp_path: Path) -> None:
    """Headers go to feedparser: a charset in Content-Type wins over the XML declaration."""
    body = (DATA / "cp1252.xml").read_bytes()
    with LocalServer() as server:
        server.route(
            "/feed", lambda req: Response(200, body, {"Content-Type": "application/atom+xml; charset=windows-1252"})
        )
        (row,) = list(feed_source(f"{server.url}/feed", context(MAR[2])))
    assert row["_etl_record"]["title"] == "Coffee now costs 3 €"


def test_http_404_fails_clearly_without_leaking_the_token(tmp_path: Path) -> None:
    with LocalServer() as server:
        with pytest.raises(Exception) as excinfo:
            load(feed_source(f"{server.url}/missing.xml?token=s3cr3t", context(MAR[1])), tmp_path)
        assert len(server.hits("/missing.xml")) == 1  # a 404 is not retried
    error = feed_error(excinfo)
    message = str(error)
    assert "tenant 't1'" in message and "source 'news'" in message and "404" in message
    assert f"{server.url}/missing.xml?token=***" in message and "s3cr3t" not in message
    assert error.__cause__.response.status_code == 404  # the platform classifies it as permanent


def test_private_feed_token_stays_out_of_the_rows() -> None:
    body = (DATA / "cp1252.xml").read_bytes()
    with LocalServer() as server:
        server.route("/private.atom", lambda req: Response(200, body, {"Content-Type": "application/atom+xml"}))
        (row,) = list(feed_source(f"{server.url}/private.atom?token=s3cr3t&lang=en", context(MAR[2])))
        assert server.hits("/private.atom")[0].arg("token") == "s3cr3t"
    assert row["_etl_position"] == f"{server.url}/private.atom?token=***&lang=en"
    assert "s3cr3t" not in json.dumps(row, default=str)


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.mark.postgres
def test_loads_into_postgres_and_reloads_in_place(pg_url: str, tmp_path: Path) -> None:
    import psycopg

    # dlt's PostgresCredentials insists on a password; the test server trusts local connections
    credentials = pg_url if urlsplit(pg_url).password else pg_url.replace("@", ":unused@", 1)
    pipeline = dlt.pipeline(
        pipeline_name="feeds_pg",
        destination=dlt.destinations.postgres(credentials=credentials),
        dataset_name=DATASET,
        pipelines_dir=str(tmp_path / "pipelines"),
    )
    for run_id in ("run-1", "run-2"):
        pipeline.run(feed_source(DATA / "latin1_namespaces.xml", context(MAR[1], run_id=run_id)))

    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            f"SELECT _etl_row_key, _etl_run_id, _etl_record, _etl_event_time FROM {DATASET}.entries "
            "ORDER BY _etl_row_key"
        ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [("http://example.com/recettes/1", "run-2"), ("recette-2", "run-2")]
    record = rows[0][2]
    assert record["author"] == "José Müller" and record["content"][0]["value"].startswith("<p>Un dessert")
    assert rows[0][3] == dt.datetime(2024, 3, 1, 9, tzinfo=UTC)
