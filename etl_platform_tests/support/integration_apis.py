"""A Jira site and a GitHub API for integration tests: local servers replaying the real fixture
shapes (jira-cli's v3 issues, go-jira's statuses and issue types, PyGithub's pull requests and
reviews), moved to DAY and given a changelog, commits, releases and deployments.

The scenario (times UTC), with the metrics it implies for DAY (2024-03-05):
- PyGithub/PyGithub: PR 31 opened DAY-1 20:00, commits authored DAY-1 14:00 and 22:00, reviews
  DAY 02:00 and 08:00, merged DAY 10:00 (lead time 20 h, first review 6 h); PR 32 open;
  release v2.0 published DAY 13:00 plus a draft; deployments DAY 09:00 and 13:30.
- austinsasko/PyGithub: PR 21 'Revert "Revert ..."' opened DAY 06:00, merged 06:30 (0.5 h); PR 2
  labelled hotfix, commit DAY 05:00, opened 07:00, merged 09:00 (4 h); deployments not enabled.
- Jira TEST-3: in progress DAY-1 10:00 -> QA (unmapped) -> done DAY 08:00 (22 h), re-opened and
  done again the same day (the first cycle counts); TEST-2 in progress; TEST-1 to do.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

from etl_platform_tests.support.http_servers import LocalServer, Request, Response

DAY = dt.date(2024, 3, 5)
REPO_A = "PyGithub/PyGithub"
REPO_B = "austinsasko/PyGithub"
FLOW_STEPS = {"to_do": ["To Do", "BACKLOG"], "in_progress": ["in progress", "In Review"], "done": ["DONE"]}


def at(day_offset: int, hhmm: str) -> str:
    """GitHub time on DAY + offset: at(0, '10:00') -> '2024-03-05T10:00:00Z'."""
    return f"{(DAY + dt.timedelta(days=day_offset)).isoformat()}T{hhmm}:00Z"


def jira_at(day_offset: int, hhmm: str, offset: str = "+0000") -> str:
    """Jira time (offset without colon): jira_at(0, '09:00', '+0100') is 08:00 UTC."""
    return f"{(DAY + dt.timedelta(days=day_offset)).isoformat()}T{hhmm}:00.000{offset}"


def _load(fixtures_dir: Path, name: str) -> Any:
    return json.loads((fixtures_dir / "api" / name).read_text(encoding="utf-8"))


# --- GitHub -------------------------------------------------------------------------------------


def github_commit(repo: str, sha: str, authored: str, login: str, message: str) -> dict[str, Any]:
    person = {"name": login.title(), "email": f"{login}@example.com", "date": authored}
    return {
        "sha": sha,
        "node_id": f"C_{sha}",
        "commit": {"author": person, "committer": person, "message": message, "comment_count": 0},
        "url": f"https://api.github.com/repos/{repo}/commits/{sha}",
        "html_url": f"https://github.com/{repo}/commit/{sha}",
        "author": {"login": login, "type": "User"},
        "committer": {"login": login, "type": "User"},
        "parents": [],
    }


def github_release(repo: str, rid: int, tag: str, created: str, published: str | None) -> dict[str, Any]:
    return {
        "id": rid,
        "tag_name": tag,
        "name": tag,
        "draft": published is None,
        "prerelease": False,
        "created_at": created,
        "published_at": published,
        "html_url": f"https://github.com/{repo}/releases/tag/{tag}",
        "author": {"login": "jacquev6"},
        "body": f"Release {tag}",
    }


def github_deployment(repo: str, did: int, environment: str, created: str) -> dict[str, Any]:
    return {
        "id": did,
        "sha": "8a4f306d4b223682dd19410d4a9150636ebe4206",
        "ref": "master",
        "task": "deploy",
        "environment": environment,
        "description": f"deploy to {environment}",
        "creator": {"login": "jacquev6"},
        "created_at": created,
        "updated_at": created,
        "url": f"https://api.github.com/repos/{repo}/deployments/{did}",
        "production_environment": environment == "production",
    }


class GithubApi:
    """Two repositories' pulls (+ reviews, commits), releases and deployments; mutable state."""

    def __init__(self, fixtures_dir: Path) -> None:
        setup = _load(fixtures_dir, "github/PullRequest.setUp.json")
        by_url = {e["request"]["url"]: e["response"]["body"] for e in setup}
        pr31 = copy.deepcopy(by_url[f"https://api.github.com/repos/{REPO_A}/pulls/31"])
        pr31.update(created_at=at(-1, "20:00"), merged_at=at(0, "10:00"), closed_at=at(0, "10:00"),
                    updated_at=at(0, "12:00"))
        pr32 = copy.deepcopy(_load(fixtures_dir, "github/Repository.testGetPulls.json")[0]["response"]["body"][0])
        pr32.update(created_at=at(0, "11:00"), updated_at=at(0, "11:30"))
        pr21 = copy.deepcopy(by_url[f"https://api.github.com/repos/{REPO_B}/pulls/21"])
        pr21.update(created_at=at(0, "06:00"), merged_at=at(0, "06:30"), closed_at=at(0, "06:30"),
                    updated_at=at(0, "06:31"))
        pr2 = copy.deepcopy(by_url["https://api.github.com/repos/MarcoFalke/PyGithub/pulls/2"])
        pr2.update(created_at=at(0, "07:00"), merged_at=at(0, "09:00"), closed_at=at(0, "09:00"),
                   updated_at=at(0, "09:05"))
        pr2["labels"] = [{"id": 1, "node_id": "LA_1", "name": "hotfix", "color": "d73a4a", "default": False}]
        reviews = [e["response"]["body"] for e in _load(fixtures_dir, "github/PullRequestReview.setUp.json")]
        reviews = copy.deepcopy(reviews)
        reviews[0]["submitted_at"] = at(0, "02:00")
        reviews[1]["submitted_at"] = at(0, "08:00")
        self.pulls: dict[str, list[dict[str, Any]]] = {REPO_A: [pr31, pr32], REPO_B: [pr21, pr2]}
        self.reviews: dict[tuple[str, int], list[dict[str, Any]]] = {(REPO_A, 31): reviews}
        self.commits: dict[tuple[str, int], list[dict[str, Any]]] = {
            (REPO_A, 31): [
                github_commit(REPO_A, "a1" * 20, at(-1, "14:00"), "jacquev6", "Rewrite with generated code"),
                github_commit(REPO_A, "b2" * 20, at(-1, "22:00"), "jacquev6", "Fix review remarks"),
            ],
            (REPO_B, 2): [github_commit(REPO_B, "c3" * 20, at(0, "05:00"), "marcofalke", "Hotfix: target_commitish")],
        }
        self.releases = {
            REPO_A: [
                github_release(REPO_A, 9002, "v2.0-draft", at(0, "14:00"), None),
                github_release(REPO_A, 9001, "v2.0", at(0, "12:50"), at(0, "13:00")),
                github_release(REPO_A, 9000, "v1.9", at(-20, "10:00"), at(-20, "10:00")),
            ],
            REPO_B: [],
        }
        self.deployments = {
            REPO_A: [
                github_deployment(REPO_A, 7002, "production", at(0, "13:30")),
                github_deployment(REPO_A, 7001, "staging", at(0, "09:00")),
                github_deployment(REPO_A, 7000, "production", at(-1, "09:00")),
            ]
        }

    def handle(self, req: Request) -> Response:
        pattern = r"/repos/([^/]+/[^/]+)/(pulls|releases|deployments)(?:/(\d+)/(reviews|commits))?"
        match = re.fullmatch(pattern, req.path)
        if not match:
            return Response(404, {"message": "Not Found"})
        repo, kind, number, child = match.groups()
        if child:
            store = self.reviews if child == "reviews" else self.commits
            return Response(200, store.get((repo, int(number)), []))
        if kind == "pulls":
            return Response(200, sorted(self.pulls.get(repo, []), key=lambda p: p["updated_at"], reverse=True))
        if kind == "releases":
            return Response(200, self.releases.get(repo, []))
        if repo not in self.deployments:
            return Response(404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})
        return Response(200, self.deployments[repo])

    def install(self, server: LocalServer) -> None:
        server.route("*", self.handle)


# --- Jira ---------------------------------------------------------------------------------------


def history(hid: str, created: str, from_status: str, to_status: str, author: str = "Person A") -> dict[str, Any]:
    ids = {"To Do": "1", "Backlog": "10000", "In Progress": "3", "QA": "10100", "Done": "10001"}
    return {
        "id": hid,
        "author": {"accountId": f"acc-{author[-1]}", "displayName": author, "active": True},
        "created": created,
        "items": [
            {
                "field": "status",
                "fieldtype": "jira",
                "fieldId": "status",
                "from": ids[from_status],
                "fromString": from_status,
                "to": ids[to_status],
                "toString": to_status,
            }
        ],
    }


class JiraApi:
    """jira-cli's v3 /search/jql page (TEST-1..3) moved to DAY with changelogs; go-jira's statuses
    and issue types."""

    def __init__(self, fixtures_dir: Path) -> None:
        page = copy.deepcopy(_load(fixtures_dir, "jira/jira_cli_search_v3.json"))
        changelogs = {
            "TEST-1": [history("1001", jira_at(-1, "08:00"), "Backlog", "To Do")],
            "TEST-2": [history("2001", jira_at(0, "08:00"), "To Do", "In Progress", "Person B")],
            "TEST-3": [
                history("3001", jira_at(-1, "11:00", "+0100"), "To Do", "In Progress"),
                history("3002", jira_at(-1, "16:00"), "In Progress", "QA"),
                history("3003", jira_at(0, "08:00"), "QA", "Done"),
                history("3004", jira_at(0, "09:00"), "Done", "To Do"),
                history("3005", jira_at(0, "10:00"), "To Do", "In Progress"),
                history("3006", jira_at(0, "12:00"), "In Progress", "Done"),
            ],
        }
        for issue in page["issues"]:
            issue["fields"]["created"] = jira_at(-2, "09:00", "+0100")
            issue["fields"]["updated"] = jira_at(0, "14:05", "+0100")
            found = changelogs[issue["key"]]
            issue["changelog"] = {"startAt": 0, "maxResults": len(found), "total": len(found), "histories": found}
        self.search = page
        self.statuses = _load(fixtures_dir, "jira/all_statuses.json")
        types: dict[str, Any] = {}
        for exchange in _load(fixtures_dir, "jira/search_pages_sequence.json")["exchanges"]:
            for issue in exchange["response"]["body"]["issues"]:
                if issue["fields"].get("issuetype"):
                    types[issue["fields"]["issuetype"]["id"]] = issue["fields"]["issuetype"]
        self.issue_types = list(types.values())

    def install(self, server: LocalServer) -> None:
        server.route("/rest/api/3/search/jql", lambda r: Response(200, self.search))
        server.route("/rest/api/3/status", lambda r: Response(200, self.statuses))
        server.route("/rest/api/3/issuetype", lambda r: Response(200, self.issue_types))


def tenant_config(jira_url: str, github_url: str, tenant_id: str = "acme") -> dict[str, Any]:
    """The tenants-file entry: one Jira project, two GitHub repositories, custom flow steps."""
    return {
        "id": tenant_id,
        "flow_steps": FLOW_STEPS,
        "sources": [
            {
                "name": "jira",
                "kind": "jira",
                "base_url": jira_url,
                "projects": ["TEST"],
                "pat_env": "TEST_JIRA_PAT",
            },
            {
                "name": "github",
                "kind": "github",
                "base_url": github_url,
                "repositories": [REPO_A, REPO_B],
                "token_env": "TEST_GITHUB_TOKEN",
            },
        ],
    }


SECRETS = {"TEST_JIRA_PAT": "jira-pat-not-secret", "TEST_GITHUB_TOKEN": "ghp_not_secret"}

# metric -> (PyGithub/PyGithub, austinsasko/PyGithub, all repositories) on DAY; None: no row
GITHUB_EXPECTED: dict[str, tuple[float | None, float | None, float | None]] = {
    "prs_merged": (1, 2, 3),
    "review_count": (2, 0, 2),
    "release_count": (1, 0, 1),
    "deployment_count": (2, 0, 2),
    "revert_prs_merged": (0, 1, 1),
    "hotfix_prs_merged": (0, 1, 1),
    "change_failure_prs_merged": (0, 2, 2),
    "change_failure_ratio": (0.0, 1.0, 2 / 3),
    "pr_lead_time_hours_median": (20.0, 2.25, 4.0),  # samples A [20], B [0.5, 4], all [0.5, 4, 20]
    "pr_lead_time_hours_p90": (20.0, 3.65, 16.8),  # B: 0.5 + 0.9 * 3.5; all: 4 + 0.8 * 16
    "time_to_first_review_hours_median": (6.0, None, 6.0),
    "time_to_first_review_hours_p90": (6.0, None, 6.0),
}
JIRA_EXPECTED = {"jira_issues_completed": 1.0, "jira_cycle_time_hours_median": 22.0, "jira_cycle_time_hours_p90": 22.0}


def expected_metrics(day: dt.date = DAY) -> dict[tuple[str, str], float]:
    """(metric, repository) -> value on DAY."""
    out: dict[tuple[str, str], float] = {}
    for name, values in GITHUB_EXPECTED.items():
        for repo, value in zip((REPO_A, REPO_B, ""), values):
            if value is not None:
                out[(name, repo)] = float(value)
    out.update({(name, ""): value for name, value in JIRA_EXPECTED.items()})
    return out


# records per record type the fixture tenant (a Jira project, two GitHub repositories) normalizes into
RECORDS = {
    "jira_issue": 3,
    "jira_transition": 8,
    "jira_status": 37,
    "jira_issue_type": 2,
    "pull_request": 4,
    "review": 2,
    "commit": 3,
    "release": 2,
    "deployment": 2,
}
