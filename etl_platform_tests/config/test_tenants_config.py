"""The tenants file: validation with errors that name tenant, source and field."""

from pathlib import Path

import pytest
import yaml

from etl_platform.config.models import TenantsFileError, secret
from etl_platform.config.registry import load_registry, parse_registry

REPO_TENANTS = Path(__file__).resolve().parents[2] / "tenants.yaml"


def _csv(name="files", **extra):
    return {"name": name, "kind": "csv", "location": "data.csv", **extra}


def _load(tmp_path: Path, tenants) -> object:
    path = tmp_path / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": tenants}))
    return load_registry(path)


def test_repo_tenants_file_is_valid():
    registry = load_registry(REPO_TENANTS)
    assert "demo" in registry.tenant_ids
    demo = registry.tenant("demo")
    assert {s.kind for s in demo.sources} == {"csv", "rss"}
    placeholder = registry.tenant("placeholder_org").source("jsonplaceholder")
    assert [r.name for r in placeholder.resources] == ["users", "posts", "comments", "todos"]
    assert placeholder.paginator.type == "header_link"


def test_good_file_resolves_relative_paths(tmp_path):
    registry = _load(tmp_path, [{"id": "acme", "sources": [_csv()]}])
    assert registry.tenant("acme").dataset == "tenant_acme"
    assert registry.resolve("data.csv") == str(tmp_path / "data.csv")
    assert registry.resolve("https://x.test/a.csv") == "https://x.test/a.csv"


def test_unknown_source_kind_names_tenant_source_and_field(tmp_path):
    with pytest.raises(TenantsFileError) as err:
        _load(tmp_path, [{"id": "acme", "sources": [{"name": "s3files", "kind": "s3", "location": "x"}]}])
    message = str(err.value)
    assert "tenant 'acme'" in message and "source 's3files'" in message and "field 'kind'" in message
    assert "unknown source kind 's3'" in message


def test_duplicate_tenant(tmp_path):
    with pytest.raises(TenantsFileError, match="tenant 'acme': duplicate tenant id"):
        _load(tmp_path, [{"id": "acme"}, {"id": "acme"}])


def test_duplicate_source_name(tmp_path):
    with pytest.raises(TenantsFileError, match="duplicate source name 'files'"):
        _load(tmp_path, [{"id": "acme", "sources": [_csv(), _csv()]}])


@pytest.mark.parametrize("bad", ["Acme", "1acme", "acme-corp", "", "ac me"])
def test_bad_slug(tmp_path, bad):
    with pytest.raises(TenantsFileError, match="field 'id'.*slug"):
        _load(tmp_path, [{"id": bad}])


def test_names_that_would_not_fit_postgres_identifiers_are_refused(tmp_path):
    """Every derived name (schema tenant_<id>, dlt's pipeline and dataset, raw tables) fits 63
    bytes unshortened: a longer id is refused when the file loads, naming it, never hashed."""
    assert _load(tmp_path, [{"id": "a" * 48}]).tenant_ids == ["a" * 48]
    long_id = "acme_" + "x" * 44  # 49 characters
    with pytest.raises(TenantsFileError) as err:
        _load(tmp_path, [{"id": long_id}, {"id": long_id + "y"}])
    message = str(err.value)
    assert f"tenant {long_id!r}, field 'id'" in message and "at most 48" in message
    assert "2 problems" in message  # every error of the file at once
    source = _csv(name="s" * 30, resource="r" * 20)
    with pytest.raises(TenantsFileError, match="source 'sssssssssssssssssssssssssssss.*raw table name.*51 characters"):
        _load(tmp_path, [{"id": "acme", "sources": [source]}])


def test_literal_secret_is_refused(tmp_path):
    source = {
        "name": "api",
        "kind": "rest_api",
        "base_url": "https://api.test",
        "auth": {"type": "bearer", "token": "ghp_live_secret_value"},
        "resources": [{"name": "items", "path": "items"}],
    }
    with pytest.raises(TenantsFileError) as err:
        _load(tmp_path, [{"id": "acme", "sources": [source]}])
    message = str(err.value)
    assert "tenant 'acme', source 'api'" in message
    assert "literal secret" in message and "token_env" in message
    assert "ghp_live_secret_value" not in message


def test_secret_value_where_env_name_expected(tmp_path):
    source = {
        "name": "api",
        "kind": "rest_api",
        "base_url": "https://api.test",
        "auth": {"type": "bearer", "token_env": "ghp_abc123secret"},
        "resources": [{"name": "items", "path": "items"}],
    }
    with pytest.raises(TenantsFileError, match=r"source 'api', field 'auth.*token_env'.*environment variable"):
        _load(tmp_path, [{"id": "acme", "sources": [source]}])


def test_credentials_in_url_are_refused(tmp_path):
    source = {
        "name": "api",
        "kind": "rest_api",
        "base_url": "https://user:pw@api.test",
        "resources": [{"name": "items", "path": "items"}],
    }
    with pytest.raises(TenantsFileError, match="must not embed credentials"):
        _load(tmp_path, [{"id": "acme", "sources": [source]}])


def test_missing_required_field_is_named(tmp_path):
    with pytest.raises(TenantsFileError, match="tenant 'acme', source 'files', field 'location': Field required"):
        _load(tmp_path, [{"id": "acme", "sources": [{"name": "files", "kind": "csv"}]}])


def test_unknown_field_is_named(tmp_path):
    with pytest.raises(TenantsFileError, match="source 'files', field 'delimeter'"):
        _load(tmp_path, [{"id": "acme", "sources": [_csv(delimeter=";")]}])


def test_source_name_must_mean_one_kind(tmp_path):
    with pytest.raises(TenantsFileError, match="source 'files'.*one kind everywhere"):
        _load(
            tmp_path,
            [
                {"id": "a", "sources": [_csv()]},
                {"id": "b", "sources": [{"name": "files", "kind": "rss", "url": "f.xml"}]},
            ],
        )


def test_missing_file(tmp_path):
    with pytest.raises(TenantsFileError, match="tenants file not found: .*nope.yaml"):
        load_registry(tmp_path / "nope.yaml")


def test_not_yaml(tmp_path):
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants: [unclosed")
    with pytest.raises(TenantsFileError, match="not valid YAML"):
        load_registry(path)


def test_env_var_default_location(tmp_path, monkeypatch):
    path = tmp_path / "elsewhere.yaml"
    path.write_text(yaml.safe_dump({"tenants": [{"id": "zeta"}]}))
    monkeypatch.setenv("ETL_TENANTS_FILE", str(path))
    assert load_registry().tenant_ids == ["zeta"]


def test_secret_reads_env_at_run_time(monkeypatch):
    monkeypatch.delenv("ETL_TEST_TOKEN", raising=False)
    with pytest.raises(TenantsFileError, match="ETL_TEST_TOKEN is not set"):
        secret("ETL_TEST_TOKEN", what="source 'api' auth")
    monkeypatch.setenv("ETL_TEST_TOKEN", "abc")
    assert secret("ETL_TEST_TOKEN", what="x") == "abc"


def test_all_errors_reported_together(tmp_path):
    with pytest.raises(TenantsFileError) as err:
        parse_registry(
            {"tenants": [{"id": "Bad"}, {"id": "ok", "sources": [{"name": "x", "kind": "csv"}]}]}, tmp_path / "t.yaml"
        )
    assert "tenant 'Bad'" in str(err.value) and "tenant 'ok', source 'x'" in str(err.value)


def test_unknown_field_mapping_column(tmp_path):
    with pytest.raises(TenantsFileError, match="source 'files', field 'field_mapping': unknown unified column"):
        _load(tmp_path, [{"id": "acme", "sources": [_csv(field_mapping={"headline": "title"})]}])


def test_feed_url_scheme(tmp_path):
    with pytest.raises(TenantsFileError, match="source 'news', field 'url': must be an http"):
        _load(tmp_path, [{"id": "acme", "sources": [{"name": "news", "kind": "rss", "url": "ftp://x/feed"}]}])
