"""Errors a source raises that the platform must not retry."""

from __future__ import annotations

# HTTP statuses that answer the same on every attempt (auth, access, a bad request or path)
PERMANENT_HTTP_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 422})


class PermanentSourceError(Exception):
    """A source failed in a way retrying cannot fix: bad credentials, no access, a bad query, a
    document that is not a feed, a CSV source's configuration (an unknown encoding, a compression
    the platform does not read, columns missing from the header, a file not found).

    `url` has secrets redacted; `status` is the HTTP status (None when not an HTTP error).
    dlt wraps exceptions raised while extracting (PipelineStepFailed -> ResourceExtractionError
    -> this), so callers should look for it with `permanent_cause`.
    """

    url: str | None = None
    status: int | None = None

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


def permanent_cause(exc: BaseException | None) -> PermanentSourceError | None:
    """The PermanentSourceError behind `exc` (itself or along its cause/context chain), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, PermanentSourceError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
