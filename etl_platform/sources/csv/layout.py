"""The head of a CSV file and what a pass over it counts.

- `read_layout`: the delimiter (configured, else sniffed), the header names (made unique, also
  after dlt's snake_case, and non-empty), the physical line of the first data record, and the
  columns configured as primary key and event time (`Layout`);
- `CsvStats`: the counters of one pass (the source's `etl_stats`);
- `Lines`: physical lines for `csv.reader`, remembering each record's raw text and first line;
- the source's errors: `CsvConfigError` (permanent) and `CsvSourceError`.

The lowest module of `sources/csv/`: the fast pass, the row reader and the source build on it.
"""

from __future__ import annotations

import csv
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import IO, Any

from dlt.common.normalizers.naming.snake_case import NamingConvention

from etl_platform.config.models import CsvSource
from etl_platform.sources import bounds, content, lineage
from etl_platform.sources.errors import PermanentSourceError
from etl_platform.sources.lineage import content_key

HEAD_BYTES = 1 << 18  # read ahead for skipped lines, the header and the sniff sample (grows for a longer header)
SNIFF_BYTES = 32 * 1024
SNIFF_DELIMITERS = ",;\t|"
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
_NAMING = NamingConvention()
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class CsvSourceError(RuntimeError):
    """A CSV file cannot be read; the message names tenant, source and location."""


class CsvConfigError(CsvSourceError, PermanentSourceError):
    """The source's settings do not fit the file (columns, encoding): retrying cannot help."""


class CsvFileNotFoundError(CsvConfigError, FileNotFoundError):
    """The CSV file (or URL) does not exist."""


@dataclass
class CsvStats(content.Received):
    """Counters of one pass over the file (see the docstring of `source.py`)."""

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


def undecodable(text: str) -> str | None:
    """The first undecodable byte in `text` as 0xNN, else None."""
    match = _UNDECODABLE.search(text)
    return f"0x{ord(match.group()) - 0xDC00:02x}" if match else None


def printable(text: str) -> str:
    return _UNDECODABLE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


class Lines:
    """Physical lines of a text stream for `csv.reader` (NUL bytes removed), remembering the
    raw text and first line of each record."""

    def __init__(self, text: IO[str] | Iterator[str], max_line: int | None = None, where: str = "") -> None:
        self._text = iter(text)
        # a stream is read a bounded line at a time (a 256 MB line is refused, never held)
        self._readline = getattr(text, "readline", None) if max_line else None
        self._max_line, self._where = max_line or 0, where
        self._lookahead: deque[str] = deque()
        self.line = 0
        self._raw: list[str] = []

    def _next(self) -> str:
        if self._readline is None:
            return next(self._text)
        line = self._readline(self._max_line + 1)
        if not line:
            raise StopIteration
        if len(line) > self._max_line:
            raise bounds.InputLimitError(
                f"{self._where}: line {self.line + 1} is longer than ETL_MAX_CSV_FIELD_BYTES = "
                f"{bounds.size(self._max_line)}: refused"
            )
        return line

    def skip(self, count: int) -> None:
        for _ in range(count):
            try:
                self._next()
            except StopIteration:
                break
            self.line += 1

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> str:
        line = self._lookahead.popleft() if self._lookahead else self._next()
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


def read_layout(
    config: CsvSource, data: IO[bytes], shown: str, where: str, encoding: str
) -> tuple[Layout | None, bytes, int]:
    """The file's `Layout` (None for a file without any record), the head read to find it, and
    where the data records start in that head."""
    head = b""
    limit = bounds.limits().csv_field_bytes
    csv.field_size_limit(limit)
    while True:
        more = data.read(max(HEAD_BYTES, len(head)))
        head += more
        at_end = not more
        found = _header(config, head, at_end, shown, where, encoding)
        if found is not None or at_end:
            break
        if len(head) > limit:
            raise bounds.InputLimitError(
                f"{where}: {shown}: the first record (line {config.skip_lines + 1}) is longer than "
                f"ETL_MAX_CSV_FIELD_BYTES = {bounds.size(limit)}: refused"
            )
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
            if "field limit" in str(exc):
                raise bounds.InputLimitError(
                    f"{where}: {shown}: a field of the first record (line {config.skip_lines + feed.line}) is "
                    f"longer than ETL_MAX_CSV_FIELD_BYTES = {bounds.size(csv.field_size_limit())}: refused"
                ) from None
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
