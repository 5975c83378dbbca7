"""examples/ci/: the GitHub Actions workflow and the GitLab CI file pass a YAML lint, run
validate and plan on pull requests and apply a saved plan on main, and their comment scripts
post one comment and update it afterwards (run against stand-ins of the two APIs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import yaml

CI = Path(__file__).resolve().parents[2] / "examples" / "ci"
GITHUB, GITLAB = CI / "github-actions.yml", CI / "gitlab-ci.yml"
LINT = "{extends: default, rules: {line-length: {max: 110}}}"
MARKER = "<!-- gitops-nodes plan -->"


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def test_both_files_pass_yamllint() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "-d", LINT, str(GITHUB), str(GITLAB)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_github_plans_pull_requests_and_applies_the_saved_plan_on_main() -> None:
    flow = load(GITHUB)
    assert set(flow["on"]) == {"pull_request", "push"}
    assert flow["on"]["push"]["branches"] == ["main"]
    assert flow["permissions"]["pull-requests"] == "write"
    plan, apply = flow["jobs"]["plan"], flow["jobs"]["apply"]
    assert plan["if"] == "github.event_name == 'pull_request'"
    script = plan["steps"][1]["run"]
    assert script.index("gitops-nodes validate") < script.index("--format markdown")
    comment = plan["steps"][2]
    assert comment["uses"].startswith("actions/github-script@")
    assert MARKER in comment["with"]["script"]
    assert plan["steps"][3]["if"] == "steps.plan.outputs.status == '1'"
    assert "refs/heads/main" in apply["if"]
    assert apply["concurrency"]["cancel-in-progress"] is False
    runs = [step.get("run", "") for step in apply["steps"]]
    assert runs[1:4] == [
        'gitops-nodes validate "$SPEC_DIR"',
        'gitops-nodes plan "$SPEC_DIR" -out plan.json',
        "gitops-nodes apply plan.json",
    ]


def test_gitlab_plans_merge_requests_and_applies_the_saved_plan_on_main() -> None:
    pipeline = load(GITLAB)
    assert pipeline["stages"] == ["plan", "apply"]
    plan, apply = pipeline["plan"], pipeline["apply"]
    assert plan["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert plan["script"][0].index("gitops-nodes validate") < plan["script"][0].index(
        "--format markdown"
    )
    assert MARKER in plan["script"][1]
    assert apply["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]
    assert apply["resource_group"]
    assert apply["script"] == [
        'gitops-nodes validate "$SPEC_DIR"',
        'gitops-nodes plan "$SPEC_DIR" -out plan.json',
        "gitops-nodes apply plan.json",
    ]


class FakeGitLab(BaseHTTPRequestHandler):
    """Merge request notes as GitLab's API serves them: two pages, PRIVATE-TOKEN checked."""

    notes: ClassVar[list[dict[str, Any]]] = []
    calls: ClassVar[list[tuple[str, str]]] = []
    lock = threading.Lock()

    def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert isinstance(data, dict)
        return data

    def do_GET(self) -> None:
        with self.lock:
            self.calls.append(("GET", self.path))
        page = int(self.path.rsplit("page=", 1)[1])
        per = 2  # a small page, so the script has to follow X-Next-Page
        found = self.notes[(page - 1) * per : page * per]
        more = page * per < len(self.notes)
        self._answer(200, found, {"X-Next-Page": str(page + 1) if more else ""})

    def do_POST(self) -> None:
        assert self.headers["PRIVATE-TOKEN"] == "secret-token"
        with self.lock:
            self.calls.append(("POST", self.path))
            self.notes.append({"id": 100 + len(self.notes), "body": self._body()["body"]})
        self._answer(201, self.notes[-1])

    def do_PUT(self) -> None:
        assert self.headers["PRIVATE-TOKEN"] == "secret-token"
        note_id = int(self.path.rsplit("/", 1)[1])
        with self.lock:
            self.calls.append(("PUT", self.path))
            note = next(n for n in self.notes if n["id"] == note_id)
            note["body"] = self._body()["body"]
        self._answer(200, note)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def test_gitlab_posts_one_note_then_updates_it(
    tmp_path: Path, serve_http: Callable[[type[BaseHTTPRequestHandler]], int]
) -> None:
    FakeGitLab.notes = [{"id": i, "body": f"a reviewer's note {i}"} for i in range(1, 4)]
    FakeGitLab.calls = []
    port = serve_http(FakeGitLab)
    script = load(GITLAB)["plan"]["script"][1]
    env = {
        **os.environ,
        "CI_API_V4_URL": f"http://127.0.0.1:{port}/api/v4",
        "CI_PROJECT_ID": "42",
        "CI_MERGE_REQUEST_IID": "7",
        "CI_COMMIT_SHORT_SHA": "abc1234",
        "GITLAB_TOKEN": "secret-token",
    }

    def run(plan: str) -> None:
        (tmp_path / "plan.md").write_text(plan)
        done = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    run("**Plan:** 1 to add, 0 to change, 0 to destroy.\n")
    run("**Plan:** 2 to add, 0 to change, 0 to destroy.\n")

    ours = [n for n in FakeGitLab.notes if n["body"].startswith(MARKER)]
    assert len(ours) == 1
    assert ours[0]["body"] == (
        f"{MARKER}\n### gitops-nodes plan for abc1234\n\n"
        "**Plan:** 2 to add, 0 to change, 0 to destroy.\n"
    )
    writes = [call for call in FakeGitLab.calls if call[0] != "GET"]
    assert writes == [
        ("POST", "/api/v4/projects/42/merge_requests/7/notes"),
        ("PUT", f"/api/v4/projects/42/merge_requests/7/notes/{ours[0]['id']}"),
    ]


GITHUB_HARNESS = """
const calls = [];
const state = JSON.parse(process.env.COMMENTS);
const github = {
  rest: { issues: {
    listComments: 'listComments',
    createComment: async (args) => { calls.push(['create', args]); },
    updateComment: async (args) => { calls.push(['update', args]); },
  } },
  paginate: async (method, args) => { calls.push(['list', args]); return state; },
};
const context = {
  sha: 'abc1234def', repo: { owner: 'o', repo: 'r' }, issue: { number: 7 },
};
(async () => {
%s
})().then(() => console.log(JSON.stringify(calls)));
"""


def test_github_creates_one_comment_then_updates_the_bots_own(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "the GitHub script's test needs Node.js (scripts/lib/ensure-test-tools.sh)"
    script = load(GITHUB)["jobs"]["plan"]["steps"][2]["with"]["script"]
    (tmp_path / "plan.md").write_text("**Plan:** 1 to add, 0 to change, 0 to destroy.\n")
    body = (
        f"{MARKER}\n### gitops-nodes plan for abc1234\n\n"
        "**Plan:** 1 to add, 0 to change, 0 to destroy.\n"
    )

    def run(comments: list[dict[str, Any]]) -> list[list[Any]]:
        done = subprocess.run(
            [node, "-e", GITHUB_HARNESS % script],
            cwd=tmp_path,
            env={**os.environ, "COMMENTS": json.dumps(comments)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        calls = json.loads(done.stdout)
        assert isinstance(calls, list)
        return calls

    person = {"id": 1, "user": {"type": "User"}, "body": f"{MARKER} quoted by a person"}
    first = run([person])
    assert first[1] == ["create", {"owner": "o", "repo": "r", "issue_number": 7, "body": body}]

    ours = {"id": 2, "user": {"type": "Bot"}, "body": f"{MARKER}\nan older plan"}
    second = run([person, ours])
    assert second[1] == ["update", {"owner": "o", "repo": "r", "comment_id": 2, "body": body}]
    assert len(second) == 2
