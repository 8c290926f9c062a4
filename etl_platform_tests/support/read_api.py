"""Helpers for the read-API tests (no tests here): tenants, keys, rows, an app client."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dagster import (
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
    asset,
    materialize,
)
from fastapi.testclient import TestClient

from etl_platform.api import create_app
from etl_platform.api.auth import KeyRing
from etl_platform.config.names import tenant_schema
from etl_platform.config.registry import Registry, parse_registry
from etl_platform.config.settings import ApiSettings
from etl_platform.normalize.schema import RECORD_COLUMNS, ensure_tables
from etl_platform.warehouse import Warehouse, quote

KEYS = {"acme": "acme-key-0123456789", "globex": "globex-key-9876543210"}
ADMIN_KEY = "admin-key-secret-000"
T0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)


def registry(tmp_path: Path | None = None) -> Registry:
    """Two tenants, acme (sources github, tickets) and globex (source feed)."""
    data = {
        "tenants": [
            {
                "id": "acme",
                "api_key_env": "ACME_API_KEY",
                "sources": [
                    {"name": "github", "kind": "github", "repositories": ["acme/app"]},
                    {"name": "tickets", "kind": "csv", "location": "tickets.csv"},
                ],
            },
            {"id": "globex", "api_key_env": "GLOBEX_API_KEY", "sources": [
                {"name": "feed", "kind": "rss", "url": "feed.xml"}]},
        ]
    }
    return parse_registry(data, (tmp_path or Path("/tmp")) / "tenants.yaml")


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def row(tenant: str, n: int, **overrides: Any) -> dict[str, Any]:
    """Record number `n` of a tenant: sort_at = T0 + n minutes unless overridden."""
    source = overrides.pop("source", "github")
    record_type = overrides.pop("record_type", "pull_request")
    out = {
        "record_id": f"{source}/{record_type}/{n:06d}",
        "tenant_id": tenant,
        "source": source,
        "source_kind": "github" if source == "github" else "csv",
        "record_type": record_type,
        "source_id": f"{n:06d}",
        "title": f"{tenant} item {n}",
        "description": f"description of {n}",
        "category": "bug" if n % 2 else "feature",
        "status": "Open" if n % 3 else "Closed",
        "value": float(n),
        "updated_at": T0 + dt.timedelta(minutes=n),
        "sort_at": T0 + dt.timedelta(minutes=n),
        "event_date": (T0 + dt.timedelta(minutes=n)).date(),
        "is_active": True,
        "attributes": json.dumps({"n": n}),
        "normalized_at": T0,
    }
    out.update(overrides)
    return out


def insert(warehouse: Warehouse, tenant: str, rows: Iterable[dict[str, Any]]) -> None:
    """Create the tenant's tables if needed and insert `rows` (the single writer)."""
    rows = list(rows)
    with warehouse.connect(write=True) as conn:
        schema = tenant_schema(tenant)
        ensure_tables(conn, schema)
        if not rows:
            return
        columns = [c for c in RECORD_COLUMNS if c in rows[0]]
        sql = (
            f"INSERT INTO {quote(schema)}.records ({', '.join(quote(c) for c in columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        with conn.transaction():
            for r in rows:
                conn.execute(sql, [r.get(c) for c in columns])


def client(
    warehouse: Warehouse, instance: Any = None, settings: ApiSettings | None = None, **kwargs: Any
) -> TestClient:
    """A TestClient over create_app() with the two tenants' keys and the admin key."""
    app = create_app(
        registry(), warehouse, instance,
        settings=settings or ApiSettings(rate_limit_per_minute=0),
        keyring=KeyRing(KEYS, ADMIN_KEY), **kwargs,
    )
    return TestClient(app)


def walk(api: TestClient, tenant: str, params: dict[str, Any] | None = None) -> list[str]:
    """Every record_id of /data, page by page."""
    ids: list[str] = []
    cursor = None
    while True:
        query = dict(params or {}, **({"cursor": cursor} if cursor else {}))
        body = api.get("/data", params=query, headers=auth(tenant)).json()
        ids += [r["record_id"] for r in body["data"]]
        cursor = body["metadata"]["pagination"]["next_cursor"]
        if not cursor:
            return ids


# --- Dagster runs shaped like the platform's ---------------------------------------------------


def _assets() -> tuple[Any, Any]:
    partitions = MultiPartitionsDefinition(
        {"date": DailyPartitionsDefinition("2024-01-01"), "tenant": StaticPartitionsDefinition(list(KEYS))}
    )

    @asset(key=["normalized", "records"], partitions_def=partitions)
    def normalized_records(context) -> MaterializeResult:
        """The partition's figures per raw table after the run (normalization covers every source)."""
        by_table = json.loads(context.run.tags.get("test/by_table", "{}"))
        total = {k: sum(t[k] for t in by_table.values()) for k in ("raw_rows", "records", "rejects")}
        return MaterializeResult(
            metadata={
                "records_written": total["records"], "rejects": total["rejects"], "raw_rows": total["raw_rows"],
                "by_table": MetadataValue.json(by_table),
            }
        )

    @asset(key=["raw", "github", "pull_requests"], partitions_def=partitions)
    def raw_github_pull_requests(context) -> None:
        raise ValueError("GitHub answered 502 Bad Gateway for /repos/acme/app/pulls")

    return normalized_records, raw_github_pull_requests


def figures(records: int) -> dict[str, int]:
    return {"raw_rows": records + records // 10, "records": records, "rejects": records // 10}


def launch(instance: Any, tenant: str, day: str, *, source: str | None, by_table: dict | None = None,
           fail: bool = False, trigger: str = "schedule", attempt: int = 1, parent: str | None = None) -> str:
    """One partitioned run with the platform's tags; returns its run id. `by_table`: the raw
    tables' figures of the partition after the run."""
    normalized, failing = _assets()
    tags = {"etl/tenant": tenant, "etl/trigger": trigger, "etl/attempt": str(attempt),
            "test/by_table": json.dumps(by_table or {})}
    if source:
        tags["etl/source"] = source
    if parent:
        tags["etl/parent_run_id"] = parent
    result = materialize(
        [failing if fail else normalized], instance=instance, tags=tags, raise_on_error=False,
        partition_key=MultiPartitionKey({"date": day, "tenant": tenant}),
    )
    assert result.success is not fail
    return result.run_id


def make_runs(instance: Any) -> dict[str, str]:
    """acme: github success on Jan 1 (100 records), github failure on Jan 2, its retry (50),
    tickets on Jan 1 (30, the partition then holds github's 100 too), a run of every source on
    Jan 3 (7 tickets); globex: feed (999). Name -> run id."""
    github_1, tickets_1 = {"github_pull_requests": figures(100)}, {"tickets_rows": figures(30)}
    ids = {"github_ok": launch(instance, "acme", "2024-01-01", source="github", by_table=github_1)}
    ids["github_failed"] = launch(instance, "acme", "2024-01-02", source="github", fail=True)
    ids["github_retry"] = launch(instance, "acme", "2024-01-02", source="github", trigger="retry", attempt=2,
                                 parent=ids["github_failed"], by_table={"github_pull_requests": figures(50)})
    ids["tickets_ok"] = launch(instance, "acme", "2024-01-01", source="tickets", by_table={**github_1, **tickets_1})
    ids["all_sources"] = launch(instance, "acme", "2024-01-03", source=None, trigger="manual",
                                by_table={"tickets_rows": figures(7)})
    ids["globex_ok"] = launch(instance, "globex", "2024-01-01", source="feed", by_table={"feed_entries": figures(999)})
    return ids
