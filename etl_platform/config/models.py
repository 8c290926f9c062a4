"""The tenants file's models: tenants and their sources, typed and validated.

Secrets are never literal: a source names the environment variable that holds
each secret (fields ending in ``_env``); the value is read only when a source runs.
Loading, caching and error reporting live in `registry.py`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from etl_platform.config import credentials, locations, secrets
from etl_platform.config.names import raw_name, tenant_schema
from etl_platform.security import redaction

SLUG = re.compile(r"^[a-z][a-z0-9_]*$")
# Every name derived from a tenant id must fit PostgreSQL's 63-byte identifiers unshortened:
# the schema `tenant_<id>` (dlt's dataset), dlt's pipeline `etl__<id>__<source>`. Longer ids
# are refused, never hashed (two long ids would otherwise share a schema).
MAX_TENANT_ID = 48
# a raw table is `<source>_<resource>`; dlt adds `__<field>` for nested lists
MAX_TABLE_NAME = 48
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


def _refused(check: Any) -> Any:
    """A validator from a `credentials` check that returns the reason for a refusal, or None."""

    def validate(value: Any) -> Any:
        if value is not None:
            reason = check(value)
            if reason:
                raise ValueError(reason)
        return value

    return validate


EnvName = Annotated[str, AfterValidator(_env_name)]
# a source's credential: never one of the platform's own variables
SecretEnv = Annotated[str, AfterValidator(_env_name), AfterValidator(_refused(credentials.source_env_refusal))]
# a tenant's read-API key: ETL_<X>_API_KEY is fine, the admin key or a platform variable is not
ApiKeyEnv = Annotated[str, AfterValidator(_env_name), AfterValidator(_refused(credentials.api_key_env_refusal))]
# every URL field: no user-info, no secret-looking query parameter
SafeUrl = Annotated[str, AfterValidator(_refused(credentials.url_credentials))]
# a CSV or feed location: data, not shell (no `$`, no `..`, nothing in /proc, /sys or /dev)
Location = Annotated[SafeUrl, AfterValidator(_refused(locations.text_problem))]
# an origin besides base_url that may receive a source's credential: host, host:port or scheme://host[:port]
AllowedHost = Annotated[str, AfterValidator(_refused(credentials.allowed_host_refusal))]


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
    token_env: SecretEnv


class ApiKeyAuth(_Model):
    type: Literal["api_key"]
    name: str = "X-API-Key"
    location: Literal["header", "query"] = "header"
    api_key_env: SecretEnv


class BasicAuth(_Model):
    type: Literal["http_basic"]
    username_env: SecretEnv
    password_env: SecretEnv


class OAuth2ClientCredentials(_Model):
    type: Literal["oauth2_client_credentials"]
    token_url: SafeUrl
    client_id_env: SecretEnv
    client_secret_env: SecretEnv
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
    path: Annotated[str, AfterValidator(_refused(credentials.path_credentials))]
    params: Annotated[dict[str, Any], AfterValidator(_refused(credentials.param_credentials))] = {}
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

    @model_validator(mode="after")
    def _table_names_fit(self) -> _SourceBase:
        for resource in self.resource_names:
            table = raw_name(self.name, resource)
            if len(table) > MAX_TABLE_NAME:
                raise ValueError(
                    f"raw table name {table!r} (source name + '_' + resource name) is {len(table)} characters; "
                    f"at most {MAX_TABLE_NAME} fit the warehouse's identifiers: shorten the source or resource name"
                )
        return self

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
    base_url: SafeUrl
    auth: Auth | None = None
    allowed_hosts: list[AllowedHost] = []  # origins besides base_url that may receive the credential
    paginator: Paginator | None = None
    headers: Annotated[dict[str, str], AfterValidator(_refused(credentials.header_credentials))] = {}
    resources: list[RestResource] = Field(min_length=1)
    event_time: str | None = None  # field holding each record's event time (else snapshot)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://", v):
            raise ValueError("must be an http(s) URL")
        return v

    @property
    def resource_names(self) -> list[str]:
        return [r.name for r in self.resources]


class CsvSource(_SourceBase):
    kind: Literal["csv"]
    location: Location  # local path (relative to the tenants file) or http(s) URL; .gz allowed
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
    url: Location  # http(s) URL or local path (relative to the tenants file)

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
    base_url: SafeUrl
    api_version: Literal[2, 3] = 3
    projects: list[str] = []
    jql: str | None = None
    email_env: SecretEnv | None = None
    api_token_env: SecretEnv | None = None
    pat_env: SecretEnv | None = None
    allowed_hosts: list[AllowedHost] = []  # origins besides base_url that may receive the credential
    page_size: int = Field(50, ge=1, le=1000)

    @property
    def resource_names(self) -> list[str]:
        return ["issues", "issue_transitions", "statuses", "issue_types"]


class GithubSource(_SourceBase):
    kind: Literal["github"]
    base_url: SafeUrl = "https://api.github.com"
    repositories: list[str] = Field(min_length=1)  # owner/name
    token_env: SecretEnv | None = None
    allowed_hosts: list[AllowedHost] = []  # origins besides base_url that may receive the credential
    page_size: int = Field(100, ge=1, le=100)

    @property
    def resource_names(self) -> list[str]:
        return ["pull_requests", "reviews", "commits", "releases", "deployments"]


SourceConfig = Annotated[
    RestApiSource | CsvSource | FeedSource | JiraSource | GithubSource, Field(discriminator="kind")
]
SOURCE_KINDS = ("rest_api", "csv", "rss", "jira", "github")


# --- alerts -----------------------------------------------------------------------------------

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class WebhookChannel(_Model):
    """A generic JSON webhook: the variable holding its URL (a webhook URL is a secret)."""

    type: Literal["webhook"]
    url_env: EnvName


class SlackChannel(_Model):
    """A Slack incoming webhook (Slack's message format): the variable holding its URL."""

    type: Literal["slack"]
    webhook_url_env: EnvName


class EmailChannel(_Model):
    """E-mail over SMTP: recipients, and optionally the variable holding the SMTP server's URL
    (`smtp://`, `smtp+starttls://` or `smtps://`, with credentials); else ETL_ALERT_SMTP_URL."""

    type: Literal["email"]
    to: list[str] = Field(min_length=1)
    smtp_url_env: EnvName | None = None

    @field_validator("to")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if not EMAIL.match(a)]
        if bad:
            raise ValueError(f"not e-mail addresses: {bad}")
        return v


AlertChannel = Annotated[WebhookChannel | SlackChannel | EmailChannel, Field(discriminator="type")]


class AlertsConfig(_Model):
    """Where a tenant's failure alerts go: its own channels, plus the platform-wide ones
    (ETL_ALERT_* variables) unless `platform_default` is false."""

    channels: list[AlertChannel] = []
    platform_default: bool = True


class TenantLimits(_Model):
    """What one tenant's work in one run may use (unset: the platform's ETL_TENANT_* settings)."""

    memory_mb: int | None = Field(None, ge=64)
    deadline_minutes: float | None = Field(None, gt=0)
    cpu_minutes: float | None = Field(None, gt=0)


class TenantConfig(_Model):
    id: str
    name: str | None = None
    paused: bool = False
    api_key_env: ApiKeyEnv | None = None  # read API key for this tenant
    freshness_hours: int = Field(48, ge=1)
    # Jira status -> flow step, matched case-insensitively
    flow_steps: dict[str, list[str]] = {
        "to_do": ["to do", "backlog", "open", "selected for development"],
        "in_progress": ["in progress", "in review", "review"],
        "done": ["done", "closed", "resolved"],
    }
    # the tenant's own warehouse (a PostgreSQL database or server): the variable holding its URL;
    # unset: the platform's ETL_WAREHOUSE_URL
    warehouse_url_env: EnvName | None = None
    alerts: AlertsConfig = AlertsConfig()
    limits: TenantLimits = TenantLimits()
    sources: list[SourceConfig] = []

    @field_validator("id")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not SLUG.match(v):
            raise ValueError(f"tenant id {v!r} must be a slug matching [a-z][a-z0-9_]*")
        if len(v) > MAX_TENANT_ID:
            raise ValueError(
                f"tenant id {v!r} is {len(v)} characters; at most {MAX_TENANT_ID} fit every name derived from it "
                f"(schema tenant_<id>, dlt pipeline etl__<id>__<source>) within PostgreSQL's 63-byte identifiers"
            )
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
        return tenant_schema(self.id)

    def source(self, name: str) -> SourceConfig | None:
        return next((s for s in self.sources if s.name == name), None)


def secret(env_name: str | None, *, what: str, sensitive: bool = True) -> str | None:
    """Read a secret from the environment at run time; a clear error names the variable. The
    value is remembered for redaction (`sensitive=False`: a user name or e-mail, which data
    may hold legitimately)."""
    if env_name is None:
        return None
    value = secrets.value(env_name)
    if not value:
        raise TenantsFileError(f"{what}: environment variable {env_name} is not set")
    if sensitive:
        redaction.remember(value)
    return value
