"""The tenants file holds no secret: credentials in URLs, literal credential headers and params,
`*_env` names of the platform's own secrets and shared read-API keys are refused, each naming
the tenant, the source and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from etl_platform.config.models import TenantsFileError
from etl_platform.config.registry import load_registry


def _load(tmp_path: Path, tenants: list[dict[str, Any]]) -> Any:
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": tenants}))
    return load_registry(path)


def _refused(tmp_path: Path, tenants: list[dict[str, Any]]) -> str:
    with pytest.raises(TenantsFileError) as info:
        _load(tmp_path, tenants)
    return str(info.value)


def _rest(**extra: Any) -> dict[str, Any]:
    resource = {"name": "items", "path": "items", **extra.pop("resource", {})}
    return {"name": "crm", "kind": "rest_api", "base_url": "https://api.example.com", "resources": [resource], **extra}


def _oauth(token_url: str = "https://auth.example.com/token", **envs: str) -> dict[str, Any]:
    return {"type": "oauth2_client_credentials", "token_url": token_url, "client_id_env": "ACME_CID",
            "client_secret_env": "ACME_CSECRET", **envs}  # fmt: skip


def _by_kind(kind: str, url: str) -> dict[str, Any]:
    """A source of `kind` with `url` in its URL field; returns (source, field name)."""
    return {
        "rest_api": _rest(base_url=url),
        "oauth_token_url": _rest(auth=_oauth(url)),
        "csv": {"name": "crm", "kind": "csv", "location": url},
        "rss": {"name": "crm", "kind": "rss", "url": url},
        "jira": {"name": "crm", "kind": "jira", "base_url": url},
        "github": {"name": "crm", "kind": "github", "base_url": url, "repositories": ["o/r"]},
    }[kind]


URL_FIELDS = {"rest_api": "base_url", "oauth_token_url": "token_url", "csv": "location", "rss": "url",
              "jira": "base_url", "github": "base_url"}  # fmt: skip
VALUE = "s3cr3tv4lue"
CREDENTIAL_URLS = [
    f"https://user:{VALUE}@host.example.com/x",
    f"https://{VALUE}@host.example.com/x",
    f"https://:{VALUE}@host.example.com/x",
    f"https://host.example.com/x?api_key={VALUE}",
    f"https://host.example.com/x?access_token={VALUE}&page=1",
    f"https://host.example.com/x?sig={VALUE}&v=2",
    f"https://host.example.com/x?password={VALUE}",
    f"https://host.example.com/x?X-Amz-Signature={VALUE}",
]


@pytest.mark.parametrize("kind", URL_FIELDS)
@pytest.mark.parametrize("url", CREDENTIAL_URLS)
def test_credentials_in_any_url_field_are_refused(tmp_path: Path, kind: str, url: str) -> None:
    message = _refused(tmp_path, [{"id": "acme", "sources": [_by_kind(kind, url)]}])
    assert "tenant 'acme'" in message and "source 'crm'" in message and URL_FIELDS[kind] in message
    assert VALUE not in message  # the error does not repeat the secret
    assert "credential" in message


@pytest.mark.parametrize("kind", URL_FIELDS)
def test_urls_without_credentials_are_fine(tmp_path: Path, kind: str) -> None:
    registry = _load(tmp_path, [{"id": "acme", "sources": [_by_kind(kind, "https://h.example.com/x?page=1&sort_key=a")]}])
    assert registry.tenant("acme").source("crm") is not None


def test_local_paths_may_hold_an_at_sign(tmp_path: Path) -> None:
    assert _load(tmp_path, [{"id": "acme", "sources": [{"name": "crm", "kind": "csv", "location": "x/a@b.csv"}]}])


@pytest.mark.parametrize("header", ["Authorization", "Cookie", "Proxy-Authorization", "X-Api-Key", "X-Auth-Token",
                                    "Ocp-Apim-Subscription-Key", "PRIVATE-TOKEN", "apikey"])  # fmt: skip
def test_literal_credential_headers_are_refused(tmp_path: Path, header: str) -> None:
    message = _refused(tmp_path, [{"id": "acme", "sources": [_rest(headers={"Accept": "application/json",
                                                                             header: "literal"})]}])  # fmt: skip
    assert "tenant 'acme', source 'crm', field 'headers'" in message and header in message
    assert "auth" in message


@pytest.mark.parametrize("param", ["api_key", "apiKey", "key", "access_token", "token", "client_secret", "password",
                                   "sig", "signature", "secret"])  # fmt: skip
def test_literal_credential_params_are_refused(tmp_path: Path, param: str) -> None:
    message = _refused(tmp_path, [{"id": "acme", "sources": [_rest(resource={"params": {param: "literal"}})]}])
    assert "tenant 'acme', source 'crm', field 'resources.0.params'" in message and param in message


def test_credential_in_a_resource_path_is_refused(tmp_path: Path) -> None:
    message = _refused(tmp_path, [{"id": "acme", "sources": [_rest(resource={"path": "items?token=abc"})]}])
    assert "tenant 'acme', source 'crm', field 'resources.0.path'" in message


def test_ordinary_headers_and_params_are_fine(tmp_path: Path) -> None:
    source = _rest(headers={"Accept": "application/json", "X-Request-Source": "etl", "Idempotency-Key": "1"},
                   resource={"params": {"per_page": 100, "sort_key": "id", "page_token": "", "author": "x"}})
    assert _load(tmp_path, [{"id": "acme", "sources": [source]}])


PLATFORM_ENVS = ["ETL_ADMIN_API_KEY", "ETL_WAREHOUSE_URL", "ETL_TENANTS_FILE", "DAGSTER_PG_PASSWORD",
                 "POSTGRES_PASSWORD", "PGPASSWORD", "DESTINATION__POSTGRES__CREDENTIALS"]  # fmt: skip


def _env_fields(name: str) -> list[tuple[dict[str, Any], str]]:
    """(source, field) for every credential field of every source kind, pointing at `name`."""
    return [
        (_rest(auth={"type": "bearer", "token_env": name}), "auth.bearer.token_env"),
        (_rest(auth={"type": "api_key", "api_key_env": name}), "auth.api_key.api_key_env"),
        (_rest(auth={"type": "http_basic", "username_env": "ACME_U", "password_env": name}),
         "auth.http_basic.password_env"),
        (_rest(auth=_oauth(client_secret_env=name)), "auth.oauth2_client_credentials.client_secret_env"),
        ({"name": "crm", "kind": "jira", "base_url": "https://j.example", "pat_env": name}, "pat_env"),
        ({"name": "crm", "kind": "jira", "base_url": "https://j.example", "email_env": "A_E", "api_token_env": name},
         "api_token_env"),
        ({"name": "crm", "kind": "github", "repositories": ["o/r"], "token_env": name}, "token_env"),
    ]  # fmt: skip


@pytest.mark.parametrize("name", PLATFORM_ENVS)
def test_sources_may_not_read_the_platforms_secrets(tmp_path: Path, name: str) -> None:
    for source, field in _env_fields(name):
        message = _refused(tmp_path, [{"id": "acme", "sources": [source]}])
        assert f"tenant 'acme', source 'crm', field '{field}'" in message, message
        assert f"{name} is one of the platform's own variables" in message


@pytest.mark.parametrize("name", ["ETL_ADMIN_API_KEY", "DAGSTER_PG_PASSWORD", "ETL_WAREHOUSE_URL", "PGPASSWORD"])
def test_a_tenants_read_key_is_not_a_platform_secret(tmp_path: Path, name: str) -> None:
    message = _refused(tmp_path, [{"id": "acme", "api_key_env": name}])
    assert "tenant 'acme', field 'api_key_env'" in message and name in message


def test_tenant_keys_named_etl_x_api_key_are_fine(tmp_path: Path) -> None:
    assert _load(tmp_path, [{"id": "acme", "api_key_env": "ETL_ACME_API_KEY"}])


def test_a_read_key_shared_between_tenants_is_refused(tmp_path: Path) -> None:
    message = _refused(tmp_path, [{"id": "acme", "api_key_env": "SHARED_KEY"},
                                  {"id": "globex", "api_key_env": "SHARED_KEY"}])  # fmt: skip
    assert "tenant 'globex', field 'api_key_env': SHARED_KEY is already tenant 'acme''s read-API key" in message


@pytest.mark.parametrize("owner", ["acme", "globex"])
def test_a_source_may_not_send_a_read_key(tmp_path: Path, owner: str) -> None:
    tenants = [{"id": "acme", "api_key_env": "ACME_API_KEY"}, {"id": "globex", "api_key_env": "GLOBEX_API_KEY"}]
    tenants[1]["sources"] = [_rest(auth={"type": "bearer", "token_env": f"{owner.upper()}_API_KEY"})]
    message = _refused(tmp_path, tenants)
    where = "tenant 'globex', source 'crm', field 'auth.token_env'"
    assert f"{where}: {owner.upper()}_API_KEY is tenant {owner!r}" in message


def test_a_source_may_not_send_a_warehouse_url(tmp_path: Path) -> None:
    tenants = [{"id": "acme", "warehouse_url_env": "ACME_WAREHOUSE_URL",
                "sources": [_rest(auth={"type": "bearer", "token_env": "ACME_WAREHOUSE_URL"})]}]  # fmt: skip
    message = _refused(tmp_path, tenants)
    where = "tenant 'acme', source 'crm', field 'auth.token_env'"
    assert f"{where}: ACME_WAREHOUSE_URL is tenant 'acme''s warehouse URL" in message


@pytest.mark.parametrize("entry", ["https://u:p@files.example.com", "files.example.com/path", "ftp://files.example.com",
                                   "files.example.com?x=1", "host:notaport"])  # fmt: skip
def test_bad_allowed_hosts(tmp_path: Path, entry: str) -> None:
    message = _refused(tmp_path, [{"id": "acme", "sources": [_rest(allowed_hosts=[entry])]}])
    assert "tenant 'acme', source 'crm', field 'allowed_hosts.0'" in message


def test_every_refusal_is_reported_at_once(tmp_path: Path) -> None:
    message = _refused(tmp_path, [
        {"id": "acme", "api_key_env": "ETL_ADMIN_API_KEY",
         "sources": [_rest(base_url="https://u:p@h.example", headers={"Authorization": "x"})]},
        {"id": "globex", "sources": [{"name": "feed", "kind": "rss", "url": "https://h.example/f?token=x"}]},
    ])  # fmt: skip
    assert "(4 problems)" in message
    for where in ("tenant 'acme', field 'api_key_env'", "tenant 'acme', source 'crm', field 'base_url'",
                  "tenant 'acme', source 'crm', field 'headers'", "tenant 'globex', source 'feed', field 'url'"):
        assert where in message
