"""The tenants file: typed, validated models of tenants and their sources.

Secrets are never literal: a source names the environment variable that holds
each secret (fields ending in ``_env``); the value is read only when a source runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

SLUG = re.compile(r"^[a-z][a-z0-9_]*$")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# Field names that would hold a secret literally; the message points at the *_env form.
LITERAL_SECRET_FIELDS = {
    "token",
    "password",
    "api_key",
    "apikey",
    "secret",
    "client_secret",
    "access_token",
    "api_token",
    "pat",
}
SchemaContract = Literal["evolve", "freeze", "discard_row", "discard_value"]
# unified `records` columns a source's field_mapping may fill
MAPPABLE_COLUMNS = (
    "source_id",
    "title",
    "description",
    "url",
    "author",
    "category",
    "status",
    "value",
    "created_at",
    "updated_at",
    "parent_id",
)


class TenantsFileError(ValueError):
    """The tenants file is missing or invalid; the message names tenant, source and field."""


def _env_name(value: str | None) -> str | None:
    if value is not None and not ENV_NAME.match(value):
        raise ValueError("must name an environment variable (UPPER_SNAKE_CASE), not hold a secret or value")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_literal_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if str(key).lower() in LITERAL_SECRET_FIELDS:
                    raise ValueError(
                        f"field '{key}' would hold a literal secret; put the secret in an environment "
                        f"variable and name it in '{key}_env'"
                    )
        return data


# --- authentication -------------------------------------------------------------------------


class BearerAuth(_Model):
    type: Literal["bearer"]
    token_env: EnvName


class ApiKeyAuth(_Model):
    type: Literal["api_key"]
    name: str = "X-API-Key"
    location: Literal["header", "query"] = "header"
    api_key_env: EnvName


class BasicAuth(_Model):
    type: Literal["http_basic"]
    username_env: EnvName
    password_env: EnvName


class OAuth2ClientCredentials(_Model):
    type: Literal["oauth2_client_credentials"]
    token_url: str
    client_id_env: EnvName
    client_secret_env: EnvName
    scopes: list[str] = []


Auth = Annotated[BearerAuth | ApiKeyAuth | BasicAuth | OAuth2ClientCredentials, Field(discriminator="type")]

# --- rest_api ---------------------------------------------------------------------------------


class Paginator(_Model):
    """dlt rest_api paginator settings; `type` is one of dlt's paginator names."""

    type: Literal["page_number", "offset", "cursor", "header_link", "json_link", "single_page"]
    page_param: str | None = None  # page_number
    base_page: int | None = None
    total_path: str | None = None
    maximum_page: int | None = None
    limit: int | None = None  # offset
    limit_param: str | None = None
    offset_param: str | None = None
    cursor_path: str | None = None  # cursor
    cursor_param: str | None = None
    next_url_path: str | None = None  # json_link
    links_next_key: str | None = None  # header_link

    def to_dlt(self) -> dict[str, Any]:
        """dlt's paginator config; an explicit null (e.g. `total_path: null`: no total) is kept."""
        return self.model_dump(exclude_unset=True)


class Incremental(_Model):
    """A cursor field: the partition window is sent as start/end params and passed to dlt."""

    cursor_path: str
    start_param: str | None = None
    end_param: str | None = None


class RestResource(_Model):
    name: str
    path: str
    params: dict[str, Any] = {}
    data_selector: str | None = None
    primary_key: str | list[str] | None = None
    paginator: Paginator | None = None
    incremental: Incremental | None = None

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not SLUG.match(v):
            raise ValueError(f"resource name {v!r} must match [a-z][a-z0-9_]*")
        return v


class _SourceBase(_Model):
    name: str
    schema_contract: SchemaContract = "evolve"
    # unified column -> source field (dotted path into the original record)
    field_mapping: dict[str, str] = {}

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not SLUG.match(v):
            raise ValueError(f"source name {v!r} must match [a-z][a-z0-9_]*")
        return v

    @field_validator("field_mapping")
    @classmethod
    def _mappable(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(MAPPABLE_COLUMNS))
        if unknown:
            raise ValueError(f"unknown unified column(s) {unknown}; expected some of {', '.join(MAPPABLE_COLUMNS)}")
        return v

    @property
    def resource_names(self) -> list[str]:
        raise NotImplementedError


class RestApiSource(_SourceBase):
    kind: Literal["rest_api"]
    base_url: str
    auth: Auth | None = None
    paginator: Paginator | None = None
    headers: dict[str, str] = {}
    resources: list[RestResource] = Field(min_length=1)
    event_time: str | None = None  # field holding each record's event time (else snapshot)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://", v):
            raise ValueError("must be an http(s) URL")
        if re.match(r"^https?://[^/@]+:[^/@]+@", v):
            raise ValueError("must not embed credentials; use 'auth' with *_env fields")
        return v

    @property
    def resource_names(self) -> list[str]:
        return [r.name for r in self.resources]


class CsvSource(_SourceBase):
    kind: Literal["csv"]
    location: str  # local path (relative to the tenants file) or http(s) URL; .gz allowed
    resource: str = "rows"
    delimiter: str | None = None  # None: sniffed
    encoding: str = "utf-8"
    skip_lines: int = Field(0, ge=0)  # junk lines before the header
    has_header: bool = True
    null_values: list[str] = ["", "NA", "N/A", "NULL", "null"]
    primary_key: list[str] = []
    event_time: str | None = None

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, v: str | None) -> str | None:
        if v is not None and len(v) != 1:
            raise ValueError("must be a single character")
        return v

    @property
    def resource_names(self) -> list[str]:
        return [self.resource]


class FeedSource(_SourceBase):
    kind: Literal["rss"]
    url: str  # http(s) URL or local path (relative to the tenants file)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if re.match(r"^[a-z][a-z0-9+.-]*://", v) and not re.match(r"^(https?|file)://", v):
            raise ValueError("must be an http(s) URL or a local path")
        return v

    # true: every entry belongs to each loaded day (feeds that republish their history);
    # false: an entry belongs to the day of its published/updated time
    snapshot: bool = False

    @property
    def resource_names(self) -> list[str]:
        return ["entries"]


class JiraSource(_SourceBase):
    kind: Literal["jira"]
    base_url: str
    api_version: Literal[2, 3] = 3
    projects: list[str] = []
    jql: str | None = None
    email_env: EnvName | None = None
    api_token_env: EnvName | None = None
    pat_env: EnvName | None = None
    page_size: int = Field(50, ge=1, le=1000)

    @property
    def resource_names(self) -> list[str]:
        return ["issues", "issue_transitions", "statuses", "issue_types"]


class GithubSource(_SourceBase):
    kind: Literal["github"]
    base_url: str = "https://api.github.com"
    repositories: list[str] = Field(min_length=1)  # owner/name
    token_env: EnvName | None = None
    page_size: int = Field(100, ge=1, le=100)

    @property
    def resource_names(self) -> list[str]:
        return ["pull_requests", "reviews", "commits", "releases", "deployments"]


SourceConfig = Annotated[
    RestApiSource | CsvSource | FeedSource | JiraSource | GithubSource, Field(discriminator="kind")
]
SOURCE_KINDS = ("rest_api", "csv", "rss", "jira", "github")


class TenantConfig(_Model):
    id: str
    name: str | None = None
    paused: bool = False
    api_key_env: EnvName | None = None  # read API key for this tenant
    freshness_hours: int = Field(48, ge=1)
    # Jira status -> flow step, matched case-insensitively
    flow_steps: dict[str, list[str]] = {
        "to_do": ["to do", "backlog", "open", "selected for development"],
        "in_progress": ["in progress", "in review", "review"],
        "done": ["done", "closed", "resolved"],
    }
    sources: list[SourceConfig] = []

    @field_validator("id")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not SLUG.match(v):
            raise ValueError(f"tenant id {v!r} must be a slug matching [a-z][a-z0-9_]*")
        return v

    @model_validator(mode="after")
    def _unique_sources(self) -> TenantConfig:
        seen: set[str] = set()
        for source in self.sources:
            if source.name in seen:
                raise ValueError(f"duplicate source name {source.name!r}")
            seen.add(source.name)
        return self

    @property
    def dataset(self) -> str:
        return f"tenant_{self.id}"

    def source(self, name: str) -> SourceConfig | None:
        return next((s for s in self.sources if s.name == name), None)


class Registry(BaseModel):
    """All tenants of the file, plus where the file lives (relative paths resolve there)."""

    model_config = ConfigDict(frozen=True)
    path: Path
    tenants: list[TenantConfig]

    def tenant(self, tenant_id: str) -> TenantConfig:
        for tenant in self.tenants:
            if tenant.id == tenant_id:
                return tenant
        raise KeyError(f"unknown tenant {tenant_id!r} (not in {self.path})")

    @property
    def tenant_ids(self) -> list[str]:
        return [t.id for t in self.tenants]

    def active_tenants(self) -> list[TenantConfig]:
        return [t for t in self.tenants if not t.paused]

    def resolve(self, location: str) -> str:
        """A source location: URLs as-is, relative paths against the tenants file's folder."""
        if re.match(r"^[a-z][a-z0-9+.-]*://", location):
            return location
        path = Path(os.path.expandvars(location)).expanduser()
        return str(path if path.is_absolute() else (self.path.parent / path).resolve())

    def source_kinds(self) -> dict[str, str]:
        """source name -> kind across all tenants (a name must mean one kind everywhere)."""
        return {s.name: s.kind for t in self.tenants for s in t.sources}

    def resources_by_source(self) -> dict[str, list[str]]:
        """source name -> union of resource names across tenants, in first-seen order."""
        out: dict[str, list[str]] = {}
        for tenant in self.tenants:
            for source in tenant.sources:
                names = out.setdefault(source.name, [])
                names.extend(r for r in source.resource_names if r not in names)
        return out


def _describe(loc: tuple[Any, ...], raw_tenant: dict[str, Any]) -> str:
    """Turn a pydantic error location into 'source X, field a.b' using the raw YAML for names."""
    parts: list[str] = []
    rest = list(loc)
    if rest[:1] == ["sources"] and len(rest) > 1 and isinstance(rest[1], int):
        index = rest[1]
        sources = raw_tenant.get("sources") or []
        name = sources[index].get("name") if index < len(sources) and isinstance(sources[index], dict) else None
        parts.append(f"source {name!r}" if name else f"source #{index + 1}")
        rest = rest[2:]
        # drop the discriminator tag pydantic inserts (e.g. 'rest_api')
        kind = sources[index].get("kind") if index < len(sources) and isinstance(sources[index], dict) else None
        if rest and rest[0] == kind:
            rest = rest[1:]
    field = ".".join(str(p) for p in rest if not str(p).startswith("function-"))
    if field:
        parts.append(f"field {field!r}")
    return ", ".join(parts)


def parse_registry(data: Any, path: Path) -> Registry:
    """Validate parsed YAML into a Registry, with errors naming tenant, source and field."""
    where = str(path)
    if not isinstance(data, dict) or not isinstance(data.get("tenants"), list):
        raise TenantsFileError(f"{where}: expected a mapping with a 'tenants' list")
    unknown = set(data) - {"tenants"}
    if unknown:
        raise TenantsFileError(f"{where}: unknown top-level keys {sorted(unknown)}")
    tenants: list[TenantConfig] = []
    errors: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(data["tenants"]):
        tenant_id = raw.get("id") if isinstance(raw, dict) else None
        label = f"tenant {tenant_id!r}" if tenant_id else f"tenant #{index + 1}"
        if not isinstance(raw, dict):
            errors.append(f"{label}: expected a mapping")
            continue
        kind_errors = [
            f"{label}, source {source.get('name')!r}, field 'kind': unknown source kind "
            f"{source.get('kind')!r} (expected one of {', '.join(SOURCE_KINDS)})"
            for source in raw.get("sources") or []
            if isinstance(source, dict) and source.get("kind") is not None and source.get("kind") not in SOURCE_KINDS
        ]
        if kind_errors:
            errors.extend(kind_errors)
            continue
        try:
            tenant = TenantConfig.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                where_in = _describe(tuple(err["loc"]), raw)
                msg = err["msg"].removeprefix("Value error, ")
                errors.append(f"{label}{', ' + where_in if where_in else ''}: {msg}")
            continue
        if tenant.id in seen:
            errors.append(f"{label}: duplicate tenant id")
        seen.add(tenant.id)
        tenants.append(tenant)
    if errors:
        raise TenantsFileError(f"invalid tenants file {where}:\n  " + "\n  ".join(errors))
    kinds: dict[str, str] = {}
    for tenant in tenants:
        for source in tenant.sources:
            if kinds.setdefault(source.name, source.kind) != source.kind:
                raise TenantsFileError(
                    f"invalid tenants file {where}:\n  tenant {tenant.id!r}, source {source.name!r}, "
                    f"field 'kind': source name is used with kind {kinds[source.name]!r} by another "
                    "tenant; a source name must mean one kind everywhere"
                )
    return Registry(path=path, tenants=tenants)


def load_registry(path: str | Path | None = None) -> Registry:
    """Load and validate the tenants file (ETL_TENANTS_FILE, else ./tenants.yaml)."""
    if path is None:
        from etl_platform.config.settings import get_settings

        path = get_settings().tenants_file
    path = Path(path)
    if not path.exists():
        raise TenantsFileError(f"tenants file not found: {path} (set ETL_TENANTS_FILE or create tenants.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TenantsFileError(f"tenants file {path} is not valid YAML: {exc}") from exc
    return parse_registry(data, path)


def secret(env_name: str | None, *, what: str) -> str | None:
    """Read a secret from the environment at run time; a clear error names the variable."""
    if env_name is None:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise TenantsFileError(f"{what}: environment variable {env_name} is not set")
    return value
