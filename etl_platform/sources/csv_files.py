"""CSV files (local path or http(s) URL) as a dlt source.

    source = build_csv_source(config, location, ctx)
    pipeline.run(source)
    source.etl_stats  # CsvStats of the last iteration

`build_csv_source` does no I/O: the file is opened when dlt iterates the source. The source
(named ``config.name``) has two resources over one streaming pass of the file:

- ``config.resource``: the data rows, yielded to dlt as pyarrow Tables (`csv_arrow.TableBuilder`).
  Values stay the strings received, except the spellings in ``config.null_values``, which are
  null both in the columns and in ``_etl_record`` (the record as a JSON object keyed by the header
  names). Each row carries the lineage columns; ``_etl_position`` is ``"<location>:<line>"`` (the
  physical line where the record starts, 1-based, counting skipped and header lines). A file of
  more than ``csv_arrow.MAX_COLUMNS`` columns keeps its fields in ``_etl_record`` only.
- ``rejects``: records that cannot be loaded (wrong field count, bytes the encoding cannot
  decode, missing or duplicate primary key, unparseable event time, CSV syntax errors), with
  position, raw text and reason. Nothing is dropped silently.

Reading (`content`): compression from the magic bytes (gzip, bz2, xz, zip with one file; other
formats are a permanent error naming them); the encoding from a BOM, else ``config.encoding`` when
the tenants file sets it, else UTF-8 when the file's first 256 KB are valid UTF-8, else
`charset-normalizer`'s guess. Every file is then read as UTF-8: the header once (`Layout`), then
the data records by the columnar fast path (`csv_arrow.ArrowPass`), which hands over to the slow
path (`csv_rows.RowReader`, resuming after the records already yielded) at the first row only
that path handles. ``stats.reader`` says which.

Partitions: with ``config.event_time`` a row belongs to ``ctx.window.day_of(event_time)``;
rows outside the window are skipped and counted in ``outside_window``. Without it the file is
a snapshot and every row is emitted once per day of ``ctx.window.days``. Rejects whose day is
unknown are written to every window day, so one multi-day run loads exactly what one run per
day would.

Row key: the primary-key values joined with ``|`` (a later row repeating a key is rejected),
else ``content_key(values)`` plus ``#<n>`` for the n-th identical row.

`CsvStats` (``source.etl_stats``, reset at each iteration; ``as_metadata()``): ``rows_read`` =
data records parsed = ``rows_emitted + rejects + outside_window`` (a snapshot row counts once
however many days it is loaded into); ``reader``; ``bytes_read`` (alias ``bytes``, compressed
size); ``compression``, ``member`` (inside a zip), ``encoding`` and ``encoding_source``
(bom, configured, utf-8 (valid), detected, fallback); ``columns``; ``empty_file`` and
``warning`` (no header at all, a guessed encoding, a wide file).

Header names are kept, except that empty ones become ``col_<n>`` and names that would collide
(exactly or after dlt's snake_case) get a ``_2``, ``_3``... suffix. URLs are redacted wherever
they are written. Errors name tenant, source and location: `CsvConfigError` (permanent: missing
file or HTTP 404/410 as `CsvFileNotFoundError`, an unknown encoding, an unreadable header,
configured columns missing from the header) and `CsvSourceError` (a read that failed part-way).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import IO, Any

import dlt
from dlt.common.normalizers.naming.snake_case import NamingConvention
from dlt.common.schema import Schema
from dlt.extract.source import DltSource
from dlt.sources.helpers import requests

from etl_platform.config.models import CsvSource
from etl_platform.sources import content, lineage
from etl_platform.sources.csv_arrow import MAX_COLUMNS, ArrowPass, CheckedStream, FallBack, TableBuilder
from etl_platform.sources.csv_rows import Lines, Out, RowReader, undecodable
from etl_platform.sources.errors import PermanentSourceError
from etl_platform.sources.lineage import REJECTS_TABLE, RunContext, apply_raw_hints, content_key
from etl_platform.sources.redact import redact_text

log = logging.getLogger(__name__)


class _IntendedJsonHint(logging.Filter):
    """dlt warns for every Arrow batch that a column's hint differs from its Arrow type; here
    that is only, by design, the ``_etl_record`` string carrying the json hint (dlt says which
    columns at INFO level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "several column hints were different" not in record.getMessage()


logging.getLogger("dlt").addFilter(_IntendedJsonHint())

FAST_PASS = True  # use `csv_arrow.ArrowPass` where it applies (tests compare both paths)
HEAD_BYTES = 1 << 18  # read ahead for skipped lines, the header and the sniff sample (grows for a longer header)
SNIFF_BYTES = 32 * 1024
SNIFF_DELIMITERS = ",;\t|"
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
_NAMING = NamingConvention()


class CsvSourceError(RuntimeError):
    """A CSV file cannot be read; the message names tenant, source and location."""


class CsvConfigError(CsvSourceError, PermanentSourceError):
    """The source's settings do not fit the file (columns, encoding): retrying cannot help."""


class CsvFileNotFoundError(CsvConfigError, FileNotFoundError):
    """The CSV file (or URL) does not exist."""


@dataclass
class CsvStats(content.Received):
    """Counters of one pass over the file (see the module docstring)."""

    rows_read: int = 0
    rows_emitted: int = 0
    rejects: int = 0
    outside_window: int = 0
    columns: int = 0
    empty_file: bool = False
    warning: str | None = None
    # "arrow" (the fast path), "rows" (the slow path) or "arrow, then rows from record <n>: <why>"
    reader: str = "rows"

    @property
    def bytes(self) -> int:
        """`bytes_read` under the name the platform's metadata reads for every source."""
        return self.bytes_read

    def reset(self) -> None:
        self.__dict__.update(CsvStats().__dict__)

    def restart(self) -> None:
        """Zero the counters of a pass (the slow path reads the file again), keep what was found."""
        for name in ("bytes_read", "rows_read", "rows_emitted", "rejects", "outside_window"):
            setattr(self, name, 0)

    def as_metadata(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Layout:
    """What the head of a file says: delimiter, header names, the physical line of the first
    data record, the columns configured as key and event time."""

    delimiter: str
    names: list[str]
    first_line: int
    key_index: list[int]
    time_index: int | None
    nulls: frozenset[str]
    content_keys: ContentKeys


def build_csv_source(config: CsvSource, location: str, ctx: RunContext) -> DltSource:
    """The dlt source of one CSV file; `location` is the resolved path or http(s) URL."""
    if config.resource == REJECTS_TABLE:
        raise ValueError(f"source {config.name!r}: resource name {REJECTS_TABLE!r} is reserved")
    stats = CsvStats()

    def read_file() -> Iterator[Out]:
        yield from _read(config, location, ctx, stats)

    def data_rows(item: Out) -> Iterator[Any]:
        if item.table == config.resource:
            yield item.data

    def rejected_rows(item: Out) -> Iterator[Any]:
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


def _read(config: CsvSource, location: str, ctx: RunContext, stats: CsvStats) -> Iterator[Out]:
    """The header, then the fast path where it applies, handing over to the slow path (resuming
    after the records already yielded) at the first row only that path handles."""
    where = f"tenant {ctx.tenant_id!r}, source {config.name!r}"
    shown = content.shown(location)
    stats.reset()
    with _open_utf8(config, location, where, stats) as data:
        layout, head, rest = _layout(config, data, shown, where, stats.encoding or "utf-8")
        if layout is None:
            stats.empty_file = True
            stats.warning = f"{shown} is empty (no header): zero rows loaded"
            log.warning("%s: %s", where, stats.warning)
            return
        _note_layout(stats, layout, shown, where)
        builder = TableBuilder(layout.names, shown, config, ctx, snapshot=layout.time_index is None)
        if not (FAST_PASS and layout.delimiter.isascii()):
            stats.reader = "rows"
            yield from _slow_path(head, data, layout, builder, stats, where, shown, resume=0)
            return
        arrow_pass = ArrowPass(
            builder=builder,
            delimiter=layout.delimiter,
            first_line=layout.first_line,
            stats=stats,
            key_index=layout.key_index,
            time_index=layout.time_index,
            content_key=layout.content_keys,
        )
        try:
            stats.reader = "arrow"
            for table in arrow_pass.tables(CheckedStream(head[rest:], data)):
                yield Out(config.resource, table)
            return
        except FallBack as exc:
            resume, handover = exc.records_done, f"arrow, then rows from record {exc.records_done + 1}: {exc}"
            log.info("%s: %s: %s", where, shown, handover)
    stats.restart()
    stats.reader = handover
    layout.content_keys = ContentKeys()
    with _open_utf8(config, location, where, stats) as data:
        yield from _slow_path(b"", data, layout, builder, stats, where, shown, resume=resume)


@contextlib.contextmanager
def _open_utf8(config: CsvSource, location: str, where: str, stats: CsvStats) -> Iterator[IO[bytes]]:
    """The file's bytes as UTF-8 (see `content`); an encoding set in the tenants file is honoured."""
    configured = config.encoding if "encoding" in config.model_fields_set else None
    with content.open_bytes(location, where, stats, not_found=CsvFileNotFoundError) as binary:
        yield content.utf8_bytes(binary, configured, stats, where)


def _slow_path(
    head: bytes,
    data: IO[bytes],
    layout: Layout,
    builder: TableBuilder,
    stats: CsvStats,
    where: str,
    shown: str,
    *,
    resume: int,
) -> Iterator[Out]:
    """`RowReader` over the file (`head`, the bytes already read, then `data`)."""
    if head:
        data = io.BufferedReader(content.Prefixed(head, data))
    text = io.TextIOWrapper(data, encoding="utf-8", errors="surrogateescape", newline="")
    lines = Lines(text)
    try:
        yield from RowReader(layout, builder, stats, resume_after=resume).batches(lines)
    except (OSError, EOFError, UnicodeError, requests.RequestException) as exc:
        message = redact_text(str(exc))
        raise CsvSourceError(f"{where}: reading {shown} failed near line {lines.line}: {message}") from None


def _layout(
    config: CsvSource, data: IO[bytes], shown: str, where: str, encoding: str
) -> tuple[Layout | None, bytes, int]:
    """The file's `Layout` (None for a file without any record), the head read to find it, and
    where the data records start in that head."""
    head = b""
    while True:
        more = data.read(max(HEAD_BYTES, len(head)))
        head += more
        at_end = not more
        found = _header(config, head, at_end, shown, where, encoding)
        if found is not None or at_end:
            break
    if found is None:
        return None, head, len(head)
    delimiter, fields_, used = found
    names = _column_names(fields_) if config.has_header else [f"col_{i}" for i in range(1, len(fields_) + 1)]
    layout = Layout(
        delimiter=delimiter,
        names=names,
        first_line=config.skip_lines + used + 1,
        key_index=[_column(names, name, "primary_key", where, shown) for name in config.primary_key],
        time_index=_column(names, config.event_time, "event_time", where, shown) if config.event_time else None,
        nulls=frozenset(config.null_values),
        content_keys=ContentKeys(),
    )
    lines = _LINE.findall(head.decode("utf-8", "surrogateescape"))
    skipped = "".join(lines[: layout.first_line - 1]).encode("utf-8", "surrogateescape")
    return layout, head, len(skipped)


def _header(
    config: CsvSource, head: bytes, at_end: bool, shown: str, where: str, encoding: str
) -> tuple[str, list[str], int] | None:
    """(delimiter, first record's fields, physical lines up to and including the header (none
    without one)), or None when the head holds no complete first record yet (or none at all)."""
    lines = _LINE.findall(head.decode("utf-8", "surrogateescape"))
    if not at_end and lines and not lines[-1].endswith(("\n", "\r")):
        lines = lines[:-1]  # a line cut by the read
    after = [line.replace("\0", "") for line in lines[config.skip_lines :]]
    delimiter = config.delimiter or _sniff("".join(after)[:SNIFF_BYTES])
    feed = Lines(iter(after))
    reader = csv.reader(feed, delimiter=delimiter)
    while True:
        try:
            first = next(reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            if not at_end and feed.line == len(after):
                return None  # a quoted value open at the end of the head: read more
            raise CsvConfigError(
                f"{where}: cannot read the first record (line {config.skip_lines + feed.line}) of {shown}: "
                f"{exc}; check the source's delimiter and skip_lines"
            ) from None
        line, raw = feed.take()
        if first:
            break
    if not at_end and feed.line == len(after):
        return None  # the record may go on past the head
    if bad := undecodable(raw):
        raise CsvConfigError(
            f"{where}: cannot read the first record (line {config.skip_lines + line}) of {shown}: not valid "
            f"{encoding} (byte {bad}); check the source's encoding and delimiter"
        )
    used = feed.line if config.has_header else line - 1
    return delimiter, first, used


def _note_layout(stats: CsvStats, layout: Layout, shown: str, where: str) -> None:
    stats.columns = len(layout.names)
    notes = []
    if stats.encoding_source in ("detected", "fallback"):
        notes.append(f"encoding not declared and not UTF-8: read as {stats.encoding} ({stats.encoding_source})")
    if len(layout.names) > MAX_COLUMNS:
        notes.append(f"{len(layout.names)} columns (more than {MAX_COLUMNS}): the fields are in _etl_record only")
    if notes:
        stats.warning = f"{shown}: " + "; ".join(notes)
        log.warning("%s: %s", where, stats.warning)


def _sniff(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=SNIFF_DELIMITERS).delimiter
    except csv.Error:
        return ","


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
    shown = ", ".join(names[:50]) + (f", ... ({len(names)} columns)" if len(names) > 50 else "")
    raise CsvConfigError(f"{where}: {setting} column {name!r} is not in the header of {location} (columns: {shown})")


class ContentKeys:
    """Row keys of a source without primary key: ``content_key(values)#<n>`` for the n-th
    identical row (one small counter per distinct row)."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}

    def __call__(self, fields: list[str]) -> str:
        key = content_key(fields)
        digest = int(key[:16], 16)
        occurrence = self._seen[digest] = self._seen.get(digest, 0) + 1
        return f"{key}#{occurrence}"
