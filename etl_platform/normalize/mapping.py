"""Pure mapping rules: which field of the original record fills which unified column.

A `Mapping` lists, per unified column, candidate paths into the original record
(`_etl_record`), tried in order (the first non-empty wins). Defaults depend on the source
kind and resource; a source's `field_mapping` in the tenants file overrides a column with
one path. Nothing here touches a database: `normalize.sql` renders a Mapping as SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from etl_platform.config.models import MAPPABLE_COLUMNS
from etl_platform.sources import lineage

# Unified text/number/time columns filled from the record
MAPPED_COLUMNS = MAPPABLE_COLUMNS
TIME_COLUMNS = ("created_at", "updated_at")
CATEGORICAL_COLUMNS = ("category", "status")  # stored trimmed and lower-cased
# A record flagged with one of these statuses/flags is kept but marked is_active = false
INACTIVE_STATUSES = ("deleted", "deactivated", "inactive", "archived", "removed", "disabled")
ACTIVE_FLAG_FIELDS = ("active", "is_active", "enabled")  # false-ish value -> inactive
DELETED_FLAG_FIELDS = ("deleted", "is_deleted", "deactivated", "archived")  # true-ish -> inactive
FALSE_VALUES = ("false", "no", "n", "0", "f")
TRUE_VALUES = ("true", "yes", "y", "1", "t")

Path = tuple[str | int, ...]
LINEAGE_PREFIX = "@"  # a candidate "@_etl_row_key" reads a raw column instead of the record
# a candidate "={repository}#{pull_number}" joins raw columns and literal text (NULL if a column is empty)
TEMPLATE_PREFIX = "="


def path(dotted: str) -> Path:
    """'fields.status.name' -> ('fields', 'status', 'name'); digits become list indexes."""
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


GENERIC_DEFAULTS: dict[str, list[str]] = {
    "source_id": ["id", "uuid", "key", "@" + lineage.ROW_KEY],
    "title": ["title", "name", "subject", "summary"],
    "description": ["body", "description", "content", "text", "summary"],
    "url": ["url", "html_url", "link", "href", "website"],
    "author": ["author", "username", "userId", "email", "creator"],
    "category": ["category", "type", "kind"],
    "status": ["status", "state"],
    "value": ["value", "amount", "price", "total", "score"],
    "created_at": ["created_at", "createdAt", "created", "date", "published_at"],
    "updated_at": ["updated_at", "updatedAt", "updated", "modified", "modified_at"],
}

KIND_DEFAULTS: dict[tuple[str, str | None], dict[str, list[str]]] = {
    ("rss", None): {
        "source_id": ["@" + lineage.ROW_KEY],
        "title": ["title"],
        "description": ["summary", "description", "content.0.value"],
        "url": ["link", "id"],
        "author": ["author", "author_detail.name", "dc_creator"],
        "category": ["tags.0.term", "category"],
        "created_at": ["published_parsed", "published", "@" + lineage.EVENT_TIME],
        "updated_at": ["updated_parsed", "updated", "published_parsed", "@" + lineage.EVENT_TIME],
    },
    # Jira: `_etl_record` is the issue (fields.*), the changelog history of a transition (its
    # status item is in the raw columns from_status/to_status), a status, an issue type.
    ("jira", "issues"): {
        "source_id": ["key", "id"],
        "title": ["fields.summary"],
        "description": ["fields.description"],
        "url": ["self"],
        "author": ["fields.reporter.displayName", "fields.assignee.displayName"],
        "category": ["fields.issuetype.name"],
        "status": ["fields.status.name"],
        "created_at": ["fields.created"],
        "updated_at": ["fields.updated"],
    },
    ("jira", "statuses"): {
        "source_id": ["id", "@" + lineage.ROW_KEY],
        "title": ["name"],
        "description": ["description"],
        "url": ["self"],
        "category": ["statusCategory.key"],
    },
    ("jira", "issue_types"): {
        "source_id": ["id", "@" + lineage.ROW_KEY],
        "title": ["name"],
        "description": ["description"],
        "url": ["self"],
    },
    ("jira", "issue_transitions"): {  # row key <issue id>|<history id>|<item index>; parent: the issue key
        "source_id": ["@" + lineage.ROW_KEY],
        "parent_id": ["@issue_key", "@issue_id"],
        "author": ["@author_name", "@author_id"],
        "status": ["@to_status"],
        "category": ["@from_status"],
        "created_at": ["@created", "@" + lineage.EVENT_TIME],
        "updated_at": ["@created", "@" + lineage.EVENT_TIME],
    },
    # GitHub: every raw row has a `repository` column; reviews and commits `pull_number`.
    ("github", "pull_requests"): {  # row key owner/name#number; merged_at, head.ref, labels stay in attributes
        "source_id": ["@" + lineage.ROW_KEY],
        "title": ["title"],
        "description": ["body"],
        "url": ["html_url"],
        "author": ["user.login"],
        "category": ["base.ref"],
        "status": ["state"],
        "created_at": ["created_at"],
        "updated_at": ["updated_at"],
    },
    ("github", "reviews"): {  # row key = review id
        "source_id": ["@" + lineage.ROW_KEY],
        "parent_id": ["={repository}#{pull_number}"],
        "description": ["body"],
        "url": ["html_url"],
        "author": ["user.login"],
        "status": ["state"],
        "created_at": ["submitted_at"],
        "updated_at": ["submitted_at"],
    },
    ("github", "commits"): {  # row key owner/name#number@sha
        "source_id": ["@" + lineage.ROW_KEY],
        "parent_id": ["={repository}#{pull_number}"],
        "title": ["commit.message"],
        "url": ["html_url"],
        "author": ["commit.author.name", "author.login"],
        "created_at": ["commit.author.date", "commit.committer.date"],
        "updated_at": ["commit.committer.date", "commit.author.date"],
    },
    ("github", "releases"): {  # row key = release id; status = the draft flag ("true"/"false")
        "source_id": ["@" + lineage.ROW_KEY],
        "title": ["name", "tag_name"],
        "description": ["body"],
        "url": ["html_url"],
        "author": ["author.login"],
        "category": ["tag_name"],
        "status": ["draft"],
        "created_at": ["created_at"],
        "updated_at": ["published_at", "created_at"],
    },
    ("github", "deployments"): {  # row key = deployment id
        "source_id": ["@" + lineage.ROW_KEY],
        "title": ["environment"],
        "description": ["description"],
        "url": ["url"],
        "author": ["creator.login"],
        "category": ["environment"],
        "status": ["task"],
        "created_at": ["created_at"],
        "updated_at": ["updated_at", "created_at"],
    },
}

RECORD_TYPES: dict[tuple[str, str], str] = {
    ("rss", "entries"): "entry",
    ("jira", "issues"): "jira_issue",
    ("jira", "statuses"): "jira_status",
    ("jira", "issue_types"): "jira_issue_type",
    ("jira", "issue_transitions"): "jira_transition",
    ("github", "pull_requests"): "pull_request",
    ("github", "reviews"): "review",
    ("github", "commits"): "commit",
    ("github", "releases"): "release",
    ("github", "deployments"): "deployment",
}


@dataclass(frozen=True)
class Mapping:
    """Candidate paths per unified column for one (source, resource)."""

    source: str
    source_kind: str
    resource: str
    record_type: str
    candidates: dict[str, list[str]] = field(default_factory=dict)


def record_type_for(kind: str, resource: str) -> str:
    return RECORD_TYPES.get((kind, resource), resource)


def build_mapping(
    source: str,
    kind: str,
    resource: str,
    field_mapping: dict[str, str] | None = None,
    primary_key: list[str] | None = None,
) -> Mapping:
    """The mapping for one resource: kind defaults, then primary key, then the tenant's overrides."""
    defaults = KIND_DEFAULTS.get((kind, resource)) or KIND_DEFAULTS.get((kind, None)) or {}
    candidates: dict[str, list[str]] = {}
    for column in MAPPED_COLUMNS:
        if column in defaults:
            candidates[column] = list(defaults[column])
        elif kind in ("rest_api", "csv") and column in GENERIC_DEFAULTS:
            candidates[column] = list(GENERIC_DEFAULTS[column])
    if primary_key:
        candidates["source_id"] = ["@" + lineage.ROW_KEY] if len(primary_key) > 1 else [primary_key[0]]
    for column, source_field in (field_mapping or {}).items():
        if column not in MAPPED_COLUMNS:
            raise ValueError(
                f"source {source!r}: field_mapping column {column!r} is not a unified column "
                f"(one of {', '.join(MAPPED_COLUMNS)})"
            )
        candidates[column] = [source_field]
    return Mapping(source, kind, resource, record_type_for(kind, resource), candidates)
