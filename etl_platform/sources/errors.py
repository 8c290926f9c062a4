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
    -> this): `runs.failures.classify` looks for it along the whole cause chain.
    """

    url: str | None = None
    status: int | None = None

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status

