"""`failures.classify` on real failures: configuration and deterministic data failures are
permanent (never retried), the network, 429/5xx and an unreachable database transient. Each
case raises the real exception (real files, local servers, real databases), wrapped as dlt wraps it."""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path

import dlt
import duckdb
import pytest

from etl_platform.config.models import FeedSource, RestApiSource
from etl_platform.loading.failures import PERMANENT, TRANSIENT, classify, tenant_failure
from etl_platform.sources.errors import PermanentSourceError
from etl_platform.sources.feeds import FeedFormatError, build_feed_source
from etl_platform.sources.lineage import RunContext, Window
from etl_platform.sources.rest_api import build_rest_api_source
from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.http_servers import LocalServer, Response

CTX = RunContext("t1", "src", "run-1", Window((dt.date(2024, 1, 2),)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(tmp_path: Path, source: object, destination: object = None) -> BaseException:
    pipeline = dlt.pipeline(
        "classes",
        destination=destination or dlt.destinations.duckdb(str(tmp_path / "w.duckdb")),
        dataset_name="tenant_t1",
        pipelines_dir=str(tmp_path / "pipelines"),
    )
    with pytest.raises(Exception) as info:
        pipeline.run(source)
    return info.value


def rest(base_url: str) -> object:
    config = RestApiSource.model_validate(
        {
            "name": "api",
            "kind": "rest_api",
            "base_url": base_url,
            "resources": [{"name": "items", "path": "items", "paginator": {"type": "single_page"}}],
        }
    )
    return build_rest_api_source(config, CTX)


def test_a_subclass_of_a_permanent_error_is_permanent(tmp_path: Path) -> None:
    class QuotaExceeded(PermanentSourceError):
        pass

    assert classify(QuotaExceeded("over quota")) == PERMANENT
    document = tmp_path / "feed.xml"
    document.write_text("<html><body>sign in</body></html>")
    source = build_feed_source(FeedSource(name="news", kind="rss", url=str(document)), str(document), CTX)
    error = run(tmp_path, source)
    failure = tenant_failure(error, "t1", "news", [CTX.window.days[0]])
    assert failure.kind == PERMANENT and failure.error == FeedFormatError.__name__


def test_data_nested_deeper_than_python_can_follow_is_permanent() -> None:
    with pytest.raises(RecursionError) as info:
        json.loads("[" * 100_000 + "]" * 100_000)
    assert classify(info.value) == PERMANENT


def test_duckdbs_memory_cap_is_permanent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same input needs the same memory again: 3,000 columns at a 128 MB DuckDB cap (the
    platform's loading cap, set as an operator would: `duckdb_load_memory_mb()` on a small host
    is 256 MB, where these columns fit)."""
    config = '{"memory_limit": "128MB", "preserve_insertion_order": false}'
    monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG", config)
    with duckdb.connect(config={"memory_limit": "32MB"}) as conn:
        with pytest.raises(duckdb.OutOfMemoryException) as direct:
            conn.execute("CREATE TABLE wide AS SELECT " + ", ".join(f"'x' AS c{i}" for i in range(3000)))
    assert classify(direct.value) == PERMANENT
    warehouse = Warehouse(f"duckdb:///{tmp_path / 'cap.duckdb'}")
    error = run(tmp_path, dlt.resource([{f"c{i}": "x" for i in range(3000)}], name="wide"), warehouse.dlt_destination())
    assert "Out of Memory" in str(error) and classify(error) == PERMANENT


def test_the_network_and_server_errors_are_transient(tmp_path: Path) -> None:
    error = run(tmp_path, rest(f"http://127.0.0.1:{free_port()}"))  # nothing listens
    assert classify(error) == TRANSIENT
    with LocalServer() as server:
        for status, kind in ((429, TRANSIENT), (502, TRANSIENT), (403, PERMANENT), (404, PERMANENT)):
            server.route("/items", lambda req, status=status: Response(status, "no", {"Retry-After": "0"}))
            error = run(tmp_path / str(status), rest(server.url))
            assert classify(error) == kind, status


def test_an_unreachable_database_is_transient() -> None:
    with pytest.raises(Exception) as info:
        with Warehouse(f"postgresql://postgres@127.0.0.1:{free_port()}/etl").connect() as conn:
            conn.query("SELECT 1")
    assert classify(info.value) == TRANSIENT
