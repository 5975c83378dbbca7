"""`apply PATH` on a terminal shows the plan and applies only after `yes`; --auto-approve
(or Terraform's -auto-approve) skips the question; without a terminal, and for a saved plan,
it applies as before. Each case runs the real command under a pseudo-terminal."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gitops_nodes.runtime.docker import DockerRuntime
from gitops_nodes.statedir import StateDir

from .helpers import node_yaml

Repo = Callable[[str], Path]
QUESTION = "Only 'yes' will be accepted to approve."
PROMPT = "Enter a value:"
DEADLINE = 300.0  # a first apply builds the test service's image on a busy machine


def on_terminal(
    argv: list[str],
    state: StateDir,
    answer: str | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> tuple[int, str]:
    """Run the command with a pseudo-terminal as its stdin, stdout and stderr; when answer
    is given, type it (and Enter) once the prompt shows, after calling meanwhile. Returns
    (exit code, everything it wrote)."""
    env = {**os.environ, "GITOPS_NODES_STATE_DIR": str(state.path.parent)}
    main, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "gitops_nodes", *argv],
        stdin=child,
        stdout=child,
        stderr=child,
        env=env,
        start_new_session=True,
    )
    os.close(child)
    output = b""
    answered = answer is None
    end = time.monotonic() + DEADLINE
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: every holder of the terminal's other end closed it
                    break
                if not chunk:
                    break
                output += chunk
            if answer is None and PROMPT.encode() in output:
                break  # asked when it should not have: fail now, with the output
            if not answered and PROMPT.encode() in output:
                if meanwhile is not None:
                    meanwhile()
                os.write(main, (answer or "").encode() + b"\n")
                answered = True
            if process.poll() is not None and not ready:
                break
        if not (answer is None and PROMPT.encode() in output):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(1.0, end - time.monotonic()))
        if process.poll() is None:
            process.kill()  # stuck (at a question nobody answers): its output says where
        code = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(main)
    return code, output.decode(errors="replace").replace("\r\n", "\n")


def apply_argv(root: Path, project: str, *extra: str) -> list[str]:
    return ["apply", str(root), "--project", project, *extra]


def test_yes_applies_what_the_plan_showed(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_yaml("api", "1"))

    code, output = on_terminal(apply_argv(root, project), state, answer="yes")

    assert code == 0, output
    assert output.index("Plan: 1 to add") < output.index(QUESTION) < output.index("Apply complete")
    assert [i.node for i in runtime.list_instances(project)] == ["api"]

    again, output = on_terminal(apply_argv(root, project), state)  # nothing to do: no question
    assert again == 0, output
    assert "No changes." in output
    assert QUESTION not in output


@pytest.mark.parametrize("answer", ["no", "", "y", "YES please"])
def test_anything_but_yes_changes_nothing(
    answer: str, app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_yaml("api", "1"))

    code, output = on_terminal(apply_argv(root, project), state, answer=answer)

    assert code == 1, output
    assert "Plan: 1 to add" in output
    assert "apply cancelled (only 'yes' approves): nothing was changed" in output
    assert runtime.list_instances(project) == []
    assert not state.table.exists()


@pytest.mark.parametrize("flag", ["--auto-approve", "-auto-approve"])
def test_auto_approve_applies_without_asking(
    flag: str, app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_yaml("api", "1"))

    code, output = on_terminal(apply_argv(root, project, flag), state)

    assert code == 0, output
    assert "Plan: 1 to add" in output
    assert QUESTION not in output
    assert "Apply complete" in output
    assert len(runtime.list_instances(project)) == 1


def test_without_a_terminal_apply_does_not_ask(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_yaml("api", "1"))
    env = {**os.environ, "GITOPS_NODES_STATE_DIR": str(state.path.parent)}

    done = subprocess.run(
        [sys.executable, "-m", "gitops_nodes", *apply_argv(root, project)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=DEADLINE,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert QUESTION not in done.stdout + done.stderr
    assert "Apply complete" in done.stdout
    assert len(runtime.list_instances(project)) == 1


def test_a_saved_plan_applies_without_asking(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir, tmp_path: Path
) -> None:
    root = app_repo(node_yaml("api", "1"))
    saved = tmp_path / "plan.json"
    made, output = on_terminal(["plan", str(root), "--project", project, "-out", str(saved)], state)
    assert made == 0, output

    code, output = on_terminal(["apply", str(saved), "--project", project], state)

    assert code == 0, output
    assert QUESTION not in output
    assert "Apply complete" in output
    assert len(runtime.list_instances(project)) == 1


def test_the_plan_approved_is_the_plan_applied(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    """A spec edited while the question waits is not applied unseen (the spec shown is the
    one applied), and a live state another apply changed meanwhile refuses the approval."""
    root = app_repo(node_yaml("api", "1"))
    env = {**os.environ, "GITOPS_NODES_STATE_DIR": str(state.path.parent)}

    def another_apply() -> None:
        app_repo(node_yaml("api", "2"))  # the shown spec's files change under it
        done = subprocess.run(
            [sys.executable, "-m", "gitops_nodes", *apply_argv(root, project)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=DEADLINE,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    code, output = on_terminal(apply_argv(root, project), state, "yes", another_apply)

    assert code == 1, output
    assert (
        "nothing was applied: the spec or the live state changed after the plan was shown"
    ) in output
    assert len(runtime.list_instances(project)) == 1  # the other apply's, and no more


def test_an_edit_while_the_question_waits_is_not_applied_unseen(
    app_repo: Repo, runtime: DockerRuntime, project: str, state: StateDir
) -> None:
    root = app_repo(node_yaml("api", "1"))

    code, output = on_terminal(
        apply_argv(root, project), state, "yes", lambda: app_repo(node_yaml("api", "2"))
    )

    assert code == 0, output
    assert "Apply complete" in output
    [instance] = runtime.list_instances(project)
    assert instance.config is not None
    assert instance.config.env == (("VERSION", "1"),)
