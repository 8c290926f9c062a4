"""Engineering metrics (etl_platform.metrics.engineering) on small hand-made histories; every
expected value is computed by hand in the comments."""

from __future__ import annotations

import datetime as dt

import pytest

from etl_platform.metrics.engineering import (
    Commit,
    Deployment,
    EngineeringData,
    FlowSteps,
    JiraIssue,
    JiraStatus,
    Metric,
    PullRequest,
    Release,
    Review,
    Transition,
    cycle_times,
    engineering_metrics,
    percentile,
    unmapped_statuses,
)

UTC = dt.timezone.utc
D = dt.date(2024, 3, 5)
A, B = "o/a", "o/b"


def t(day: int, hhmm: str) -> dt.datetime:
    """2024-03-<day> hh:mm UTC."""
    h, m = hhmm.split(":")
    return dt.datetime(2024, 3, day, int(h), int(m), tzinfo=UTC)


def table(rows: list[Metric]) -> dict[tuple[dt.date, str, str], tuple[float, int]]:
    out = {(m.day, m.name, m.repository): (m.value, m.sample_size) for m in rows}
    assert len(out) == len(rows), "one row per day x metric x repository"
    return out


def github(**kw) -> EngineeringData:
    return EngineeringData(has_github=True, repositories=[A, B], **kw)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7], 0.9) == 7
    assert percentile([3, 1, 2], 0.5) == 2
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([0, 10], 0.9) == 9  # rank 0.9 between 0 and 10
    assert percentile([2, 20, 72], 0.9) == pytest.approx(61.6)  # rank 1.8: 20 + 0.8 * 52


# --- GitHub -------------------------------------------------------------------------------------


def test_pr_lead_time_and_merged_per_day() -> None:
    data = github(
        pull_requests=[
            # first commit 03-04 14:00 -> merged 03-05 10:00: 20 h (the commit predates the PR)
            PullRequest(f"{A}#1", A, t(4, "20:00"), t(5, "10:00")),
            # no commits: opened 03-05 01:00 -> merged 03:00: 2 h
            PullRequest(f"{A}#2", A, t(5, "01:00"), t(5, "03:00")),
            PullRequest(f"{A}#3", A, t(5, "01:00")),  # open: no lead time
            PullRequest(f"{A}#4", A, t(5, "01:00"), t(6, "01:00")),  # merged the next day
            # commit 03-02 12:00 -> merged 03-05 12:00: 72 h
            PullRequest(f"{B}#5", B, t(3, "00:00"), t(5, "12:00")),
            PullRequest(f"{B}#6", B, t(4, "00:00"), t(5, "12:00"), active=False),  # inactive: left out
        ],
        commits=[
            Commit(f"{A}#1", t(4, "22:00")),
            Commit(f"{A}#1", t(4, "14:00")),
            Commit(f"{A}#1", t(3, "00:00"), active=False),  # an inactive commit does not start the clock
            Commit(f"{B}#5", t(2, "12:00")),
            Commit(f"{A}#4", t(1, "00:00")),
        ],
    )
    got = table(engineering_metrics(data, [D, D + dt.timedelta(1)], {}))
    assert got[(D, "prs_merged", A)] == (2, 2)
    assert got[(D, "prs_merged", B)] == (1, 1)
    assert got[(D, "prs_merged", "")] == (3, 3)
    assert got[(D, "pr_lead_time_hours_median", A)] == (11.0, 2)  # [2, 20]
    assert got[(D, "pr_lead_time_hours_p90", A)] == (18.2, 2)  # 2 + 0.9 * 18
    assert got[(D, "pr_lead_time_hours_median", B)] == (72.0, 1)
    assert got[(D, "pr_lead_time_hours_median", "")] == (20.0, 3)  # [2, 20, 72]
    assert got[(D, "pr_lead_time_hours_p90", "")] == (61.6, 3)
    # the next day: #4, first commit 03-01 00:00 -> 03-06 01:00 = 121 h
    assert got[(D + dt.timedelta(1), "prs_merged", A)] == (1, 1)
    assert got[(D + dt.timedelta(1), "pr_lead_time_hours_median", A)] == (121.0, 1)
    assert got[(D + dt.timedelta(1), "prs_merged", B)] == (0, 0)  # counts are written as 0
    assert (D + dt.timedelta(1), "pr_lead_time_hours_median", B) not in got  # no sample, no median


def test_days_follow_the_platform_timezone() -> None:
    # 03-05 03:00 UTC is 03-04 22:00 in New York (UTC-5 before DST)
    data = github(pull_requests=[PullRequest(f"{A}#1", A, t(4, "20:00"), t(5, "03:00"))])
    utc = table(engineering_metrics(data, [D - dt.timedelta(1), D], {}))
    ny = table(engineering_metrics(data, [D - dt.timedelta(1), D], {}, timezone="America/New_York"))
    assert (utc[(D, "prs_merged", A)], utc[(D - dt.timedelta(1), "prs_merged", A)]) == ((1, 1), (0, 0))
    assert (ny[(D, "prs_merged", A)], ny[(D - dt.timedelta(1), "prs_merged", A)]) == ((0, 0), (1, 1))


def test_time_to_first_review_and_review_count() -> None:
    data = github(
        pull_requests=[
            PullRequest(f"{A}#1", A, t(4, "20:00"), author="ann"),
            PullRequest(f"{A}#2", A, t(5, "01:00"), author="bob"),
            PullRequest(f"{B}#3", B, t(1, "00:00"), author="ann"),
        ],
        reviews=[
            Review(f"{A}#1", t(4, "21:00"), "ann"),  # the author's own reply: not a review of the PR
            Review(f"{A}#1", t(5, "08:00"), "cy"),
            Review(f"{A}#1", t(5, "02:00"), "bob"),  # first: 03-04 20:00 -> 03-05 02:00 = 6 h
            Review(f"{A}#2", t(5, "04:30"), "ann"),  # first: 01:00 -> 04:30 = 3.5 h
            Review(f"{A}#2", None, "cy"),  # pending: not submitted
            Review(f"{A}#2", t(5, "04:00"), "dan", active=False),  # inactive (e.g. deleted)
            Review(f"{B}#3", t(4, "12:00"), "bob"),  # B's first review was the day before
            Review(f"{B}#3", t(5, "12:00"), "cy"),
        ],
    )
    got = table(engineering_metrics(data, [D], {}))
    assert got[(D, "time_to_first_review_hours_median", A)] == (4.75, 2)  # [3.5, 6]
    assert got[(D, "time_to_first_review_hours_p90", A)] == (5.75, 2)  # 3.5 + 0.9 * 2.5
    assert (D, "time_to_first_review_hours_median", B) not in got
    assert got[(D, "time_to_first_review_hours_median", "")] == (4.75, 2)
    assert got[(D, "review_count", A)] == (3, 3)  # bob, cy on #1; ann on #2
    assert got[(D, "review_count", B)] == (1, 1)
    assert got[(D, "review_count", "")] == (4, 4)


def test_release_and_deployment_frequency() -> None:
    data = github(
        releases=[
            Release(A, t(5, "10:00")),
            Release(A, t(5, "23:59")),
            Release(A, None, draft=True),  # a draft: not published
            Release(A, t(5, "11:00"), prerelease=True),
            Release(A, t(5, "12:00"), active=False),
            Release(B, t(6, "09:00")),
        ],
        deployments=[
            Deployment(A, t(5, "09:00"), "staging"),
            Deployment(A, t(5, "13:30"), "production"),
            Deployment(A, t(4, "13:30"), "production"),
            Deployment(B, t(5, "13:30"), "production", active=False),
        ],
    )
    got = table(engineering_metrics(data, [D, D + dt.timedelta(1)], {}))
    assert got[(D, "release_count", A)] == (2, 2)
    assert got[(D, "release_count", B)] == (0, 0)
    assert got[(D + dt.timedelta(1), "release_count", B)] == (1, 1)
    assert got[(D + dt.timedelta(1), "release_count", "")] == (1, 1)
    assert got[(D, "deployment_count", A)] == (2, 2)
    assert got[(D, "deployment_count", B)] == (0, 0)
    assert got[(D, "deployment_count", "")] == (2, 2)


def test_reverts_and_hotfixes_as_change_failure_indicators() -> None:
    def merged(n: int, title: str, head: str = "feature", labels: tuple[str, ...] = ()) -> PullRequest:
        return PullRequest(f"{A}#{n}", A, t(5, "01:00"), t(5, "02:00"), title=title, head_ref=head, labels=labels)

    data = github(
        pull_requests=[
            merged(1, 'Revert "Add login"', head="revert-7-login"),  # revert
            merged(2, "Fix crash", labels=("bug", "Hotfix")),  # hotfix label, any case
            merged(3, "Tweak", head="hot-fix/login"),  # hotfix branch
            merged(4, 'Revert "hotfix"', head="revert-9-hotfix/x"),  # both: one failure
            merged(5, "Reverting the docs policy"),  # not GitHub's revert title
            merged(6, "Normal change"),
        ]
    )
    got = table(engineering_metrics(data, [D], {}))
    assert got[(D, "revert_prs_merged", A)] == (2, 2)
    assert got[(D, "hotfix_prs_merged", A)] == (3, 3)
    assert got[(D, "change_failure_prs_merged", A)] == (4, 4)
    assert got[(D, "change_failure_ratio", A)] == (4 / 6, 6)
    assert got[(D, "change_failure_ratio", "")] == (4 / 6, 6)
    assert (D, "change_failure_ratio", B) not in got  # no merges: no ratio
    assert got[(D, "change_failure_prs_merged", B)] == (0, 0)


# --- Jira ---------------------------------------------------------------------------------------

FLOW = {
    "to_do": ["To Do", "Backlog"],
    "in_progress": ["In Progress", "IN REVIEW"],
    "done": ["Done", "closed", "Old Done"],
}


def moves(issue: str, *steps: tuple[dt.datetime, str, str], active: bool = True) -> list[Transition]:
    return [Transition(issue, at, to, frm, f"{issue}|{i}", active) for i, (at, frm, to) in enumerate(steps)]


def jira_data() -> EngineeringData:
    return EngineeringData(
        has_jira=True,
        issues=[
            JiraIssue("J-1", "Done"),
            JiraIssue("J-2", "Done"),
            JiraIssue("J-5", "Weird", active=False),
            JiraIssue("J-6", "Done"),
            JiraIssue("J-9", "Triage"),  # no transitions, current status unmapped
        ],
        statuses=[
            JiraStatus("Done"),
            JiraStatus("Old Done", active=False),
            JiraStatus("Legacy", active=False),
        ],
        transitions=[
            # 03-04 09:00 in progress (review keeps it in progress) -> done 03-05 09:00: 24 h
            *moves("J-1", (t(4, "09:00"), "To Do", "In Progress"), (t(4, "15:00"), "In Progress", "In Review"),
                   (t(5, "09:00"), "In Review", "Done")),
            # re-opened: the first cycle (03-01 -> 03-02, 24 h) counts, the second one does not
            *moves("J-2", (t(1, "00:00"), "To Do", "In Progress"), (t(2, "00:00"), "In Progress", "Done"),
                   (t(3, "00:00"), "Done", "To Do"), (t(4, "00:00"), "To Do", "In Progress"),
                   (t(5, "12:00"), "In Progress", "Done")),
            # straight to done, never started: no cycle time
            *moves("J-3", (t(5, "01:00"), "Backlog", "Done")),
            # case-insensitive: 'in progress' 00:00 -> 'CLOSED' 06:00: 6 h
            *moves("J-4", (t(5, "00:00"), "to do", "in progress"), (t(5, "06:00"), "in progress", "CLOSED")),
            # an inactive issue: left out
            *moves("J-5", (t(4, "00:00"), "To Do", "In Progress"), (t(5, "00:00"), "In Progress", "Done")),
            # QA is unmapped (reported, not a step): 03-04 12:00 -> done 03-05 00:00: 12 h
            *moves("J-6", (t(4, "12:00"), "To Do", "In Progress"), (t(4, "18:00"), "In Progress", "QA"),
                   (t(5, "00:00"), "QA", "Done")),
            # an inactive status, even mapped to done, ends nothing: 00:00 -> Done 10:00: 10 h
            *moves("J-7", (t(5, "00:00"), "To Do", "In Progress"), (t(5, "01:00"), "In Progress", "Old Done"),
                   (t(5, "03:00"), "Old Done", "Legacy"), (t(5, "10:00"), "Legacy", "Done")),
            # an inactive transition (workflow step) is skipped: 02:00 -> 05:00: 3 h
            *moves("J-8", (t(5, "02:00"), "To Do", "In Progress")),
            *moves("J-8", (t(5, "03:00"), "In Progress", "Done"), active=False),
            Transition("J-8", t(5, "05:00"), "Done", "In Progress", "J-8|9"),
        ],
    )


def test_flow_steps_match_case_insensitively() -> None:
    flow = FlowSteps(FLOW)
    assert flow.step_of("in review") == flow.step_of("  In   Review ") == flow.step_of("IN PROGRESS") == "in_progress"
    assert flow.step_of("CLOSED") == "done" and flow.step_of("QA") is None and flow.step_of(None) is None


def test_jira_cycle_time_from_transitions() -> None:
    data = jira_data()
    cycles = {c.issue_key: c.hours for c in cycle_times(data, FlowSteps(FLOW))}
    assert cycles == {"J-1": 24.0, "J-2": 24.0, "J-4": 6.0, "J-6": 12.0, "J-7": 10.0, "J-8": 3.0}
    got = table(engineering_metrics(data, [dt.date(2024, 3, 2), D, D + dt.timedelta(1)], FLOW))
    assert got[(D, "jira_issues_completed", "")] == (5, 5)  # J-1, J-4, J-6, J-7, J-8
    assert got[(D, "jira_cycle_time_hours_median", "")] == (10.0, 5)  # [3, 6, 10, 12, 24]
    assert got[(D, "jira_cycle_time_hours_p90", "")] == (19.2, 5)  # rank 3.6: 12 + 0.6 * 12
    assert got[(dt.date(2024, 3, 2), "jira_cycle_time_hours_median", "")] == (24.0, 1)  # J-2's first cycle
    assert got[(D + dt.timedelta(1), "jira_issues_completed", "")] == (0, 0)
    assert not any(name.startswith(("pr_", "prs_")) for _, name, _ in got)  # no GitHub source


def test_unmapped_statuses_are_reported_not_counted() -> None:
    data = jira_data()
    # QA: to (J-6) and from (J-6); Triage: J-9's current status. Not reported: Weird (inactive
    # issue), Legacy (inactive status), the mapped ones in any case
    assert unmapped_statuses(data, FlowSteps(FLOW)) == {"qa": 2, "triage": 1}
    everything = dict(FLOW, review=["QA", "triage"])
    assert unmapped_statuses(data, FlowSteps(everything)) == {}


def test_flow_steps_come_from_the_tenant() -> None:
    """Without 'In Review' in in_progress the J-1 cycle still starts at In Progress; with 'done'
    lacking 'closed', J-4 never ends and 'closed' is reported."""
    flow = {"in_progress": ["in progress"], "done": ["done", "old done"], "to_do": ["to do", "backlog"]}
    data = jira_data()
    cycles = {c.issue_key: c.hours for c in cycle_times(data, FlowSteps(flow))}
    assert cycles["J-1"] == 24.0 and "J-4" not in cycles
    assert unmapped_statuses(data, FlowSteps(flow)) == {"closed": 1, "in review": 2, "qa": 2, "triage": 1}


def test_tenants_without_jira_or_github_get_no_rows() -> None:
    assert engineering_metrics(EngineeringData(), [D], FLOW) == []
    rows = engineering_metrics(EngineeringData(has_jira=True), [D], FLOW)
    assert [(m.name, m.value) for m in rows] == [("jira_issues_completed", 0.0)]
    rows = table(engineering_metrics(EngineeringData(has_github=True, repositories=[A]), [D], {}))
    assert set(rows) == {(D, name, repo) for repo in (A, "") for name in (
        "prs_merged", "review_count", "release_count", "deployment_count", "revert_prs_merged",
        "hotfix_prs_merged", "change_failure_prs_merged")}
    assert all(v == (0, 0) for v in rows.values())
