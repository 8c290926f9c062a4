"""Credentials go only to the source's origin and its `allowed_hosts`, for every auth type of
the REST source: a next link (Link header or JSON) or a redirect to another origin fails the
load as permanent, naming the host, and the other host receives nothing."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from etl_platform.config.models import RestApiSource
from etl_platform.loading.failures import classify, tenant_failure
from etl_platform.sources.guard import ForeignHostError, OriginGuard
from etl_platform.sources.lineage import RunContext, Window
from etl_platform.sources.rest_api import build_rest_api_source
from etl_platform_tests.support.http_servers import LocalServer, Request, Response

SECRET = "guard-S3cret/+="
AUTHS = {
    "bearer": {"type": "bearer", "token_env": "G_SECRET"},
    "api_key_header": {"type": "api_key", "name": "X-Api-Key", "api_key_env": "G_SECRET"},
    "api_key_query": {"type": "api_key", "name": "api_key", "location": "query", "api_key_env": "G_SECRET"},
    "http_basic": {"type": "http_basic", "username_env": "G_USER", "password_env": "G_SECRET"},
    "oauth2": {"type": "oauth2_client_credentials", "token_url": "", "client_id_env": "G_USER",
               "client_secret_env": "G_SECRET"},
}  # fmt: skip


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("G_SECRET", SECRET)
    monkeypatch.setenv("G_USER", "guard-user")


@pytest.fixture
def hosts():
    with LocalServer() as origin, LocalServer("127.0.0.2") as foreign:
        origin.route("/oauth/token", lambda r: Response(200, {"access_token": "guard-access-token", "expires_in": 60}))
        foreign.route("*", lambda r: Response(200, [{"id": 2}]))
        yield origin, foreign


def _source(origin: LocalServer, auth: str, paginator: dict[str, Any], **extra: Any) -> Any:
    config = dict(AUTHS[auth])
    if config["type"] == "oauth2_client_credentials":
        config["token_url"] = f"{origin.url}/oauth/token"
    resource = {"name": "items", "path": "items", "paginator": paginator, **extra.pop("resource", {})}
    cfg = RestApiSource.model_validate(
        {"name": "api", "kind": "rest_api", "base_url": origin.url, "auth": config, "resources": [resource], **extra}
    )
    return build_rest_api_source(cfg, RunContext("acme", "api", "run-1", Window((dt.date(2024, 5, 1),))))


def _rows(source: Any) -> list[dict[str, Any]]:
    return list(source.resources["items"])


def _credential_sent(req: Request) -> bool:
    return any(k in req.headers for k in ("Authorization", "X-Api-Key")) or "api_key" in req.query


@pytest.mark.parametrize("auth", AUTHS)
@pytest.mark.parametrize("how", ["header_link", "json_link", "redirect_302", "redirect_307"])
def test_foreign_next_page_fails_and_gets_nothing(hosts, auth: str, how: str) -> None:
    origin, foreign = hosts
    target = f"{foreign.url}/items?page=2"
    if how == "header_link":
        origin.route("/items", lambda r: Response(200, [{"id": 1}], {"Link": f'<{target}>; rel="next"'}))
        source = _source(origin, auth, {"type": "header_link"})
    elif how == "json_link":
        origin.route("/items", lambda r: Response(200, {"data": [{"id": 1}], "next": target}))
        json_link = {"type": "json_link", "next_url_path": "next"}
        source = _source(origin, auth, json_link, resource={"data_selector": "data"})
    else:
        status = int(how.rsplit("_", 1)[1])
        origin.route("/items", lambda r: Response(status, b"", {"Location": target}))
        source = _source(origin, auth, {"type": "single_page"})
    with pytest.raises(Exception) as info:
        _rows(source)
    failure = tenant_failure(info.value, "acme", "api")  # how the platform reports it
    assert failure.error == ForeignHostError.__name__, info.value
    assert foreign.url in failure.message and "allowed_hosts" in failure.message and SECRET not in failure.message
    assert classify(info.value) == "permanent"
    assert _credential_sent(origin.hits("/items")[0])  # the origin got it ...
    assert foreign.requests == []  # ... the other host nothing at all


@pytest.mark.parametrize("auth", AUTHS)
def test_allowed_hosts_receive_the_credential(hosts, auth: str) -> None:
    origin, foreign = hosts
    origin.route("/items", lambda r: Response(200, [{"id": 1}], {"Link": f'<{foreign.url}/items>; rel="next"'}))
    allowed = foreign.url.removeprefix("http://")  # host:port, the base URL's scheme
    rows = _rows(_source(origin, auth, {"type": "header_link"}, allowed_hosts=[allowed]))
    assert sorted(r["id"] for r in rows) == [1, 2]
    assert _credential_sent(foreign.requests[0])


def test_redirect_within_the_origin_is_followed(hosts) -> None:
    origin, _ = hosts
    origin.route("/items", lambda r: Response(301, b"", {"Location": "/v2/items"}))
    origin.route("/v2/items", lambda r: Response(200, [{"id": 1}]))
    assert [r["id"] for r in _rows(_source(origin, "bearer", {"type": "single_page"}))] == [1]
    assert origin.hits("/v2/items")[0].headers["Authorization"] == f"Bearer {SECRET}"


def test_without_credentials_links_are_followed(hosts) -> None:
    origin, foreign = hosts
    origin.route("/items", lambda r: Response(200, [{"id": 1}], {"Link": f'<{foreign.url}/items>; rel="next"'}))
    cfg = RestApiSource.model_validate({"name": "api", "kind": "rest_api", "base_url": origin.url,
                                        "resources": [{"name": "items", "path": "items"}]})  # fmt: skip
    source = build_rest_api_source(cfg, RunContext("acme", "api", "run-1", Window((dt.date(2024, 5, 1),))))
    assert sorted(r["id"] for r in _rows(source)) == [1, 2]


def test_oauth2_token_endpoint_redirect_is_refused(hosts) -> None:
    origin, foreign = hosts
    origin.route("/oauth/token", lambda r: Response(307, b"", {"Location": f"{foreign.url}/token"}))
    origin.route("/items", lambda r: Response(200, [{"id": 1}]))
    with pytest.raises(Exception) as info:
        _rows(_source(origin, "oauth2", {"type": "single_page"}))
    assert "token endpoint" in str(info.value)
    assert tenant_failure(info.value, "acme", "api").error == "PermanentSourceError"  # how the platform reports it
    assert foreign.requests == [] and origin.hits("/items") == []


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.example.com/v1/x", True),
        ("https://API.example.com:443/y", True),
        ("http://api.example.com/v1/x", False),  # a downgrade
        ("https://api.example.com:8443/x", False),
        ("https://evil.example.com/x", False),
        ("https://files.example.com/x", True),  # allowed_hosts: files.example.com
        ("http://files.example.com/x", False),  # an allowed host takes the base URL's scheme
        ("http://10.0.0.5:8080/x", True),  # allowed_hosts: http://10.0.0.5:8080
    ],
)
def test_origin_rules(url: str, allowed: bool) -> None:
    guard = OriginGuard("source 'api'", "https://api.example.com/v1", ["files.example.com", "http://10.0.0.5:8080"])
    assert guard.allows(url) is allowed
    assert OriginGuard("s", "http://h.example/").allows("https://h.example/x")  # same host upgraded to https
