"""Read-API hardening: malformed cursors are 422 (never 500), /health names no tenant without a
key, and request heads are size-bounded by the real server (`etl-platform serve`)."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl_platform.api.cursor import encode_cursor
from etl_platform.warehouse import Warehouse
from etl_platform_tests.support.http_servers import first_answer
from etl_platform_tests.support.read_api import KEYS, T0, auth, client, insert, row


def _cursor(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _json_cursor(value: object) -> str:
    return _cursor(json.dumps(value).encode())


MALFORMED = {
    "lone high surrogate in the id": _cursor(b'["2024-03-01T00:00:00+00:00", "\\ud800"]'),
    "lone low surrogate in the time": _cursor(b'["2024-03-01T00:00:00\\udc00+00:00", "x"]'),
    "surrogate pair halves swapped": _cursor(b'["2024-03-01T00:00:00+00:00", "\\udc00\\ud800"]'),
    "bad base64 length": "A",
    "not UTF-8": _cursor(b"\xff\xfe\xfa"),
    "not JSON": _cursor(b"hello"),
    "JSON nested 1000 deep": _cursor(b"[" * 1000),
    "a huge integer": _cursor(b"1" * 1000),
    "an object": _json_cursor({"a": 1}),
    "three items": _json_cursor(["2024-03-01T00:00:00+00:00", "x", "y"]),
    "a number as time": _json_cursor([1, "x"]),
    "null as id": _json_cursor(["2024-03-01T00:00:00+00:00", None]),
    "not a time": _json_cursor(["yesterday", "x"]),
    "a time without zone": _json_cursor(["2024-03-01T00:00:00", "x"]),
    "a time out of range": _json_cursor(["0001-01-01T00:00:00+14:00", "x"]),
    "an empty id": _json_cursor(["2024-03-01T00:00:00+00:00", ""]),
    "NUL in the id": _json_cursor(["2024-03-01T00:00:00+00:00", "a\x00b"]),
    "too long": "A" * 1404,
    "bad characters": "abc$%^",
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    warehouse = Warehouse(f"duckdb:///{tmp_path_factory.mktemp('cursor') / 'w.duckdb'}")
    insert(warehouse, "acme", [row("acme", n) for n in range(5)])
    return client(warehouse)


@pytest.mark.parametrize("cursor", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_cursor_is_422(api, cursor: str) -> None:
    response = api.get("/data", params={"cursor": cursor}, headers=auth("acme"))
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "cursor"]


def test_a_real_cursor_still_pages(api) -> None:
    first = api.get("/data", params={"limit": 2}, headers=auth("acme")).json()
    cursor = first["metadata"]["pagination"]["next_cursor"]
    assert cursor and api.get("/data", params={"cursor": cursor}, headers=auth("acme")).status_code == 200
    assert api.get("/data", params={"cursor": encode_cursor(T0, "x")}, headers=auth("acme")).status_code == 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.one_of(st.binary(max_size=300), JSON.map(lambda v: json.dumps(v).encode()),
                         st.tuples(st.text(), st.text()).map(lambda v: json.dumps(list(v)).encode())))
def test_any_cursor_is_200_or_422(api, payload: bytes) -> None:
    response = api.get("/data", params={"cursor": _cursor(payload) or "A"}, headers=auth("acme"))
    assert response.status_code in (200, 422), (payload, response.text)


# --- the real server ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _send_head(port: int, header_bytes: int) -> bytes:
    """A GET whose one header holds `header_bytes` bytes, sent in 64 KiB chunks; the answer (or
    b'' when the server closed the connection before reading it all)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            chunk = b"a" * 65536
            for _ in range(header_bytes // len(chunk)):
                sock.sendall(chunk)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            return sock.recv(4096)
        except (ConnectionResetError, TimeoutError):
            return b""


@pytest.mark.timeout(180)
def test_real_server_bounds_headers_and_health_names_no_tenant(tmp_path: Path, dagster_home: Path) -> None:
    (tmp_path / "tenants.yaml").write_text(
        "tenants:\n  - id: acme\n    api_key_env: ACME_API_KEY\n  - id: globex\n    api_key_env: GLOBEX_API_KEY\n"
    )
    port = _free_port()
    env = {**os.environ, "ETL_TENANTS_FILE": str(tmp_path / "tenants.yaml"), "DAGSTER_HOME": str(dagster_home),
           "ETL_WAREHOUSE_URL": f"duckdb:///{tmp_path / 'w.duckdb'}", "ETL_ADMIN_API_KEY": "admin-key-xyz-123",
           "ACME_API_KEY": KEYS["acme"], "GLOBEX_API_KEY": KEYS["globex"]}  # fmt: skip
    log_path = tmp_path / "api.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "etl_platform.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        health = first_answer(f"{base}/health", proc, log_path)
        # /health without a key: aggregate only
        assert health.status_code == 200 and health.json()["last_runs"] is None
        assert "acme" not in health.text and "globex" not in health.text
        admin = httpx.get(f"{base}/health", headers={"Authorization": "Bearer admin-key-xyz-123"}, timeout=5)
        assert set(admin.json()["last_runs"]) == {"acme", "globex"}

        # request heads: 12 KiB is fine, 64 KiB is refused, 64 MiB costs the server nothing
        ok = httpx.get(f"{base}/health", headers={"X-Pad": "a" * 12_000}, timeout=5)
        assert ok.status_code == 200
        # a head over the limit that arrives whole: 431; one cut off while arriving: 400 and the
        # connection closed (the close may reach the client first, as a reset)
        whole = httpx.get(f"{base}/health", headers={"X-Pad": "a" * 20_000}, timeout=5)
        assert whole.status_code == 431, whole.text
        try:
            big = httpx.get(f"{base}/health", headers={"X-Pad": "a" * 65_536}, timeout=5)
            assert big.status_code in (400, 431)
        except (httpx.ReadError, httpx.RemoteProtocolError):
            pass
        before = _rss_kib(proc.pid)
        answer = _send_head(port, 64 * 1024 * 1024)
        assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:200]
        assert _rss_kib(proc.pid) - before < 20 * 1024  # KiB: nothing near the 64 MiB sent
        assert proc.poll() is None and httpx.get(f"{base}/health", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
