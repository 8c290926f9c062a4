"""Which tenants and days a run covers, from its partition tags, and how tenants are grouped
into runs: contiguous chunks in registration order (a multi-partition range `d1|a...d2|b` is the
rectangle of days d1..d2 × tenants a..b in the order the `tenant` partitions were added)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from etl_platform.runs.tags import PARTITION_TAG, RANGE_END_TAG, RANGE_START_TAG


@dataclass(frozen=True)
class Coverage:
    """The (tenants × days) rectangle of a run."""

    tenants: tuple[str, ...]
    days: tuple[dt.date, ...]

    def covers(self, tenant: str, days: Iterable[dt.date]) -> bool:
        return tenant in self.tenants and set(days) <= set(self.days)


def _split(key: str) -> tuple[dt.date, str] | None:
    day, _, tenant = key.partition("|")
    try:
        return dt.date.fromisoformat(day), tenant
    except ValueError:
        return None


def run_coverage(tags: Mapping[str, str], order: Sequence[str] | Mapping[str, int]) -> Coverage:
    """The tenants and days of a run (empty when it has no partition). `order`: the registered
    tenants in registration order (or tenant -> position)."""
    if tags.get(PARTITION_TAG):
        parsed = _split(tags[PARTITION_TAG])
        return Coverage((parsed[1],), (parsed[0],)) if parsed else Coverage((), ())
    start, end = _split(tags.get(RANGE_START_TAG, "")), _split(tags.get(RANGE_END_TAG, ""))
    if start is None or end is None:
        return Coverage((), ())
    first, last = min(start[0], end[0]), max(start[0], end[0])
    days = tuple(first + dt.timedelta(days=n) for n in range((last - first).days + 1))
    position = order if isinstance(order, Mapping) else {t: i for i, t in enumerate(order)}
    if start[1] == end[1]:
        return Coverage((start[1],), days)
    if start[1] not in position or end[1] not in position:
        return Coverage((start[1], end[1]), days)
    lo, hi = sorted((position[start[1]], position[end[1]]))
    names = order if not isinstance(order, Mapping) else sorted(order, key=order.__getitem__)
    return Coverage(tuple(names[lo : hi + 1]), days)


def contiguous_chunks(order: Sequence[str], wanted: Mapping[str, object], size: int) -> list[list[str]]:
    """Group the `wanted` tenants (tenant -> group signature, e.g. its set of sources) into runs:
    runs of consecutive registered tenants with one signature, at most `size` each. A tenant not
    wanted (paused, busy) ends a chunk, so a chunk's range never includes a tenant it must skip."""
    chunks: list[list[str]] = []
    current: list[str] = []
    signature: object = None
    for tenant in order:
        if tenant not in wanted:
            if current:
                chunks.append(current)
            current, signature = [], None
            continue
        if current and (wanted[tenant] != signature or len(current) >= size):
            chunks.append(current)
            current = []
        if not current:
            signature = wanted[tenant]
        current.append(tenant)
    if current:
        chunks.append(current)
    return chunks


def partition_request(tenants: Sequence[str], days: Sequence[dt.date]) -> dict[str, str]:
    """How a run request names a rectangle: a partition key for one partition, else range tags."""
    first, last = min(days).isoformat(), max(days).isoformat()
    if len(tenants) == 1 and first == last:
        return {PARTITION_TAG: f"{first}|{tenants[0]}"}
    return {RANGE_START_TAG: f"{first}|{tenants[0]}", RANGE_END_TAG: f"{last}|{tenants[-1]}"}
