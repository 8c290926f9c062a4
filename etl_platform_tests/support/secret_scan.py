"""Helpers to look for secrets wherever the platform writes (no tests here): files (gzip
opened), every warehouse table (dlt's compressed state decoded) and text."""

from __future__ import annotations

import base64
import gzip
import zlib
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, quote_plus

from etl_platform.warehouse import Warehouse


def secret_forms(*secrets: str) -> dict[str, str]:
    """form -> which secret: plain, URL-encoded and base64 (standard and URL-safe, padded or not)."""
    out: dict[str, str] = {}
    for secret in secrets:
        raw = secret.encode()
        b64, b64url = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
        for form in (secret, quote(secret, safe=""), quote_plus(secret), b64, b64.rstrip("="), b64url,
                     b64url.rstrip("=")):  # fmt: skip
            out[form] = secret
    return out


def hits(text: str | bytes, forms: dict[str, str]) -> set[str]:
    """The forms found in `text`."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return {form for form in forms if form in text}


def _contents(path: Path) -> Iterable[bytes]:
    data = path.read_bytes()
    yield data
    if data[:2] == b"\x1f\x8b":  # dlt writes gzip-compressed load files
        try:
            yield gzip.decompress(data)
        except (OSError, EOFError):
            pass


def scan_files(root: Path, forms: dict[str, str]) -> dict[str, set[str]]:
    """file (relative to root) -> forms found, for every file under `root`."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            for data in _contents(path):
                if found_here := hits(data, forms):
                    found.setdefault(str(path.relative_to(root)), set()).update(found_here)
    return found


def _decoded_state(value: str) -> str:
    try:
        return zlib.decompress(base64.b64decode(value)).decode("utf-8", "replace")
    except (ValueError, zlib.error):
        return ""


def scan_warehouse(url: str, forms: dict[str, str]) -> tuple[dict[str, set[str]], int]:
    """(`schema.table` -> forms found, rows scanned) over every table of every schema (the
    `_dlt_*` tables too; dlt's compressed pipeline state decoded)."""
    found: dict[str, set[str]] = {}
    rows_scanned = 0
    with Warehouse(url).connect() as conn:
        tables = conn.query(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('information_schema', 'pg_catalog') ORDER BY 1, 2"
        )
        for schema, table in tables:
            for row in conn.query(f'SELECT * FROM "{schema}"."{table}"'):
                rows_scanned += 1
                text = "\n".join(str(v) for v in row)
                if table == "_dlt_pipeline_state":
                    text += "\n".join(_decoded_state(str(v)) for v in row)
                if found_here := hits(text, forms):
                    found.setdefault(f"{schema}.{table}", set()).update(found_here)
    return found, rows_scanned
