"""Redaction at the source: remembered secrets in every form, secret-looking URL parts, log
records, exception chains (as Dagster and tracebacks print them) and dlt's pipeline trace."""

from __future__ import annotations

import io
import logging
import pickle
import secrets
import socket
import traceback
from pathlib import Path

import dlt
import pytest
import requests

from etl_platform.config.models import secret
from etl_platform.loading.failures import root_message, tenant_failure
from etl_platform.runs.failures import run_failure
from etl_platform.security import redaction
from etl_platform.sources.redact import install_trace_redaction
from etl_platform_tests.support.secret_scan import hits, secret_forms


def _new_secret() -> str:
    return f"sk/{secrets.token_hex(8)}+x="


@pytest.mark.parametrize(
    ("name", "secret_like"),
    [
        ("api_key", True), ("apiKey", True), ("X-Api-Key", True), ("key", True), ("access_token", True),
        ("token", True), ("client_secret", True), ("password", True), ("sig", True), ("X-Amz-Signature", True),
        ("X-Auth-Token", True), ("Ocp-Apim-Subscription-Key", True), ("PRIVATE-TOKEN", True), ("auth", True),
        ("sort_key", False), ("partition_key", False), ("Idempotency-Key", False), ("page_token", False),
        ("nextPageToken", False), ("per_page", False), ("author", False), ("keyword", False), ("monkey", False),
    ],
)  # fmt: skip
def test_secret_names(name: str, secret_like: bool) -> None:
    assert redaction.is_secret_name(name) is secret_like


def test_remembered_secret_is_removed_in_every_form() -> None:
    value = _new_secret()
    redaction.remember(value)
    for form in secret_forms(value):
        assert redaction.redact(f"before {form} after") == "before *** after"
    assert redaction.redact_value({"a": [f"x{value}y", 3], value: None}) == {"a": ["x***y", 3], "***": None}
    assert redaction.contains_secret(f"..{value}..".encode(), [value])
    assert not redaction.contains_secret(b"nothing", [value]) and not redaction.contains_secret(value, ["other"])
    assert redaction.redact_value([f"{value} other"], ["other"]) == [f"{value} ***"]  # only the given ones


def test_secret_read_through_the_config_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    value, user = _new_secret(), f"user-{secrets.token_hex(4)}"
    monkeypatch.setenv("T_REDACT_SECRET", value)
    monkeypatch.setenv("T_REDACT_USER", user)
    assert secret("T_REDACT_SECRET", what="test") == value
    assert secret("T_REDACT_USER", what="test", sensitive=False) == user
    assert redaction.redact(f"{user} {value}") == f"{user} ***"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET https://u:p4ss@h.example/x failed", "GET https://***@h.example/x failed"),
        ("https://tok3n@h.example/x", "https://***@h.example/x"),
        ("url: /items?page=2&api_key=abc123&x=1", "url: /items?page=2&api_key=***&x=1"),
        ("https://h/f.csv?sig=s3cr3t&v=2", "https://h/f.csv?sig=***&v=2"),
        ("https://h/p?sort_key=a&page_token=b", "https://h/p?sort_key=a&page_token=b"),
        ("mail me at a@b.example", "mail me at a@b.example"),
    ],
)
def test_url_secrets_are_removed(text: str, expected: str) -> None:
    assert redaction.redact(text) == expected


def test_data_keeps_its_urls() -> None:
    assert redaction.redact("https://h/p?token=public", urls=False) == "https://h/p?token=public"


def test_log_records_are_redacted_before_any_handler(caplog: pytest.LogCaptureFixture) -> None:
    value = _new_secret()
    redaction.remember(value)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # a handler added after redaction was installed
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("retrying %s", f"https://h/items?api_key={value}")
        try:
            raise RuntimeError(f"HTTP 401 for https://h/items?key={value}")
        except RuntimeError:
            logger.exception("request failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    output = stream.getvalue()
    assert "retrying https://h/items?api_key=***" in output and "RuntimeError: HTTP 401" in output
    assert hits(output, secret_forms(value)) == set()


def _connection_error(url: str) -> requests.ConnectionError:
    try:
        requests.get(url, timeout=2)
    except requests.ConnectionError as exc:
        return exc
    raise AssertionError("expected a connection error")


def test_exception_chains_are_scrubbed_in_place() -> None:
    """requests names the URL (query key included) in a chain of four exceptions."""
    value = _new_secret()
    redaction.remember(value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        try:
            raise _connection_error(f"http://127.0.0.1:{port}/items?custom={value}")
        except requests.ConnectionError as exc:
            raise ValueError("extraction failed") from exc
    except ValueError as outer:
        error = outer
    forms = secret_forms(value)
    assert hits("".join(traceback.format_exception(error)), forms)  # before: the key is there
    failure = run_failure([tenant_failure(error, "acme", "api")], 1)  # what a run step raises
    printed = "".join(traceback.format_exception(error))
    assert hits(printed, forms) == set() and "custom=***" in printed and "Max retries exceeded" in printed
    assert hits(failure.description, forms) == set() and "Connection refused" in failure.description
    assert hits(root_message(error) + tenant_failure(error, "acme", "api").message, forms) == set()


def test_dlt_trace_is_redacted(tmp_path: Path) -> None:
    value = _new_secret()
    redaction.remember(value)
    install_trace_redaction()

    @dlt.resource
    def items():
        yield {"id": 1}
        raise RuntimeError(f"GET https://h/items?x={value} failed")

    pipeline = dlt.pipeline("redact_trace", destination=dlt.destinations.duckdb(str(tmp_path / "w.duckdb")),
                            pipelines_dir=str(tmp_path / "pipelines"), dataset_name="d")  # fmt: skip
    with pytest.raises(Exception):  # noqa: B017 - dlt wraps it
        pipeline.run(items())
    forms = secret_forms(value)
    trace_file = next((tmp_path / "pipelines").rglob("trace.pickle"))
    assert hits(trace_file.read_bytes(), forms) == set()
    step = pipeline.last_trace.steps[-1]
    assert "x=***" in step.step_exception and hits(repr(pickle.loads(trace_file.read_bytes())), forms) == set()


# --- redact before you cut (issue 22, item 4) ----------------------------------------------------------


@pytest.mark.parametrize("cut", [295, 300, 305, 320])
def test_an_excerpt_cut_inside_a_secret_holds_no_prefix_of_it(cut: int) -> None:
    """The secret straddles the cut in every form it travels in: no 4 characters of it survive."""
    token = _new_secret() + "0123456789abcdefghij"
    redaction.remember(token)
    for form in redaction.forms(token):
        text = "x" * (cut - len(form) // 2) + form + " and the rest of the body"
        shown = redaction.excerpt(text, 300)
        assert len(shown) <= 300 + len(redaction.MASK)
        assert not any(form[:n] in shown for n in range(4, len(form) + 1)), (form, shown)


def test_a_tail_already_cut_upstream_is_masked_and_short_or_unrelated_tails_are_kept() -> None:
    token = _new_secret()
    redaction.remember(token)
    assert redaction.mask_tail("error body: " + token[:6]) == "error body: " + redaction.MASK
    assert redaction.mask_tail("error body: " + token[:3]) == "error body: " + token[:3]  # < 4 characters
    assert redaction.mask_tail("error body: nothing secret") == "error body: nothing secret"
    given = "given-secret-value-42"
    assert redaction.excerpt("a" * 10 + given, 15, [given]) == "a" * 10 + redaction.MASK
