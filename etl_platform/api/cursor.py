"""The opaque page cursor: urlsafe base64 of JSON [sort_at (ISO 8601, UTC), record_id]."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re

_B64 = re.compile(r"^[A-Za-z0-9_-]{1,1400}={0,2}$")
MAX_RECORD_ID = 1024


class CursorError(ValueError):
    """The cursor is not one this API produced."""


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def encode_cursor(sort_at: dt.datetime, record_id: str) -> str:
    """The cursor after the row (sort_at, record_id); padding stripped."""
    payload = json.dumps([_utc(sort_at).isoformat(), record_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """(sort_at, record_id) of a cursor; CursorError if it is malformed."""
    if not _B64.match(cursor):
        raise CursorError("not a cursor returned by this API (bad characters or length)")
    try:
        raw = base64.urlsafe_b64decode(cursor.rstrip("=") + "=" * (-len(cursor.rstrip("=")) % 4))
        value = json.loads(raw.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError):
        raise CursorError("not a cursor returned by this API (cannot decode)") from None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise CursorError("not a cursor returned by this API (unexpected content)")
    stamp, record_id = value
    try:  # JSON may escape lone surrogates (\ud800), which no database or response can encode
        stamp.encode("utf-8"), record_id.encode("utf-8")
    except UnicodeEncodeError:
        raise CursorError("not a cursor returned by this API (invalid characters)") from None
    if not record_id or len(record_id) > MAX_RECORD_ID or "\x00" in record_id:
        raise CursorError("not a cursor returned by this API (bad record id)")
    try:
        sort_at = dt.datetime.fromisoformat(stamp)
        if sort_at.tzinfo is None:
            raise ValueError("no time zone")
        return _utc(sort_at), record_id
    except (ValueError, OverflowError):
        raise CursorError("not a cursor returned by this API (bad timestamp)") from None
