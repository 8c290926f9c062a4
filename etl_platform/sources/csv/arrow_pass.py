"""The CSV source's fast path: raw rows as Arrow tables, read by pyarrow's streaming CSV reader.

- `TableBuilder` turns a batch of raw string columns into the raw table the source yields (null
  spellings as nulls, in the columns and in the `_etl_record` JSON; lineage columns); both paths
  use it. A file of more than `MAX_COLUMNS` columns keeps its fields in `_etl_record` only.
- `ArrowPass` reads the data records (UTF-8, after the header) in blocks of `BLOCK_BYTES`, so a
  batch holds fewer rows the wider they are, and does the per-row work with Arrow kernels (line
  numbers, keys, JSON). It hands over to the slow path (`rows.RowReader`; `FallBack`, with
  the count of records it already yielded) at the first thing only that path handles exactly: a
  row to reject (wrong field count, invalid UTF-8, missing or duplicate primary key, unparseable
  event time), a blank line (line numbers would drift), a NUL byte, or a parse error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from etl_platform.config.models import CsvSource
from etl_platform.sources import lineage
from etl_platform.sources.csv.layout import CsvStats
from etl_platform.sources.lineage import RunContext, parse_time

BLOCK_BYTES = 2 << 20  # bytes of CSV per Arrow batch (~12k rows of 160 bytes); 4 MB: +120 MB RSS
# Beyond this many columns the fields stay in `_etl_record` only: DuckDB needs ~100 KB of its
# memory cap per column whatever the batch size (at a 128 MB cap a 4,000-column CREATE TABLE of
# no rows fails; a staged merge of 750 columns fails, 500 fit; the loading cap is now at least
# 256 MB, `config.settings.duckdb_load_memory_mb`), and a PostgreSQL table holds at most 1,600
# columns.
MAX_COLUMNS = 500
_ARROW_TYPES = {
    "text": pa.string(),
    "json": pa.string(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", "UTC"),
}
_SPECIAL = r'[\x00-\x1f"\\]'  # characters a JSON string escapes (and line breaks)
_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class FallBack(Exception):
    """The fast pass stops; the row-by-row reader resumes after `records_done` records."""

    def __init__(self, reason: str, records_done: int) -> None:
        super().__init__(reason)
        self.records_done = records_done


# --- raw tables ----------------------------------------------------------------------------


def json_objects(names: list[str], columns: list[pa.Array], special: list[bool] | None = None) -> pa.Array:
    """Each row as a compact JSON object keyed by `names` in order, as orjson writes it;
    `special[i]`: whether column i may hold characters to escape (`has_special`).

    One join of all the columns: the quotes of a column without nulls go into the literal parts
    around it (`{"id":"` ... `","name":"`); a column with nulls brings its own (`"v"` or `null`)."""
    parts: list[Any] = []
    open_string = False  # the last part left a JSON string open: the next literal closes it
    for index, (name, column) in enumerate(zip(names, columns)):
        escape = has_special(column) if special is None else special[index]
        literal = ('"' if open_string else "") + ("{" if index == 0 else ",") + orjson.dumps(name).decode() + ":"
        value = _escaped(column) if escape else column
        open_string = value.null_count == 0
        if open_string:
            parts += [literal + '"', value]
        else:
            parts += [literal, pc.fill_null(pc.binary_join_element_wise('"', value, '"', ""), "null")]
    parts.append(('"' if open_string else "") + "}" if parts else "{}")
    return pc.binary_join_element_wise(*parts, "")


def has_special(column: pa.Array) -> bool:
    """Whether any value holds a control character (line breaks too), a quote or a backslash.

    A scan of the bytes the values span (UTF-8 never uses bytes below 0x80 inside a multi-byte
    character); a slot hidden by a null may also be scanned, which at worst escapes for nothing."""
    data = _value_bytes(column)
    if data is None:
        return _any(pc.match_substring_regex(column, _SPECIAL))
    return bool(np.any(data < 0x20) or np.any(data == 0x22) or np.any(data == 0x5C))


def _value_bytes(column: pa.Array) -> np.ndarray | None:
    """The bytes of a string array's values, without a copy (None for other types)."""
    if not isinstance(column, pa.Array) or column.type not in (pa.string(), pa.large_string()):
        return None
    _, offsets, data = column.buffers()
    if data is None or len(column) == 0:
        return np.empty(0, np.uint8)
    width = np.int32 if column.type == pa.string() else np.int64
    bounds = np.frombuffer(offsets, width)[[column.offset, column.offset + len(column)]]
    return np.frombuffer(data, np.uint8)[bounds[0]:bounds[1]]


def _escaped(column: pa.Array) -> pa.Array:
    """The values with JSON's escapes (without the quotes)."""
    for char, escaped in _SHORT_ESCAPES.items():  # backslash first
        column = pc.replace_substring(column, char, escaped)
    if _any(pc.match_substring_regex(column, r"[\x00-\x1f]")):
        for code in range(0x20):
            if chr(code) not in _SHORT_ESCAPES:
                column = pc.replace_substring(column, chr(code), f"\\u{code:04x}")
    return column


def _any(mask: pa.Array) -> bool:
    return bool(pc.any(mask).as_py())


@dataclass(frozen=True)
class TableBuilder:
    """Raw string columns of one file -> the Arrow tables of its raw resource."""

    names: list[str]
    location: str
    config: CsvSource
    ctx: RunContext
    snapshot: bool
    schema: pa.Schema = field(init=False)

    @property
    def flat(self) -> bool:
        """Whether the fields are also columns of their own (not only in `_etl_record`)."""
        return len(self.names) <= MAX_COLUMNS

    def __post_init__(self) -> None:
        own = self.names if self.flat else []
        fields = [pa.field(name, pa.string()) for name in own] + [
            pa.field(name, _ARROW_TYPES[hint["data_type"]], nullable=hint.get("nullable", True))
            for name, hint in lineage.LINEAGE_COLUMNS.items()
        ]
        object.__setattr__(self, "schema", pa.schema(fields))

    def tables(
        self,
        raw: list[pa.Array],
        lines: Any,
        keys: Any,
        times: list[dt.datetime | None] | None = None,
        days: list[dt.date | None] | None = None,
        special: list[bool] | None = None,
    ) -> Iterator[pa.Table]:
        """One table of the rows (one per window day for a snapshot): values as received except
        null spellings, which become null in the columns and in the `_etl_record` JSON."""
        count, schema = len(raw[0]), self.schema
        nulls = self.config.null_values
        null_set = pa.array(sorted(set(nulls)), pa.string()) if nulls else None
        no_value = pa.scalar(None, pa.string())
        values: list[pa.Array] = []
        for array in raw:
            is_null = pc.is_in(array, value_set=null_set) if null_set is not None else None
            if is_null is not None and _any(is_null):
                array = pc.if_else(is_null, no_value, array)
            values.append(array)
        columns: dict[str, Any] = dict(zip(self.names, values)) if self.flat else {}
        constant = self.ctx.lineage(
            resource=self.config.resource, partition_date=self.ctx.window.days[0], position=None, row_key=""
        )
        for name, value in constant.items():
            columns[name] = pa.repeat(pa.scalar(value, schema.field(name).type), count)
        columns[lineage.POSITION] = pc.binary_join_element_wise(
            pa.scalar(f"{self.location}:"), pc.cast(pa.array(lines, pa.int64()), pa.string()), ""
        )
        columns[lineage.ROW_KEY] = keys if isinstance(keys, pa.Array) else pa.array(keys, pa.string())
        time_type = schema.field(lineage.EVENT_TIME).type
        columns[lineage.EVENT_TIME] = pa.nulls(count, time_type) if self.snapshot else pa.array(times, time_type)
        columns[lineage.RECORD] = json_objects(self.names, values, special)
        if not self.snapshot:
            columns[lineage.PARTITION_DATE] = pa.array(days, pa.date32())
        table = pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
        yield table
        if self.snapshot:
            index = schema.get_field_index(lineage.PARTITION_DATE)
            for day in self.ctx.window.days[1:]:
                yield table.set_column(index, schema.field(index), pa.repeat(pa.scalar(day, pa.date32()), count))


# --- the fast pass -------------------------------------------------------------------------


class CheckedStream:
    """The bytes after the header, for pyarrow; stops the pass at a NUL byte or a blank line."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head, self._rest = head, rest
        self._last = b"\n"  # the header ended a line: a break right after it is a blank line
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        size = size if size and size > 0 else BLOCK_BYTES
        if self._head:
            chunk, self._head = self._head[:size], self._head[size:]
        else:
            chunk = self._rest.read(size)
        if not chunk:
            return b""
        if b"\0" in chunk:
            raise FallBack("NUL bytes", 0)
        edge = self._last + chunk
        if b"\n\n" in edge or b"\n\r" in edge or b"\r\r" in edge:
            raise FallBack("blank lines", 0)
        self._last = chunk[-1:]
        return chunk

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


@dataclass
class ArrowPass:
    """The data records of a file, read by pyarrow from `stream` (see the module docstring)."""

    builder: TableBuilder
    delimiter: str
    first_line: int  # physical line of the first data record
    stats: CsvStats
    key_index: list[int]
    time_index: int | None
    content_key: Callable[[list[str]], str]  # row key of a source without primary key
    records_done: int = 0
    _seen: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # sorted hashes of the keys so far

    def tables(self, stream: CheckedStream) -> Iterator[pa.Table]:
        names = [f"f{i}" for i in range(len(self.builder.names))]
        try:
            reader = pcsv.open_csv(
                stream,
                read_options=pcsv.ReadOptions(column_names=names, block_size=BLOCK_BYTES),
                parse_options=pcsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string()),
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            for batch in reader:
                ready = self._rows(batch)
                self.records_done += batch.num_rows
                yield from ready
        except FallBack as exc:  # raised by a read ahead of the batches: resume after what was yielded
            raise FallBack(str(exc), self.records_done) from None
        except (pa.ArrowException, UnicodeError) as exc:
            raise FallBack(f"parse error: {exc}", self.records_done) from None

    def _rows(self, batch: pa.RecordBatch) -> list[pa.Table]:
        """The raw tables of one batch, or FallBack before anything of it is yielded."""
        raw, count = list(batch.columns), batch.num_rows
        if count == 0:
            return []
        special = [has_special(column) for column in raw]
        lines = self._lines(raw, count, special)
        times = days = None
        keep: list[bool] | None = None
        if self.time_index is not None:
            nulls = set(self.builder.config.null_values)
            times = [None if v in nulls else parse_time(v) for v in raw[self.time_index].to_pylist()]
            if None in times:
                raise FallBack("unparseable event_time", self.records_done)
            days = [self.builder.ctx.window.day_of(t) for t in times]
            keep = [day is not None for day in days]
            if not all(keep):
                mask = pa.array(keep)
                raw, lines = [pc.filter(column, mask) for column in raw], lines[np.array(keep)]
                times = [t for t, k in zip(times, keep) if k]
                days = [d for d in days if d is not None]
        kept = len(lines)
        self.stats.rows_read += count
        self.stats.outside_window += count - kept
        self.stats.rows_emitted += kept
        if kept == 0:
            return []
        keys = self._keys(raw, days)
        return list(self.builder.tables(raw, lines, keys, times, days, special))

    def _lines(self, raw: list[pa.Array], count: int, special: list[bool]) -> np.ndarray:
        """Physical line of each record: one more than the last, plus the line breaks inside
        the last record's quoted values."""
        breaks = np.zeros(count, np.int64)
        for column, maybe in zip(raw, special):
            if maybe and _any(pc.match_substring_regex(column, "[\r\n]")):
                crlf = pc.count_substring(column, "\r\n")
                each = pc.subtract(pc.add(pc.count_substring(column, "\n"), pc.count_substring(column, "\r")), crlf)
                breaks += each.to_numpy(zero_copy_only=False)
        steps = 1 + breaks
        lines = self.first_line + np.concatenate(([0], np.cumsum(steps)[:-1]))
        self.first_line += int(steps.sum())
        return lines

    def _keys(self, raw: list[pa.Array], days: list[dt.date | None] | None) -> Any:
        if not self.key_index:
            rows = zip(*(raw[i].to_pylist() for i in range(len(raw))))
            return [self.content_key(list(values)) for values in rows]
        columns = [raw[i] for i in self.key_index]
        nulls = self.builder.config.null_values
        if nulls and any(_any(pc.is_in(c, value_set=pa.array(sorted(set(nulls)), pa.string()))) for c in columns):
            raise FallBack("missing primary key", self.records_done)
        keys = columns[0] if len(columns) == 1 else pc.binary_join_element_wise(*columns, "|")
        scoped = keys if days is None else pc.binary_join_element_wise(pa.array([str(d) for d in days]), keys, "|")
        # a repeated hash (a repeated key, or rarely two keys alike) hands over to the slow path,
        # which compares the keys themselves
        hashes = np.sort(np.fromiter(map(hash, scoped.to_pylist()), np.int64, len(scoped)))
        seen = self._seen
        at = np.searchsorted(seen, hashes)
        repeated = bool(np.any(hashes[1:] == hashes[:-1])) or bool(
            len(seen) and np.any(seen[np.minimum(at, len(seen) - 1)] == hashes)
        )
        if repeated:
            raise FallBack("duplicate primary key", self.records_done)
        self._seen = np.insert(seen, at, hashes)  # still sorted
        return keys
