"""CSV files (local path or http(s) URL, optionally gzipped) as a dlt source.

    source = build_csv_source(config, location, ctx)
    pipeline.run(source)
    source.etl_stats  # CsvStats of the last iteration

`build_csv_source` does no I/O: the file is opened when dlt iterates the source. The source
(named ``config.name``) has two resources over one streaming pass of the file:

- ``config.resource``: the data rows, yielded to dlt as pyarrow Tables (`TableBuilder`).
  Values stay the strings received, except the spellings in ``config.null_values`` (null);
  each row carries the lineage columns, ``_etl_position`` = ``"<location>:<line>"`` (the
  physical line where the record starts, 1-based, counting skipped and header lines) and
  ``_etl_record``, the record as a JSON string keyed by the header names.
- ``rejects``: records that cannot be loaded (wrong field count, undecodable bytes, missing or
  duplicate primary key, unparseable event time, CSV syntax errors), with position, raw text
  and reason. Nothing is dropped silently.

Partitions: with ``config.event_time`` a row belongs to ``ctx.window.day_of(event_time)``;
rows outside the window are skipped and counted in ``outside_window``. Without it the file is
a snapshot and every row is emitted once per day of ``ctx.window.days``. Rejects whose day is
unknown are written to every window day, so one multi-day run loads exactly what one run per
day would.

Row key: the primary-key values joined with ``|`` (a later row repeating a key is rejected),
else ``content_key(values)`` plus ``#<n>`` for the n-th identical row. Both checks remember
one small entry per distinct row, the only memory that grows with the file.

Two readers, one result: UTF-8 files go through `csv_arrow.ArrowPass` (pyarrow's streaming
reader, per-row work in Arrow kernels: ~20x faster), which hands over to the row-by-row reader
(Python's csv module, exact line tracking) at the first line only that one handles (a reject,
a blank line, a NUL byte); the row reader then resumes after the records already yielded. Other
encodings and non-ASCII delimiters use the row reader throughout. ``stats.reader`` says which.

`CsvStats` (``source.etl_stats``; reset at each iteration, also updated when a clone such as
``with_resources(...)`` runs; ``as_metadata()`` for materialization metadata):
``rows_read`` = data records parsed = ``rows_emitted + rejects + outside_window`` (a snapshot
row counts once however many days it is loaded into); ``reader``; ``bytes_read`` (alias ``bytes``) from
the file or network, compressed size for gzip; ``empty_file`` and ``warning`` when the file
has no header at all (zero rows and a warning, not an exception).

Header names are kept, except that empty ones become ``col_<n>`` and names that would collide
(exactly or after dlt's snake_case) get a ``_2``, ``_3``... suffix.

URLs are redacted (``redact_url``) wherever they are written: positions, rejects, messages.

Errors name tenant, source and location: `CsvFileNotFoundError` (also a FileNotFoundError; a
missing file, HTTP 404/410) and `CsvSourceError` (other HTTP errors with URL and status, an
unreadable header, configured columns missing from the header, read failures near a line).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
import gzip
import io
import itertools
import logging
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import dlt
import pyarrow as pa
from dlt.common.normalizers.naming.snake_case import NamingConvention
from dlt.common.schema import Schema
from dlt.extract.source import DltSource
from dlt.sources.helpers import requests

from etl_platform.config.models import CsvSource
from etl_platform.sources import lineage
from etl_platform.sources.csv_arrow import ArrowPass, CheckedStream, FallBack, TableBuilder
from etl_platform.sources.lineage import REJECTS_TABLE, RunContext, apply_raw_hints, content_key, parse_time
from etl_platform.sources.redact import redact_text, redact_url

log = logging.getLogger(__name__)


class _IntendedJsonHint(logging.Filter):
    """dlt warns for every Arrow batch that a column's hint differs from its Arrow type; here
    that is only, by design, the ``_etl_record`` string carrying the json hint (dlt says which
    columns at INFO level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "several column hints were different" not in record.getMessage()


logging.getLogger("dlt").addFilter(_IntendedJsonHint())

BATCH_ROWS = 10_000  # rows per Arrow table of the row-by-row reader
CHUNK_BYTES = 1 << 16
FAST_PASS = True  # use `csv_arrow.ArrowPass` where it applies (tests compare both readers)
HEAD_BYTES = 1 << 18  # where the fast pass looks for skipped lines, the header and the sniff sample
SNIFF_BYTES = 32 * 1024
SNIFF_DELIMITERS = ",;\t|"
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
_NAMING = NamingConvention()


class CsvSourceError(RuntimeError):
    """A CSV file cannot be read; the message names tenant, source and location."""


class CsvFileNotFoundError(CsvSourceError, FileNotFoundError):
    """The CSV file (or URL) does not exist."""


@dataclass
class CsvStats:
    """Counters of one pass over the file (see the module docstring)."""

    rows_read: int = 0
    rows_emitted: int = 0
    rejects: int = 0
    outside_window: int = 0
    bytes_read: int = 0
    empty_file: bool = False
    warning: str | None = None
    # "arrow" (the fast pass), "rows" (row by row) or "arrow, then rows from record <n>: <why>"
    reader: str = "rows"

    @property
    def bytes(self) -> int:
        """`bytes_read` under the name the platform's metadata reads for every source."""
        return self.bytes_read

    def reset(self) -> None:
        self.__dict__.update(asdict(CsvStats()))

    def as_metadata(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Out:
    """One item of the reader, routed to a resource by `table`."""

    table: str
    data: Any


def build_csv_source(config: CsvSource, location: str, ctx: RunContext) -> DltSource:
    """The dlt source of one CSV file; `location` is the resolved path or http(s) URL."""
    if config.resource == REJECTS_TABLE:
        raise ValueError(f"source {config.name!r}: resource name {REJECTS_TABLE!r} is reserved")
    stats = CsvStats()

    def read_file() -> Iterator[_Out]:
        yield from _read(config, location, ctx, stats)

    def data_rows(item: _Out) -> Iterator[Any]:
        if item.table == config.resource:
            yield item.data

    def rejected_rows(item: _Out) -> Iterator[Any]:
        if item.table == REJECTS_TABLE:
            yield item.data

    reader = dlt.resource(read_file, name=f"{config.resource}_file", selected=False)
    rows = dlt.transformer(data_rows, data_from=reader, name=config.resource)
    rejects = dlt.transformer(rejected_rows, data_from=reader, name=REJECTS_TABLE)
    apply_raw_hints(rows, schema_contract=config.schema_contract)
    apply_raw_hints(rejects, schema_contract="evolve")
    source = DltSource(Schema(config.name), "csv_files", [rows, rejects])
    source.etl_stats = stats
    return source


def apply_load_hints(source: DltSource, config: CsvSource, warehouse_kind: str) -> None:
    """How a run loads the source's tables (not part of the raw contract, which stays
    `lineage.WRITE_DISPOSITION`):

    - the data rows are appended straight into their table, with no staging copy and merge (on
      PostgreSQL that halves the load). The raw asset then deletes the rows of the loaded slices
      (source, partition days) from earlier loads (`_sweep_stale_rows`, under the same lock), so
      a partition still holds one copy of each record once the run is done. A run that dies
      between the two leaves both copies until the partition's next run (the retry sensor's).
    - rejects: delete-insert, ``deduplicated``: the reader already makes (partition day, row key)
      unique within a load, so dlt skips its ROW_NUMBER() over the whole staging table.
    - PostgreSQL: the Arrow rows go through dlt's ``csv`` loader file format (pyarrow writes the
      file, COPY loads it) instead of INSERT statements rendered row by row. Its COPY reads an
      empty field as NULL (FORCE_NULL), which is this source's own reading only while "" is one of
      its null spellings (the default), so other sources keep the INSERT path.
    """
    for name, resource in source.selected_resources.items():
        if name == REJECTS_TABLE:
            resource.apply_hints(write_disposition={**lineage.WRITE_DISPOSITION, "deduplicated": True})
            continue
        resource.apply_hints(write_disposition="append")
        if warehouse_kind == "postgres" and "" in config.null_values:
            resource.apply_hints(file_format="csv")


# --- reading ------------------------------------------------------------------------------


def _read(config: CsvSource, location: str, ctx: RunContext, stats: CsvStats) -> Iterator[_Out]:
    """The fast columnar pass where it applies, handing over to the row-by-row reader
    (resuming after the records already yielded) at the first row only that reader handles."""
    where = f"tenant {ctx.tenant_id!r}, source {config.name!r}"
    shown = _shown(location)
    resume, handover = 0, ""
    if FAST_PASS and codecs.lookup(config.encoding).name == "utf-8" and (config.delimiter or ",").isascii():
        stats.reset()
        with _open_binary(location, where, stats) as binary:
            fast = _fast_pass(config, shown, ctx, stats, where, binary)
            if fast is not None:
                arrow_pass, stream = fast
                try:
                    stats.reader = "arrow"
                    for table in arrow_pass.tables(stream):
                        yield _Out(config.resource, table)
                    return
                except FallBack as exc:
                    resume = exc.records_done
                    handover = f"arrow, then rows from record {resume + 1}: {exc}"
                    log.info("%s: %s: %s", where, shown, handover)
    stats.reset()
    stats.reader = handover or "rows"
    with _open_text(location, config.encoding, where, stats) as text:
        lines = _Lines(text)
        try:
            yield from _Records(config, shown, ctx, stats, where, lines, resume_after=resume).batches()
        except CsvSourceError:
            raise
        except (OSError, EOFError, UnicodeError, requests.RequestException) as exc:
            message = redact_text(str(exc))
            raise CsvSourceError(f"{where}: reading {shown} failed near line {lines.line}: {message}") from None


def _fast_pass(
    config: CsvSource, shown: str, ctx: RunContext, stats: CsvStats, where: str, binary: IO[bytes]
) -> tuple[ArrowPass, CheckedStream] | None:
    """The fast pass over the data records after the header, when the head of the file is
    plain (no NUL, blank or undecodable line before the data, header within `HEAD_BYTES`)."""
    head = binary.read(HEAD_BYTES)
    at_end = len(head) < HEAD_BYTES
    head = head.removeprefix(codecs.BOM_UTF8)
    if b"\0" in head:
        return None
    lines = _LINE.findall(head.decode("utf-8", "surrogateescape"))
    after = lines[config.skip_lines :]
    sample, size = [], 0
    for line in after:
        if size >= SNIFF_BYTES:
            break
        sample.append(line)
        size += len(line)
    if size < SNIFF_BYTES and not at_end:
        return None
    delimiter = config.delimiter or _sniff("".join(sample))
    if not delimiter.isascii() or len(delimiter) != 1:
        return None
    reader = csv.reader(iter(after), delimiter=delimiter)
    try:
        first = next(reader)
    except (StopIteration, csv.Error):
        return None
    used = reader.line_num if config.has_header else 0
    header_text = "".join(after[: max(used, 1)])
    if (
        not first
        or _undecodable(header_text)
        or len(after) <= used
        or (used == len(after) - 1 and not at_end)
        or any(line in ("\n", "\r", "\r\n") for line in lines[: config.skip_lines + used])
    ):
        return None
    names = _column_names(first) if config.has_header else [f"col_{i}" for i in range(1, len(first) + 1)]
    rest = "".join(after[used:]).encode("utf-8", "surrogateescape")
    builder = TableBuilder(names, shown, config, ctx, snapshot=not config.event_time)
    arrow_pass = ArrowPass(
        builder=builder,
        delimiter=delimiter,
        first_line=config.skip_lines + used + 1,
        stats=stats,
        key_index=[_column(names, name, "primary_key", where, shown) for name in config.primary_key],
        time_index=_column(names, config.event_time, "event_time", where, shown) if config.event_time else None,
        content_key=_ContentKeys(),
    )
    return arrow_pass, CheckedStream(rest, binary)


def _is_url(location: str) -> bool:
    return urlsplit(location).scheme.lower() in ("http", "https")


def _shown(location: str) -> str:
    """The location as written into rows and messages: URLs without secrets."""
    return redact_url(location) if _is_url(location) else location


@contextlib.contextmanager
def _open_text(location: str, encoding: str, where: str, stats: CsvStats) -> Iterator[IO[str]]:
    """The decoded text of a path or URL (see `_open_binary`).

    Lines keep their own endings (\\n, \\r\\n or \\r); undecodable bytes become lone
    surrogates so that the reader can reject the line holding them."""
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"
    with _open_binary(location, where, stats) as binary:
        yield io.TextIOWrapper(binary, encoding=encoding, errors="surrogateescape", newline="")


@contextlib.contextmanager
def _open_binary(location: str, where: str, stats: CsvStats) -> Iterator[IO[bytes]]:
    """The bytes of a path or URL, gunzipped when they start with the gzip magic bytes."""
    with contextlib.ExitStack() as stack:
        scheme = urlsplit(location).scheme.lower()
        if _is_url(location):
            chunks = _http_chunks(location, where, stack)
        elif scheme in ("", "file"):
            path = Path(unquote(urlsplit(location).path) if scheme == "file" else location)
            try:
                handle = stack.enter_context(open(path, "rb"))
            except FileNotFoundError as exc:
                raise CsvFileNotFoundError(f"{where}: CSV file not found: {path}") from exc
            except OSError as exc:
                raise CsvSourceError(f"{where}: cannot open CSV file {path}: {exc}") from exc
            chunks = iter(partial(handle.read, CHUNK_BYTES), b"")
        else:
            raise CsvSourceError(f"{where}: unsupported location {_shown(location)!r} (expected a path or http(s) URL)")
        binary: IO[bytes] = io.BufferedReader(_ChunkStream(chunks, stats), CHUNK_BYTES)
        if binary.peek(2)[:2] == b"\x1f\x8b":
            binary = gzip.GzipFile(fileobj=binary, mode="rb")
        yield binary


def _http_chunks(url: str, where: str, stack: contextlib.ExitStack) -> Iterator[bytes]:
    """The body of a GET, streamed; errors name the URL (redacted) and the status."""
    shown = redact_url(url)
    try:
        response = requests.get(url, stream=True)
        response.raise_for_status()
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        reason = exc.response.reason if exc.response is not None else exc
        error = CsvFileNotFoundError if status in (404, 410) else CsvSourceError
        raise error(f"{where}: GET {shown} failed: HTTP {status} {reason}") from None
    except requests.RequestException as exc:
        raise CsvSourceError(f"{where}: GET {shown} failed: {redact_text(str(exc))}") from None
    stack.enter_context(response)
    return response.iter_content(CHUNK_BYTES)


class _ChunkStream(io.RawIOBase):
    """A raw binary stream over an iterator of byte chunks, counting bytes read."""

    def __init__(self, chunks: Iterator[bytes], stats: CsvStats) -> None:
        self._chunks = chunks
        self._stats = stats
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._stats.bytes_read += len(chunk)
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


class _Lines:
    """Physical lines for `csv.reader`, remembering the raw text and first line of a record."""

    def __init__(self, text: IO[str]) -> None:
        self._text = iter(text)
        self._lookahead: deque[str] = deque()
        self.line = 0
        self._raw: list[str] = []

    def skip(self, count: int) -> None:
        for _ in range(count):
            if next(self._text, None) is None:
                break
            self.line += 1

    def sample(self, size: int) -> str:
        """Up to `size` characters of whole lines ahead, without consuming them."""
        total = 0
        while total < size:
            line = next(self._text, None)
            if line is None:
                break
            self._lookahead.append(line)
            total += len(line)
        return "".join(self._lookahead)

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._lookahead.popleft() if self._lookahead else next(self._text)
        self.line += 1
        if "\0" in line:
            line = line.replace("\0", "")
        self._raw.append(line)
        return line

    def take(self) -> tuple[int, str]:
        """(first line, raw text without its final line ending) of the lines read since the last call."""
        lines = self._raw
        text = lines[0] if len(lines) == 1 else "".join(lines)
        start, raw = self.line - len(lines) + 1, text.removesuffix("\n").removesuffix("\r")
        lines.clear()
        return start, raw


def _sniff(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=SNIFF_DELIMITERS).delimiter
    except csv.Error:
        return ","


def _undecodable(text: str) -> str | None:
    """The first undecodable byte in `text` as 0xNN, else None."""
    match = _UNDECODABLE.search(text)
    return f"0x{ord(match.group()) - 0xDC00:02x}" if match else None


def _printable(text: str) -> str:
    return _UNDECODABLE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


def _column_names(header: list[str]) -> list[str]:
    """Header names made unique (also after dlt's snake_case) and non-empty."""
    seen = {_NAMING.normalize_identifier(name) for name in lineage.LINEAGE_COLUMNS}
    names = []
    for index, name in enumerate(header, 1):
        base = candidate = name if name.strip() else f"col_{index}"
        suffix = 1
        while _NAMING.normalize_identifier(candidate) in seen:
            suffix += 1
            candidate = f"{base}_{suffix}"
        seen.add(_NAMING.normalize_identifier(candidate))
        names.append(candidate)
    return names


def _column(names: list[str], name: str, setting: str, where: str, location: str) -> int:
    """The index of a configured column, by its header name or its snake_case form."""
    snake = _NAMING.normalize_identifier(name)
    for matches in (lambda own: own == name, lambda own: _NAMING.normalize_identifier(own) == snake):
        for index, own in enumerate(names):
            if matches(own):
                return index
    raise CsvSourceError(
        f"{where}: {setting} column {name!r} is not in the header of {location} (columns: {', '.join(names)})"
    )


class _ContentKeys:
    """Row keys of a source without primary key: ``content_key(values)#<n>`` for the n-th
    identical row (one small counter per distinct row)."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}

    def __call__(self, fields: list[str]) -> str:
        key = content_key(fields)
        digest = int(key[:16], 16)
        occurrence = self._seen[digest] = self._seen.get(digest, 0) + 1
        return f"{key}#{occurrence}"


@dataclass
class _Records:
    """One row-by-row pass over the records of a file, yielding Arrow batches and rejects;
    records up to `resume_after` (already yielded by the fast pass) are read, not yielded."""

    config: CsvSource
    location: str
    ctx: RunContext
    stats: CsvStats
    where: str
    lines: _Lines
    resume_after: int = 0
    names: list[str] = field(default_factory=list)
    nulls: frozenset[str] = frozenset()
    # hash of "<day>|<row key>" -> first line (str hash: 64-bit, stable within one pass)
    seen: dict[int, int] = field(default_factory=dict)
    content_keys: _ContentKeys = field(default_factory=_ContentKeys)
    # the pending batch, one entry per row in parallel lists (no per-row tuple objects)
    rows: list[list[str]] = field(default_factory=list)
    _row_lines: list[int] = field(default_factory=list)
    _row_keys: list[str] = field(default_factory=list)
    _row_times: list[dt.datetime | None] = field(default_factory=list)
    _row_days: list[dt.date | None] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    _key_index: list[int] = field(default_factory=list)
    _time_index: int | None = None
    _builder: TableBuilder | None = None

    def batches(self) -> Iterator[_Out]:
        config = self.config
        self.nulls = frozenset(config.null_values)
        self.lines.skip(config.skip_lines)
        delimiter = config.delimiter or _sniff(self.lines.sample(SNIFF_BYTES))
        records = self._parsed(csv.reader(self.lines, delimiter=delimiter))
        first = next(records, None)
        if first is None:
            self.stats.empty_file = True
            self.stats.warning = f"{self.location} is empty (no header): zero rows loaded"
            log.warning("%s: %s", self.where, self.stats.warning)
            return
        line, raw, fields, error = first
        if error or fields is None or _undecodable(raw):
            raise CsvSourceError(
                f"{self.where}: cannot read the first record (line {line}) of {self.location}: "
                f"{error or f'not valid {config.encoding} (byte {_undecodable(raw)})'}; check the "
                "source's encoding and delimiter"
            )
        self.names = _column_names(fields) if config.has_header else [f"col_{i}" for i in range(1, len(fields) + 1)]
        self._key_index = [_column(self.names, n, "primary_key", self.where, self.location) for n in config.primary_key]
        if config.event_time:
            self._time_index = _column(self.names, config.event_time, "event_time", self.where, self.location)
        self._builder = TableBuilder(self.names, self.location, config, self.ctx, snapshot=self._time_index is None)
        for line, raw, fields, error in itertools.chain([] if config.has_header else [first], records):
            self.stats.rows_read += 1
            if fields is None:
                self._reject(line, raw, error or "unreadable record")
            else:
                self._record(line, raw, fields)
            if len(self.rows) >= BATCH_ROWS:
                yield from self._flush_rows()
            if len(self.rejected) >= BATCH_ROWS:
                yield from self._flush_rejects()
        yield from self._flush_rows()
        yield from self._flush_rejects()

    def _parsed(self, reader: Iterator[list[str]]) -> Iterator[tuple[int, str, list[str] | None, str | None]]:
        """(first line, raw text, fields, None) of each non-blank record; fields None and the
        reason when the CSV syntax is broken (the reader resumes at the next line)."""
        while True:
            try:
                fields: list[str] | None = next(reader)
                error = None
            except StopIteration:
                return
            except csv.Error as exc:
                fields, error = None, f"csv error: {exc}"
            line, raw = self.lines.take()
            if fields != []:
                yield line, raw, fields, error

    def _record(self, line: int, raw: str, fields: list[str]) -> None:
        if bad := _undecodable(raw):
            return self._reject(
                line, raw, f"line is not valid {self.config.encoding} (byte {bad}); check the source's encoding"
            )
        if len(fields) != len(self.names):
            return self._reject(line, raw, f"expected {len(self.names)} fields, got {len(fields)}")
        event_time = day = None
        if self._time_index is not None:
            value = fields[self._time_index]
            event_time = None if value in self.nulls else parse_time(value)
            if event_time is None:
                return self._reject(line, raw, f"unparseable event_time {value!r}")
            day = self.ctx.window.day_of(event_time)
            if day is None:
                self.stats.outside_window += 1
                return None
        if self._key_index:
            key_values = [fields[i] for i in self._key_index]
            for index, value in zip(self._key_index, key_values):
                if value in self.nulls:
                    return self._reject(line, raw, f"missing primary key {self.names[index]!r}")
            row_key = "|".join(key_values)
            first = self.seen.setdefault(hash(f"{day}|{row_key}"), line)
            if first != line:
                return self._reject(line, raw, f"duplicate primary key {row_key!r} (first at line {first})", day)
        else:
            row_key = self.content_keys(fields)
        self.stats.rows_emitted += 1
        if self.stats.rows_read <= self.resume_after:
            return None
        self.rows.append(fields)
        self._row_lines.append(line)
        self._row_keys.append(row_key)
        if self._time_index is not None:
            self._row_times.append(event_time)
            self._row_days.append(day)
        return None

    def _reject(self, line: int, raw: str, reason: str, day: dt.date | None = None) -> None:
        self.stats.rejects += 1
        for partition_date in [day] if day else self.ctx.window.days:
            self.rejected.append(
                self.ctx.reject(
                    resource=self.config.resource,
                    position=f"{self.location}:{line}",
                    raw_text=_printable(raw),
                    reason=reason,
                    partition_date=partition_date,
                )
            )

    def _flush_rejects(self) -> Iterator[_Out]:
        if self.rejected:
            yield _Out(REJECTS_TABLE, self.rejected)
            self.rejected = []

    def _flush_rows(self) -> Iterator[_Out]:
        """The pending rows as Arrow tables (`TableBuilder`)."""
        if not self.rows or self._builder is None:
            return
        raw = [pa.array(values, pa.string()) for values in zip(*self.rows)]
        snapshot = self._time_index is None
        tables = self._builder.tables(
            raw,
            self._row_lines,
            self._row_keys,
            None if snapshot else self._row_times,
            None if snapshot else self._row_days,
        )
        self.rows, self._row_lines, self._row_keys, self._row_times, self._row_days = [], [], [], [], []
        for table in tables:
            yield _Out(self.config.resource, table)
