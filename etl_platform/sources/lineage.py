"""Lineage every raw row carries, the partition window, and the rejects contract.

Raw rows keep the record exactly as received in ``_etl_record`` (a JSON column, field
names and nesting unchanged) beside the columns dlt flattens, plus these lineage columns.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

TENANT = "_etl_tenant_id"
SOURCE = "_etl_source"
RESOURCE = "_etl_resource"
PARTITION_DATE = "_etl_partition_date"
RUN_ID = "_etl_run_id"
EXTRACTED_AT = "_etl_extracted_at"
POSITION = "_etl_position"  # page URL, CSV file:line, feed URL
ROW_KEY = "_etl_row_key"  # stable identity of the row within (source, resource)
EVENT_TIME = "_etl_event_time"  # UTC event time when the source has one, else null
RECORD = "_etl_record"  # the original record, as received


# dlt column hints shared by every raw resource
LINEAGE_COLUMNS: dict[str, dict[str, Any]] = {
    TENANT: {"data_type": "text", "nullable": False},
    SOURCE: {"data_type": "text", "nullable": False},
    RESOURCE: {"data_type": "text", "nullable": False},
    PARTITION_DATE: {"data_type": "date", "nullable": False},
    RUN_ID: {"data_type": "text", "nullable": False},
    EXTRACTED_AT: {"data_type": "timestamp", "nullable": False},
    POSITION: {"data_type": "text"},
    ROW_KEY: {"data_type": "text", "nullable": False},
    EVENT_TIME: {"data_type": "timestamp"},
    RECORD: {"data_type": "json"},
}
# Re-loading a partition replaces its slice: delete-insert of the loaded (partition date, source)
# slices, deduplicated on (partition date, row key) within the load.
PRIMARY_KEY = [PARTITION_DATE, ROW_KEY]
# The rows a load replaces: those of the loaded (source, partition date) slices. Said as dlt's
# `destination_scope`, not as a merge key, because with both keys dlt deletes `WHERE EXISTS (...
# pk match OR merge-key match)`, which DuckDB and PostgreSQL can only run as a nested loop: re-loading a day
# of N rows over N existing rows then costs N² comparisons (hours at 1M rows). The primary-key
# branch adds nothing (a row key match within a source table is a slice match) except, in the
# shared `rejects` table, deleting another source's reject that happens to share a row key.
DESTINATION_SCOPE = (
    f'EXISTS (SELECT 1 FROM {{staging_table}} AS s WHERE s."{SOURCE}" = {{table}}."{SOURCE}" '
    f'AND s."{PARTITION_DATE}" = {{table}}."{PARTITION_DATE}")'
)
WRITE_DISPOSITION = {"disposition": "merge", "strategy": "delete-insert", "destination_scope": DESTINATION_SCOPE}


@dataclass(frozen=True)
class Window:
    """The partition days of one run for one tenant, as a half-open UTC time range."""

    days: tuple[dt.date, ...]
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if not self.days:
            raise ValueError("a window needs at least one day")
        object.__setattr__(self, "days", tuple(sorted(set(self.days))))

    @property
    def start(self) -> dt.datetime:
        return dt.datetime.combine(self.days[0], dt.time(), ZoneInfo(self.timezone)).astimezone(dt.timezone.utc)

    @property
    def end(self) -> dt.datetime:
        last = self.days[-1] + dt.timedelta(days=1)
        return dt.datetime.combine(last, dt.time(), ZoneInfo(self.timezone)).astimezone(dt.timezone.utc)

    def day_of(self, ts: dt.datetime | None) -> dt.date | None:
        """The partition day of an event time, or None when outside the window."""
        if ts is None:
            return None
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.timezone.utc)
        day = ts.astimezone(ZoneInfo(self.timezone)).date()
        return day if day in self.days else None


@dataclass(frozen=True)
class RunContext:
    """Who is loading what: stamped onto every raw row."""

    tenant_id: str
    source: str
    run_id: str
    window: Window
    extracted_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    def lineage(
        self,
        *,
        resource: str,
        partition_date: dt.date,
        position: str | None,
        row_key: str,
        event_time: dt.datetime | None = None,
    ) -> dict[str, Any]:
        return {
            TENANT: self.tenant_id,
            SOURCE: self.source,
            RESOURCE: resource,
            PARTITION_DATE: partition_date,
            RUN_ID: self.run_id,
            EXTRACTED_AT: self.extracted_at,
            POSITION: position,
            ROW_KEY: row_key,
            EVENT_TIME: event_time,
        }

    def reject(
        self,
        *,
        resource: str,
        position: str | None,
        raw_text: str,
        reason: str,
        partition_date: dt.date | None = None,
    ) -> dict[str, Any]:
        """A row for the tenant's rejects table: kept with its reason, never dropped."""
        day = partition_date or self.window.days[-1]
        return {
            "stage": "ingest",
            "resource": resource,
            "position": position,
            "raw_text": raw_text,
            "reason": reason,
            **self.lineage(
                resource=resource,
                partition_date=day,
                position=position,
                row_key=content_key(resource, position or "", raw_text),
            ),
        }


def content_key(*parts: Any) -> str:
    """A stable hash of values (a row identity when the source has no id)."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def key_of(record: dict[str, Any], fields: list[str]) -> str | None:
    """The row key from primary-key fields (dotted paths allowed); None if any is missing."""
    values = []
    for name in fields:
        value: Any = record
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None or value == "":
            return None
        values.append(str(value))
    return "|".join(values)


def parse_time(value: Any) -> dt.datetime | None:
    """An ISO-8601 timestamp (or epoch seconds) as an aware UTC datetime; None if unparseable."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        ts = value
    elif isinstance(value, dt.date):
        ts = dt.datetime.combine(value, dt.time())
    elif isinstance(value, (int, float)):
        ts = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    else:
        text = str(value).strip()
        try:
            ts = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.timezone.utc)
    return ts.astimezone(dt.timezone.utc)


def apply_raw_hints(resource: Any, *, schema_contract: str = "evolve", table_name: str | None = None) -> Any:
    """Give a dlt resource the raw-table contract: lineage columns, partition-slice
    replace (delete-insert on partition date + source), row-key dedup, schema contract."""
    resource.apply_hints(
        table_name=table_name or resource.name,
        columns=LINEAGE_COLUMNS,
        write_disposition=WRITE_DISPOSITION,
        primary_key=PRIMARY_KEY,
        schema_contract=contract(schema_contract),
    )
    return resource


def contract(mode: str) -> dict[str, str]:
    """A tenants-file contract mode as dlt's contract: new tables may always appear (a new
    tenant's first load); the mode governs new columns and changed types."""
    return {"tables": "evolve", "columns": mode, "data_type": mode}
