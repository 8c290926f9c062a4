"""The CSV source's slow path: the data records read one by one with Python's csv module, for
the rows the columnar pass (`arrow_pass.ArrowPass`) must not take: a row to reject (wrong field
count, bytes the encoding cannot decode, a missing or repeated primary key, an unparseable event
time, a CSV syntax error), a blank line or a NUL byte (line numbers), a non-ASCII delimiter.

It starts after the header (`layout.Layout`) and reads every record, yielding only those after
the first `resume_after` (already yielded by the columnar pass), so that key checks and counts
cover the whole file. Batches hold at most `BATCH_BYTES` of CSV or `BATCH_ROWS` rows, so they
stay small however wide the rows are.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from etl_platform.config.names import REJECTS_TABLE
from etl_platform.sources.bounds import InputLimitError, size
from etl_platform.sources.csv.arrow_pass import BLOCK_BYTES, TableBuilder
from etl_platform.sources.csv.layout import CsvStats, Layout, Lines, printable, undecodable
from etl_platform.sources.lineage import parse_time

BATCH_ROWS = 10_000  # rows per Arrow table at most
BATCH_BYTES = BLOCK_BYTES  # CSV bytes per Arrow table at most (wide rows: fewer rows)


@dataclass(frozen=True)
class Out:
    """One item of the reader, routed to a resource by `table`."""

    table: str
    data: Any


@dataclass
class RowReader:
    """One row-by-row pass over the data records (see the module docstring)."""

    layout: Layout
    builder: TableBuilder
    stats: CsvStats
    resume_after: int = 0
    field_limit: int = 16 << 20  # ETL_MAX_CSV_FIELD_BYTES
    where: str = ""  # tenant and source, for a refusal
    # hash of "<day>|<row key>" -> first line (str hash: 64-bit, stable within one pass)
    seen: dict[int, int] = field(default_factory=dict)
    # the pending batch, one entry per row in parallel lists (no per-row tuple objects)
    rows: list[list[str]] = field(default_factory=list)
    _size: int = 0
    _row_lines: list[int] = field(default_factory=list)
    _row_keys: list[str] = field(default_factory=list)
    _row_times: list[dt.datetime | None] = field(default_factory=list)
    _row_days: list[dt.date | None] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def batches(self, lines: Lines) -> Iterator[Out]:
        lines.skip(self.layout.first_line - 1)
        csv.field_size_limit(self.field_limit)
        for line, raw, fields, error in self._parsed(lines, csv.reader(lines, delimiter=self.layout.delimiter)):
            if error and "field limit" in error:  # a field over ETL_MAX_CSV_FIELD_BYTES: the file is refused
                raise InputLimitError(
                    f"{self.where}: {self.builder.location}: a field of the record at line {line} is longer than "
                    f"ETL_MAX_CSV_FIELD_BYTES = {size(self.field_limit)}: refused"
                )
            self.stats.rows_read += 1
            if fields is None:
                self._reject(line, raw, error or "unreadable record")
            else:
                self._record(line, raw, fields)
            if len(self.rows) >= BATCH_ROWS or self._size >= BATCH_BYTES:
                yield from self._flush_rows()
            if len(self.rejected) >= BATCH_ROWS:
                yield from self._flush_rejects()
        yield from self._flush_rows()
        yield from self._flush_rejects()

    @staticmethod
    def _parsed(lines: Lines, reader: Iterator[list[str]]) -> Iterator[tuple[int, str, list[str] | None, str | None]]:
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
            line, raw = lines.take()
            if fields != []:
                yield line, raw, fields, error

    def _record(self, line: int, raw: str, fields: list[str]) -> None:
        layout, nulls = self.layout, self.layout.nulls
        if bad := undecodable(raw):
            return self._reject(
                line, raw, f"line is not valid {self.stats.encoding} (byte {bad}); check the source's encoding"
            )
        if len(fields) != len(layout.names):
            return self._reject(line, raw, f"expected {len(layout.names)} fields, got {len(fields)}")
        event_time = day = None
        if layout.time_index is not None:
            value = fields[layout.time_index]
            event_time = None if value in nulls else parse_time(value)
            if event_time is None:
                return self._reject(line, raw, f"unparseable event_time {value!r}")
            day = self.builder.ctx.window.day_of(event_time)
            if day is None:
                self.stats.outside_window += 1
                return None
        if layout.key_index:
            key_values = [fields[i] for i in layout.key_index]
            for index, value in zip(layout.key_index, key_values):
                if value in nulls:
                    return self._reject(line, raw, f"missing primary key {layout.names[index]!r}")
            row_key = "|".join(key_values)
            first = self.seen.setdefault(hash(f"{day}|{row_key}"), line)
            if first != line:
                return self._reject(line, raw, f"duplicate primary key {row_key!r} (first at line {first})", day)
        else:
            row_key = layout.content_keys(fields)
        self.stats.rows_emitted += 1
        if self.stats.rows_read <= self.resume_after:
            return None
        self.rows.append(fields)
        self._size += len(raw)
        self._row_lines.append(line)
        self._row_keys.append(row_key)
        if layout.time_index is not None:
            self._row_times.append(event_time)
            self._row_days.append(day)
        return None

    def _reject(self, line: int, raw: str, reason: str, day: dt.date | None = None) -> None:
        self.stats.rejects += 1
        ctx = self.builder.ctx
        for partition_date in [day] if day else ctx.window.days:
            self.rejected.append(
                ctx.reject(
                    resource=self.builder.config.resource,
                    position=f"{self.builder.location}:{line}",
                    raw_text=printable(raw),
                    reason=reason,
                    partition_date=partition_date,
                )
            )

    def _flush_rejects(self) -> Iterator[Out]:
        if self.rejected:
            yield Out(REJECTS_TABLE, self.rejected)
            self.rejected = []

    def _flush_rows(self) -> Iterator[Out]:
        """The pending rows as Arrow tables (`TableBuilder`)."""
        if not self.rows:
            return
        raw = [pa.array(values, pa.string()) for values in zip(*self.rows)]
        snapshot = self.layout.time_index is None
        tables = self.builder.tables(
            raw,
            self._row_lines,
            self._row_keys,
            None if snapshot else self._row_times,
            None if snapshot else self._row_days,
        )
        self.rows, self._row_lines, self._row_keys, self._row_times, self._row_days = [], [], [], [], []
        self._size = 0
        for table in tables:
            yield Out(self.builder.config.resource, table)
