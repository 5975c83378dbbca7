"""The gitops-nodes command: parses argv, calls the workflow, and prints. Nothing else prints."""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gitops_nodes import __version__
from gitops_nodes.errors import ApplyCancelled, GitopsNodesError, PlanFileError, StalePlan

# Start-up time is every command's floor (`--version` and `validate` included), so this module
# imports only argparse and the errors at load: each command imports what it uses (Docker,
# networkx, pydantic models, the balancer) inside its own function. tests/unit/test_cli_imports.py
# holds the line.
if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    from balancer.server import ServeOptions
    from balancer.settings import ProxySettings
    from balancer.table import RoutingTable
    from gitops_nodes import workflow
    from gitops_nodes.apply import ApplyReport, StepResult
    from gitops_nodes.live import LiveState
    from gitops_nodes.plan import Plan
    from gitops_nodes.runtime.base import Runtime
    from gitops_nodes.spec.settings import Settings
    from gitops_nodes.spec.state import DesiredState
    from gitops_nodes.statedir import StateDir

# The names of the runtimes `--runtime` takes (spec/settings.py's RUNTIMES; a unit test
# keeps the two equal) and of the admin key's variables (balancer/access.py's), here so that
# building the parser imports neither pydantic nor the balancer.
RUNTIMES = ("docker", "swarm")
ADMIN_TOKEN_ENV = "GITOPS_NODES_ADMIN_TOKEN"
ADMIN_TOKEN_FILE_ENV = "GITOPS_NODES_ADMIN_TOKEN_FILE"


class _ClientLimits:
    """The data plane's client limits' defaults (balancer/settings.py's ProxySettings, which a
    unit test keeps these equal to), for `serve` and `watch`'s options and their help."""

    header_timeout = 10.0
    max_head = 32 * 1024
    max_headers = 100
    max_clients = 10_000


EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2
A_DAY = 86_400.0  # seconds: the longest duration a flag takes
MAX_WORKERS = 64  # serve --workers: beyond it, a typo, not a machine (each is a process)
NOTIFY_GRACE = 5.0  # seconds a stopping watch gives queued notifications


def main(argv: list[str] | None = None) -> int:
    # A file name that is not UTF-8 (from a Latin-1 archive, say) is shown escaped rather
    # than failing the print after the work is done; stderr escapes already.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.command(args)
        if argv is None and getattr(args, "exit_at_once", False):
            _exit_at_once(code)
        return code
    except GitopsNodesError as exc:  # SpecErrors too: every problem, one per line
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader has what it wanted and left
        # Output still buffered would fail again at exit, with a second traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except OSError as exc:  # a path the system refuses (too long, say), or a full disk
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR


def _exit_at_once(code: int) -> None:
    """End the process now, without the interpreter's teardown: `serve`, `watch` and `logs
    --follow` have finished their work (requests drained, reconcile finished, tables written,
    reports removed) when they return, and tearing down the heap of a process that served
    for hours takes longer than the second Ctrl-C and SIGTERM are promised in (R-stop;
    0.3 to 0.8 s measured on an idle machine, more under load)."""
    import contextlib
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gitops-nodes",
        description="Deploy nodes and aliases from a repository of YAML onto Docker.",
    )
    parser.add_argument("--version", action="version", version=f"gitops-nodes {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        return sub

    def project_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--project",
            type=_project_arg,
            default=os.environ.get("GITOPS_NODES_PROJECT"),
            help="project name labelled on everything it owns (default: the repo folder's name)",
        )
        sub.add_argument(
            "--state-dir",
            type=_path_arg,
            default=None,
            help="where the routing table and lock live "
            "(default: $GITOPS_NODES_STATE_DIR or ~/.local/state/gitops-nodes)",
        )
        sub.add_argument(
            "--runtime",
            choices=RUNTIMES,
            default=None,
            help="where instances run: one Docker host, or a Swarm cluster through a manager "
            "(default: the repo's gitops-nodes.yaml, else docker)",
        )

    def adopt_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--adopt",
            action="store_true",
            help="take over the project's containers another state directory (or none) owns: "
            "without it they are reported and left alone",
        )

    def log_format_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--log-format",
            choices=["json", "text"],
            default="json",
            help="every log line, the access log's too: a JSON object (default) or plain text",
        )

    def serve_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--host", type=_text_arg, default="127.0.0.1", help="data plane address (127.0.0.1)"
        )
        sub.add_argument("--port", type=int, default=8080, help="data plane port (8080)")
        sub.add_argument(
            "--admin-host",
            type=_text_arg,
            default="127.0.0.1",
            help=f"control plane address; beyond loopback it needs {ADMIN_TOKEN_ENV}",
        )
        sub.add_argument(
            "--admin-port", type=int, default=8081, help="/-/status, /-/metrics (8081)"
        )
        sub.add_argument("--access-log", action="store_true", help="one JSON line per request")
        sub.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS")
        sub.add_argument(
            "--read-timeout",
            type=float,
            default=60.0,
            metavar="SECONDS",
            help="silence from an instance (each node's endpoint.timeout bounds a whole request)",
        )
        sub.add_argument(
            "--idle-timeout",
            type=float,
            default=60.0,
            metavar="SECONDS",
            help="idle client connections (each node's endpoint.idleTimeout: its instances')",
        )
        limits = _ClientLimits
        sub.add_argument(
            "--header-timeout",
            type=float,
            default=limits.header_timeout,
            metavar="SECONDS",
            help="a request head not whole this long after its first byte: 408, closed "
            f"({limits.header_timeout:g})",
        )
        sub.add_argument(
            "--max-head-size",
            type=int,
            default=limits.max_head,
            metavar="BYTES",
            help=f"request line and headers; past it 431 (414: the line) ({limits.max_head})",
        )
        sub.add_argument(
            "--max-headers",
            type=int,
            default=limits.max_headers,
            metavar="N",
            help=f"header lines in a request; past it 431 ({limits.max_headers})",
        )
        sub.add_argument(
            "--max-clients",
            type=int,
            default=limits.max_clients,
            metavar="N",
            help="open client connections per worker; past it a new one gets 503 and is "
            f"closed ({limits.max_clients})",
        )
        sub.add_argument(
            "--trusted-proxies",
            action="append",
            default=[],
            metavar="CIDRS",
            help="clients whose X-Forwarded-*/Forwarded headers are believed, e.g. "
            "10.0.0.0/8,127.0.0.1 (repeatable; default: none, they are replaced)",
        )

    sub = command("validate", "Check the spec and report every error with its position.")
    sub.add_argument("path", nargs="?", default=".", type=_path_arg)
    sub.add_argument(
        "--skip-keys",
        action="store_true",
        help="do not read access keys or secrets (where they are not at hand, as in a "
        "pre-commit hook); where each access key is read from, and each fromSecret's file and "
        "key, are still checked",
    )
    sub.set_defaults(command=_validate)

    sub = command("plan", "Show what apply would change, without changing anything.")
    sub.add_argument("path", nargs="?", default=".", type=_path_arg)
    project_options(sub)
    sub.add_argument("--json", action="store_true", help="print the plan as JSON")
    sub.add_argument(
        "--format",
        choices=["text", "json", "markdown"],
        default=None,
        help="text (default), json (as --json), or markdown for a pull-request comment",
    )
    sub.add_argument(
        "--detailed-exitcode", action="store_true", help="exit 0: no changes, 1: error, 2: changes"
    )
    sub.add_argument(
        "-out", "--out", dest="out", type=_path_arg, help="save the plan for `apply FILE`"
    )
    adopt_option(sub)
    allow_empty(sub)
    sub.set_defaults(command=_plan)

    sub = command("apply", "Make the live state match the spec (or a plan saved with -out).")
    sub.add_argument("path", nargs="?", default=".", type=_path_arg, help="a repo folder or a plan")
    project_options(sub)
    sub.add_argument(
        "--parallelism",
        type=_count_arg(1, 64),
        default=8,
        help="engine calls at once (default 8); steps that wait overlap up to 4x as many, "
        "1 runs one step at a time",
    )
    sub.add_argument(
        "--drain-timeout",
        type=_seconds_arg,
        default=30.0,
        metavar="SECONDS",
        help="longest wait for balancers to finish requests on a removed instance (30)",
    )
    sub.add_argument(
        "--auto-approve",
        "-auto-approve",
        action="store_true",
        help="on a terminal, apply without showing the plan and asking for yes first "
        "(without a terminal, and for a saved plan, apply never asks)",
    )
    adopt_option(sub)
    allow_empty(sub)
    sub.set_defaults(command=_apply)

    sub = command("destroy", "Remove everything the project owns, and nothing else.")
    sub.add_argument("path", nargs="?", default=".", type=_path_arg)
    project_options(sub)
    adopt_option(sub)
    sub.set_defaults(command=_destroy)

    sub = command("status", "Show every node and instance with its status.")
    sub.add_argument(
        "path",
        nargs="?",
        default=None,
        type=_path_arg,
        help="the repo, to also list instances not created yet",
    )
    project_options(sub)
    sub.add_argument("--json", action="store_true")
    sub.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        default=None,
        type=float,
        metavar="SECONDS",
        help="redraw the overview live every SECONDS (2 by default) until Ctrl-C",
    )
    sub.set_defaults(command=_status)

    sub = command("logs", "Show a node's instances' output, each line prefixed with its instance.")
    sub.add_argument("node", help="the node's name")
    project_options(sub)
    sub.add_argument("--instance", type=int, metavar="N", help="only the instance at index N")
    sub.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)"
    )
    sub.add_argument("--tail", type=int, metavar="N", help="only the last N lines of each instance")
    sub.add_argument(
        "-t", "--timestamps", action="store_true", help="show the engine's time of each line"
    )
    sub.add_argument(
        "--health",
        action="store_true",
        help="also show the lines of the balancers' health-check requests (left out by default)",
    )
    sub.set_defaults(command=_logs, exit_at_once=True)

    sub = command(
        "serve", "Serve the project's aliases and nodes over HTTP from its published table."
    )
    sub.add_argument("path", nargs="?", default=".", type=_path_arg, help="the repo (for its name)")
    project_options(sub)
    serve_options(sub)
    sub.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    log_format_option(sub)
    sub.set_defaults(command=_serve, exit_at_once=True)

    sub = command(
        "watch",
        "Follow a Git repository (or a work tree): reconcile on every change and on drift, "
        "and serve the balancer in the same process.",
    )
    sub.add_argument(
        "repo", type=_text_arg, help="a Git URL (file://, ssh, https) or a local folder"
    )
    sub.add_argument("--branch", default="main", help="the branch to follow (main)")
    sub.add_argument("--path", default=".", help="the folder inside the repo with the spec")
    sub.add_argument("--interval", default="30s", help="how often to fetch and check drift")
    sub.add_argument(
        "--replace-unhealthy-after",
        default="60s",
        help="replace an instance (make before break) that the balancer has counted Unhealthy, "
        "its health checks failing, this long: hung code, a deadlock (60s; 0 never)",
    )
    project_options(sub)
    serve_options(sub)
    log_format_option(sub)
    sub.set_defaults(command=_watch, exit_at_once=True)

    sub = command("schema", "Print the JSON Schema of a spec document.")
    sub.set_defaults(command=_schema)

    sub = command(
        "checkpoint",
        "Run a notebook in a kernel of this environment and save the variables a python node "
        "starts from (cloudpickle, with the Python and package versions recorded).",
    )
    sub.add_argument("notebook", type=_path_arg, help="the .ipynb file")
    sub.add_argument("--vars", required=True, help="the variables to save, comma-separated")
    sub.add_argument("-o", "--output", type=_path_arg, required=True, help="the file to write")
    sub.add_argument(
        "--cell",
        default=None,
        help="stop before the code cell with this tag or id (the node's request code); "
        "default: run every cell",
    )
    sub.add_argument("--timeout", default="10m", help="a cell's time limit (10m)")
    sub.set_defaults(command=_checkpoint)
    return parser


def allow_empty(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--allow-empty",
        action="store_true",
        help="a spec with no Node or Alias may destroy the project's live nodes",
    )


def _empty_guard(
    args: argparse.Namespace, desired: DesiredState
) -> Callable[[Plan, LiveState], None]:
    """The check that refuses an empty spec over live nodes, unless --allow-empty."""

    def check(plan: Plan, live: LiveState) -> None:
        from gitops_nodes.guards import check_not_empty

        if not args.allow_empty:
            check_not_empty(desired, live, "pass --allow-empty")

    return check


def _path_arg(text: str) -> Path:
    """A path argument; an empty one is a usage error (Path("") would be the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def _project_arg(text: str) -> str:
    """A project name (statedir.PROJECT_RULE)."""
    from gitops_nodes.statedir import PROJECT_RULE, valid_project

    if not valid_project(text):
        raise argparse.ArgumentTypeError(
            f"expected {PROJECT_RULE}, got {text!r} (from --project, or else GITOPS_NODES_PROJECT)"
        )
    return text


def _count_arg(least: int, most: int) -> Callable[[str], int]:
    """An argument type: a whole number from least to most."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if not least <= value <= most:
            raise argparse.ArgumentTypeError(f"expected {least} to {most}, got {text!r}")
        return value

    return count


def _seconds_arg(text: str) -> float:
    """An argument type: seconds, from 0 to a day."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= A_DAY:  # NaN too
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to {A_DAY:g}, got {text!r}")
    return value


def _text_arg(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a value, got an empty string")
    return text


def _context(args: argparse.Namespace, path: Path) -> tuple[str, StateDir]:
    from gitops_nodes import workflow
    from gitops_nodes.statedir import StateDir

    project = args.project or workflow.project_name(path)
    base = args.state_dir
    return project, StateDir.for_project(project, base)


def _settings(root: Path) -> Settings:
    """The settings file of the repo at root; the defaults where there is no repo folder."""
    from gitops_nodes.spec.settings import Settings, load_settings

    return load_settings(root) if root.is_dir() else Settings()


def _runtime(args: argparse.Namespace, root: Path, saved: str | None = None) -> Runtime:
    from gitops_nodes.runtime.select import connect, runtime_name

    settings = _settings(root)
    return connect(runtime_name(args.runtime or saved, settings), settings)


def _validate(args: argparse.Namespace) -> int:
    from gitops_nodes.spec.settings import load_repository

    # The settings' errors are the spec's errors.
    desired, _ = load_repository(args.path, read_keys=not args.skip_keys)
    print(
        f"The spec is valid: {_count(len(desired.nodes), 'node')} and "
        f"{_count(len(desired.aliases), 'alias')} in {_count(len(desired.files), 'file')}."
    )
    _print_ignored(desired)
    return EXIT_OK


def _print_ignored(desired: DesiredState) -> None:
    """The YAML files the load left out, and why: a file that stopped being spec shows here."""
    if not desired.ignored:
        return
    print(f"\nNot read as spec ({_count(len(desired.ignored), 'path')}):")
    for entry in desired.ignored:
        print(f"  {entry.path}: {entry.reason}")


def _ignored_json(desired: DesiredState) -> list[dict[str, str]]:
    return [{"path": entry.path, "reason": entry.reason} for entry in desired.ignored]


def _count(number: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{number} {noun if number == 1 else plural}"


def _plan(args: argparse.Namespace) -> int:
    from gitops_nodes import workflow
    from gitops_nodes.plan import make_plan
    from gitops_nodes.render import render_json, render_text
    from gitops_nodes.spec.settings import load_repository
    from gitops_nodes.statedir import secret_key

    if args.json and args.format not in (None, "json"):
        raise GitopsNodesError(f"--json and --format {args.format}: give one of them")
    if args.out:
        _check_output_target(args.out, "-out")  # before any work, and before the plan is printed
    project, state = _context(args, args.path)
    desired, _ = load_repository(args.path, secret_key=lambda: secret_key(state))
    runtime = _runtime(args, args.path)
    live = workflow.observe(runtime, project, state, args.adopt)
    plan = make_plan(project, desired, live)
    _empty_guard(args, desired)(plan, live)
    data = plan.to_json()
    form = "json" if args.json else args.format or "text"
    if form == "json":
        print(render_json({**data, "ignoredFiles": _ignored_json(desired)}), end="")
    elif form == "markdown":
        from gitops_nodes.render import render_markdown

        print(render_markdown({**data, "ignoredFiles": _ignored_json(desired)}), end="")
    else:
        print(render_text(data), end="")
        _print_ignored(desired)
    if args.out:
        try:
            args.out.write_text(
                workflow.saved_plan_json(plan, args.path, runtime.name, adopt=args.adopt)
            )
        except OSError as exc:
            raise GitopsNodesError(
                f"-out {args.out}: cannot write the plan: {exc.strerror or exc}"
            ) from None
        if form == "text":
            print(f"\nSaved the plan to {args.out}; `gitops-nodes apply {args.out}` applies it.")
    if args.detailed_exitcode and not plan.empty:
        return EXIT_CHANGES
    return EXIT_OK


def _check_output_target(out: Path, flag: str) -> None:
    """Refuse an output file (plan -out, checkpoint -o) that cannot be written: a folder, a
    missing folder, a special file (a FIFO would block), or a place we may not write."""
    folder = out.parent
    if out.is_dir():
        raise GitopsNodesError(f"{flag} {out}: is a folder; expected the path of a file to write")
    if not folder.exists():
        raise GitopsNodesError(f"{flag} {out}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise GitopsNodesError(f"{flag} {out}: {folder} is not a folder")
    if out.exists() and not out.is_file():
        raise GitopsNodesError(f"{flag} {out}: is not a regular file; expected a file to write")
    # Opened for writing without changing it: what the write will meet (permissions, a
    # read-only or special file system), found before the plan is made.
    existed = out.exists()
    try:
        flags = os.O_WRONLY | (os.O_APPEND if existed else os.O_CREAT | os.O_EXCL)
        os.close(os.open(out, flags, 0o644))
    except OSError as exc:
        raise GitopsNodesError(f"{flag} {out}: cannot write there: {exc.strerror or exc}") from None
    if not existed:
        out.unlink()


def _apply(args: argparse.Namespace) -> int:
    from gitops_nodes import progress, workflow
    from gitops_nodes.apply import ApplyOptions
    from gitops_nodes.statedir import StateDir, secret_key

    def state_of(root: Path, saved: dict[str, Any] | None) -> StateDir:
        if saved is not None:
            _check_saved_flags(args, saved)  # before the state directory is touched
            return StateDir.for_project(saved["project"], args.state_dir)
        return _context(args, root)[1]

    desired, saved = workflow.load_for_apply(
        args.path, lambda root, saved: lambda: secret_key(state_of(root, saved))
    )
    if saved is not None:  # its project, never one named after the folder it was made from
        project, state = saved["project"], state_of(desired.root, saved)
    else:
        project, state = _context(args, desired.root)
    runtime = _runtime(args, desired.root, saved.get("runtime") if saved else None)
    on_plan: Callable[[Plan], None] | None = _print_plan
    approved = False
    if saved is None and not args.auto_approve and sys.stdin.isatty():
        saved = _approve(args, desired, runtime, project, state)
        on_plan, approved = None, True  # the plan was shown above
    try:
        with _live_progress(sys.stdout):
            run = workflow.apply(
                desired,
                runtime,
                project,
                state,
                ApplyOptions(parallelism=args.parallelism, drain_timeout=args.drain_timeout),
                on_plan=on_plan,
                on_result=_print_result,
                saved=saved,
                check=_empty_guard(args, desired),
                adopt=args.adopt or bool(saved and saved.get("adopt")),
                on_start=progress.step_started,
            )
    except StalePlan:
        if not approved:
            raise
        raise StalePlan(
            "nothing was applied: the spec or the live state changed after the plan was "
            "shown; run `gitops-nodes apply` again to see the new plan"
        ) from None
    if run.report is None:
        return EXIT_OK
    return _print_report(run.report, "Apply")


def _check_saved_flags(args: argparse.Namespace, saved: dict[str, Any]) -> None:
    """Refuse --project or --runtime when they contradict the saved plan: it was reviewed
    for its own project and runtime (and would be refused as stale for another project
    only after the state directory of that one was made)."""
    for flag, given, planned in (
        ("--project", args.project, saved["project"]),
        ("--runtime", args.runtime, saved["runtime"]),
    ):
        if given is not None and given != planned:
            raise PlanFileError(
                f"{flag} {given} contradicts the saved plan, made for {flag[2:]} {planned!r}: "
                f"leave {flag} out, or make a plan for {given!r} with `gitops-nodes plan -out`"
            )


def _approve(
    args: argparse.Namespace,
    desired: DesiredState,
    runtime: Runtime,
    project: str,
    state: StateDir,
) -> dict[str, Any]:
    """Show the plan on the terminal and ask for yes, as Terraform does (no changes: no
    question). Returns the plan approved, to apply as a saved plan is, so a spec or live
    state that moved meanwhile is refused rather than applied unseen (an empty plan still
    goes through apply, which records an --adopt); any answer but yes raises
    ApplyCancelled. Nothing is locked or written while the question waits."""
    from gitops_nodes import workflow
    from gitops_nodes.plan import make_plan

    live = workflow.observe(runtime, project, state, args.adopt)
    plan = make_plan(project, desired, live)
    _empty_guard(args, desired)(plan, live)
    _print_plan(plan)
    approved = {**plan.to_json(), "adopt": args.adopt}
    if plan.empty:
        return approved
    print(
        "Do you want to perform these actions?\n"
        "  gitops-nodes will perform the actions described above.\n"
        "  Only 'yes' will be accepted to approve.\n"
    )
    try:
        answer = input("  Enter a value: ")
    except EOFError:
        answer = ""
    if answer.strip() != "yes":
        raise ApplyCancelled("apply cancelled (only 'yes' approves): nothing was changed")
    print()
    return approved


def _destroy(args: argparse.Namespace) -> int:
    from gitops_nodes import progress, workflow
    from gitops_nodes.plan import OTHER_OWNER
    from gitops_nodes.statedir import clean_state

    if args.project is None and not args.path.is_dir():
        # The project would be named after a folder that is not there: a mistyped path
        # would destroy whichever project has that name.
        raise GitopsNodesError(
            f"{args.path} is not a folder: destroy takes the project's name from its "
            "repository folder; to destroy a project without one, name it with --project"
        )
    project, state = _context(args, args.path)
    runtime = _runtime(args, args.path)
    with _live_progress(sys.stdout):
        run = workflow.apply(
            workflow.empty_spec(args.path),
            runtime,
            project,
            state,
            on_plan=_print_plan,
            on_result=_print_result,
            adopt=args.adopt,
            on_start=progress.step_started,
        )
    code = _print_report(run.report, "Destroy") if run.report else EXIT_OK
    if code == EXIT_OK:
        for removed in runtime.remove_project(project, state):
            print(f"{removed} removed")
        images = runtime.remove_images(project)
        for tag in images.removed:
            print(f"image {tag} removed")
        left = [f"container {i.name}: {OTHER_OWNER}" for i in run.plan.left_alone] + list(
            images.left
        )
        if left:
            print("\nLeft in place:")
            for item in left:
                print(f"  {item}")
        cleaned = clean_state(state, workflow.LOCK_TIMEOUT)
        if cleaned.removed:
            print(f"state {', '.join(cleaned.removed)} removed from {state.path}")
        for name, why in cleaned.kept:
            print(f"state {state.path / name} kept: {why}")
    return code


def _status(args: argparse.Namespace) -> int:
    if args.watch is not None:
        return _status_live(args)
    return _status_once(args)


def _status_live(args: argparse.Namespace) -> int:
    """`status --watch`: the overview redrawn in place every args.watch seconds (on a
    terminal; elsewhere, a log or a pipe, each frame follows the last after a blank line)."""
    import signal
    import time

    if args.json:
        raise GitopsNodesError("--watch and --json: give one of them")
    if not 0.2 <= args.watch <= 3600:
        raise GitopsNodesError(
            f"--watch: expected a number of seconds from 0.2 to 3600, got {args.watch:g}"
        )
    terminal = sys.stdout.isatty()
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM ends it as Ctrl-C does
    try:
        for count in itertools.count():
            frame = io.StringIO()
            with contextlib.redirect_stdout(frame):
                _status_once(args)
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            header = f"Every {args.watch:g}s: gitops-nodes status    {stamp}    (Ctrl-C ends)\n\n"
            # Home and clear where a terminal reads them (in a file they are noise), then
            # the whole frame in one write: no flicker between frames.
            before = "\x1b[H\x1b[2J" if terminal else "\n" if count else ""
            sys.stdout.write(before + header + frame.getvalue())
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        print()
    return EXIT_OK


def _status_once(args: argparse.Namespace) -> int:
    import json

    from gitops_nodes import workflow
    from gitops_nodes.spec.settings import load_repository

    desired = load_repository(args.path, read_keys=False)[0] if args.path else None
    project, state = _context(args, args.path or Path.cwd())
    view = workflow.status(_runtime(args, args.path or Path.cwd()), project, state, desired)
    if args.json:
        from gitops_nodes.watch.reconcile import read_watch_status

        print(json.dumps({**view.to_json(), "watch": read_watch_status(state)}, indent=2))
        return EXIT_OK
    if not view.nodes and not view.aliases:
        print(f"Project {project} has no nodes.")
        _print_left_alone(view)
        return EXIT_OK
    for node in view.nodes:
        healthy = sum(1 for i in node.instances if i.status == "Healthy")
        if node.status == workflow.SUSPENDED:
            stopped = sum(1 for i in node.instances if i.status == workflow.SUSPENDED)
            print(f"node {node.name}: Suspended ({stopped} stopped, kept for resume)")
        else:
            print(
                f"node {node.name}: {node.status} ({healthy} Healthy, minimum {node.min_healthy})"
            )
        width = max((len(i.hostname) for i in node.instances), default=0)
        for i in node.instances:
            address = i.address or "-"
            # The host column only where one is known (a Swarm's tasks, a named engine).
            host = f"{i.hostname or '-':<{width}} " if width else ""
            print(f"  {i.index:>3}  {i.status:<10} {address:<16} {host}{i.name or '-'}  {i.detail}")
    for name, routes in view.aliases:
        print(f"alias {name} -> " + ", ".join(f"{n}={w}" for n, w in routes))
    _print_left_alone(view)
    _print_watch(state)
    return EXIT_OK


def _print_left_alone(view: workflow.StatusView) -> None:
    from gitops_nodes.plan import OTHER_OWNER

    for name in view.left_alone:
        print(f"container {name}: {OTHER_OWNER}")


def _print_watch(state: StateDir) -> None:
    from gitops_nodes.watch.reconcile import read_watch_status

    watch = read_watch_status(state)
    if watch is None:
        return
    applied = watch.get("appliedRevision")
    print(f"watch: applied {applied[:12] if applied else 'nothing yet'}", end="")
    print(f" ({watch.get('appliedSummary')})" if applied else "")
    last, error = watch.get("lastReconcile"), watch.get("lastError")
    if last:
        print(
            f"  last reconcile: {last['outcome']} {last['revision'][:12]} "
            f"({last['reason']}, {last['actions']} steps, {last['seconds']:.1f}s)"
        )
    if error:
        print(f"  last error, at {error['revision'][:12]} ({error['outcome']}): {error['error']}")


def _logs(args: argparse.Namespace) -> int:
    import signal

    from gitops_nodes import nodelogs

    if args.tail is not None and args.tail < 0:
        raise GitopsNodesError(f"--tail: expected a number of lines, 0 or more, got {args.tail}")
    project, state = _context(args, Path.cwd())
    runtime = _runtime(args, Path.cwd())
    chosen = nodelogs.sources(runtime, project, state, args.node, args.instance)
    if not chosen:
        print(f"Node {args.node} has no instances.")
        return EXIT_OK
    skip = None if args.health else nodelogs.HealthLines.of(state, args.node)
    if not args.follow:
        for line in nodelogs.recent(runtime, chosen, args.tail, args.timestamps, skip):
            print(line)
        return EXIT_OK
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM ends following as Ctrl-C does
    with nodelogs.Follower(runtime, chosen, args.tail, args.timestamps, skip) as follower:
        try:
            for line in follower:
                print(line, flush=True)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how following ends
    return EXIT_OK


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _serve(args: argparse.Namespace) -> int:
    import logging

    from balancer.server import run
    from balancer.settings import SettingsError
    from gitops_nodes import logs
    from gitops_nodes.runtime.select import runtime_name

    _, state = _context(args, args.path)
    if runtime_name(args.runtime, _settings(args.path)) == "swarm":
        raise GitopsNodesError(
            "on a Swarm the balancer runs as a service of the project (apply starts it, on "
            "gitops-nodes.yaml's swarm.port); `serve` is the balancer for one Docker host"
        )
    if not 1 <= args.workers <= MAX_WORKERS:
        raise GitopsNodesError(f"--workers: expected 1 to {MAX_WORKERS}, got {args.workers}")
    logs.configure(structured=args.log_format == "json")
    options = _serve_options(args, _admin_token(args))
    settings = _proxy_settings(args)
    # A log record rather than a print: under --log-format json every line is an object.
    # The addresses are the balancer's to say, once bound (the ports differ for port 0).
    logging.getLogger("gitops_nodes.cli").info(
        "serving %s with %d worker(s)", state.table, args.workers
    )
    try:
        return run(state.table, options, settings, workers=args.workers)
    except SettingsError as exc:  # the address or a port cannot be listened on
        raise GitopsNodesError(str(exc)) from None


def _serve_options(
    args: argparse.Namespace, admin_token: str | None, port: int | None = None
) -> ServeOptions:
    """serve's and watch's ServeOptions (port: the data port's, when not --port's)."""
    from balancer.server import ServeOptions
    from balancer.settings import SettingsError

    try:
        return ServeOptions(
            args.host,
            args.port if port is None else port,
            args.admin_host,
            args.admin_port,
            admin_token=admin_token,
        )
    except SettingsError as exc:
        raise GitopsNodesError(str(exc)) from None


def _duration_flag(flag: str, text: str, examples: str, also: str = "") -> float:
    """A watch flag's duration in seconds, from 1s to 24h; an error naming the flag else."""
    from gitops_nodes.spec.models import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = -1.0
    if not 1.0 <= seconds <= A_DAY:
        raise GitopsNodesError(
            f"{flag}: expected a duration from 1s to 24h such as {examples}{also}, got {text!r}"
        )
    return seconds


def _replace_unhealthy_after(text: str) -> float:
    """--replace-unhealthy-after in seconds (0: never)."""
    if text.strip() == "0":
        return 0.0
    never = ", or 0 to never replace an Unhealthy instance"
    return _duration_flag("--replace-unhealthy-after", text, "60s or 5m", never)


def _admin_token(args: argparse.Namespace) -> str | None:
    """The admin port's key, from GITOPS_NODES_ADMIN_TOKEN or the file GITOPS_NODES_ADMIN_TOKEN_FILE
    names; checked here so that a missing or weak one stops the command before it listens."""
    from balancer.access import AccessConfigError, admin_guard

    token = os.environ.get(ADMIN_TOKEN_ENV, "").strip() or None
    path = os.environ.get(ADMIN_TOKEN_FILE_ENV) or None
    if token is not None and path is not None:
        raise GitopsNodesError(f"set {ADMIN_TOKEN_ENV} or {ADMIN_TOKEN_FILE_ENV}, not both")
    if path is not None:
        try:
            token = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            raise GitopsNodesError(
                f"{ADMIN_TOKEN_FILE_ENV}: cannot read the admin key from {path}: {why}"
            ) from None
    try:
        admin_guard(args.admin_host, token)
    except AccessConfigError as exc:
        raise GitopsNodesError(str(exc)) from None
    return token


def _proxy_settings(args: argparse.Namespace) -> ProxySettings:
    from balancer.settings import ProxySettings, SettingsError, parse_trusted_proxies

    try:
        return ProxySettings(
            connect_timeout=args.connect_timeout,
            read_timeout=args.read_timeout,
            idle_timeout=args.idle_timeout,
            access_log=args.access_log,
            header_timeout=args.header_timeout,
            max_head=args.max_head_size,
            max_headers=args.max_headers,
            max_clients=args.max_clients,
            trusted_proxies=parse_trusted_proxies(args.trusted_proxies),
        )
    except SettingsError as exc:
        raise GitopsNodesError(str(exc)) from None


def _watch(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from balancer.access import MIN_KEY_LENGTH
    from balancer.server import Balancer, new_loop
    from balancer.settings import SettingsError
    from gitops_nodes import logs, workflow
    from gitops_nodes.runtime.docker import follow_events
    from gitops_nodes.runtime.select import connect, runtime_name
    from gitops_nodes.statedir import StateDir
    from gitops_nodes.watch.loop import WatchLoop
    from gitops_nodes.watch.notify import Notifier
    from gitops_nodes.watch.reconcile import Reconciler
    from gitops_nodes.watch.source import open_source

    # More often than every second is a busy loop.
    interval = _duration_flag("--interval", args.interval, "30s or 1m")
    replace_after = _replace_unhealthy_after(args.replace_unhealthy_after)
    admin_token = _admin_token(args)
    name = args.repo.rstrip("/").removesuffix(".git")
    project = args.project or workflow.project_name(Path(name))
    state = StateDir.for_project(project, args.state_dir)
    # A work tree's own settings file decides the runtime; a Git URL's needs --runtime.
    settings = _settings(Path(args.repo) / args.path)
    runtime = runtime_name(args.runtime, settings)
    logs.configure(structured=args.log_format == "json")
    options = _serve_options(args, admin_token)
    if runtime == "swarm":
        # The swarm's balancer service serves the traffic, on ports published on every
        # address of the host; watch keeps only its control plane (status, the git hook).
        clash = {settings.swarm.port, settings.swarm.admin_port} & {args.admin_port}
        if clash:
            raise GitopsNodesError(
                f"--admin-port {args.admin_port} is the swarm balancer's port "
                "(gitops-nodes.yaml swarm.port, swarm.adminPort); pick another one"
            )
        options = _serve_options(args, admin_token, port=0)
    source = open_source(args.repo, args.branch, args.path, state.path)
    loop = new_loop()
    asyncio.set_event_loop(loop)
    balancer = Balancer(loop, state.table, _proxy_settings(args), follow_file=False)

    def hand_over(table: RoutingTable) -> None:  # from apply's thread to the balancer's loop
        loop.call_soon_threadsafe(balancer.swap, table)

    # On a Swarm, the balancer is a service in the cluster (apply hands it the tables): the
    # one embedded here serves only watch's control plane (status, hooks).
    reconciler = Reconciler(
        project,
        state,
        lambda: connect(runtime, settings),
        on_publish=hand_over if runtime == "docker" else None,
        rollouts=runtime == "docker",
    )
    hook_token = os.environ.get("GITOPS_NODES_HOOK_TOKEN")
    if hook_token and len(hook_token.strip()) < MIN_KEY_LENGTH:  # the admin key's minimum
        # Said, not refused: a short token kept working before, and only makes watch fetch.
        logging.getLogger("gitops_nodes.cli").warning(
            "GITOPS_NODES_HOOK_TOKEN is %d characters: whoever guesses it can make watch "
            "fetch; use %d or more (openssl rand -hex 16)",
            len(hook_token.strip()),
            MIN_KEY_LENGTH,
        )
    watch = WatchLoop(
        loop,
        source,
        reconciler,
        balancer,
        interval,
        hook_token=hook_token,
        drift=lambda notify, stop: follow_events(project, notify, stop),
        notifier=(notifier := Notifier(project)),
        replace_unhealthy_after=replace_after,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, watch.stop)
    # The embedded balancer says where it listens once bound (the ports differ for port 0).
    serving = (
        f"the swarm's balancer serves port {settings.swarm.port}"
        if runtime == "swarm"
        else "the embedded balancer serves its aliases"
    )
    # A log record rather than a print: under --log-format json every line is an object.
    logging.getLogger("gitops_nodes.cli").info(
        "watching %s as project %s on %s; %s", source.describe(), project, runtime, serving
    )
    try:
        with _live_progress(sys.stderr, args.log_format == "text"):
            loop.run_until_complete(watch.run(options))
    except SettingsError as exc:  # the address or a port cannot be listened on
        raise GitopsNodesError(str(exc)) from None
    finally:
        loop.close()
        notifier.close(NOTIFY_GRACE)  # what is queued gets a few seconds to go out
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from gitops_nodes.spec.schema import schema_text

    print(schema_text(), end="")
    return EXIT_OK


def _checkpoint(args: argparse.Namespace) -> int:
    import keyword

    from pydantic_core import PydanticCustomError

    from gitops_nodes.notebook import run_checkpoint
    from gitops_nodes.spec.models import parse_duration

    names = [name.strip() for name in args.vars.split(",") if name.strip()]
    bad = [n for n in names if not n.isidentifier() or keyword.iskeyword(n)]
    if not names or bad or len(set(names)) < len(names):
        print(
            "error: --vars: expected Python variable names separated by commas, each once, "
            f"got {args.vars!r}",
            file=sys.stderr,
        )
        return EXIT_CHANGES  # argparse's exit code for a usage error
    try:
        timeout = parse_duration(args.timeout)
    except PydanticCustomError as exc:
        print(f"error: --timeout: {exc.message()}, got {args.timeout!r}", file=sys.stderr)
        return EXIT_CHANGES
    # Under a second would be no limit at all (the kernel client counts whole seconds, 0
    # being none); beyond a day, a typo.
    if not 1 <= timeout <= A_DAY:
        print(f"error: --timeout: expected 1s to 24h, got {args.timeout!r}", file=sys.stderr)
        return EXIT_CHANGES
    # Found before the notebook runs, which can take its whole time limit per cell.
    if not args.notebook.is_file():  # a FIFO would block the read, a folder is no notebook
        raise GitopsNodesError(f"{args.notebook}: expected a notebook file (.ipynb)")
    _check_output_target(args.output, "-o")
    if args.output.resolve() == args.notebook.resolve():
        raise GitopsNodesError(
            f"-o {args.output}: is the notebook itself; expected the path of the checkpoint"
        )
    written = run_checkpoint(args.notebook, names, args.output, args.cell, timeout)
    print(f"saved {', '.join(names)} from {args.notebook} to {written}")
    return EXIT_OK


def _print_plan(plan: Plan) -> None:
    from gitops_nodes.render import render_text

    print(render_text(plan.to_json()), end="", flush=True)
    if not plan.empty:
        print()


def _live_progress(stream: TextIO, wanted: bool = True) -> AbstractContextManager[object]:
    """On a terminal, a live display of the running steps (rich, imported only then);
    elsewhere nothing, and the output stays the plain lines it is."""
    if not wanted or not stream.isatty() or os.environ.get("TERM") == "dumb":
        return contextlib.nullcontext()
    from gitops_nodes.liveview import live_progress

    return live_progress(stream)


def _print_result(result: StepResult) -> None:
    from gitops_nodes import progress
    from gitops_nodes.apply import Outcome

    progress.step_ended(result)
    mark = {Outcome.DONE: "ok", Outcome.FAILED: "FAILED", Outcome.NOT_STARTED: "not started"}
    if result.outcome is Outcome.NOT_STARTED:
        return
    print(
        f"{result.step.id}: {mark[result.outcome]} in {result.seconds:.1f}s, {result.detail}",
        flush=True,
    )


def _print_report(report: ApplyReport, verb: str) -> int:
    from gitops_nodes.apply import Outcome

    done = report.with_outcome(Outcome.DONE)
    failed = report.with_outcome(Outcome.FAILED)
    skipped = report.with_outcome(Outcome.NOT_STARTED)
    if report.ok:
        print(f"\n{verb} complete: {len(done)} steps done.")
        return EXIT_OK
    print(
        f"\n{verb} failed: {len(done)} steps done, {len(failed)} failed, "
        f"{len(skipped)} not started.",
        file=sys.stderr,
    )
    for result in failed:
        print(f"  failed: {result.step.id}: {result.detail}", file=sys.stderr)
    for result in skipped:
        print(f"  not started: {result.step.id} ({result.detail})", file=sys.stderr)
    print(
        "Every alias still routes to the nodes it had; fix the cause and apply again.",
        file=sys.stderr,
    )
    return EXIT_ERROR
