"""The balancer's own image, for its Swarm service: the `balancer` package and its wheels.

Built on the manager like a python node's image (pyimage.py): the same base image choice,
binary wheels downloaded on the host for CPython 3.11 (pinned to the versions installed
here, which the balancer was tested with), nothing fetched inside the build. The tag is a
digest of everything that goes in, so an unchanged balancer is never rebuilt.
"""

from __future__ import annotations

import hashlib
import shutil
from importlib import metadata
from pathlib import Path

import balancer
from gitops_nodes import pyimage

REPOSITORY = "gitops-nodes/balancer"
REQUIREMENTS = ("httptools", "orjson", "uvloop", "starlette", "uvicorn", "watchfiles")
DATA_PORT, ADMIN_PORT = 8080, 8081  # inside the container; published as the settings say
TOKEN_TARGET = "gitops-nodes-balancer-token"  # under /run/secrets/

DOCKERFILE = """\
FROM {base}
COPY wheels /tmp/wheels
RUN python3 -c "import glob, zipfile; [zipfile.ZipFile(w).extractall('/opt/gitops-nodes/site') \\
for w in glob.glob('/tmp/wheels/*.whl')]" && rm -rf /tmp/wheels \\
 && (python3 -m compileall -q -j 0 /opt/gitops-nodes/site > /dev/null || true)
COPY app /opt/gitops-nodes/app
RUN python3 -m compileall -q /opt/gitops-nodes/app
ENV PYTHONPATH=/opt/gitops-nodes/site:/opt/gitops-nodes/app PYTHONDONTWRITEBYTECODE=1
EXPOSE {data} {admin}
CMD ["python3", "-m", "balancer", "--port", "{data}", "--admin-port", "{admin}", \\
"--token-file", "/run/secrets/{token}"]
"""


# What the package is made of: its modules, and the web console's page (balancer/console/).
PACKAGE_SUFFIXES = frozenset({".py", ".html", ".css", ".js"})


def source_files() -> list[Path]:
    """The balancer package's files (subpackages included), relative to it, in a stable order."""
    package = Path(balancer.__file__).parent
    return sorted(
        path.relative_to(package)
        for path in package.rglob("*")
        if path.is_file()
        and path.suffix in PACKAGE_SUFFIXES
        and "__pycache__" not in path.relative_to(package).parts
    )


def pinned_requirements() -> list[str]:
    """The balancer's dependencies at the versions installed on this host."""
    return [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]


def dockerfile(base: str) -> str:
    return DOCKERFILE.format(base=base, data=DATA_PORT, admin=ADMIN_PORT, token=TOKEN_TARGET)


def image_tag(base: str) -> str:
    """The content-addressed tag of the balancer image on base."""
    digest = hashlib.sha256()
    package = Path(balancer.__file__).parent
    for path in source_files():
        digest.update(path.as_posix().encode() + b"\0" + (package / path).read_bytes() + b"\0")
    digest.update("\n".join(pinned_requirements()).encode())
    digest.update(dockerfile(base).encode())
    return f"{REPOSITORY}:{digest.hexdigest()[:16]}"


def assemble(base: str, folder: Path) -> None:
    """Write the build folder: Dockerfile, the package and its wheels."""
    target = folder / "app" / "balancer"
    package = Path(balancer.__file__).parent
    for path in source_files():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package / path, target / path)
    pyimage.download_wheels(pinned_requirements(), folder / "wheels")
    (folder / "Dockerfile").write_text(dockerfile(base))
