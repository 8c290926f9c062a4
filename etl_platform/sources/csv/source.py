"""CSV files (local path or http(s) URL) as a dlt source.

    source = build_csv_source(config, location, ctx)
    pipeline.run(source)
    source.etl_stats  # CsvStats of the last iteration

`build_csv_source` does no I/O: the file is opened when dlt iterates the source. The source
(named ``config.name``) has two resources over one streaming pass of the file:

- ``config.resource``: the data rows, yielded to dlt as pyarrow Tables (`arrow_pass.TableBuilder`).
  Values stay the strings received, except the spellings in ``config.null_values``, which are
  null both in the columns and in ``_etl_record`` (the record as a JSON object keyed by the header
  names). Each row carries the lineage columns; ``_etl_position`` is ``"<location>:<line>"`` (the
  physical line where the record starts, 1-based, counting skipped and header lines). A file of
  more than ``arrow_pass.MAX_COLUMNS`` columns keeps its fields in ``_etl_record`` only.
- ``rejects``: records that cannot be loaded (wrong field count, bytes the encoding cannot
  decode, missing or duplicate primary key, unparseable event time, CSV syntax errors), with
  position, raw text and reason. Nothing is dropped silently.

Reading (`content`): compression from the magic bytes (gzip, bz2, xz, zip with one file; other
formats are a permanent error naming them); the encoding from a BOM, else ``config.encoding`` when
the tenants file sets it, else UTF-8 when the file's first 256 KB are valid UTF-8, else
`charset-normalizer`'s guess. Every file is then read as UTF-8: the header once (`Layout`), then
the data records by the columnar fast path (`arrow_pass.ArrowPass`, parsing the next batches in a
thread of its own while dlt takes the last: `read_ahead`), which hands over to the slow path
(`rows.RowReader`, resuming after the records already yielded) at the first row only that path
handles. ``stats.reader`` says which.

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
import io
import logging
from collections.abc import Callable, Iterator
from typing import IO, Any

import dlt
from dlt.common.schema import Schema
from dlt.extract.source import DltSource
from dlt.sources.helpers import requests

from etl_platform.config.models import CsvSource
from etl_platform.config.names import REJECTS_TABLE
from etl_platform.security.redaction import redact_text
from etl_platform.sources import bounds, content, lineage
from etl_platform.sources.csv.arrow_pass import MAX_COLUMNS, ArrowPass, CheckedStream, FallBack, TableBuilder
from etl_platform.sources.csv.layout import (
    ContentKeys,
    CsvFileNotFoundError,
    CsvSourceError,
    CsvStats,
    Layout,
    Lines,
    read_layout,
)
from etl_platform.sources.csv.rows import Out, RowReader
from etl_platform.sources.errors import PermanentSourceError
from etl_platform.sources.lineage import RunContext, apply_raw_hints
from etl_platform.sources.read_ahead import read_ahead

log = logging.getLogger(__name__)


class _IntendedJsonHint(logging.Filter):
    """dlt warns for every Arrow batch that a column's hint differs from its Arrow type; here
    that is only, by design, the ``_etl_record`` string carrying the json hint (dlt says which
    columns at INFO level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "several column hints were different" not in record.getMessage()


# one instance: `addFilter` ignores a filter the logger already has, so adding it is idempotent
_INTENDED_JSON_HINT = _IntendedJsonHint()
FAST_PASS = True  # use `arrow_pass.ArrowPass` where it applies (tests compare both paths)


def build_csv_source(config: CsvSource, location: str, ctx: RunContext) -> DltSource:
    """The dlt source of one CSV file; `location` is the resolved path or http(s) URL."""
    logging.getLogger("dlt").addFilter(_INTENDED_JSON_HINT)
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
    arrow_pass: ArrowPass | None = None
    with _failed_read(where, shown, lambda: arrow_pass.first_line if arrow_pass else None), _open_utf8(
        config, location, where, stats
    ) as data:
        layout, head, rest = read_layout(config, data, shown, where, stats.encoding or "utf-8")
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
            with read_ahead(arrow_pass.tables(CheckedStream(head[rest:], data))) as tables:
                for table in tables:
                    yield Out(config.resource, table)
            return
        except FallBack as exc:
            resume, handover = exc.records_done, f"arrow, then rows from record {exc.records_done + 1}: {exc}"
            log.info("%s: %s: %s", where, shown, handover)
    stats.restart()
    stats.reader = handover
    layout.content_keys = ContentKeys()
    with _failed_read(where, shown, lambda: None), _open_utf8(config, location, where, stats) as data:
        yield from _slow_path(b"", data, layout, builder, stats, where, shown, resume=resume)


@contextlib.contextmanager
def _failed_read(where: str, shown: str, line: Callable[[], int | None]) -> Iterator[None]:
    """A read that fails part-way (the connection, the file, its decompression) is a
    `CsvSourceError` (transient) naming the tenant, the source, the location and about where."""
    try:
        yield
    except (CsvSourceError, PermanentSourceError):  # already named (a missing file is an OSError too)
        raise
    except (OSError, EOFError, UnicodeError, requests.RequestException) as exc:
        reached = line()
        near = f" near line {reached}" if reached else ""
        raise CsvSourceError(f"{where}: reading {shown} failed{near}: {redact_text(str(exc))}") from None


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
    limit = bounds.limits().csv_field_bytes
    lines = Lines(text, max_line=limit, where=f"{where}: {shown}")
    reader = RowReader(layout, builder, stats, resume_after=resume, field_limit=limit, where=where)
    with _failed_read(where, shown, lambda: lines.line):
        yield from reader.batches(lines)


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


