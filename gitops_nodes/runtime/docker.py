"""The Runtime on one Docker engine, through the Docker SDK's low-level API.

Listing uses the engine's container summaries (one label-filtered call, no per-container
inspect); every Docker SDK error is translated into our own errors before it leaves.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import requests
from docker.errors import APIError, BuildError, DockerException, ImageNotFound, NotFound

from gitops_nodes import progress, pyimage
from gitops_nodes.errors import RuntimeFailure, RuntimeUnavailable
from gitops_nodes.live import LiveInstance, Ownership
from gitops_nodes.runtime import labels, secretfiles
from gitops_nodes.runtime.base import ImageCleanup, LogLine
from gitops_nodes.runtime.container_records import (
    LOOPBACK,
    from_inspect,
    image_names,
    instance_of,
    instances_listed,
    tags_listed,
)
from gitops_nodes.runtime.docker_host import DockerHost
from gitops_nodes.runtime.engine_socket import START_ENGINE, EngineSocket, socket_from_env
from gitops_nodes.spec.context import BUILD_REPOSITORY
from gitops_nodes.spec.hashing import InstanceConfig, canonical_json, log_budget, show_gpus
from gitops_nodes.spec.state import BuildRequest, DesiredNode
from gitops_nodes.statedir import StateDir

PORT_ATTEMPTS = 5
SOCKET_MOUNT = "/run/gitops-nodes"  # where a python node's socket folder is, in its container
SOCKET_ENV = "GITOPS_NODES_SOCKET"  # tells the node's runtime where to listen (pynode/server)
PORT_TAKEN = re.compile(r"port is already allocated|address already in use", re.IGNORECASE)
# What the engine says when no device driver gives containers GPUs (no NVIDIA Container
# Toolkit), or when the driver has no such device.
NO_GPU = re.compile(
    r"could not select device driver|nvidia-container-cli|unknown device|gpu", re.IGNORECASE
)


def device_requests(config: InstanceConfig) -> list[docker.types.DeviceRequest] | None:
    """The node's resources.gpus as Docker device requests (as `docker run --gpus`)."""
    gpus = config.gpus
    if gpus is None:
        return None
    if isinstance(gpus, tuple):
        return [docker.types.DeviceRequest(device_ids=list(gpus), capabilities=[["gpu"]])]
    count = -1 if gpus == "all" else int(gpus)
    return [docker.types.DeviceRequest(count=count, capabilities=[["gpu"]])]


def no_gpu_message(node: DesiredNode, name: str, exc: BaseException) -> str:
    """Why an instance that asks for GPUs did not start, and what the host is missing."""
    gpus = node.config.gpus
    assert gpus is not None
    engine = getattr(exc, "explanation", None) or str(exc)
    return (
        f"node {node.name} asks for GPUs (resources.gpus: {show_gpus(gpus)}) but this Docker "
        f"engine cannot give them to its containers: {engine}. The host needs an NVIDIA GPU "
        "with its driver and the NVIDIA Container Toolkit (nvidia-container-toolkit, which "
        "puts nvidia-container-runtime-hook on the engine's PATH), then a restart of the "
        f"engine; the instance {name} was removed and nothing else was changed"
    )


class PortTaken(Exception):
    """The host port chosen for an instance was taken before the engine could bind it."""


def sockets_root() -> Path:
    """The folder of every project's instance sockets, for the user running gitops-nodes."""
    return Path(tempfile.gettempdir()) / f"gitops-nodes-{os.getuid()}"


def project_sockets(project: str) -> Path:
    """The host folder of a project's instance sockets: short, as socket paths must be (108
    bytes)."""
    return sockets_root() / _short(project)


def private_sockets_root() -> bool:
    """Make sockets_root() if needed; whether it is ours alone. In a shared temp folder
    another user could have made it first, and then their socket would get our requests: no
    socket is used then (the balancer keeps to the port)."""
    root = sockets_root()
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700)
    try:
        found = root.lstat()
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
            return False  # a symlink, or another user's
        if found.st_mode & 0o077:
            root.chmod(0o700)
    except OSError:
        return False
    return True


def socket_folder(project: str, instance: str) -> Path:
    """The host folder of one instance's Unix socket, mounted in it at SOCKET_MOUNT."""
    return project_sockets(project) / _short(instance)


def _remove_folder(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _short(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:12]


def free_loopback_port() -> int:
    """A loopback port nothing listens on now, as the kernel hands them out."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# The SDK lets the HTTP library's connection errors through untranslated (an engine that went
# away mid-call): both kinds are caught wherever the engine is called.
ENGINE_ERRORS = (DockerException, requests.exceptions.RequestException)


def _serves_a_socket(node: DesiredNode) -> bool:
    """Whether the node's image runs gitops-nodes' python runtime (pynode/server.py)."""
    return node.build is not None and node.build.python is not None


def engine_error(what: str, exc: BaseException) -> RuntimeFailure | RuntimeUnavailable:
    """Our error for an engine call that failed: unavailable when the engine is gone."""
    if isinstance(exc, requests.exceptions.ConnectionError):
        return RuntimeUnavailable(f"{what}: the Docker engine does not answer ({exc})")
    if isinstance(exc, requests.exceptions.ReadTimeout):
        # Seen with a busy engine of a thousand containers whose stops waited for exits that
        # containerd never reported: the call, not the engine, is stuck; its log says why.
        return RuntimeFailure(
            f"{what}: the Docker engine took the call and did not answer in time ({exc}); it "
            "is overloaded or stuck on this container (its log says which)"
        )
    return RuntimeFailure(f"{what}: {exc}")


def log_config(config: InstanceConfig) -> dict[str, Any]:
    """The container's log driver and its rotation: json-file (whose rotated files `docker
    logs` reads back, as `gitops-nodes logs` needs) named here rather than left to the
    engine's default, which rotates nothing unless its daemon.json says so."""
    size, files = log_budget(config)
    return {"Type": "json-file", "Config": {"max-size": str(size), "max-file": str(files)}}


class DockerRuntime(DockerHost):
    """Instances as containers on a single Docker engine."""

    name = "docker"

    def __init__(self, client: Any | None = None) -> None:
        try:
            self.client = client or docker.from_env(timeout=120)
            self.api = self.client.api
            self.api.ping()
        except ENGINE_ERRORS as exc:
            raise RuntimeUnavailable(f"no Docker engine answers ({exc}); {START_ENGINE}") from exc
        # Images this runtime saw on the engine: a node's instances all use one, and asking
        # the engine again for each of them is a round trip per create for nothing.
        self.present: set[str] = set()
        self.engine_name: str | None = None  # the engine's own name (its host's), read once

    def list_instances(self, project: str) -> list[LiveInstance]:
        try:
            summaries = self.api.containers(all=True, filters=labels.project_filter(project))
        except ENGINE_ERRORS as exc:
            raise engine_error("listing containers failed", exc) from exc
        return instances_listed(summaries)

    def host_name(self) -> str:
        """The name the engine gives itself (its machine's hostname), for status; read once,
        and only when asked (plan and apply have no use for it)."""
        if self.engine_name is None:
            try:
                self.engine_name = str(self.api.info().get("Name") or "")
            except ENGINE_ERRORS as exc:
                raise engine_error("reading the engine's name failed", exc) from exc
        return self.engine_name

    def list_images(self, project: str) -> set[str]:
        try:
            images = self.api.images(name=BUILD_REPOSITORY)
        except ENGINE_ERRORS as exc:
            raise engine_error("listing images failed", exc) from exc
        return tags_listed(images)

    def build_image(self, project: str, root: Path, request: BuildRequest) -> None:
        if request.python is None:
            self._build(project, root / request.context, request.dockerfile, request)
            return
        base = pyimage.choose_base(request.python.base_image, self._image_available)
        with tempfile.TemporaryDirectory(prefix="gitops-nodes-python-") as folder:
            pyimage.assemble(root, request.python, base, Path(folder))
            self._build(project, Path(folder), "Dockerfile", request)

    def _image_available(self, reference: str) -> bool:
        try:
            self._ensure_image(reference)
        except RuntimeFailure:
            return False
        return True

    def _build(self, project: str, folder: Path, dockerfile: str, request: BuildRequest) -> None:
        what = request.python.code if request.python else request.context
        try:
            chunks = self.client.api.build(
                path=str(folder),
                dockerfile=dockerfile,
                tag=request.tag,
                # Not labels.PROJECT: a container run from the image would inherit it.
                labels={labels.BUILT_FOR: project, labels.BUILD_CONTEXT: what},
                rm=True,
                forcerm=True,
                decode=True,
            )
            _follow_build(chunks)
        except BuildError as exc:
            tail = (
                "".join(
                    str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log
                )
                .strip()
                .splitlines()[-8:]
            )
            raise RuntimeFailure(
                f"building {what} failed: {exc.msg}\n    " + "\n    ".join(tail)
            ) from exc
        except (*ENGINE_ERRORS, TypeError) as exc:
            raise engine_error(f"building {what} failed", exc) from exc

    def remove_project(self, project: str, state: StateDir) -> list[str]:
        # Every instance's socket folder went with it; this is their (now empty) parent.
        _remove_folder(project_sockets(project))
        secretfiles.remove_project_files(project)
        return []

    def create_instance(
        self, project: str, node: DesiredNode, index: int, ownership: Ownership
    ) -> LiveInstance:
        self._ensure_image(node.config.image)
        for _ in range(PORT_ATTEMPTS):
            with contextlib.suppress(PortTaken):
                return self._create_instance(project, node, index, ownership.owner)
        raise RuntimeFailure(
            f"no free loopback port for an instance of {node.name} in {PORT_ATTEMPTS} tries: "
            "the ports chosen were taken before the engine could bind them"
        )

    def _create_instance(
        self, project: str, node: DesiredNode, index: int, owner: str
    ) -> LiveInstance:
        """Create and start one instance; it is what was asked for (its labels and the ports
        chosen here), so it is not read back from the engine."""
        config = node.config
        name = f"{project}-{node.name}-{index}-{secrets.token_hex(3)}"
        # A python node also serves on a Unix socket in a folder shared with this host, which
        # the balancer prefers to the published port (see balancer/upstream.py).
        folder = None
        if _serves_a_socket(node) and private_sockets_root():
            folder = socket_folder(project, name)
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:  # the node's secret files, for this instance alone, on a private tmpfs
            binds = secretfiles.write_files(project, name, node.secrets)
        except OSError as exc:
            secretfiles.remove_instance_files(project, name)
            raise RuntimeFailure(
                f"writing the secret files of {name} failed: {exc.strerror or exc}"
            ) from None
        if folder is not None:
            binds[str(folder)] = {"bind": SOCKET_MOUNT, "mode": "rw"}
        ports = [config.port]
        if config.telemetry_port is not None:
            ports.append(config.telemetry_port)  # for the balancer's scrape, on loopback too
        # Host ports are chosen here, not left to Docker: a port Docker picks is picked again
        # when the container restarts (after a crash, or with the engine), usually a
        # different one, and the routing table would point at the old one until the next
        # apply. A port named here is the container's for its whole life.
        published = {port: free_loopback_port() for port in ports}
        host_config = self.api.create_host_config(
            port_bindings={port: (LOOPBACK, host) for port, host in published.items()},
            restart_policy={"Name": "unless-stopped"},
            nano_cpus=int(config.cpus * 1e9) if config.cpus else None,
            mem_limit=config.memory,
            init=True,  # PID 1 that forwards SIGTERM, so stopping an instance is prompt
            binds=binds or None,
            log_config=log_config(config),
            device_requests=device_requests(config),
        )
        instance_labels = {
            labels.PROJECT: project,
            labels.NODE: node.name,
            labels.INDEX: str(index),
            labels.SPEC_HASH: node.spec_hash,
            labels.CONFIG: canonical_json(config.as_dict()),
            labels.OWNER: owner,
        }
        environment = dict(config.env)
        # Secret values reach the container here and in the files above only: the labels
        # carry their keyed digests (config), never them.
        environment.update((key, value.text()) for key, value in node.secrets.env)
        if folder is not None:
            instance_labels[labels.SOCKET] = str(folder / "socket")
            environment[SOCKET_ENV] = f"{SOCKET_MOUNT}/socket"
        try:
            created = self.api.create_container(
                image=config.image,
                command=list(config.command) if config.command is not None else None,
                name=name,
                environment=environment,
                labels=instance_labels,
                ports=ports,
                host_config=host_config,
            )
        except ENGINE_ERRORS as exc:
            _remove_folder(folder)
            self.present.discard(config.image)  # removed since it was seen? ask again next time
            secretfiles.remove_instance_files(project, name)
            raise engine_error(f"creating {name} failed", exc) from exc
        try:
            self.api.start(created["Id"])
        except ENGINE_ERRORS as exc:
            self._force_remove(name)
            _remove_folder(folder)
            secretfiles.remove_instance_files(project, name)
            if PORT_TAKEN.search(str(exc)):
                raise PortTaken(name) from exc  # taken since it was chosen: choose again
            if config.gpus is not None and NO_GPU.search(str(exc)):
                raise RuntimeFailure(no_gpu_message(node, name, exc)) from exc
            raise engine_error(f"starting {name} failed", exc) from exc
        live = instance_of(name, instance_labels, "running", published, time.time())
        if live is None:  # our own labels always make one
            raise RuntimeFailure(f"{name}: its labels do not describe an instance")
        return live

    def start_instance(self, project: str, name: str) -> LiveInstance:
        if self.inspect_instance(project, name) is None:
            raise RuntimeFailure(f"{name} is gone: it cannot be started again")
        try:
            self.api.start(name)
        except ENGINE_ERRORS as exc:
            raise engine_error(f"starting {name} again failed", exc) from exc
        live = self.inspect_instance(project, name)
        if live is None:
            raise RuntimeFailure(f"{name} vanished right after it was started")
        return live

    def inspect_instance(self, project: str, name: str) -> LiveInstance | None:
        try:
            data = self.api.inspect_container(name)
        except NotFound:
            return None
        except ENGINE_ERRORS as exc:
            raise engine_error(f"inspecting {name} failed", exc) from exc
        found = from_inspect(data)
        if found is None or data["Config"]["Labels"].get(labels.PROJECT) != project:
            return None
        return found

    def stop_instance(self, project: str, name: str, grace: float) -> str:
        if self.inspect_instance(project, name) is None:
            return name
        try:
            self.api.stop(name, timeout=max(0, round(grace)))
        except NotFound:
            return name
        except ENGINE_ERRORS as exc:
            raise engine_error(f"stopping {name} failed", exc) from exc
        return name

    def remove_instance(self, project: str, name: str) -> None:
        # Re-read the owner label just before deleting: never remove what is not ours.
        live = self.inspect_instance(project, name)
        if live is None:
            return
        self._force_remove(name)
        if live.socket is not None:
            _remove_folder(Path(live.socket).parent)
        secretfiles.remove_instance_files(project, name)

    def instance_logs(self, name: str, lines: int) -> str:
        try:
            raw = self.api.logs(name, tail=lines)
        except ENGINE_ERRORS:
            return ""
        return bytes(raw).decode(errors="replace")

    def log_stream(self, name: str, tail: int | None, follow: bool) -> DockerLogStream:
        client = None
        try:
            # Following may wait for a line longer than any read timeout: a client without.
            client = docker.from_env(timeout=None) if follow else None
            api = client.api if client is not None else self.api
            stream = api.logs(
                name,
                stream=True,
                follow=follow,
                timestamps=True,
                tail="all" if tail is None else max(0, tail),
            )
        except NotFound:
            if client is not None:
                client.close()
            raise RuntimeFailure(f"{name} no longer exists") from None
        except ENGINE_ERRORS as exc:
            if client is not None:
                client.close()
            raise engine_error(f"reading the logs of {name} failed", exc) from exc
        return DockerLogStream(name, stream, client)

    def remove_images(self, project: str) -> ImageCleanup:
        removed: list[str] = []
        left: list[str] = []
        try:
            found = {
                image["Id"]: image
                for filters in labels.image_filters(project)
                for image in self.api.images(filters=filters)
            }
        except ENGINE_ERRORS as exc:
            raise engine_error("listing images failed", exc) from exc
        for image in found.values():
            for tag in image_names(image):
                try:
                    self.api.remove_image(tag)
                    self.present.discard(tag)
                    removed.append(tag)
                except (NotFound, ImageNotFound):
                    continue
                except APIError as exc:
                    if exc.status_code != 409:
                        raise engine_error(f"removing image {tag} failed", exc) from exc
                    left.append(f"image {tag}: {self._image_users(tag)}")
                except ENGINE_ERRORS as exc:
                    raise engine_error(f"removing image {tag} failed", exc) from exc
        return ImageCleanup(tuple(removed), tuple(left))

    def _image_users(self, tag: str) -> str:
        """Why an image could not be removed: the containers that use it."""
        try:
            users = self.api.containers(all=True, filters={"ancestor": tag})
        except ENGINE_ERRORS:
            users = []
        names = sorted((c.get("Names") or ["/?"])[0].lstrip("/") for c in users)
        if not names:
            return "in use (the engine refused to remove it)"
        return (
            f"in use by container {', '.join(names)}, which is not the project's (started by "
            "hand, by another project or by another state directory): remove it, then destroy "
            "again"
        )

    def _ensure_image(self, reference: str) -> None:
        if reference in self.present:
            return
        try:
            self.api.inspect_image(reference)
            self.present.add(reference)
            return
        except ImageNotFound:
            pass
        except ENGINE_ERRORS as exc:
            raise engine_error(f"inspecting image {reference} failed", exc) from exc
        try:
            self.client.images.pull(reference)
            self.present.add(reference)
        except ENGINE_ERRORS as exc:
            raise engine_error(
                f"image {reference} is not on this host and pulling it failed", exc
            ) from exc

    def _force_remove(self, name: str) -> None:
        try:
            self.api.remove_container(name, force=True, v=True)
        except NotFound:
            return
        except ENGINE_ERRORS as exc:
            busy = isinstance(exc, APIError) and exc.status_code == 409
            if busy and "already in progress" in str(exc):
                return  # another call is removing it
            raise engine_error(f"removing {name} failed", exc) from exc


class DockerLogStream:
    """An instance's log lines from the engine's stream of timestamped output."""

    def __init__(self, name: str, stream: Any, client: Any | None) -> None:
        self.name = name
        self.stream = stream
        self.client = client  # owned: closed with the stream
        self.closed = False

    def __iter__(self) -> Iterator[LogLine]:
        pending = b""
        try:
            for chunk in self.stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    yield log_line(raw)
        except Exception as exc:
            if self.closed:
                return  # a socket closed under a blocked read fails it in more than one way
            if isinstance(exc, ENGINE_ERRORS):
                raise engine_error(f"reading the logs of {self.name} failed", exc) from exc
            raise
        if pending and not self.closed:
            yield log_line(pending)

    def close(self) -> None:
        self.closed = True
        try:
            self.stream.close()
        except (*ENGINE_ERRORS, OSError, AttributeError):
            pass  # already closed, or the engine went away: either way it is over
        if self.client is not None:
            self.client.close()


_LOG_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z")


def log_line(raw: bytes) -> LogLine:
    """A line of `docker logs --timestamps`: an RFC 3339 time in UTC, a space, the text."""
    text = raw.decode(errors="replace").removesuffix("\r")
    stamp, _, rest = text.partition(" ")
    match = _LOG_STAMP.fullmatch(stamp)
    if match is None:
        return LogLine(0, "", text)
    seconds = int(datetime.fromisoformat(match.group(1) + "+00:00").timestamp())
    fraction = (match.group(2) or "").ljust(9, "0")
    return LogLine(seconds * 1_000_000_000 + int(fraction), stamp, rest)


DRIFT_ACTIONS = frozenset({"die", "destroy", "stop", "kill", "oom", "pause", "start", "unpause"})


EventWindow = Callable[[float, float], list[dict[str, Any]]]


def follow_events(project: str, notify: Callable[[str], None], stop: threading.Event) -> None:
    """Call notify("drift") when one of the project's containers dies, stops, starts or goes
    away, and notify("engine") when the engine answers again after it went away. Blocking;
    returns once stop is set. Reads the engine's event stream in one-second windows, so stop
    is noticed within a second and no stream has to be torn down from another thread."""
    filters = {"type": ["container"], "label": [f"{labels.PROJECT}={project}"]}
    since = time.time()
    lost = False
    read = _event_window(filters)
    while not stop.is_set():
        until = since + 1.0
        try:
            drifted = any(event.get("Action") in DRIFT_ACTIONS for event in read(since, until))
        except (*ENGINE_ERRORS, RuntimeFailure, RuntimeUnavailable):
            lost = True
            stop.wait(1.0)
            since = time.time()
            continue
        if lost:
            lost = False
            notify("engine")
        if drifted:
            notify("drift")
        since = until
        wait = until - time.time()
        if wait > 0:
            stop.wait(wait)


def _event_window(filters: dict[str, list[str]]) -> EventWindow:
    """How follow_events reads one window: over a local engine's socket (no client object
    made per second: this runs for as long as watch does), else a short-lived SDK client."""
    path = socket_from_env()
    if path is not None:
        engine = EngineSocket(path, timeout=10)
        return lambda since, until: engine.events(since, until, filters)

    def through_the_sdk(since: float, until: float) -> list[dict[str, Any]]:
        client = docker.from_env(timeout=10)
        try:
            return list(client.api.events(since=since, until=until, decode=True, filters=filters))
        finally:
            client.close()

    return through_the_sdk


BUILD_LOG_KEPT = 200  # the build's last chunks, kept for a failure's message
_BUILT = re.compile(r"(^Successfully built |sha256:)([0-9a-f]+)$")  # as the SDK finds it


def _follow_build(chunks: Iterable[dict[str, Any]]) -> None:
    """Read a build's stream to its end as the SDK's images.build does, telling a live
    display (gitops_nodes/progress.py) each instruction as it starts; raises BuildError
    with the last of the log when the build fails."""
    kept: deque[dict[str, Any]] = deque(maxlen=BUILD_LOG_KEPT)
    built = False
    for chunk in chunks:
        kept.append(chunk)
        if "error" in chunk:
            raise BuildError(chunk["error"], list(kept))
        text = str(chunk.get("stream") or "")
        if text.startswith("Step "):
            progress.note(text.strip())
        if _BUILT.search(text.strip()):
            built = True
    if not built:
        raise BuildError(str(kept[-1] if kept else "the build said nothing"), list(kept))
