"""Bounded input: what one source may send, checked before the expensive step.

Each limit is a setting (`config.settings.InputLimits`); each refusal is an `InputLimitError`
(permanent) whose message names the setting and its value, the source and the position:

- `CappedStream`: the bytes of a file or feed after decompression, counted as they are read;
- `DepthScan`: the nesting of a JSON page ([ and { outside strings), counted on its bytes as
  they arrive, so that no page nested deeper than the limit reaches a parser;
- `Deadline` and `response_chunks`: one HTTP request's total time from its answer to the end of
  its body, checked at every chunk (read with `read1`: a server that sends a byte at a time cannot
  hold a read forever). Before the answer, dlt's per-read timeout and retry settings apply (and
  GitHub's rate-limit wait), which a total deadline would cut short;
- `open_local`: a local file opened only inside the data root (`config.locations.confine`),
  checked again at open time (a symlink may have changed since the tenants file was loaded).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import requests
from urllib3 import exceptions as urllib3_errors

from etl_platform.config import locations
from etl_platform.config.settings import InputLimits
from etl_platform.sources.errors import PermanentSourceError

CHUNK_BYTES = 1 << 16
_OPENERS = np.zeros(256, np.int64)
_OPENERS[[ord("["), ord("{")]] = 1
_OPENERS[[ord("]"), ord("}")]] = -1


class InputLimitError(PermanentSourceError):
    """A source sent more than a limit allows (size, nesting, time): the same input fails again."""


class LocationRefused(PermanentSourceError):
    """A local location outside the data root, or into /proc, /sys or /dev."""


def size(value: float) -> str:
    """Bytes for people: 64 MiB, 1 GiB, 512 bytes."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:g} {unit}"
    return f"{int(value)} bytes"


def limits() -> InputLimits:
    return InputLimits.from_env()


class CappedStream(io.RawIOBase):
    """`binary`, refused (`InputLimitError`) once more than `cap` bytes were read from it."""

    def __init__(self, binary: IO[bytes], cap: int, setting: str, where: str) -> None:
        self._read = binary.read
        self.cap, self.setting, self.where = cap, setting, where
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._read(min(len(buffer), self.cap + 1 - self.count) or 1)
        self.count += len(data)
        if self.count > self.cap:
            raise InputLimitError(
                f"{self.where}: more than {self.setting} = {size(self.cap)} after decompression: refused"
            )
        buffer[: len(data)] = data
        return len(data)


def capped(binary: IO[bytes], cap: int, setting: str, where: str) -> IO[bytes]:
    return io.BufferedReader(CappedStream(binary, cap, setting, where), CHUNK_BYTES)


class DepthScan:
    """The nesting depth of a JSON text fed in chunks (strings and their escapes skipped);
    `feed` raises InputLimitError once it goes deeper than `limit`. Vectorized over the positions
    of quotes, backslashes and brackets (numpy): a quote after an odd run of backslashes is
    escaped, the others open or close strings, and [ { ] } count outside strings only."""

    def __init__(self, limit: int, where: str) -> None:
        self.limit, self.where = limit, where
        self.depth = self.peak = 0
        self._inside = 0  # 1 while a string is open at the end of the last chunk
        self._pending = 0  # backslashes at the end of the last chunk

    def feed(self, chunk: bytes) -> None:
        data = np.frombuffer(chunk, np.uint8)
        if not len(data):
            return
        quotes = np.flatnonzero(data == 0x22)
        slashes = np.flatnonzero(data == 0x5C)
        if len(slashes) or self._pending:
            quotes = self._unescaped(quotes, slashes, len(data))
        brackets = np.flatnonzero((data == 0x5B) | (data == 0x5D) | (data == 0x7B) | (data == 0x7D))
        outside = brackets[(np.searchsorted(quotes, brackets) + self._inside) % 2 == 0]
        self._inside = (self._inside + len(quotes)) % 2
        if not len(outside):
            return
        depths = self.depth + np.cumsum(_OPENERS[data[outside]])
        self.peak = max(self.peak, int(depths.max()))
        self.depth = int(depths[-1])
        if self.peak > self.limit:
            raise InputLimitError(
                f"{self.where}: JSON nested deeper than ETL_MAX_JSON_DEPTH = {self.limit} levels: refused "
                "before parsing"
            )

    def _unescaped(self, quotes: np.ndarray, slashes: np.ndarray, count: int) -> np.ndarray:
        """The quotes not escaped (after an even run of backslashes, the last chunk's included)."""
        if self._pending:
            slashes = np.concatenate([np.arange(-self._pending, 0), slashes])
        index = np.arange(len(slashes))
        starts = np.r_[True, np.diff(slashes) != 1]  # where a run of consecutive backslashes starts
        first = np.maximum.accumulate(np.where(starts, index, 0))  # the run's first backslash, per backslash
        self._pending = int(len(slashes) - first[-1]) if len(slashes) and slashes[-1] == count - 1 else 0
        if not len(quotes) or not len(slashes):
            return quotes
        before = np.searchsorted(slashes, quotes)  # backslashes before each quote
        last = np.maximum(before - 1, 0)
        touching = (before > 0) & (slashes[last] == quotes - 1)
        run = np.where(touching, before - first[last], 0)
        return quotes[run % 2 == 0]


class Deadline:
    """One HTTP request's total time (`check` raises InputLimitError once it is over)."""

    def __init__(self, seconds: float, where: str) -> None:
        self.seconds, self.where = seconds, where
        self.started = time.monotonic()

    def check(self) -> None:
        if time.monotonic() - self.started > self.seconds:
            raise InputLimitError(
                f"{self.where}: the request took more than ETL_HTTP_REQUEST_DEADLINE_S = {self.seconds:g} s: refused"
            )


def response_chunks(response: Any, deadline: Deadline, chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The decoded body of a streamed `requests` response, a chunk at a time as it arrives
    (`read1`: whatever one read returns), the deadline checked at each; closed at the end."""
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    try:
        deadline.check()
        if read1 is None or response._content_consumed:  # not urllib3's, or already read: requests' chunks
            for data in response.iter_content(chunk):
                deadline.check()
                yield data
        else:
            while data := _read1(read1, chunk):
                deadline.check()
                yield data
            deadline.check()
            response._content_consumed = True  # read to its end: the connection goes back to the pool
    finally:
        response.close()  # not read to its end: the connection is closed


def _read1(read1: Any, chunk: int) -> bytes:
    """One read, its errors as `requests` raises them from `iter_content` (callers catch those)."""
    try:
        return read1(chunk, decode_content=True)
    except urllib3_errors.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except urllib3_errors.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc
    except urllib3_errors.ReadTimeoutError as exc:
        raise requests.exceptions.ConnectionError(exc) from exc
    except urllib3_errors.SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc


def open_local(path: str | Path, where: str) -> Path:
    """The resolved path of a local file a source may open, or LocationRefused."""
    try:
        return locations.confine(path)
    except locations.LocationError as exc:
        raise LocationRefused(f"{where}: {exc}") from None
