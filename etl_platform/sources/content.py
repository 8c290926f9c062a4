"""Files and URLs read by their content, not their name: compression from the magic bytes,
text encoding from the byte order mark, the bytes themselves, or a detector. Shared by the CSV
and feed sources.

- `open_bytes(location, where, received)`: the decompressed bytes of a path or http(s) URL,
  streamed. gzip, bz2, xz and zip (one file inside) are read; other known formats (zstd, 7z,
  rar, lz4, Unix compress, lzip, tar) raise `UnsupportedCompressionError` naming the format; a
  zip holding several files or none raises `ArchiveError`. Both are permanent.
- `choose_encoding(sample, configured)`: a BOM decides UTF-8, UTF-16 or UTF-32; else the
  configured encoding; else UTF-8 when the sample is valid UTF-8; else `charset-normalizer`'s
  guess (`detect_encoding`).
- `utf8_bytes(binary, encoding)`: the bytes as UTF-8, so that one reader reads every encoding.
  Bytes the encoding cannot decode come out as invalid UTF-8 (the reader rejects their line).

`Received` records what was found (bytes read, compression, zip member, encoding and how it was
chosen) for the source's stats.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import gzip
import io
import lzma
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from dlt.sources.helpers import requests

from etl_platform.security.redaction import redact_text, redact_url
from etl_platform.sources import bounds
from etl_platform.sources.errors import PERMANENT_HTTP_STATUSES, PermanentSourceError

CHUNK_BYTES = 1 << 16
SAMPLE_BYTES = 1 << 18  # what encoding detection looks at
BOMS = (  # longest first: the UTF-32 LE BOM starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
UNSUPPORTED = (  # magic bytes of formats we name but do not read
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"\x1f\x9d", "Unix compress (.Z)"),
    (b"LZIP", "lzip"),
)
# equally good guesses for a short sample: the widespread Western encodings first
PREFERRED = ("cp1252", "latin_1", "iso8859_15")


class ContentError(PermanentSourceError):
    """The bytes cannot be read as they are (a format we do not read, an archive of several
    files, an unknown encoding): the same input fails the same way again."""


class UnsupportedCompressionError(ContentError):
    """Compressed or archived in a format the platform does not read."""


class ArchiveError(ContentError):
    """A zip archive that does not hold exactly one file."""


class UnknownEncodingError(ContentError, LookupError):
    """The configured encoding is not one Python knows."""


@dataclass
class Received:
    """What reading a location found."""

    bytes_read: int = 0  # as received (compressed size for compressed files)
    compression: str | None = None  # gzip, bz2, xz, zip; None: plain
    member: str | None = None  # the file read inside a zip
    encoding: str | None = None  # Python's name of the encoding read
    encoding_source: str | None = None  # bom, configured, utf-8 (valid), detected, fallback


def is_url(location: str) -> bool:
    return urlsplit(location).scheme.lower() in ("http", "https")


def shown(location: str) -> str:
    """The location as written into rows and messages: URLs without secrets."""
    return redact_url(location) if is_url(location) else location


@contextlib.contextmanager
def open_bytes(
    location: str, where: str, received: Received, *, not_found: type[Exception] = FileNotFoundError
) -> Iterator[IO[bytes]]:
    """The decompressed bytes of a path or http(s) URL (see the module docstring). `not_found`
    is raised for a missing file, HTTP 404 or 410. Bounded (`bounds`): a local path only inside
    the data root (ETL_DATA_ROOT), at most ETL_MAX_FILE_BYTES after decompression, an http(s)
    request within ETL_HTTP_REQUEST_DEADLINE_S."""
    limits = bounds.limits()
    with contextlib.ExitStack() as stack:
        scheme = urlsplit(location).scheme.lower()
        if is_url(location):
            chunks = _http_chunks(location, where, stack, not_found, limits.request_deadline_s)
        elif scheme in ("", "file"):
            path = Path(unquote(urlsplit(location).path) if scheme == "file" else location)
            path = bounds.open_local(path, where)  # again at open time: a symlink may have changed
            try:
                handle = stack.enter_context(open(path, "rb"))
            except FileNotFoundError as exc:
                raise not_found(f"{where}: file not found: {path}") from exc
            except OSError as exc:
                raise ContentError(f"{where}: cannot open {path}: {exc}") from exc
            chunks = iter(partial(handle.read, CHUNK_BYTES), b"")
        else:
            raise ContentError(f"{where}: unsupported location {shown(location)!r} (expected a path or http(s) URL)")
        binary: IO[bytes] = io.BufferedReader(_ChunkStream(chunks, received), CHUNK_BYTES)
        cap = (limits.file_bytes, "ETL_MAX_FILE_BYTES", f"{where}: {shown(location)}")
        yield bounds.capped(_decompressed(binary, where, shown(location), received, stack, cap), *cap)


def _decompressed(
    binary: io.BufferedReader,
    where: str,
    location: str,
    received: Received,
    stack: contextlib.ExitStack,
    cap: tuple[int, str, str],
) -> IO[bytes]:
    head = binary.peek(262)[:262]
    if head[:2] == b"\x1f\x8b":
        received.compression = "gzip"
        return gzip.GzipFile(fileobj=binary, mode="rb")
    if head[:3] == b"BZh":
        received.compression = "bz2"
        return bz2.BZ2File(binary, mode="rb")
    if head[:6] == b"\xfd7zXZ\x00":
        received.compression = "xz"
        return lzma.LZMAFile(binary, mode="rb")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        received.compression = "zip"
        return _zip_member(bounds.capped(binary, *cap), where, location, received, stack)
    for magic, name in UNSUPPORTED:
        if head.startswith(magic):
            raise UnsupportedCompressionError(
                f"{where}: {location} is compressed as {name}, which the platform does not read "
                "(supported: gzip, bz2, xz, zip with one file); recompress it"
            )
    if head[257:262] == b"ustar":
        raise UnsupportedCompressionError(
            f"{where}: {location} is a tar archive, which the platform does not read "
            "(supported: gzip, bz2, xz, zip with one file); extract the file"
        )
    return binary


def _zip_member(
    binary: IO[bytes], where: str, location: str, received: Received, stack: contextlib.ExitStack
) -> IO[bytes]:
    """The only file of a zip archive (zip needs random access: the archive is spooled to disk)."""
    spool = stack.enter_context(tempfile.TemporaryFile())
    shutil.copyfileobj(binary, spool, CHUNK_BYTES)
    spool.seek(0)
    try:
        archive = stack.enter_context(zipfile.ZipFile(spool))
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{where}: {location} is not a readable zip archive: {exc}") from exc
    files = [i for i in archive.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
    if len(files) != 1:
        names = ", ".join(i.filename for i in files[:10]) + (", ..." if len(files) > 10 else "")
        raise ArchiveError(
            f"{where}: the zip archive {location} holds {len(files)} files ({names or 'none'}); a source reads "
            "one file: split the archive or point the source at one file"
        )
    received.member = files[0].filename
    return stack.enter_context(archive.open(files[0]))


def _http_chunks(
    url: str, where: str, stack: contextlib.ExitStack, not_found: type[Exception], deadline_s: float
) -> Iterator[bytes]:
    """The body of a GET, streamed (dlt's retrying client); errors name the URL (redacted) and
    the status, kept on the error (`status`) for the failure classification."""
    shown_url = redact_url(url)
    try:
        response = requests.get(url, stream=True)
        response.raise_for_status()
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        reason = exc.response.reason if exc.response is not None else exc
        message = f"{where}: GET {shown_url} failed: HTTP {status} {reason}"
        if status in (404, 410):
            raise not_found(message) from None
        if status in PERMANENT_HTTP_STATUSES:
            raise PermanentSourceError(message, url=shown_url, status=status) from None
        raise HttpReadError(message, status) from None
    except requests.RequestException as exc:
        raise HttpReadError(f"{where}: GET {shown_url} failed: {redact_text(str(exc))}", None) from None
    stack.enter_context(response)
    deadline = bounds.Deadline(deadline_s, f"{where}: GET {shown_url}")  # from the answer (after dlt's retries)
    return bounds.response_chunks(response, deadline, CHUNK_BYTES)


class HttpReadError(RuntimeError):
    """A GET that failed after dlt's retries (5xx, 429, the network): transient."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


class _ChunkStream(io.RawIOBase):
    """A raw binary stream over an iterator of byte chunks, counting bytes read."""

    def __init__(self, chunks: Iterator[bytes], received: Received) -> None:
        self._chunks = chunks
        self._received = received
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._received.bytes_read += len(chunk)
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


# --- encodings ---------------------------------------------------------------------------------


def bom_encoding(data: bytes) -> tuple[str, int] | None:
    """(encoding, BOM length) when `data` starts with a byte order mark."""
    for bom, name in BOMS:
        if data.startswith(bom):
            return name, len(bom)
    return None


def is_utf8(sample: bytes, complete: bool) -> bool:
    """Whether `sample` is valid UTF-8 (a sequence cut at its end is fine unless `complete`)."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=complete)
    except UnicodeDecodeError:
        return False
    return True


def detect_encoding(sample: bytes) -> str | None:
    """charset-normalizer's best guess; among guesses about as good (a short sample fits many
    code pages), a widespread Western one. UTF-16/32 need NUL bytes (text in them has some:
    delimiters, markup, line breaks). None when nothing fits."""
    from charset_normalizer import from_bytes  # only for a file whose encoding must be guessed

    def names(match: Any) -> list[str]:  # the code pages that read the sample alike
        return [n for n in match.could_be_from_charset if b"\0" in sample or not n.startswith("utf_")]

    matches = [(m, names(m)) for m in from_bytes(sample) if names(m)]
    if not matches:
        return None
    best = matches[0][0]
    close = [ns for m, ns in matches if m.chaos <= best.chaos + 0.1 and m.coherence >= best.coherence - 0.05]
    for name in PREFERRED:
        if any(name in ns for ns in close):
            return name
    return matches[0][1][0]


def check_encoding(name: str, where: str) -> str:
    """Python's name of a configured encoding; UnknownEncodingError when Python has none."""
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise UnknownEncodingError(f"{where}: unknown encoding {name!r} (expected a Python codec name)") from None


def choose_encoding(sample: bytes, configured: str | None, complete: bool, where: str) -> tuple[str, str, int]:
    """(encoding, how it was chosen, BOM length) for a file that starts with `sample`."""
    found = bom_encoding(sample)
    if found:
        return found[0], "bom", found[1]
    if configured:
        return check_encoding(configured, where), "configured", 0
    if is_utf8(sample, complete):
        return "utf-8", "utf-8 (valid)", 0
    cut = sample if complete else sample[: sample.rfind(b"\n") + 1] or sample
    detected = detect_encoding(cut)
    if detected is None:
        return "utf-8", "fallback", 0
    return codecs.lookup(detected).name, "detected", 0


def _keep_bytes(error: UnicodeError) -> tuple[str, int]:
    """Decode error handler: undecodable bytes become lone surrogates (U+DC80..U+DCFF, bytes
    below 0x80 as U+DC80) that encode back to invalid UTF-8: the reader rejects their line."""
    assert isinstance(error, UnicodeDecodeError)
    bad = error.object[error.start : error.end]
    return "".join(chr(0xDC00 + max(b, 0x80)) for b in bad), error.end


codecs.register_error("etl_keep_bytes", _keep_bytes)


class Utf8Stream(io.RawIOBase):
    """`binary` decoded from `encoding` and encoded as UTF-8, chunk by chunk."""

    def __init__(self, binary: IO[bytes], encoding: str) -> None:
        self._read: Callable[[int], bytes] = binary.read
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="etl_keep_bytes")
        self._pending = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending and not self._done:
            chunk = self._read(CHUNK_BYTES)
            self._done = not chunk
            text = self._decoder.decode(chunk, final=self._done)
            self._pending = text.encode("utf-8", "surrogateescape")
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def utf8_bytes(binary: IO[bytes], configured: str | None, received: Received, where: str) -> IO[bytes]:
    """The bytes of `binary` as UTF-8 without a BOM; the encoding and how it was chosen go to
    `received` (see `choose_encoding`)."""
    sample = _read_up_to(binary, SAMPLE_BYTES)
    encoding, how, bom = choose_encoding(sample, configured, len(sample) < SAMPLE_BYTES, where)
    received.encoding, received.encoding_source = encoding, how
    rest = Prefixed(sample[bom:], binary)
    if encoding in ("utf-8", "ascii"):
        return io.BufferedReader(rest, CHUNK_BYTES)
    return io.BufferedReader(Utf8Stream(io.BufferedReader(rest, CHUNK_BYTES), encoding), CHUNK_BYTES)


def _read_up_to(binary: IO[bytes], size: int) -> bytes:
    parts, total = [], 0
    while total < size:
        chunk = binary.read(size - total)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


class Prefixed(io.RawIOBase):
    """`head`, then the rest of `binary`."""

    def __init__(self, head: bytes, binary: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._binary = binary

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            size = min(len(buffer), len(self._head))
            buffer[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._binary.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
