"""Failure alerts over real failed runs: a tenant's REST source (a LocalServer) answers 500
(transient) or 401 (permanent); the retry sensor decides as it would in the daemon; the alerts
go to local receivers (HTTP webhooks, an SMTP server)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance, RunRequest, build_sensor_context

from etl_platform.automation.alerts import SENSOR_NAME, AlertState, evaluate_alerts
from etl_platform.automation.retries import SENSOR_NAME as RETRY_SENSOR
from etl_platform.automation.retries import evaluate_retries
from etl_platform.observability.channels import Alert, Target, deliver
from etl_platform_tests.support.dagster_storages import STORAGES, dagster_storage
from etl_platform_tests.support.http_servers import LocalServer, Request, Response
from etl_platform_tests.support.orchestration import Switch, launch
from etl_platform_tests.support.platform_runs import materialize

DAY = "2024-01-02"
JOBS = {"ingest", "ingest_rest_api"}
SECRET = "s3cr3t-query-key-4711"


class Receiver:
    """A webhook receiver: records JSON bodies; answers `status` (the test can make it fail)."""

    def __init__(self) -> None:
        self.status = 200
        self.bodies: list[dict] = []
        self.attempts = 0

    def __call__(self, req: Request) -> Response:
        self.attempts += 1
        if self.status != 200:
            return Response(self.status, {"error": "receiver down"})
        self.bodies.append(json.loads(req.body))
        return Response(200, {"ok": True})


def tenant(tenant_id: str, server: LocalServer, path: str, alerts: dict | None = None) -> dict:
    """A tenant whose REST source sends its key in the query string (so errors carry it)."""
    return {
        "id": tenant_id,
        **({"alerts": alerts} if alerts else {}),
        "sources": [
            {
                "name": "api",
                "kind": "rest_api",
                "base_url": server.url,
                "auth": {"type": "api_key", "name": "api_key", "location": "query", "api_key_env": "ALERTS_API_KEY"},
                "paginator": {"type": "single_page"},
                "resources": [{"name": "items", "path": path, "primary_key": "id"}],
            }
        ],
    }


@pytest.fixture
def source() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


@pytest.fixture
def hooks() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


@pytest.fixture(params=STORAGES)
def env(request, platform_env, dagster_home: Path, source: LocalServer, hooks: LocalServer, tmp_path: Path,
        monkeypatch):
    """Tenants `flaky` (500 until flipped; its own webhook) and `denied` (401); the platform's
    Slack webhook; one retry after 300 s; step retries off."""
    flaky, tenant_hook, slack = Switch(500), Receiver(), Receiver()
    source.route("/items", flaky)
    source.route("/secure", Switch(401))
    hooks.route("/tenant", tenant_hook)
    hooks.route("/slack", slack)
    monkeypatch.setenv("ALERTS_API_KEY", SECRET)
    monkeypatch.setenv("FLAKY_ALERT_URL", f"{hooks.url}/tenant")
    monkeypatch.setenv("ETL_ALERT_SLACK_WEBHOOK_URL", f"{hooks.url}/slack")
    monkeypatch.setenv("ETL_DAGSTER_UI_URL", "http://dagster.example:3000/")
    monkeypatch.setenv("ETL_STEP_RETRIES", "0")
    monkeypatch.setenv("ETL_RETRY_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("ETL_RETRY_BASE_DELAY_SECONDS", "300")
    for name in ("ETL_ALERT_WEBHOOK_URL", "ETL_ALERT_EMAIL_TO", "ETL_ALERT_SMTP_URL"):
        monkeypatch.delenv(name, raising=False)
    platform_env(
        [
            tenant("flaky", source, "/items", {"channels": [{"type": "webhook", "url_env": "FLAKY_ALERT_URL"}]}),
            tenant("denied", source, "/secure"),
        ],
        f"duckdb:///{tmp_path / 'wh.duckdb'}",
    )
    storage = dagster_storage(request.param, dagster_home)
    next(storage)
    yield {"flaky": flaky, "tenant_hook": tenant_hook, "slack": slack}
    next(storage, None)


@pytest.fixture
def instance(env) -> Iterator[DagsterInstance]:
    with DagsterInstance.get() as inst:
        yield inst


class Sensor:
    """The alerts sensor across ticks: each tick gets a NEW context built from the stored
    cursor, as the daemon does (also after a restart)."""

    def __init__(self, instance: DagsterInstance) -> None:
        self.instance = instance
        self.cursor: str | None = None

    def tick(self, now: float | None = None):
        context = build_sensor_context(instance=self.instance, sensor_name=SENSOR_NAME, cursor=self.cursor)
        result = evaluate_alerts(context, now=now)
        self.cursor = result.cursor
        return result


def retry_tick(instance: DagsterInstance, now: float):
    return evaluate_retries(build_sensor_context(instance=instance, sensor_name=RETRY_SENSOR), JOBS, now=now)


def test_one_alert_per_failure_chain_then_one_resolved(instance: DagsterInstance, env) -> None:
    hook, slack, sensor = env["tenant_hook"], env["slack"], Sensor(instance)
    first = materialize(instance, "flaky", DAY, raise_on_error=False)
    assert not first.success
    # transient failure: the retry sensor has not decided yet -> no alert
    sensor.tick()
    assert hook.bodies == [] and slack.bodies == []
    assert first.run_id in AlertState.from_cursor(sensor.cursor).waiting

    # the retry sensor retries once (attempt 2), which fails too; then it gives up
    ended = instance.get_run_record_by_id(first.run_id).end_time
    requests = retry_tick(instance, ended + 301)
    assert [type(r) for r in requests] == [RunRequest]
    retry = launch(instance, requests[0])
    assert not retry.success
    sensor.tick()  # the first run is `retried`, the retry not decided yet: still nothing
    assert hook.bodies == [] and slack.bodies == []
    retry_tick(instance, instance.get_run_record_by_id(retry.run_id).end_time + 10_000)
    assert instance.get_run_by_id(retry.run_id).tags["etl/retry"].startswith("gave_up:")

    sensor.tick()
    assert len(hook.bodies) == 1 and len(slack.bodies) == 1  # tenant's webhook + platform Slack
    alert = hook.bodies[0]
    assert alert["event"] == "failure" and alert["tenant"] == "flaky" and alert["sources"] == ["api"]
    assert alert["partitions"] == [f"{DAY}|flaky"]
    assert alert["error_kind"] == "transient" and alert["error_class"]
    assert "500" in alert["message"] and alert["run_id"] == retry.run_id
    assert alert["run_url"] == f"http://dagster.example:3000/runs/{retry.run_id}"
    assert "retries given up" in alert["note"]
    for body in (hook.bodies, slack.bodies):
        assert SECRET not in json.dumps(body)
    assert "api_key=***" in alert["message"]  # the source URL's key is redacted
    assert "flaky" in slack.bodies[0]["text"] and slack.bodies[0]["blocks"]
    assert retry.run_id in json.dumps(slack.bodies[0]["blocks"])

    # a daemon restart: a new context from the stored cursor sends nothing new
    sensor.tick()
    # the next hourly run fails again: same chain, no second alert
    again = materialize(instance, "flaky", DAY, raise_on_error=False)
    retry_tick(instance, instance.get_run_record_by_id(again.run_id).end_time + 10_000)  # superseded/given up
    sensor.tick()
    assert len(hook.bodies) == 1 and len(slack.bodies) == 1

    # fixed: the next run succeeds -> one "resolved"
    env["flaky"].status = 200
    fixed = materialize(instance, "flaky", DAY)
    sensor.tick()
    sensor.tick()
    assert [b["event"] for b in hook.bodies] == ["failure", "resolved"]
    resolved = hook.bodies[1]
    assert resolved["tenant"] == "flaky" and resolved["sources"] == ["api"] and resolved["run_id"] == fixed.run_id
    assert len(slack.bodies) == 2 and "RESOLVED" in slack.bodies[1]["text"]
    assert AlertState.from_cursor(sensor.cursor).open == {}


def test_permanent_failure_alerts_at_once_and_a_down_receiver_is_retried(instance: DagsterInstance, env) -> None:
    slack, sensor = env["slack"], Sensor(instance)
    slack.status = 500  # the platform's channel is down
    run = materialize(instance, "denied", DAY, raise_on_error=False)
    assert not run.success
    result = sensor.tick()  # permanent (401): alerts at once; delivery fails, the tick does not
    assert slack.attempts == 1 and slack.bodies == []
    state = AlertState.from_cursor(result.cursor)
    assert len(state.pending) == 1 and "HTTP 500" in state.pending[0]["error"]
    assert "denied" in result.skip_reason.skip_message  # noted, not raised
    sensor.tick()  # still down: retried, still pending, nothing lost
    assert slack.attempts == 2 and len(AlertState.from_cursor(sensor.cursor).pending) == 1
    slack.status = 200
    sensor.tick()
    assert len(slack.bodies) == 1
    body = slack.bodies[0]
    assert "denied" in body["text"] and "401" in json.dumps(body) and SECRET not in json.dumps(body)
    assert f"{DAY}|denied" in json.dumps(body["blocks"])
    sensor.tick()  # delivered once: nothing more, nothing pending
    assert len(slack.bodies) == 1 and AlertState.from_cursor(sensor.cursor).pending == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, list]]:
    from aiosmtpd.controller import Controller

    received: list = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
            received.append(envelope)
            return "250 OK"

    port = _free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, received
    finally:
        controller.stop()


def test_email_alert_reaches_an_smtp_server(instance: DagsterInstance, env, smtp_server, monkeypatch) -> None:
    port, received = smtp_server
    monkeypatch.setenv("ETL_ALERT_EMAIL_TO", "oncall@example.com, data@example.com")
    monkeypatch.setenv("ETL_ALERT_SMTP_URL", f"smtp://127.0.0.1:{port}")
    monkeypatch.setenv("ETL_ALERT_EMAIL_FROM", "etl@example.com")
    run = materialize(instance, "denied", DAY, raise_on_error=False)
    Sensor(instance).tick()
    assert len(received) == 1
    envelope = received[0]
    assert sorted(envelope.rcpt_tos) == ["data@example.com", "oncall@example.com"]
    assert envelope.mail_from == "etl@example.com"
    text = envelope.content.decode()
    import email
    from email import policy

    parsed = email.message_from_bytes(envelope.content, policy=policy.default)  # unfolds long headers
    assert parsed["Subject"].strip().startswith("[etl-platform] FAILED: tenant denied, source api")
    assert f"{DAY}|denied" in text and run.run_id in text and SECRET not in text


def test_channel_errors_never_name_the_url(monkeypatch) -> None:
    """A webhook URL is a secret: delivery errors name the channel's variable, not its value."""
    port = _free_port()  # nothing listens there
    monkeypatch.setenv("SOME_HOOK_URL", f"http://127.0.0.1:{port}/hook?token=abc123secret")
    alert = Alert("failure", "acme", ("api",), (), "r1", "http://ui/runs/r1", "HTTPError", "transient", "boom")
    with pytest.raises(Exception) as info:
        deliver(Target("webhook", "SOME_HOOK_URL"), alert, timeout_s=2)
    assert "SOME_HOOK_URL" in str(info.value) and "abc123secret" not in str(info.value)
    monkeypatch.delenv("SOME_HOOK_URL")
    with pytest.raises(Exception, match="SOME_HOOK_URL is not set"):
        deliver(Target("webhook", "SOME_HOOK_URL"), alert)


def test_alerts_config_is_validated_naming_tenant_and_field(tmp_path: Path) -> None:
    from etl_platform.config.models import TenantsFileError
    from etl_platform.config.registry import load_registry
    from etl_platform_tests.support.platform_runs import write_tenants

    path = write_tenants(tmp_path / "tenants.yaml", [
        {"id": "acme", "alerts": {"channels": [{"type": "webhook", "url_env": "https://hooks.example/x"}]}},
        {"id": "beta", "alerts": {"channels": [{"type": "email", "to": ["not-an-address"]}]}},
        {"id": "gamma", "alerts": {"channels": [{"type": "pager", "url_env": "X"}]}},
    ])
    with pytest.raises(TenantsFileError) as info:
        load_registry(path)
    text = str(info.value)
    assert "tenant 'acme', field 'alerts.channels.0.webhook.url_env': must name an environment variable" in text
    assert "tenant 'beta'" in text and "not-an-address" in text
    assert "tenant 'gamma', field 'alerts.channels.0'" in text and "'pager'" in text


def test_a_failure_the_retry_sensor_never_decides_on_alerts_after_its_grace(instance: DagsterInstance, env) -> None:
    """No retry sensor running: the transient failure alerts once its retry is overdue."""
    hook, sensor = env["tenant_hook"], Sensor(instance)
    run = materialize(instance, "flaky", DAY, raise_on_error=False)
    ended = instance.get_run_record_by_id(run.run_id).end_time
    sensor.tick(now=ended + 60)
    assert hook.bodies == []
    sensor.tick(now=ended + 300 + 900 + 1)  # first retry due after 300 s, plus the 900 s grace
    assert len(hook.bodies) == 1 and "no decision" in hook.bodies[0]["note"]
    sensor.tick(now=ended + 5000)
    assert len(hook.bodies) == 1


def test_a_shared_run_that_died_alerts_each_tenant_without_the_others(instance: DagsterInstance, env) -> None:
    """A run of two tenants that failed outside their work (no entry of its own for either): each
    tenant's alert says so without the run's text or partitions, which name the other tenant."""
    from dagster import DagsterRunStatus

    from etl_platform_tests.support.orchestration import create_run

    tags = {"etl/tenants": "flaky,denied", "etl/multi_tenant": "true",
            "dagster/asset_partition_range_start": f"{DAY}|flaky", "dagster/asset_partition_range_end": f"{DAY}|denied"}
    run = create_run(instance, tags, DagsterRunStatus.STARTED)
    instance.report_run_failed(run, "worker died loading tenant 'denied' from /secure: DENIED-MARKER-51")
    sensor = Sensor(instance)
    ended = instance.get_run_record_by_id(run.run_id).end_time or time.time()
    sensor.tick(now=ended + 60)
    sensor.tick(now=ended + 300 + 900 + 1)  # no retry decision: both alert
    bodies = [json.dumps(b) for b in env["slack"].bodies + env["tenant_hook"].bodies]
    assert env["tenant_hook"].bodies and any("denied" in b for b in bodies), bodies  # both alerted
    for text in bodies:  # each alert is one tenant's: it names no other, and no text of the run
        assert not ("flaky" in text and "denied" in text) and "MARKER" not in text, text
