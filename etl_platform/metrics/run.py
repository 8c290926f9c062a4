"""Engineering metrics of one tenant's partition days: read the tenant's Jira/GitHub `records`,
compute (`metrics.engineering`), replace the days' rows of `engineering_metrics`.

The table holds one row per (tenant_id, metric_date, metric, repository). A run upserts the days'
rows in one transaction: new rows are inserted, changed ones updated (`computed_at` is when the
value last changed), rows of the days that are no longer produced are deleted; re-running a day
with the same records changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from etl_platform.config.models import TenantConfig
from etl_platform.config.names import raw_table
from etl_platform.metrics.engineering import (
    Commit,
    Deployment,
    EngineeringData,
    FlowSteps,
    JiraIssue,
    JiraStatus,
    Metric,
    PullRequest,
    Release,
    Review,
    Transition,
    engineering_metrics,
    repository_of,
    unmapped_statuses,
)
from etl_platform.normalize.schema import RECORDS_TABLE
from etl_platform.warehouse import Connection, Warehouse, quote

METRICS_TABLE = "engineering_metrics"
# column -> (duckdb type, postgres type)
METRIC_COLUMNS: dict[str, tuple[str, str]] = {
    "tenant_id": ("VARCHAR", "TEXT"),
    "metric_date": ("DATE", "DATE"),
    "metric": ("VARCHAR", "TEXT"),
    "repository": ("VARCHAR", "TEXT"),  # owner/name, or "" for tenant-wide rows
    "value": ("DOUBLE", "DOUBLE PRECISION"),
    "sample_size": ("BIGINT", "BIGINT"),
    "computed_at": ("TIMESTAMPTZ", "TIMESTAMPTZ"),  # when the row's value last changed
}
METRIC_KEY = ("tenant_id", "metric_date", "metric", "repository")
METRIC_KINDS = ("jira", "github")
RECORD_TYPES = (
    "pull_request",
    "review",
    "commit",
    "release",
    "deployment",
    "jira_issue",
    "jira_status",
    "jira_transition",
)
INSERT_CHUNK = 500  # rows per INSERT (PostgreSQL allows 65535 parameters a statement)
STAGE = "etl_stage_engineering_metrics"


@dataclass
class MetricsResult:
    tenant_id: str
    days: list[dt.date]
    metrics: list[Metric] = field(default_factory=list)
    unmapped_statuses: dict[str, int] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # the tenant's jira/github sources

    def latest(self) -> dict[str, float]:
        """Tenant-wide values of the last day: metric -> value."""
        if not self.days:
            return {}
        last = self.days[-1]
        return {m.name: m.value for m in self.metrics if m.day == last and m.repository == ""}


def ensure_metrics_table(conn: Connection, schema: str) -> None:
    idx = 0 if conn.dialect == "duckdb" else 1
    cols = ",\n  ".join(
        f"{quote(name)} {types[idx]}{' NOT NULL' if name in METRIC_KEY else ''}"
        for name, types in METRIC_COLUMNS.items()
    )
    pk = ", ".join(quote(c) for c in METRIC_KEY)
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {quote(schema)}.{quote(METRICS_TABLE)} (\n  {cols},\n  PRIMARY KEY ({pk})\n)"
    )


def compute_tenant_metrics(
    warehouse: Warehouse, tenant: TenantConfig, days: list[dt.date], timezone: str = "UTC"
) -> MetricsResult:
    """Compute and store the days' metrics of one tenant (no rows without Jira or GitHub)."""
    result = MetricsResult(tenant.id, sorted(set(days)))
    sources = [s for s in tenant.sources if s.kind in METRIC_KINDS]
    result.sources = [s.name for s in sources]
    lock = "" if warehouse.kind == "duckdb" else f"{tenant.id}/{METRICS_TABLE}"
    with warehouse.lock(write=True, name=lock), warehouse.connect(write=True) as conn:
        ensure_metrics_table(conn, tenant.dataset)
        data = load_engineering_data(conn, tenant)
        result.metrics = engineering_metrics(data, result.days, tenant.flow_steps, timezone)
        if data.has_jira:
            result.unmapped_statuses = unmapped_statuses(data, FlowSteps(tenant.flow_steps))
        with conn.transaction():
            _replace_days(conn, tenant, result)
    return result


def load_engineering_data(conn: Connection, tenant: TenantConfig) -> EngineeringData:
    """The tenant's Jira and GitHub records as metric inputs."""
    jira = [s.name for s in tenant.sources if s.kind == "jira"]
    github = [s for s in tenant.sources if s.kind == "github"]
    data = EngineeringData(
        has_github=bool(github),
        has_jira=bool(jira),
        repositories=sorted({r for s in github for r in s.repositories}),
    )
    names = jira + [s.name for s in github]
    if not names or not conn.table_exists(tenant.dataset, RECORDS_TABLE):
        return data
    repositories = _raw_repositories(conn, tenant.dataset, [s.name for s in github])
    for row in _records(conn, tenant.dataset, names):
        _add(data, row, repositories)
    return data


def _records(conn: Connection, schema: str, sources: list[str]) -> list[dict[str, Any]]:
    placeholders = ", ".join("?" for _ in sources)
    types = ", ".join(f"'{t}'" for t in RECORD_TYPES)
    return conn.query_dicts(
        "SELECT record_type, source_id, parent_id, title, author, category, status, created_at, updated_at, "
        "is_active, raw_table, raw_row_key, "
        "CASE WHEN record_type IN ('pull_request', 'release') THEN attributes END AS attributes "
        f"FROM {quote(schema)}.{quote(RECORDS_TABLE)} WHERE source IN ({placeholders}) AND record_type IN ({types}) "
        "ORDER BY record_type, source_id",
        sources,
    )


def _raw_repositories(conn: Connection, schema: str, sources: list[str]) -> dict[tuple[str, str], str]:
    """(raw table, row key) -> repository for GitHub releases and deployments (their records'
    ids do not name the repository; the raw rows' `repository` column does)."""
    out: dict[tuple[str, str], str] = {}
    for source in sources:
        for resource in ("releases", "deployments"):
            table = raw_table(source, resource)
            if "repository" not in conn.columns(schema, table):
                continue
            for key, repository in conn.query(
                f"SELECT DISTINCT _etl_row_key, repository FROM {quote(schema)}.{quote(table)}"
            ):
                out[(table, key)] = repository
    return out


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, str) and value:
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    return None


def _add(data: EngineeringData, row: dict[str, Any], repositories: dict[tuple[str, str], str]) -> None:
    kind, active = row["record_type"], bool(row["is_active"])
    if kind == "pull_request":
        attrs = _json(row["attributes"])
        labels = tuple(str(label.get("name") or "") for label in attrs.get("labels") or [] if isinstance(label, dict))
        data.pull_requests.append(
            PullRequest(
                key=row["source_id"],
                repository=repository_of(row["source_id"]),
                created_at=row["created_at"],
                merged_at=_time(attrs.get("merged_at")),
                title=row["title"] or "",
                author=row["author"],
                head_ref=str((attrs.get("head") or {}).get("ref") or ""),
                labels=labels,
                active=active,
            )
        )
    elif kind == "review" and row["parent_id"]:
        data.reviews.append(Review(row["parent_id"], row["created_at"], row["author"], active))
    elif kind == "commit" and row["parent_id"]:
        data.commits.append(Commit(row["parent_id"], row["created_at"], active))
    elif kind == "release":
        attrs = _json(row["attributes"])
        draft = (row["status"] or "").lower() in ("true", "t", "1")
        published = _time(attrs.get("published_at")) or (None if draft else row["updated_at"])
        repository = repositories.get((row["raw_table"], row["raw_row_key"]), "")
        data.releases.append(Release(repository, published, draft, bool(attrs.get("prerelease")), active))
    elif kind == "deployment":
        repository = repositories.get((row["raw_table"], row["raw_row_key"]), "")
        data.deployments.append(Deployment(repository, row["created_at"], row["category"], active))
    elif kind == "jira_issue":
        data.issues.append(JiraIssue(row["source_id"], row["status"], active))
    elif kind == "jira_status" and row["title"]:
        data.statuses.append(JiraStatus(row["title"], active))
    elif kind == "jira_transition" and row["parent_id"]:
        data.transitions.append(
            Transition(row["parent_id"], row["created_at"], row["status"], row["category"], row["source_id"], active)
        )


def _replace_days(conn: Connection, tenant: TenantConfig, result: MetricsResult) -> None:
    """Stage the days' rows; delete the days' rows not staged; upsert the staged ones (a row whose
    value and sample size are unchanged is left as it is)."""
    target = f"{quote(tenant.dataset)}.{quote(METRICS_TABLE)}"
    idx = 0 if conn.dialect == "duckdb" else 1
    columns = ", ".join(quote(c) for c in METRIC_COLUMNS)
    conn.execute(f"DROP TABLE IF EXISTS {STAGE}")
    conn.execute(
        f"CREATE TEMP TABLE {STAGE} ("
        + ", ".join(f"{quote(name)} {types[idx]}" for name, types in METRIC_COLUMNS.items())
        + ")"
    )
    now = dt.datetime.now(dt.timezone.utc)
    for chunk in _chunks(result.metrics, INSERT_CHUNK):
        values = ", ".join("(?, ?, ?, ?, ?, ?, ?)" for _ in chunk)
        params: list[Any] = []
        for m in chunk:
            params += [tenant.id, m.day, m.name, m.repository, m.value, m.sample_size, now]
        conn.execute(f"INSERT INTO {STAGE} ({columns}) VALUES {values}", params)
    days = ", ".join(f"DATE '{d.isoformat()}'" for d in result.days)
    same_key = " AND ".join(f"s.{quote(k)} = {target}.{quote(k)}" for k in METRIC_KEY)
    conn.execute(
        f"DELETE FROM {target} WHERE tenant_id = ? AND metric_date IN ({days}) "
        f"AND NOT EXISTS (SELECT 1 FROM {STAGE} AS s WHERE {same_key})",
        [tenant.id],
    )
    changed = " OR ".join(f"{target}.{quote(c)} IS DISTINCT FROM excluded.{quote(c)}" for c in ("value", "sample_size"))
    updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in ("value", "sample_size", "computed_at"))
    conn.execute(
        f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {STAGE} "
        f"ON CONFLICT ({', '.join(quote(k) for k in METRIC_KEY)}) DO UPDATE SET {updates} WHERE {changed}"
    )
    conn.execute(f"DROP TABLE IF EXISTS {STAGE}")


def _chunks(items: list[Metric], size: int) -> Iterator[list[Metric]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
