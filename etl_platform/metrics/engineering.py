"""Engineering metrics from Jira and GitHub records: pure functions over plain dataclasses.

Every metric belongs to the day (in the platform's timezone) of the event that completes it:
- `prs_merged`: pull requests merged that day.
- `pr_lead_time_hours_median` / `_p90`: for the PRs merged that day, merge time minus the earliest
  of the PR's first commit (author date) and its opening; the sample size is the number of PRs.
- `time_to_first_review_hours_median` / `_p90`: for the PRs whose first review was submitted that
  day, that review's time minus the PR's opening. Reviews by the PR's own author do not count
  (replies to review comments are reviews by the author), nor do unsubmitted (pending) ones.
- `review_count`: reviews submitted that day (same exclusions).
- `release_count`: releases published that day (drafts and pre-releases excluded).
- `deployment_count`: deployments created that day (any environment).
- `revert_prs_merged`: merged PRs whose title starts with "Revert" (GitHub's revert button).
- `hotfix_prs_merged`: merged PRs with a label or a head branch naming a hotfix (hotfix, hot-fix, hot_fix).
- `change_failure_prs_merged`: merged PRs that are a revert or a hotfix (each PR once);
  `change_failure_ratio`: that count / `prs_merged` (only on days with merges).
- `jira_issues_completed` and `jira_cycle_time_hours_median` / `_p90`: per issue, the first entry
  into a status of the `in_progress` flow step, then the first entry into a `done` status after it;
  the cycle ends (and counts) on that done day. A re-opened issue keeps its first cycle.

GitHub metrics come per repository and for all repositories together (repository ""); Jira
metrics have repository "". Count metrics are written for every day (0 included) once the tenant
has a source of that kind; median/p90 only when there is a sample.

Jira statuses map to flow steps by the tenant's `flow_steps` (status names compared
case-insensitively, whitespace collapsed). A status of no step is never counted as one: it is
reported by `unmapped_statuses`. Inactive records are left out everywhere: statuses whose record
is inactive (neither counted nor reported), inactive transitions (workflow steps) and inactive
issues with all their transitions; likewise inactive PRs, reviews, commits, releases, deployments.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

START_STEP = "in_progress"
DONE_STEP = "done"
ALL_REPOSITORIES = ""  # the repository of tenant-wide rows (and of Jira metrics)

PRS_MERGED = "prs_merged"
PR_LEAD_TIME = "pr_lead_time_hours"
TIME_TO_FIRST_REVIEW = "time_to_first_review_hours"
REVIEW_COUNT = "review_count"
RELEASE_COUNT = "release_count"
DEPLOYMENT_COUNT = "deployment_count"
REVERT_PRS = "revert_prs_merged"
HOTFIX_PRS = "hotfix_prs_merged"
CHANGE_FAILURE_PRS = "change_failure_prs_merged"
CHANGE_FAILURE_RATIO = "change_failure_ratio"
JIRA_COMPLETED = "jira_issues_completed"
JIRA_CYCLE_TIME = "jira_cycle_time_hours"

GITHUB_COUNTS = (
    PRS_MERGED,
    REVIEW_COUNT,
    RELEASE_COUNT,
    DEPLOYMENT_COUNT,
    REVERT_PRS,
    HOTFIX_PRS,
    CHANGE_FAILURE_PRS,
)
HOTFIX = re.compile(r"hot[-_ ]?fix", re.IGNORECASE)
REVERT = re.compile(r"^\s*revert\b", re.IGNORECASE)


# --- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullRequest:
    key: str  # owner/name#number
    repository: str
    created_at: dt.datetime | None
    merged_at: dt.datetime | None = None
    title: str = ""
    author: str | None = None
    head_ref: str = ""
    labels: tuple[str, ...] = ()
    active: bool = True


@dataclass(frozen=True)
class Review:
    pull_key: str
    submitted_at: dt.datetime | None
    author: str | None = None
    active: bool = True


@dataclass(frozen=True)
class Commit:
    pull_key: str
    authored_at: dt.datetime | None
    active: bool = True


@dataclass(frozen=True)
class Release:
    repository: str
    published_at: dt.datetime | None
    draft: bool = False
    prerelease: bool = False
    active: bool = True


@dataclass(frozen=True)
class Deployment:
    repository: str
    created_at: dt.datetime | None
    environment: str | None = None
    active: bool = True


@dataclass(frozen=True)
class JiraIssue:
    key: str
    status: str | None = None
    active: bool = True


@dataclass(frozen=True)
class JiraStatus:
    name: str
    active: bool = True


@dataclass(frozen=True)
class Transition:
    issue_key: str
    at: dt.datetime | None
    to_status: str | None
    from_status: str | None = None
    order: str = ""  # tie-breaker for transitions at the same time (the record's source id)
    active: bool = True


@dataclass
class EngineeringData:
    """One tenant's Jira and GitHub records; `repositories` are the configured ones."""

    has_github: bool = False
    has_jira: bool = False
    repositories: list[str] = field(default_factory=list)
    pull_requests: list[PullRequest] = field(default_factory=list)
    reviews: list[Review] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    deployments: list[Deployment] = field(default_factory=list)
    issues: list[JiraIssue] = field(default_factory=list)
    statuses: list[JiraStatus] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)


@dataclass(frozen=True)
class Metric:
    day: dt.date
    name: str
    repository: str
    value: float
    sample_size: int


# --- helpers ------------------------------------------------------------------------------------


def percentile(values: Iterable[float], p: float) -> float | None:
    """The p-quantile (0..1) with linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = p * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def hours(start: dt.datetime, end: dt.datetime) -> float:
    return (end - start).total_seconds() / 3600


def day_of(ts: dt.datetime | None, tz: ZoneInfo) -> dt.date | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.timezone.utc)
    return ts.astimezone(tz).date()


def status_name(name: str | None) -> str:
    """A status name for matching: case-insensitive, whitespace collapsed."""
    return " ".join((name or "").split()).casefold()


def repository_of(pull_key: str) -> str:
    """'owner/name#12' -> 'owner/name'."""
    return pull_key.rsplit("#", 1)[0]


class FlowSteps:
    """The tenant's flow steps: status name -> step, matched case-insensitively."""

    def __init__(self, steps: Mapping[str, Iterable[str]]) -> None:
        self.by_status: dict[str, str] = {}
        for step, names in steps.items():
            for name in names:
                self.by_status.setdefault(status_name(name), step)

    def step_of(self, status: str | None) -> str | None:
        return self.by_status.get(status_name(status))


# --- GitHub -------------------------------------------------------------------------------------


def is_revert(pr: PullRequest) -> bool:
    return bool(REVERT.match(pr.title or ""))


def is_hotfix(pr: PullRequest) -> bool:
    return any(HOTFIX.search(label or "") for label in pr.labels) or bool(HOTFIX.search(pr.head_ref or ""))


def lead_time_hours(pr: PullRequest, commit_times: Iterable[dt.datetime]) -> float | None:
    """Merge time minus the earliest of the first commit and the PR's opening (never negative)."""
    if pr.merged_at is None:
        return None
    starts = [t for t in (*commit_times, pr.created_at) if t is not None]
    if not starts:
        return None
    return max(0.0, hours(min(starts), pr.merged_at))


def first_reviews(prs: Iterable[PullRequest], reviews: Iterable[Review]) -> dict[str, Review]:
    """PR key -> its first submitted review by someone other than the PR's author."""
    authors = {pr.key: pr.author for pr in prs}
    first: dict[str, Review] = {}
    for review in reviews:
        if not counted_review(review, authors):
            continue
        best = first.get(review.pull_key)
        if best is None or review.submitted_at < best.submitted_at:  # type: ignore[operator]
            first[review.pull_key] = review
    return first


def counted_review(review: Review, authors: Mapping[str, str | None]) -> bool:
    author = authors.get(review.pull_key)
    return (
        review.active
        and review.submitted_at is not None
        and not (author is not None and review.author is not None and review.author == author)
    )


def github_metrics(data: EngineeringData, days: Iterable[dt.date], tz: ZoneInfo) -> list[Metric]:
    wanted = set(days)
    prs = [pr for pr in data.pull_requests if pr.active]
    by_key = {pr.key: pr for pr in prs}
    repositories = sorted({*data.repositories, *(pr.repository for pr in prs)}) + [ALL_REPOSITORIES]
    samples: dict[tuple[dt.date, str, str], list[float]] = defaultdict(list)
    counts: Counter[tuple[dt.date, str, str]] = Counter()

    def add(day: dt.date | None, repository: str, name: str, value: float | None = None) -> None:
        if day not in wanted:
            return
        for repo in {repository, ALL_REPOSITORIES}:
            if value is None:
                counts[(day, repo, name)] += 1
            else:
                samples[(day, repo, name)].append(value)

    commit_times: dict[str, list[dt.datetime]] = defaultdict(list)
    for commit in data.commits:
        if commit.active and commit.authored_at is not None:
            commit_times[commit.pull_key].append(commit.authored_at)
    for pr in prs:
        day = day_of(pr.merged_at, tz)
        if day is None:
            continue
        add(day, pr.repository, PRS_MERGED)
        lead = lead_time_hours(pr, commit_times.get(pr.key, []))
        if lead is not None:
            add(day, pr.repository, PR_LEAD_TIME, lead)
        if is_revert(pr):
            add(day, pr.repository, REVERT_PRS)
        if is_hotfix(pr):
            add(day, pr.repository, HOTFIX_PRS)
        if is_revert(pr) or is_hotfix(pr):
            add(day, pr.repository, CHANGE_FAILURE_PRS)

    authors = {pr.key: pr.author for pr in prs}
    for review in data.reviews:
        if review.pull_key in by_key and counted_review(review, authors):
            add(day_of(review.submitted_at, tz), repository_of(review.pull_key), REVIEW_COUNT)
    for key, review in first_reviews(prs, [r for r in data.reviews if r.pull_key in by_key]).items():
        pr = by_key[key]
        if pr.created_at is not None:
            add(day_of(review.submitted_at, tz), pr.repository, TIME_TO_FIRST_REVIEW,
                max(0.0, hours(pr.created_at, review.submitted_at)))  # type: ignore[arg-type]
    for release in data.releases:
        if release.active and not release.draft and not release.prerelease:
            add(day_of(release.published_at, tz), release.repository, RELEASE_COUNT)
    for deployment in data.deployments:
        if deployment.active:
            add(day_of(deployment.created_at, tz), deployment.repository, DEPLOYMENT_COUNT)

    out: list[Metric] = []
    for day in sorted(wanted):
        for repo in repositories:
            for name in GITHUB_COUNTS:
                out.append(Metric(day, name, repo, float(counts[(day, repo, name)]), counts[(day, repo, name)]))
            merged = counts[(day, repo, PRS_MERGED)]
            if merged:
                failures = counts[(day, repo, CHANGE_FAILURE_PRS)]
                out.append(Metric(day, CHANGE_FAILURE_RATIO, repo, failures / merged, merged))
            for name in (PR_LEAD_TIME, TIME_TO_FIRST_REVIEW):
                out.extend(distribution(day, name, repo, samples.get((day, repo, name), [])))
    return out


def distribution(day: dt.date, name: str, repository: str, values: list[float]) -> list[Metric]:
    """`<name>_median` and `<name>_p90` rows, or none without values."""
    if not values:
        return []
    return [
        Metric(day, f"{name}_median", repository, round(percentile(values, 0.5), 6), len(values)),  # type: ignore[arg-type]
        Metric(day, f"{name}_p90", repository, round(percentile(values, 0.9), 6), len(values)),  # type: ignore[arg-type]
    ]


# --- Jira ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CycleTime:
    issue_key: str
    started_at: dt.datetime
    done_at: dt.datetime

    @property
    def hours(self) -> float:
        return hours(self.started_at, self.done_at)


def inactive_status_names(statuses: Iterable[JiraStatus]) -> set[str]:
    return {status_name(s.name) for s in statuses if not s.active}


def counted_transitions(data: EngineeringData) -> dict[str, list[Transition]]:
    """issue key -> its transitions in time order, without inactive issues, steps and statuses."""
    inactive_issues = {issue.key for issue in data.issues if not issue.active}
    inactive_statuses = inactive_status_names(data.statuses)
    out: dict[str, list[Transition]] = defaultdict(list)
    for t in data.transitions:
        if (
            t.active
            and t.at is not None
            and t.issue_key not in inactive_issues
            and status_name(t.to_status) not in inactive_statuses
        ):
            out[t.issue_key].append(t)
    for transitions in out.values():
        transitions.sort(key=lambda t: (t.at, t.order))
    return out


def cycle_times(data: EngineeringData, flow: FlowSteps) -> list[CycleTime]:
    """Per issue: first entry into an in_progress status -> first entry into a done status after it."""
    out = []
    for issue_key, transitions in sorted(counted_transitions(data).items()):
        started = None
        for t in transitions:
            step = flow.step_of(t.to_status)
            if started is None and step == START_STEP:
                started = t.at
            elif started is not None and step == DONE_STEP:
                out.append(CycleTime(issue_key, started, t.at))  # type: ignore[arg-type]
                break
    return out


def unmapped_statuses(data: EngineeringData, flow: FlowSteps) -> dict[str, int]:
    """Active statuses in use (to/from of counted transitions, current status of active issues)
    that map to no flow step -> how often they appear."""
    inactive = inactive_status_names(data.statuses)
    seen: Counter[str] = Counter()
    for transitions in counted_transitions(data).values():
        for t in transitions:
            seen.update(s for s in (t.to_status, t.from_status) if s)
    seen.update(issue.status for issue in data.issues if issue.active and issue.status)
    unmapped: Counter[str] = Counter()
    for status, count in seen.items():
        name = status_name(status)
        if name and name not in inactive and flow.step_of(name) is None:
            unmapped[name] += count
    return dict(sorted(unmapped.items()))


def jira_metrics(data: EngineeringData, flow: FlowSteps, days: Iterable[dt.date], tz: ZoneInfo) -> list[Metric]:
    by_day: dict[dt.date, list[float]] = defaultdict(list)
    for cycle in cycle_times(data, flow):
        by_day[day_of(cycle.done_at, tz)].append(cycle.hours)  # type: ignore[index]
    out = []
    for day in sorted(set(days)):
        values = by_day.get(day, [])
        out.append(Metric(day, JIRA_COMPLETED, ALL_REPOSITORIES, float(len(values)), len(values)))
        out.extend(distribution(day, JIRA_CYCLE_TIME, ALL_REPOSITORIES, values))
    return out


# --- all ----------------------------------------------------------------------------------------


def engineering_metrics(
    data: EngineeringData,
    days: Iterable[dt.date],
    flow_steps: Mapping[str, Iterable[str]],
    timezone: str = "UTC",
) -> list[Metric]:
    """Every metric row of the days: GitHub metrics if the tenant has GitHub, Jira metrics if Jira."""
    tz, days = ZoneInfo(timezone), sorted(set(days))
    out: list[Metric] = []
    if data.has_github:
        out += github_metrics(data, days, tz)
    if data.has_jira:
        out += jira_metrics(data, FlowSteps(flow_steps), days, tz)
    return out
