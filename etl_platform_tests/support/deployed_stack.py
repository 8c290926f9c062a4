"""What the deployment tests share (test_deployment_e2e.py natively, test_containers.py in
Docker): a tenant whose REST source can hang mid-run, the run tags a UI launch sets, waiting,
free ports and small HTTP and run-storage look-ups."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from etl_platform_tests.support.http_servers import LocalServer, Request, Response
from etl_platform_tests.support.jsonplaceholder import collection_handler
from etl_platform_tests.support.ports import service_port

TENANT = "e2e_org"
DAY = (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()
API_KEY = "e2e-tenant-key"
USERS = [{"id": i, "name": f"User {i}", "username": f"user{i}", "email": f"user{i}@example.org"} for i in range(1, 7)]
POSTS = [{"id": i, "userId": i % 6 + 1, "title": f"post {i}", "body": f"text of post {i}"} for i in range(1, 26)]
RUN_TAGS = {
    # what the UI sets for a multi-partition run; the per-tenant queue limit keys on the tenant tag
    "dagster/partition": f"{DAY}|{TENANT}",
    "dagster/partition/date": DAY,
    "dagster/partition/tenant": TENANT,
    "etl/tenant": TENANT,
    "etl/trigger": "manual",
}
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def free_port() -> int:
    """A free port for a service of the stack, outside the ephemeral range (support/ports.py)."""
    return service_port()


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """check()'s first truthy result; exceptions count as not yet."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # not ready yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class SlowSource:
    """JSONPlaceholder-shaped users and posts; while `slow` is set, page 2 of posts hangs."""

    def __init__(self, server: LocalServer) -> None:
        self.slow = threading.Event()
        self.hanging = threading.Event()  # a request for page 2 hangs now
        self.release = threading.Event()
        server.route("/users", collection_handler(USERS, server.url, "/users"))
        posts = collection_handler(POSTS, server.url, "/posts")

        def handle(req: Request) -> Response:
            if req.arg("_page") == "2" and self.slow.is_set():
                self.hanging.set()
                self.release.wait(60)
            return posts(req)

        server.route("/posts", handle)
        # a hung request whose client was killed fails to answer: expected, not worth a traceback
        server.httpd.handle_error = lambda request, client_address: None

    def hang(self) -> None:
        self.release.clear()
        self.hanging.clear()
        self.slow.set()

    def recover(self) -> None:
        self.slow.clear()
        self.release.set()


def tenant_config(base_url: str, tenant: str = TENANT, **extra: Any) -> dict[str, Any]:
    """A tenant with one REST source (users: 2 pages, posts: 3 pages) at base_url."""
    resources = [
        {"name": name, "path": name, "params": {"_page": 1, "_limit": limit}, "primary_key": "id"}
        for name, limit in (("users", 4), ("posts", 10))
    ]
    source = {"name": "placeholder", "kind": "rest_api", "base_url": base_url, "paginator": {"type": "header_link"},
              "resources": resources, "field_mapping": {"author": "userId"}}
    return {"id": tenant, "name": f"Deployment e2e {tenant}", "api_key_env": "ETL_E2E_API_KEY", "sources": [source],
            **extra}


def http_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def run_messages(instance, run_id: str) -> str:
    return "\n".join(r.event_log_entry.message or "" for r in instance.get_records_for_run(run_id).records)


def graphql_launcher(client) -> Callable[[], str]:
    """Launch `ingest` for the test partition through the webserver's GraphQL API, as a client would."""

    def launch() -> str:
        return client.submit_job_execution(
            "ingest", repository_location_name="etl_platform", repository_name="__repository__", tags=RUN_TAGS
        )

    return launch


def wait_finished(client, run_id: str, timeout: float) -> str:
    return wait_for(
        f"run {run_id} to finish", lambda: (s := client.get_run_status(run_id).value) in FINISHED and s, timeout
    )


def wait_retry_of(instance, run_id: str, timeout: float):
    from dagster import RunsFilter

    record = wait_for(
        f"a retry of {run_id}",
        lambda: instance.get_run_records(RunsFilter(tags={"etl/parent_run_id": run_id}), limit=1),
        timeout,
    )[0]
    return record.dagster_run
