"""Saving a checkpoint of interpreter state, as a python node loads it, from a notebook.

In a running notebook::

    import gitops_nodes.checkpoint
    gitops_nodes.checkpoint.save("state.pkl", model=model, species=species)

The variables are pickled with cloudpickle, so functions and classes defined in the notebook
travel by value; the file starts with a header of the Python and package versions it was
made with (gitops_nodes/pynode/checkpoints.py), which plan compares with the node's packages.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import pickle
import pickletools
import platform
import sys
from pathlib import Path
from typing import Any

from gitops_nodes.errors import GitopsNodesError
from gitops_nodes.pynode.checkpoints import make_header


class CheckpointError(GitopsNodesError):
    """A checkpoint could not be made: a variable that does not pickle, or a bad path."""


def save(path: str | os.PathLike[str], **variables: Any) -> Path:
    """Write the variables as a node checkpoint at path; returns the path written."""
    if not variables:
        raise CheckpointError("name the variables to save: save(path, model=model, ...)")
    try:
        import cloudpickle
    except ImportError:
        raise CheckpointError(
            "saving a checkpoint needs cloudpickle (pip install 'gitops-nodes[notebooks]')"
        ) from None
    try:
        state = cloudpickle.dumps(dict(variables), protocol=pickle.DEFAULT_PROTOCOL)
    except Exception as exc:
        raise CheckpointError(
            f"the variables cannot be pickled: {type(exc).__name__}: {exc}"
        ) from exc
    packages = packages_used(state)
    header = make_header(platform.python_version(), packages)
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    with temporary.open("wb") as file:
        pickle.dump(header, file, protocol=pickle.DEFAULT_PROTOCOL)
        file.write(state)
    os.replace(temporary, target)
    return target


def packages_used(state: bytes) -> dict[str, str]:
    """{distribution: version} of the installed packages whose modules the pickle names."""
    names: set[str] = set()
    for _, argument, _ in pickletools.genops(io.BytesIO(state)):
        if isinstance(argument, str):
            top = argument.split(" ")[0].split(".")[0]
            if top and top in sys.modules and top not in sys.stdlib_module_names:
                names.add(top)
    distributions = importlib.metadata.packages_distributions()
    found: dict[str, str] = {}
    for name in sorted(names):
        for distribution in distributions.get(name, ()):
            try:
                found[distribution] = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                continue
    found.pop("gitops-nodes", None)
    return found


# A header is read from a file of the repository or a download, so it may be anything that
# unpickles as plain values; what is shown of it is bounded (a header that `save` writes
# lists the few packages the variables use, with short names and versions).
MAX_HEADER_PACKAGES = 1000
MAX_HEADER_TEXT = 200  # characters of a package name, a version or the Python version


def version_warnings(header: dict[str, Any] | None, packages: tuple[str, ...]) -> list[str]:
    """How the image a node's packages make would differ from what made the checkpoint.

    A header that is not what `save` writes (a hand-made or damaged file: a package name
    that is not a string, say) is one warning saying so, and its versions are not compared.
    """
    if header is None:
        return []
    problem = header_problem(header)
    if problem is not None:
        return [
            f"made with a header gitops-nodes cannot read ({problem}), so its versions were "
            "not compared with the node's packages; save the checkpoint again with "
            "gitops_nodes.checkpoint.save"
        ]
    made = header.get("python")
    recorded: dict[str, str] = header.get("packages") or {}
    return _differences(made if isinstance(made, str) else "", recorded, packages)


def header_problem(header: dict[str, Any]) -> str | None:
    """What makes a checkpoint's header other than `save` writes it, in words that name the
    field; None when it is well formed."""
    made = header.get("python")
    if made is not None and not _short_text(made):
        return "its python is not a version string"
    recorded = header.get("packages")
    if recorded is None:
        return None
    if not isinstance(recorded, dict):
        return "its packages are not a mapping of names to versions"
    if len(recorded) > MAX_HEADER_PACKAGES:
        return f"it lists over {MAX_HEADER_PACKAGES} packages"
    for name, version in recorded.items():
        if not _short_text(name):
            return "a package name in it is not a string of up to 200 printable characters"
        if not _short_text(version):
            return f"the version of {name} in it is not a string of up to 200 printable characters"
    return None


def _short_text(value: object) -> bool:
    # Printable only: these go to a terminal, where a control character could rewrite it.
    return isinstance(value, str) and 0 < len(value) <= MAX_HEADER_TEXT and value.isprintable()


def _differences(made: str, recorded: dict[str, str], packages: tuple[str, ...]) -> list[str]:
    pinned = {_canonical(p.split("==")[0].split("[")[0]): p.split("==")[1] for p in packages}
    if "mlflow-skinny" in pinned:  # mlflow's client: what a logged model's `mlflow` needs
        pinned.setdefault("mlflow", pinned["mlflow-skinny"])
    warnings = []
    if made and not made.startswith("3.11."):
        warnings.append(f"made with Python {made}, the image has Python 3.11")
    for name, version in sorted(recorded.items()):
        image = pinned.get(_canonical(name))
        if image is None:
            warnings.append(f"made with {name} {version}, which the node's packages do not list")
        elif image != version:
            warnings.append(f"made with {name} {version}, the image gets {name}=={image}")
    return warnings


def requirement_warnings(requirements: tuple[str, ...], packages: tuple[str, ...]) -> list[str]:
    """How a node's packages differ from an MLflow model's pinned requirements."""
    pins = {}
    for line in requirements:
        name, _, version = line.partition("==")
        pins[_canonical(name.split("[")[0])] = (name.strip(), version.split(";")[0].strip())
    recorded = {name: version for name, version in pins.values()}
    # Not through header_problem: these lines come from the registry as text, not a pickle.
    return [w.replace("made with", "logged with") for w in _differences("", recorded, packages)]


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")
