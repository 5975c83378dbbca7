"""Start-up: each command imports only what it uses. `--version` and `--help` load the CLI and
argparse; `validate` loads the spec (pydantic, YAML) but never Docker, networkx, Starlette or
the balancer's data plane. Each case runs in a fresh interpreter, since this one has them all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from balancer.access import ADMIN_TOKEN_ENV, ADMIN_TOKEN_FILE_ENV
from gitops_nodes import cli
from gitops_nodes.spec.settings import RUNTIMES

ROOT = Path(__file__).resolve().parents[2]
# The heavy parts a command may need, and no `validate` does: the Docker SDK, the plan's
# graph library, the control plane's framework, the data plane's event loop and parser.
HEAVY = ["docker", "networkx", "starlette", "uvloop", "httptools", "asyncio"]
# The balancer's modules the spec itself is made of (its value types and key checks).
SPEC_VALUES = {"balancer", "balancer.table", "balancer.access"}


def _modules_after(argv: list[str]) -> set[str]:
    """The modules loaded once `gitops-nodes ARGV` has run, in a fresh interpreter."""
    code = (
        "import json, sys\n"
        "from gitops_nodes import cli\n"
        "try:\n"
        f"    code = cli.main({argv!r})\n"
        "except SystemExit as exc:  # --version and --help end through argparse\n"
        "    code = exc.code\n"
        "print('\\n' + json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["code"] in (0, None), result.stdout + result.stderr
    return set(report["modules"])


def _heavy(loaded: set[str]) -> list[str]:
    return sorted(m for m in loaded if m.split(".")[0] in HEAVY)


def test_validate_loads_no_docker_networkx_starlette_or_data_plane() -> None:
    loaded = _modules_after(["validate", "example-repo"])

    assert "gitops_nodes.spec.models" in loaded  # it did validate
    assert _heavy(loaded) == []
    data_plane = sorted(m for m in loaded if m.split(".")[0] == "balancer")
    assert set(data_plane) <= SPEC_VALUES, data_plane
    assert "gitops_nodes.plan" not in loaded and "gitops_nodes.runtime.docker" not in loaded


def test_version_and_help_load_almost_nothing() -> None:
    for argv in (["--version"], ["--help"], ["serve", "--help"]):
        loaded = _modules_after(argv)
        ours = sorted(m for m in loaded if m.split(".")[0] in ("gitops_nodes", "balancer"))
        assert ours == ["gitops_nodes", "gitops_nodes.cli", "gitops_nodes.errors"], argv
        assert "pydantic" not in loaded and "yaml" not in loaded, argv
        assert _heavy(loaded) == [], argv


def test_the_check_would_notice_a_heavy_import() -> None:
    # the probes see what is loaded: a command that needs pydantic (schema), and the module
    # a command that needs the engine imports
    assert "pydantic" in _modules_after(["schema"])
    assert "docker" in _loaded_by_import("gitops_nodes.runtime.docker")


def _loaded_by_import(module: str) -> set[str]:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_the_clis_copies_of_names_match_their_owners() -> None:
    # cli.py keeps these names itself so that building its parser imports neither pydantic
    # nor the balancer; their owners are spec/settings.py and balancer/access.py
    assert cli.RUNTIMES == RUNTIMES
    assert (cli.ADMIN_TOKEN_ENV, cli.ADMIN_TOKEN_FILE_ENV) == (
        ADMIN_TOKEN_ENV,
        ADMIN_TOKEN_FILE_ENV,
    )


def test_a_plan_with_nothing_to_do_does_not_load_networkx() -> None:
    # the graph library is what a plan with steps is walked with; a no-op plan (what CI and
    # watch make all day) has none, and pays nothing for it
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from gitops_nodes.live import LiveState\n"
        "from gitops_nodes.plan import make_plan\n"
        "from gitops_nodes.spec.state import DesiredState\n"
        "plan = make_plan('p', DesiredState(Path('.'), {}, {}), LiveState(project='p'))\n"
        "assert plan.empty and plan.steps() == [] and plan.to_json()['steps'] == []\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "networkx" not in json.loads(result.stdout)
