"""A python node's image, assembled on the host: base, runtime, wheels, code and checkpoint.

The build needs no network inside the container: the node's packages (and the runtime's
httptools, orjson and uvloop) are downloaded here as wheels for CPython 3.11 on manylinux,
then installed into the image by the base image's own python3 (gitops_nodes/pynode/wheels.py:
unpacked, their .data parts moved where they belong) and compiled to bytecode there
(a package's test files that do not compile do not fail the build), so instances start
without compiling their imports. The base is the official
`python:3.11-slim` when the engine has it or can pull it, else the offline Debian base
that scripts/lib/ensure-base-image.sh makes (this project's machines reach no registry).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from gitops_nodes.errors import RuntimeFailure
from gitops_nodes.spec.context import PACKAGE, runtime_files
from gitops_nodes.spec.models import DEFAULT_BASE, PYTHON_PORT
from gitops_nodes.spec.state import PythonBuild

SLIM_BASE = "python:3.11-slim"
OFFLINE_BASE = "gitops-nodes/python-base:bookworm"
RUNTIME_PACKAGES = ("httptools", "orjson", "uvloop")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
DOWNLOAD_TIMEOUT = 600

DOCKERFILE = """\
FROM {base}
COPY wheels /tmp/wheels
RUN python3 /tmp/wheels/install.py /opt/gitops-nodes/site /opt/gitops-nodes/bin \\
/tmp/wheels/*.whl && rm -rf /tmp/wheels \\
 && (python3 -m compileall -q -j 0 /opt/gitops-nodes/site > /dev/null || true)
COPY runtime /opt/gitops-nodes/runtime
RUN python3 -m compileall -q /opt/gitops-nodes/runtime
COPY app /app
ENV PYTHONPATH=/opt/gitops-nodes/site:/opt/gitops-nodes/runtime PYTHONDONTWRITEBYTECODE=1 \\
PATH=/opt/gitops-nodes/bin:$PATH
WORKDIR /app
EXPOSE {port}
CMD ["python3", "-m", "gitops_nodes.pynode.server", "--config", "/app/node.json", \\
"--host", "0.0.0.0", "--port", "{port}"]
"""


def choose_base(wanted: str, available: Callable[[str], bool]) -> str:
    """The base image to build on: the spec's, or for `auto` the slim image when the engine
    has it (or can pull it), else the offline one."""
    if wanted != DEFAULT_BASE:
        return wanted
    if available(SLIM_BASE):
        return SLIM_BASE
    if available(OFFLINE_BASE):
        return OFFLINE_BASE
    raise RuntimeFailure(
        f"no base image for python nodes: {SLIM_BASE} cannot be pulled and {OFFLINE_BASE} "
        "is missing; make it with scripts/lib/ensure-base-image.sh (as root), or set "
        "python.baseImage to an image with python3.11"
    )


def assemble(root: Path, build: PythonBuild, base: str, folder: Path) -> None:
    """Write the build folder: Dockerfile, runtime, node.json, code files and wheels."""
    app = folder / "app"
    (app / "code").mkdir(parents=True)
    for relative in (build.code, build.checkpoint, build.setup):
        if relative is not None:
            target = app / "code" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if relative == build.code and build.code_text is not None:
                target.write_text(build.code_text)  # a notebook's cell
            else:
                shutil.copyfile(root / relative, target)
    for item in build.fetched:  # from the source cache (or the repo, for files)
        target = app / item.destination
        target.parent.mkdir(parents=True, exist_ok=True)
        if item.tree:
            shutil.copytree(item.path, target)
        else:
            shutil.copyfile(item.path, target)
    (app / "node.json").write_text(build.config)
    for path in runtime_files():
        target = folder / "runtime" / path.relative_to(PACKAGE.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    download_wheels([*RUNTIME_PACKAGES, *build.packages], folder / "wheels")
    shutil.copyfile(PACKAGE / "pynode" / "wheels.py", folder / "wheels" / "install.py")
    (folder / "Dockerfile").write_text(DOCKERFILE.format(base=base, port=PYTHON_PORT))


def download_wheels(packages: list[str], folder: Path) -> None:
    """pip download, on the host, of binary wheels for the image's Python (CPython 3.11)."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
        *(f"--platform={platform}" for platform in PLATFORMS),
        "--dest", str(folder), *packages,
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeFailure(
            f"downloading wheels for {', '.join(packages)} took over {DOWNLOAD_TIMEOUT}s"
        ) from exc
    if result.returncode != 0:
        tail = "\n    ".join(result.stderr.strip().splitlines()[-6:])
        raise RuntimeFailure(
            f"downloading wheels for {', '.join(packages)} failed (every package needs a "
            f"binary wheel for CPython 3.11 on manylinux x86_64):\n    {tail}"
        )
