"""etl_platform.runs.history over a real Dagster instance with partitioned, tagged runs."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest
from dagster import DagsterInstance, instance_for_test
from dagster._daemon.types import DaemonHeartbeat

from etl_platform.runs import history
from etl_platform_tests.support.read_api import make_runs

REASON = "ValueError: GitHub answered 502 Bad Gateway for /repos/acme/app/pulls"


@pytest.fixture(scope="module")
def dagster() -> Iterator[tuple[DagsterInstance, dict[str, str]]]:
    with instance_for_test(set_dagster_home=False) as instance:
        yield instance, make_runs(instance)


def test_recent_runs(dagster) -> None:
    instance, ids = dagster
    acme = history.recent_runs(instance, "acme")
    assert [r.run_id for r in acme] == [ids[k] for k in
                                        ("all_sources", "tickets_ok", "github_retry", "github_failed", "github_ok")]
    failed = next(r for r in acme if r.run_id == ids["github_failed"])
    assert failed.status == "FAILURE" and failed.source == "github" and failed.trigger == "schedule"
    assert failed.partition == "2024-01-02|acme" and failed.failure_reason.startswith("raw__github__pull_requests")
    assert REASON in failed.failure_reason
    retry = next(r for r in acme if r.run_id == ids["github_retry"])
    assert (retry.trigger, retry.attempt, retry.parent_run_id) == ("retry", 2, ids["github_failed"])
    assert retry.failure_reason is None and retry.duration_s is not None and retry.duration_s >= 0
    assert acme[0].source is None and acme[0].tenant == "acme"
    as_dict = retry.to_dict()
    assert as_dict["created_at"].endswith("+00:00") and as_dict["duration_s"] == retry.duration_s
    assert len(history.recent_runs(instance)) == 6
    assert len(history.recent_runs(instance, limit=2)) == 2
    assert [r.run_id for r in history.recent_runs(instance, "acme", statuses=["failure"])] == [ids["github_failed"]]
    assert [r.run_id for r in history.recent_runs(instance, source="feed")] == [ids["globex_ok"]]
    assert history.recent_runs(instance, "nobody") == []


def test_failure_reason(dagster) -> None:
    instance, ids = dagster
    assert REASON in history.failure_reason(instance, ids["github_failed"])
    assert history.failure_reason(instance, ids["github_ok"]) is None


def test_source_stats(dagster) -> None:
    instance, ids = dagster
    stats = {s["source"]: s for s in history.source_stats(instance, "acme", sources=["github", "tickets", "jira"])}
    assert list(stats) == ["github", "tickets", "jira"]
    github = stats["github"]
    # the newest success is the run of every source (it loaded github too)
    assert github["last_success"]["run_id"] == ids["all_sources"]
    assert github["last_failure"]["run_id"] == ids["github_failed"]
    assert REASON in github["last_failure"]["failure_reason"]
    assert github["runs_by_status"] == {"FAILURE": 1, "SUCCESS": 3} and github["runs_in_window"] == 4
    assert (github["records_written"], github["rejects"], github["raw_rows"]) == (150, 15, 165)
    assert github["avg_duration_s"] > 0
    assert 0 <= github["materialization_age_s"] < 600
    tickets = stats["tickets"]
    # each partition once, at its latest materialization: Jan 1 (30) and Jan 3 (7)
    assert tickets["last_failure"] is None and tickets["records_written"] == 37
    assert tickets["last_success"]["run_id"] == ids["all_sources"]
    jira = stats["jira"]  # only the run of every source touched it, and its breakdown has no jira rows
    assert jira["last_success"]["run_id"] == ids["all_sources"] and jira["runs_by_status"] == {"SUCCESS": 1}
    assert jira["records_written"] == 0
    # globex's run never counts for acme
    assert all(s["records_written"] < 999 for s in stats.values())


def test_source_stats_outside_the_window(dagster) -> None:
    """Two days later: nothing in the window, but last success/failure and materialization remain."""
    instance, ids = dagster
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=48)
    github = history.source_stats(instance, "acme", window_hours=24, now=later)[0]
    assert github["source"] == "github" and github["runs_in_window"] == 0 and github["records_written"] == 0
    assert github["last_success"]["run_id"] == ids["all_sources"]
    assert github["last_failure"]["run_id"] == ids["github_failed"]
    assert github["materialization_age_s"] > 47 * 3600


def test_last_run_by_tenant_and_heartbeats(dagster) -> None:
    instance, ids = dagster
    last = history.last_run_by_tenant(instance, ["acme", "globex", "initech"])
    assert last["acme"].run_id == ids["all_sources"] and last["globex"].run_id == ids["globex_ok"]
    assert last["initech"] is None
    assert history.daemon_heartbeat_ages(instance) == {}
    instance.add_daemon_heartbeat(DaemonHeartbeat(time.time() - 30, "SCHEDULER", "d"))
    ages = history.daemon_heartbeat_ages(instance)
    assert list(ages) == ["SCHEDULER"] and 29 < ages["SCHEDULER"] < 120
    instance.wipe_daemon_heartbeats()


def test_a_run_of_several_tenants_counts_for_each_of_them(dagster) -> None:
    """A chunked run failing for one tenant is a success for the others."""
    from dagster import DagsterRunStatus

    from etl_platform_tests.support.orchestration import create_run

    instance, _ = dagster
    run = create_run(
        instance,
        {"etl/tenants": "acme,initech", "etl/multi_tenant": "true", "etl/failed_tenants": "initech",
         "dagster/asset_partition_range_start": "2024-01-04|acme",
         "dagster/asset_partition_range_end": "2024-01-04|initech"},
        DagsterRunStatus.FAILURE,
    )
    assert history.last_run_by_tenant(instance, ["initech"])["initech"].run_id == run.run_id
    record = instance.get_run_record_by_id(run.run_id)
    assert history.tenant_status(record, "acme") == "SUCCESS" and history.tenant_status(record, "initech") == "FAILURE"
    assert run.run_id in [r.run_id for r in history.recent_runs(instance, "initech", with_reasons=False)]
    instance.delete_run(run.run_id)
