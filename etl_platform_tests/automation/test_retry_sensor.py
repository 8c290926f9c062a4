"""The retry sensor over real failed runs in a test instance: partitions fail for real because
the tenant's REST source (a LocalServer) answers 500 (transient) or 401 (permanent)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    SkipReason,
    build_sensor_context,
)

from etl_platform.automation.onboarding import sync_tenants
from etl_platform.automation.retries import SENSOR_NAME, RetryPolicySettings, decide, evaluate_retries
from etl_platform.config.registry import load_registry
from etl_platform.definitions import build_definitions
from etl_platform.runs.partitions import partition_key
from etl_platform.runs.tags import RANGE_END_TAG, RANGE_START_TAG
from etl_platform_tests.support.http_servers import LocalServer
from etl_platform_tests.support.orchestration import Switch, launch, quiet_home, rest_tenant
from etl_platform_tests.support.platform_runs import materialize

DAY = "2024-01-02"
JOBS = {"ingest", "ingest_rest_api"}


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


@pytest.fixture
def flaky(server: LocalServer) -> Switch:
    switch = Switch(500)
    server.route("/items", switch)
    return switch


@pytest.fixture
def instance(
    platform_env, dagster_home: Path, server: LocalServer, flaky: Switch, tmp_path: Path, monkeypatch
) -> Iterator[DagsterInstance]:
    """Tenant `flaky` (500 until the test flips it) and `denied` (always 401); step retries off
    to keep runs short (test_step_retries covers them); the sensor's default policy."""
    server.route("/secure", Switch(401))
    monkeypatch.setenv("ETL_STEP_RETRIES", "0")
    for name in ("ETL_RETRY_MAX_ATTEMPTS", "ETL_RETRY_BASE_DELAY_SECONDS", "ETL_RETRY_MAX_DELAY_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    platform_env(
        [rest_tenant("flaky", server, "/items"), rest_tenant("denied", server, "/secure")],
        f"duckdb:///{tmp_path / 'wh.duckdb'}",
    )
    quiet_home(dagster_home)
    with DagsterInstance.get() as inst:
        yield inst


def fail(instance: DagsterInstance, tenant: str = "flaky", **kwargs):
    result = materialize(instance, tenant, DAY, raise_on_error=False, **kwargs)
    assert not result.success
    return instance.get_run_record_by_id(result.run_id)


def context(instance: DagsterInstance, defs=None):
    if defs is None:
        return build_sensor_context(instance=instance, sensor_name=SENSOR_NAME)
    # as the daemon builds it (from an instance ref), so that partition keys can be resolved
    return build_sensor_context(
        instance_ref=instance.get_ref(), sensor_name=SENSOR_NAME, repository_def=defs.get_repository_def()
    )


def retry_state(instance: DagsterInstance, run_id: str) -> str | None:
    return instance.get_run_by_id(run_id).tags.get("etl/retry")


def test_backoff_policy(monkeypatch) -> None:
    for name in ("ETL_RETRY_MAX_ATTEMPTS", "ETL_RETRY_BASE_DELAY_SECONDS", "ETL_RETRY_MAX_DELAY_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    policy = RetryPolicySettings(max_attempts=3, base_delay_s=300, max_delay_s=1800)
    assert [policy.delay(k) for k in (1, 2, 3, 4, 5)] == [300, 600, 1200, 1800, 1800]
    assert RetryPolicySettings.from_env() == policy  # the defaults: 5 min, doubling, 30 min cap, 3 retries
    facts = dict(permanent=False, succeeded_since=False, failed_at=1000.0, policy=policy)
    assert decide(attempt=1, now=1299, **facts).action == "wait"
    assert decide(attempt=1, now=1300, **facts).action == "retry"
    assert decide(attempt=3, now=2199, **facts).action == "wait"
    assert decide(attempt=3, now=2200, **facts).action == "retry"
    assert decide(attempt=4, now=9999, **facts).action == "give_up"
    assert decide(attempt=1, now=9999, **{**facts, "permanent": True}).action == "give_up"
    assert decide(attempt=1, now=9999, **{**facts, "succeeded_since": True}).action == "skip"
    assert decide(attempt=1, now=9999, superseded_by="abc", **facts).action == "skip"


def test_retries_with_backoff_then_gives_up(instance: DagsterInstance) -> None:
    """Attempt 1 fails; retries 2, 3, 4 come 5, 10, 20 minutes after each failure, each
    carrying attempt, parent and root; after the 4th failure the sensor gives up."""
    record = fail(instance)
    root = record.dagster_run.run_id
    assert record.dagster_run.tags["dagster/partition/tenant"] == "flaky"
    assert record.dagster_run.tags["etl/tenant"] == "flaky"  # added inside the run (no queue here)
    parent = record
    for attempt, delay in ((2, 300), (3, 600), (4, 1200)):
        failed_at = parent.end_time
        early = evaluate_retries(context(instance), JOBS, now=failed_at + delay - 5)
        assert isinstance(early, SkipReason) and f"retry {attempt - 1} of 3 due in" in early.skip_message
        assert retry_state(instance, parent.dagster_run.run_id) is None
        requests = evaluate_retries(context(instance), JOBS, now=failed_at + delay + 1)
        assert [type(r) for r in requests] == [RunRequest]
        request = requests[0]
        assert request.job_name == "ingest" and request.partition_key == f"{DAY}|flaky"
        assert request.run_key == f"retry:{parent.dagster_run.run_id}:flaky"
        assert request.tags["etl/attempt"] == str(attempt)
        assert request.tags["etl/parent_run_id"] == parent.dagster_run.run_id
        assert request.tags["etl/root_run_id"] == root
        assert request.tags["etl/trigger"] == "retry" and request.tags["etl/tenant"] == "flaky"
        assert retry_state(instance, parent.dagster_run.run_id) == f"requested:attempt {attempt}"
        # not launched yet: the next tick asks again, under the same run key (the daemon dedups)
        again = evaluate_retries(context(instance), JOBS, now=failed_at + delay + 2)
        assert [r.run_key for r in again] == [request.run_key]
        result = launch(instance, request)
        assert not result.success
        child = instance.get_run_record_by_id(result.run_id)
        assert child.dagster_run.tags["etl/attempt"] == str(attempt)
        assert child.dagster_run.tags["dagster/partition"] == f"{DAY}|flaky"
        parent = child
    # after the last retry failed: no more runs, the failed run says why
    done = evaluate_retries(context(instance), JOBS, now=parent.end_time + 10_000)
    assert isinstance(done, SkipReason) and "gave_up" in done.skip_message
    state = retry_state(instance, parent.dagster_run.run_id)
    assert state.startswith("gave_up:") and "3 retries exhausted" in state
    # every earlier run records which run retried it
    chain = [r for r in instance.get_runs() if r.tags.get("etl/root_run_id") == root or r.run_id == root]
    assert len(chain) == 4
    for run in chain:
        if run.run_id != parent.dagster_run.run_id:
            assert run.tags["etl/retry"].startswith("retried:")
    assert isinstance(evaluate_retries(context(instance), JOBS, now=parent.end_time + 20_000), SkipReason)


def test_sensor_retries_and_the_retry_succeeds(instance: DagsterInstance, flaky: Switch, monkeypatch) -> None:
    """Through the sensor definition of build_definitions(): a failed partition is retried once
    its delay passed, and the retry succeeds when the source has recovered."""
    monkeypatch.setenv("ETL_RETRY_BASE_DELAY_SECONDS", "0")
    failed = fail(instance)
    defs = build_definitions()
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    data = sensor.evaluate_tick(context(instance, defs))
    assert len(data.run_requests) == 1
    request = data.run_requests[0]
    assert request.tags["etl/parent_run_id"] == failed.dagster_run.run_id and request.tags["etl/attempt"] == "2"
    flaky.status = 200
    result = launch(instance, request)
    assert result.success
    retry = instance.get_run_by_id(result.run_id)
    assert retry.tags["etl/trigger"] == "retry" and retry.tags["dagster/partition/tenant"] == "flaky"
    # the next tick notes the retry on the failed run and asks for nothing more
    data = sensor.evaluate_tick(context(instance, defs))
    assert data.run_requests == []
    assert retry_state(instance, failed.dagster_run.run_id) == f"retried:{result.run_id}"


def test_permanent_failure_is_not_retried(instance: DagsterInstance, server: LocalServer) -> None:
    record = fail(instance, "denied")
    assert any(r.path == "/secure" for r in server.requests)
    result = evaluate_retries(context(instance), JOBS, now=record.end_time + 10_000)
    assert isinstance(result, SkipReason)
    state = retry_state(instance, record.dagster_run.run_id)
    assert state.startswith("gave_up:") and "permanent" in state


def test_canceled_run_is_not_retried(instance: DagsterInstance) -> None:
    defs = build_definitions()
    job = defs.resolve_job_def("ingest")
    key = str(partition_key("flaky", DAY))
    run = instance.create_run_for_job(job, tags=job.partitions_def.get_tags_for_partition_key(key))
    instance.report_run_canceling(run)
    instance.report_run_canceled(run)
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.CANCELED
    result = evaluate_retries(context(instance), JOBS, now=run_end(instance, run.run_id) + 10_000)
    assert isinstance(result, SkipReason) and "no failed runs" in result.skip_message
    assert retry_state(instance, run.run_id) is None


def run_end(instance: DagsterInstance, run_id: str) -> float:
    record = instance.get_run_record_by_id(run_id)
    return record.end_time or record.update_timestamp.timestamp()


def test_no_retry_when_the_partition_succeeded_since(instance: DagsterInstance, flaky: Switch) -> None:
    record = fail(instance)
    flaky.status = 200
    assert materialize(instance, "flaky", DAY, tags={"etl/trigger": "manual"}).success
    result = evaluate_retries(context(instance), JOBS, now=record.end_time + 10_000)
    assert isinstance(result, SkipReason)
    assert retry_state(instance, record.dagster_run.run_id) == "skipped:partition succeeded since"


def test_one_retry_chain_per_partition(instance: DagsterInstance) -> None:
    """The next hourly run of a partition failing too: only the newest failure is retried."""
    older = fail(instance, tags={"etl/trigger": "schedule"})
    newer = fail(instance, tags={"etl/trigger": "schedule"})
    requests = evaluate_retries(context(instance), JOBS, now=newer.end_time + 301)
    assert [r.tags["etl/parent_run_id"] for r in requests] == [newer.dagster_run.run_id]
    state = retry_state(instance, older.dagster_run.run_id)
    assert state == f"skipped:superseded by the newer run {newer.dagster_run.run_id} of the partition"


def test_retries_a_failed_range_run(instance: DagsterInstance) -> None:
    """A failed single-run backfill (a partition range) is retried as the same range."""
    tags = {
        RANGE_START_TAG: str(partition_key("flaky", "2024-01-01")),
        RANGE_END_TAG: str(partition_key("flaky", "2024-01-03")),
    }
    sync_tenants(instance, load_registry())
    job = build_definitions().resolve_job_def("ingest_rest_api")
    result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    assert run.tags["etl/tenant"] == "flaky" and run.tags["etl/trigger"] == "backfill"
    assert run.tags["etl/source"] == "api"
    [request] = evaluate_retries(context(instance), JOBS, now=run_end(instance, run.run_id) + 301)
    assert request.job_name == "ingest_rest_api" and request.partition_key is None
    assert {k: request.tags[k] for k in tags} == tags
    assert request.tags["etl/attempt"] == "2" and request.tags["etl/source"] == "api"


def test_in_run_retries_transient_errors_only(instance: DagsterInstance, monkeypatch) -> None:
    """Inside a run a transient failure of a tenant's source is retried (with backoff); a
    permanent one (401) is not."""
    monkeypatch.setenv("ETL_STEP_RETRIES", "1")
    monkeypatch.setenv("ETL_STEP_RETRY_DELAY_SECONDS", "0")

    def retries(run_id: str) -> int:
        return sum("transient failure" in (e.user_message or "") for e in instance.all_logs(run_id))

    flaky = fail(instance, "flaky")
    assert retries(flaky.dagster_run.run_id) == 1
    denied = fail(instance, "denied")
    assert retries(denied.dagster_run.run_id) == 0
