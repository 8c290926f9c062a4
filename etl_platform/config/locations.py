"""Locations are data, not shell: what a CSV or feed location may name.

A location is never expanded (no `$VAR`, no `~`): `text_problem` refuses `$` in a local path
(and `${` anywhere), `..` segments and paths into /proc, /sys or /dev, from the text alone
(tenants-file validation). `confine` resolves a local path (symlinks included) and refuses it
unless it lies inside a data root (`settings.data_roots()`, ETL_DATA_ROOT): at load, and again
when the file is opened, since a symlink may change in between.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from etl_platform.config.settings import data_roots

SYSTEM_DIRS = (Path("/proc"), Path("/sys"), Path("/dev"))
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class LocationError(ValueError):
    """A location that names something a source may not read; the message says why."""


def is_local(location: str) -> bool:
    return not _SCHEME.match(location) or location.lower().startswith("file://")


def local_path(location: str) -> str:
    """The path of a local location (a `file://` URL's path, else the text itself)."""
    return unquote(urlsplit(location).path) if location.lower().startswith("file://") else location


def text_problem(location: str) -> str | None:
    """Why the text of a location is refused, or None (see the module docstring)."""
    if "${" in location or (is_local(location) and "$" in location):
        return "must not contain '$': locations are not expanded (environment variables are not read)"
    if not is_local(location):
        return None
    path = PurePosixPath(local_path(location))
    if ".." in path.parts:
        return "must not contain '..' (a local path stays inside the data root, ETL_DATA_ROOT)"
    if any(path == d or path.is_relative_to(d) for d in map(PurePosixPath, SYSTEM_DIRS)):
        return "must not point into /proc, /sys or /dev"
    return None


def confine(path: str | Path) -> Path:
    """`path` resolved (symlinks followed), or LocationError when it leaves every data root."""
    resolved = Path(path).resolve()
    if any(resolved == d or resolved.is_relative_to(d) for d in SYSTEM_DIRS):
        raise LocationError(f"{path} resolves to {resolved}, inside /proc, /sys or /dev: refused")
    roots = data_roots()
    if not any(resolved.is_relative_to(root) for root in roots):
        shown = ":".join(map(str, roots))
        raise LocationError(
            f"{path} resolves to {resolved}, outside the data root (ETL_DATA_ROOT={shown}): "
            "put the file under the data root or set ETL_DATA_ROOT"
        )
    return resolved
