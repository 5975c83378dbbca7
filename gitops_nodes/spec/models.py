"""The YAML spec's documents as strict pydantic models: what a user may write, and nothing else.

Field names are camelCase in YAML (``minHealthy``) and snake_case in Python. Paths are
resolved relative to the file that names them and stored relative to the repository root,
so nothing downstream depends on where the repository is checked out.
"""

from __future__ import annotations

import keyword
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from gitops_nodes.spec.hashing import DEFAULT_LOG_BUDGET

API_VERSION = "gitops-nodes/v1"
KINDS = ("Node", "Alias")
SETTINGS_FILE = "gitops-nodes.yaml"  # the repo's settings at its root (spec/settings.py)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)(k|Ki|M|Mi|G|Gi)?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FOLDER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_MEMORY = 6 * 2**20
# An instance's log budget when its node sets no `logs` (spec.logs): 3 files of 10 MiB.
DEFAULT_LOG_MAX_SIZE, DEFAULT_LOG_MAX_FILES = DEFAULT_LOG_BUDGET
MIN_LOG_SIZE = 64_000  # a smaller file would rotate at every burst of lines
_IMAGE_REFERENCE = re.compile(
    # Docker's reference grammar: [domain[:port]/]path[:tag][@digest], the path in lowercase.
    r"^(?P<name>(?:(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[a-fA-F0-9:]+\])"
    r"(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
# The same for JSON Schema, whose regular expressions (ECMA 262) name groups differently.
_IMAGE_REFERENCE_ECMA = _IMAGE_REFERENCE.pattern.replace("(?P<name>", "(")
# An HTTP request target: an absolute path and an optional query, in URL characters only.
_URL_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*(?:\?[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$")

# The bounds of what a spec may ask for, each documented in the README's table.
MAX_INSTANCES = 1000  # each instance is a container with a published port on the host
MAX_THRESHOLD = 100  # healthCheck's healthyThreshold and unhealthyThreshold
MAX_WEIGHT = 1_000_000  # an alias route's weight
MIN_CPUS, MAX_CPUS = 0.01, 1024  # Docker refuses fewer than 0.01 CPUs
MAX_MEMORY = 2**40  # 1024Gi
MAX_ENV_VALUE = 65_536  # characters; the kernel caps one "NAME=value" string at 128 KiB
MAX_IMAGE_NAME = 255  # Docker's limit on a repository name (without tag and digest)
MAX_IMAGE_REFERENCE = 512  # with a tag (at most 128) and a digest
MAX_URL_PATH = 2048
MAX_MIN_REQUESTS = 10**9  # a rollout step's minRequests
MAX_BATCH_SIZE = 4096  # python.batch.maxSize (gitops_nodes/pynode/config.py checks the same)
MAX_BATCH_DELAY = 1.0  # seconds: python.batch.maxDelay
MAX_GPUS = 64  # resources.gpus as a count
_GPU_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,127}$")
DAY = 86_400.0
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_UNIT_BYTES = {None: 1, "k": 1000, "Ki": 1024, "M": 10**6, "Mi": 2**20, "G": 10**9, "Gi": 2**30}


def _dns_label(value: Any) -> str:
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
        raise PydanticCustomError(
            "dns_label",
            "expected a DNS label: lowercase letters, digits and '-', starting and ending "
            "with a letter or digit, at most 63 characters",
        )
    return value


def parse_duration(value: Any) -> float:
    """Seconds from '500ms', '2s', '1m', '1h' or a sum such as '1m30s'; always finite."""
    seconds = _seconds(value)
    if not math.isfinite(seconds):
        raise PydanticCustomError("duration_range", "expected a duration of at most 24h")
    return seconds


def _seconds(value: Any) -> float:
    """parse_duration's sum, which a very long number makes infinite."""
    if isinstance(value, str) and _DURATION.match(value):
        return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
    raise PydanticCustomError("duration", "expected a duration such as 500ms, 2s, 1m or 1m30s")


def show_seconds(seconds: float) -> str:
    """A bound in seconds as the spec writes durations: 10ms, 1s, 1h, 24h."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _duration_within(low: float, high: float) -> Callable[[Any], float]:
    """A validator of durations from low to high seconds (a low of 0 admits 0s)."""

    def validate(value: Any) -> float:
        seconds = _seconds(value)
        if not low <= seconds <= high:  # an infinite one too
            raise PydanticCustomError(
                "duration_range",
                "expected a duration from {low} to {high}",
                {"low": show_seconds(low), "high": show_seconds(high)},
            )
        return seconds

    return validate


# A type's JSON Schema says what its values look like under this key; spec/schema.py appends
# it to the description of each field of that type (a field's own description would hide it).
EXPECTED = "x-expected"


def _duration_schema(low: float, high: float, examples: list[str]) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "type": "string",
            "pattern": _DURATION.pattern,
            "examples": examples,
            EXPECTED: f"A duration from {show_seconds(low)} to {show_seconds(high)}: "
            "ms, s, m and h parts such as 500ms, 2s or 1m30s.",
            "patternErrorMessage": "expected a duration such as 500ms, 2s, 1m or 1m30s",
        }
    )


def parse_size(value: Any) -> int:
    """Bytes from a plain integer or '512Mi', '1Gi', '300M', '64k', at most 1024Gi."""
    size: Decimal | int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        # Decimal, not float: a long number is too large, never infinite or rounded.
        size = Decimal(match.group(1)) * _UNIT_BYTES[match.group(2)]
    if size is None or size < 1:
        raise PydanticCustomError(
            "size", "expected a size in bytes such as 268435456, 256Mi, 1Gi or 300M"
        )
    if size > MAX_MEMORY:
        raise PydanticCustomError("size_range", "expected a size of at most 1024Gi")
    return int(size)


def _env_value(value: Any) -> str:
    # An unquoted `true`, `8080`, `0755` or `1.10` is read as a boolean or a number whose text
    # is not what was written (`0755` loses its zero, `1.10` becomes 1.1), so only a string,
    # written as the container will see it, is taken.
    if not isinstance(value, str):
        raise PydanticCustomError("env_value", "expected a string")
    if "\0" in value:
        raise PydanticCustomError("env_value_nul", "expected a string without NUL characters")
    if len(value) > MAX_ENV_VALUE:
        raise PydanticCustomError(
            "env_value_long", "expected at most {max} characters", {"max": MAX_ENV_VALUE}
        )
    return value


def _argument(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "expected a string")
    if "\0" in value:
        raise PydanticCustomError("argument_nul", "expected a string without NUL characters")
    return value


def _image_reference(value: Any) -> str:
    # The length first: Docker bounds it, and no long text reaches the regular expression.
    if isinstance(value, str) and len(value) <= MAX_IMAGE_REFERENCE:
        match = _IMAGE_REFERENCE.match(value)
        if match and len(match.group("name")) <= MAX_IMAGE_NAME:
            return value
    raise PydanticCustomError(
        "image_reference",
        "expected an image reference such as python:3.11-slim or "
        "registry.example.com:5000/team/web:1.2 (lowercase path, optional :tag and @digest)",
    )


def _base_image(value: Any) -> str:
    if value == DEFAULT_BASE:
        return DEFAULT_BASE
    try:
        return _image_reference(value)
    except PydanticCustomError:
        raise PydanticCustomError(
            "image_reference",
            "expected auto or an image reference such as python:3.11-slim",
        ) from None


def _url_path(value: Any) -> str:
    if isinstance(value, str) and len(value) <= MAX_URL_PATH and _URL_PATH.match(value):
        return value
    raise PydanticCustomError(
        "url_path",
        "expected a URL path starting with / such as /healthz (no spaces or control "
        "characters; others percent-encoded)",
    )


def _env_name(value: Any) -> str:
    if isinstance(value, str) and _ENV_NAME.match(value):
        return value
    raise PydanticCustomError(
        "env_name", "expected an environment variable name: letters, digits and '_'"
    )


# The access section names where keys are; these never echo what was written, in case a key
# was pasted where its source's name belongs.
def _key_env(value: Any) -> str:
    if isinstance(value, str) and _ENV_NAME.match(value):
        return value
    raise PydanticCustomError(
        "key_env",
        "expected the name of an environment variable holding the key: letters, digits and '_'",
    )


def _key_file(value: Any, info: ValidationInfo) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise PydanticCustomError(
            "key_file",
            "expected the absolute path of a file holding the key, outside the repository",
        )
    if "\0" in value:  # the OS refuses such a path (pydantic would say "embedded null byte")
        raise PydanticCustomError("key_file", _NUL_IN_PATH)
    root: Path | None = (info.context or {}).get("root")
    try:
        resolved = Path(value).resolve()
    except (OSError, RuntimeError):  # a symbolic link loop: reading it reports the problem
        resolved = Path(value)
    if root is not None and resolved.is_relative_to(root.resolve()):
        raise PydanticCustomError(
            "key_file", "expected a file outside the repository: keys are never committed"
        )
    return value


def _folder_id(value: Any) -> str:
    if isinstance(value, str) and _FOLDER_ID.match(value):
        return value
    raise PydanticCustomError(
        "folder_id", "expected a folder id: letters, digits, '.', '_' and '-', at most 64"
    )


_NUL_IN_PATH = "expected a path without NUL characters ('\\0'): no file can be named so"


def _shown_path(path: str) -> str:
    """A path for a message: whole unless it is too long to read (the OS refused it anyway)."""
    return path if len(path) <= 80 else f"{path[:40]}...{path[-20:]} ({len(path)} characters)"


def _os_reason(exc: OSError) -> str:
    """What the OS said about a path, as a message's tail ("file name too long")."""
    reason = exc.strerror or type(exc).__name__
    return reason[:1].lower() + reason[1:]


def _repo_path(value: Any, info: ValidationInfo) -> str:
    """A folder written relative to its YAML file, returned relative to the repository root."""
    return _inside_repo(value, info, folder=True)


def _repo_file(value: Any, info: ValidationInfo) -> str:
    """A file written relative to its YAML file, returned relative to the repository root."""
    return _inside_repo(value, info, folder=False)


def _inside_repo(value: Any, info: ValidationInfo, folder: bool) -> str:
    if not isinstance(value, str) or not value:
        raise PydanticCustomError("repo_path", "expected a path relative to this file")
    if "\0" in value:  # the OS refuses such a path (pydantic would say "embedded null byte")
        raise PydanticCustomError("repo_path", _NUL_IN_PATH)
    context = info.context or {}
    root: Path | None = context.get("root")
    base: Path | None = context.get("base")
    if root is None or base is None:
        return value
    try:
        target = (base / value).resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop (Python 3.11)
        raise PydanticCustomError(
            "repo_path", "expected a path without a symbolic link loop, got {path}", {"path": value}
        ) from None
    try:
        relative = target.relative_to(root.resolve())
    except ValueError:
        raise PydanticCustomError(
            "repo_path", "expected a path inside the repository, got {path}", {"path": value}
        ) from None
    kind = "folder" if folder else "file"
    try:
        found = target.is_dir() if folder else target.is_file()
    except OSError as exc:  # ENAMETOOLONG and the like: what the OS said is the reason
        raise PydanticCustomError(
            "repo_path",
            "expected an existing {kind}, {path} is not one in the repository: {reason}",
            {"kind": kind, "path": _shown_path(value), "reason": _os_reason(exc)},
        ) from None
    if not found:
        raise PydanticCustomError(
            "repo_path",
            "expected an existing {kind}, {path} is not one",
            {"kind": kind, "path": value},
        )
    return relative.as_posix() or "."


DnsLabel = Annotated[
    str,
    PlainValidator(_dns_label),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _DNS_LABEL.pattern,
            "maxLength": 63,
            "patternErrorMessage": "expected a DNS label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit",
        }
    ),
]
# Durations' bounds: a health check more often than every 100ms is a busy loop; none waits
# for more than a day.
HOUR = 3600.0
CheckInterval = Annotated[
    float,
    PlainValidator(_duration_within(0.1, HOUR)),
    _duration_schema(0.1, HOUR, ["2s", "500ms"]),
]
CheckTimeout = Annotated[
    float,
    PlainValidator(_duration_within(0.01, HOUR)),
    _duration_schema(0.01, HOUR, ["1s", "500ms"]),
]
StartTimeout = Annotated[
    float, PlainValidator(_duration_within(1.0, DAY)), _duration_schema(1.0, DAY, ["60s", "5m"])
]
EndpointTimeout = Annotated[
    float,
    PlainValidator(_duration_within(0.01, DAY)),
    _duration_schema(0.01, DAY, ["15s", "1m"]),
]
RolloutPause = Annotated[
    float, PlainValidator(_duration_within(0.0, DAY)), _duration_schema(0.0, DAY, ["30s", "5m"])
]


def _size_schema(minimum: int, low: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": minimum, "maximum": MAX_MEMORY},
                {
                    "type": "string",
                    "pattern": _SIZE.pattern,
                    "patternErrorMessage": "expected a size in bytes such as 268435456, 256Mi, "
                    "1Gi or 300M",
                },
            ],
            EXPECTED: f"A size from {low} to 1024Gi: bytes, or a number with k, Ki, M, Mi, G "
            "or Gi.",
        }
    )


Size = Annotated[int, PlainValidator(parse_size), _size_schema(MIN_MEMORY, "6Mi")]
LogSize = Annotated[int, PlainValidator(parse_size), _size_schema(MIN_LOG_SIZE, "64k")]
EnvName = Annotated[
    str, PlainValidator(_env_name), WithJsonSchema({"type": "string", "pattern": _ENV_NAME.pattern})
]
EnvValue = Annotated[
    str,
    PlainValidator(_env_value),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": "^[^\\u0000]*$",
            "maxLength": MAX_ENV_VALUE,
            "description": 'A string: quote numbers and booleans, e.g. PORT: "8080".',
        }
    ),
]
ImageReference = Annotated[
    str,
    PlainValidator(_image_reference),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _IMAGE_REFERENCE_ECMA,
            "maxLength": MAX_IMAGE_REFERENCE,
        }
    ),
]
BaseImage = Annotated[
    str,
    PlainValidator(_base_image),
    WithJsonSchema(
        {
            "anyOf": [
                {"const": "auto"},
                {
                    "type": "string",
                    "pattern": _IMAGE_REFERENCE_ECMA,
                    "maxLength": MAX_IMAGE_REFERENCE,
                },
            ]
        }
    ),
]
Argument = Annotated[
    str, PlainValidator(_argument), WithJsonSchema({"type": "string", "pattern": "^[^\\u0000]*$"})
]
UrlPath = Annotated[
    str,
    PlainValidator(_url_path),
    WithJsonSchema({"type": "string", "pattern": _URL_PATH.pattern, "maxLength": MAX_URL_PATH}),
]
KeyEnv = Annotated[
    str, PlainValidator(_key_env), WithJsonSchema({"type": "string", "pattern": _ENV_NAME.pattern})
]
KeyFile = Annotated[
    str, PlainValidator(_key_file), WithJsonSchema({"type": "string", "pattern": "^/"})
]
FolderId = Annotated[
    str,
    PlainValidator(_folder_id),
    WithJsonSchema({"type": "string", "pattern": _FOLDER_ID.pattern}),
]
RepoPath = Annotated[
    str, PlainValidator(_repo_path), WithJsonSchema({"type": "string", "minLength": 1})
]
RepoFile = Annotated[
    str, PlainValidator(_repo_file), WithJsonSchema({"type": "string", "minLength": 1})
]
# The types a python node's variables may have; gitops_nodes/pynode/types.py checks them.
VariableType = Literal[
    "int",
    "float",
    "str",
    "bool",
    "list[float]",
    "list[int]",
    "list[str]",
    "dict[str, float]",
    "dict[str, any]",
    "any",
]
_PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!_-]+$")


def _pinned(value: Any) -> str:
    if isinstance(value, str) and _PINNED.match(value):
        return value
    raise PydanticCustomError("pinned", "expected a pinned requirement such as scikit-learn==1.5.2")


Pinned = Annotated[
    str, PlainValidator(_pinned), WithJsonSchema({"type": "string", "pattern": _PINNED.pattern})
]
PYTHON_PORT = 8080
DEFAULT_BASE = "auto"  # python:3.11-slim when it can be had, else the offline Debian base
Port = Annotated[int, Field(ge=1, le=65535)]


def _written(seconds: float, text: str, description: str | None = None) -> Any:
    """A duration field's default, shown in the JSON Schema as it is written in YAML (every
    field needs a description: tests/unit/test_schema.py says which lack one)."""
    return Field(default=seconds, description=description, json_schema_extra={"default": text})


def _exactly_one(first: str, second: str, kind: str) -> dict[str, Any]:
    """The JSON Schema of a model validator's "exactly one of `first` and `second`" rule
    (null counts as absent, as it does for the model, which reads null as not written)."""
    return {
        "oneOf": [
            {"required": [name], "properties": {name: {"type": kind}}} for name in (first, second)
        ]
    }


_KIND = (
    "What the document describes: Node (instances behind one API) or Alias (a name routing "
    "to nodes)."
)


def _gpus(value: Any) -> int | str | tuple[str, ...]:
    """resources.gpus: a count, `all`, or a list of device ids (indexes or UUIDs)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= MAX_GPUS:
            return value
        raise PydanticCustomError(
            "gpus_count", "expected a number of GPUs from 1 to {max}", {"max": MAX_GPUS}
        )
    if value == "all":
        return "all"
    if isinstance(value, list) and value:
        if not all(isinstance(item, str) and _GPU_ID.match(item) for item in value):
            raise PydanticCustomError(
                "gpus_ids",
                'expected GPU device ids: indexes such as "0" or UUIDs such as '
                '"GPU-3a23c669-1f69-c64e-cf85-44e9b07e7a2a" (quote indexes)',
            )
        if len(set(value)) != len(value):
            raise PydanticCustomError("gpus_ids", "expected each GPU device id once")
        return tuple(value)
    raise PydanticCustomError(
        "gpus",
        'expected a number of GPUs (1), all, or a list of device ids (["0", "1"])',
    )


Gpus = Annotated[
    int | str | tuple[str, ...],
    PlainValidator(_gpus),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_GPUS},
                {"const": "all"},
                {
                    "type": "array",
                    "items": {"type": "string", "pattern": _GPU_ID.pattern},
                    "minItems": 1,
                    "uniqueItems": True,
                },
            ],
            "description": "GPUs for each instance: a count (1), all, or device ids "
            '(["0", "1"] or GPU UUIDs). Docker device requests with the gpu capability on one '
            "host (the NVIDIA Container Toolkit must be installed); generic resources named "
            "gpu on a Swarm (a count or ids; not all)",
        }
    ),
]
BatchDelay = Annotated[
    float,
    PlainValidator(_duration_within(0.0, MAX_BATCH_DELAY)),
    _duration_schema(0.0, MAX_BATCH_DELAY, ["2ms", "5ms"]),
]


def repeated(names: Iterable[str]) -> list[str]:
    """The names that stand more than once, sorted: for "expected each ... once" errors."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


class SpecModel(BaseModel):
    """Strict, immutable, camelCase in YAML: unknown fields and loose types are errors."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, alias_generator=to_camel, populate_by_name=True
    )


class HealthCheck(SpecModel):
    """How gitops-nodes decides an instance is Healthy. Without a path: the port accepts TCP."""

    path: UrlPath | None = Field(
        default=None,
        description="The path checked with GET: a 2xx or 3xx answer passes. Without it, "
        "the check is that the port accepts TCP connections.",
    )
    port: Port | None = Field(
        default=None, description="The port checked, in the container. Default: the node's port."
    )
    interval: CheckInterval = _written(2.0, "2s", "How often each instance is checked.")
    timeout: CheckTimeout = _written(1.0, "1s", "How long one check may take before it fails.")
    healthy_threshold: int = Field(
        default=1,
        ge=1,
        le=MAX_THRESHOLD,
        description="Checks in a row that must pass before an instance counts Healthy.",
    )
    unhealthy_threshold: int = Field(
        default=3,
        ge=1,
        le=MAX_THRESHOLD,
        description="Checks in a row that must fail before an instance counts Unhealthy "
        "and is taken out of balancing.",
    )
    start_timeout: StartTimeout = _written(
        60.0, "60s", "Apply's deadline for a new instance to become Healthy."
    )


class EndpointSettings(SpecModel):
    """How the balancer talks to the node's instances (the reference's timeout and idle
    timeout, 15 s each by default). Changing them republishes the node, no new containers."""

    timeout: EndpointTimeout = _written(
        15.0, "15s", "One request, from sent to answered in full; past it the balancer answers 504."
    )
    idle_timeout: EndpointTimeout = _written(
        15.0, "15s", "A kept-alive connection to an instance, unused this long, is closed."
    )


class Telemetry(SpecModel):
    """Where each instance serves its own metrics in Prometheus text format. The balancer
    fetches them whenever its `/-/metrics` is scraped and re-exposes them labelled with
    `node_id` and `instance_id`. Without a port: the node's serving port."""

    path: UrlPath = Field(
        default="/metrics", description="The path of the instance's Prometheus metrics."
    )
    port: Port | None = Field(
        default=None,
        description="The port the metrics are served on. Default: the node's serving port; "
        "another one is published too.",
    )


class Logs(SpecModel):
    """Each instance's output budget: the engine rotates its log at maxSize and keeps maxFiles
    files, so an instance's log never takes more than maxSize × maxFiles on disk. The log
    settings are fixed when a container is created: changing them replaces the instances."""

    max_size: LogSize = Field(
        default=DEFAULT_LOG_MAX_SIZE,
        description="The size at which an instance's log is rotated (at least 64k).",
    )
    max_files: int = Field(
        default=DEFAULT_LOG_MAX_FILES,
        ge=1,
        le=100,
        description="How many log files of an instance are kept, the current one included.",
    )

    @model_validator(mode="after")
    def _engine_minimum(self) -> Logs:
        if self.max_size < MIN_LOG_SIZE:
            raise PydanticCustomError(
                "min_log_size",
                "expected at least 64k for a log file, got {size} bytes",
                {"size": self.max_size},
            )
        return self


class Resources(SpecModel):
    """Limits for each instance's container."""

    cpus: float | None = Field(
        default=None,
        ge=MIN_CPUS,
        le=MAX_CPUS,
        allow_inf_nan=False,
        description="CPUs each instance may use, from 0.01 to 1024. Default: no limit.",
    )
    memory: Size | None = Field(
        default=None, description="The memory limit of each instance. Default: no limit."
    )
    gpus: Gpus | None = Field(
        default=None,
        description="GPUs given to each instance: a count (1), all, or a list of device ids "
        '(["0", "1"], or GPU UUIDs). Unset: none. A host without GPU support fails the '
        "instance's start with a message naming the node.",
    )

    @model_validator(mode="after")
    def _docker_minimum(self) -> Resources:
        if self.memory is not None and self.memory < MIN_MEMORY:
            raise PydanticCustomError(
                "min_memory",
                "expected at least 6Mi (Docker's smallest memory limit), got {memory} bytes",
                {"memory": self.memory},
            )
        return self


class ImageSource(SpecModel):
    """An HTTP service from a Docker image given by name, or built from a folder of the repo."""

    model_config = ConfigDict(json_schema_extra=_exactly_one("name", "build", "string"))

    name: ImageReference | None = Field(
        default=None,
        description="An image by name, as Docker writes it: [host[:port]/]path[:tag][@digest]. "
        "Exactly one of name and build.",
    )
    build: RepoPath | None = Field(
        default=None,
        description="A folder with a Dockerfile, relative to this file, built into the "
        "node's image. Exactly one of name and build.",
    )
    dockerfile: str = Field(
        default="Dockerfile", description="The Dockerfile's path inside the build folder."
    )
    port: Port = Field(description="The port the service listens on in the container.")
    command: list[Argument] | None = Field(
        default=None, description="The container's command, replacing the image's."
    )

    @field_validator("command")
    @classmethod
    def _a_program(cls, command: list[str] | None) -> list[str] | None:
        # [] or [""] names no program: the container could only fail to start.
        if command is not None and (not command or not command[0]):
            raise PydanticCustomError(
                "command",
                "expected the program to run first (such as [python, serve.py]); leave command "
                "out to run the image's own",
            )
        return command

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> ImageSource:
        if (self.name is None) == (self.build is None):
            raise PydanticCustomError(
                "image_source", "expected exactly one of 'name' (an image) or 'build' (a folder)"
            )
        root: Path | None = (info.context or {}).get("root")
        if self.build is not None and root is not None:
            if "\0" in self.dockerfile:  # resolve() would raise "embedded null byte"
                raise PydanticCustomError("dockerfile", _NUL_IN_PATH)
            folder = (root / self.build).resolve()
            try:
                dockerfile = (folder / self.dockerfile).resolve()
            except (OSError, RuntimeError):  # a symbolic link loop
                dockerfile = folder / ".."
            try:
                found = dockerfile.is_relative_to(folder) and dockerfile.is_file()
            except OSError as exc:  # ENAMETOOLONG and the like
                raise PydanticCustomError(
                    "dockerfile",
                    "expected a file inside the build folder {folder}, {name} is not one: {reason}",
                    {
                        "folder": self.build,
                        "name": _shown_path(self.dockerfile),
                        "reason": _os_reason(exc),
                    },
                ) from None
            if not found:
                raise PydanticCustomError(
                    "dockerfile",
                    "expected a file inside the build folder {folder}, {name} is not one",
                    {"folder": self.build, "name": self.dockerfile},
                )
        return self


class PythonBatch(SpecModel):
    """Dynamic batching of a python node's requests (see the README's "Python nodes")."""

    max_size: int = Field(
        ge=1,
        le=MAX_BATCH_SIZE,
        description="The most requests one run of the code answers (1 to 4096).",
    )
    max_delay: BatchDelay = Field(
        default=0.002,
        json_schema_extra={"default": "2ms"},
        description="The longest a request waits for others to join its batch (0s to 1s); "
        "an idle instance runs a request at once.",
    )
    numpy: bool = Field(
        default=False,
        description="Give each input variable as a numpy array of the batch's values rather "
        "than a list (numpy must be among the packages).",
    )


_SHA256 = re.compile(r"^(sha256:)?[0-9a-f]{64}$")
_REMOTE_SCHEMES = ("s3://", "https://", "http://")
_S3_URL = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^\x00-\x1f\x7f]+$")
_HTTP_URL = re.compile(r"^https?://[^\s/@]+(/[^\s\x00-\x1f\x7f]*)?$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MLFLOW_NAME = re.compile(r"^[^\x00-\x1f\x7f/]{1,256}$")
_MLFLOW_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


def _source_url(value: Any) -> str:
    if isinstance(value, str) and len(value) <= 2048:
        if value.startswith("s3://") and _S3_URL.match(value):
            return value
        if value.startswith(("https://", "http://")) and _HTTP_URL.match(value):
            return value
    raise PydanticCustomError(
        "source_url",
        "expected s3://bucket/key or https://host/path, without user or password in it "
        "(credentials come from the environment, never the spec)",
    )


def _sha256(value: Any) -> str:
    if isinstance(value, str) and _SHA256.match(value):
        return value.removeprefix("sha256:")
    raise PydanticCustomError("sha256", "expected a sha256 digest: 64 lowercase hex digits")


SourceUrl = Annotated[
    str,
    PlainValidator(_source_url),
    WithJsonSchema({"type": "string", "pattern": "^(s3|https?)://", "maxLength": 2048}),
]
Sha256 = Annotated[
    str, PlainValidator(_sha256), WithJsonSchema({"type": "string", "pattern": _SHA256.pattern})
]


class MlflowModel(SpecModel):
    """A model in the MLflow registry at MLFLOW_TRACKING_URI: a version, or the version an
    alias points to now (looked up on every plan, so moving the alias is a change)."""

    model: str = Field(
        pattern=_MLFLOW_NAME.pattern, description="the registered model's name, e.g. iris"
    )
    version: int | None = Field(
        default=None, ge=1, description="a version number; exactly one of version and alias"
    )
    alias: str | None = Field(
        default=None,
        pattern=_MLFLOW_ALIAS.pattern,
        description="an alias such as champion; exactly one of version and alias",
    )

    @model_validator(mode="after")
    def _one_version(self) -> MlflowModel:
        if (self.version is None) == (self.alias is None):
            raise PydanticCustomError(
                "mlflow_version", "expected exactly one of 'version' (a number) or 'alias'"
            )
        return self

    def uri(self) -> str:
        """The model's registry URI, as MLflow writes it (models:/iris/3, models:/iris@champion)."""
        if self.alias is not None:
            return f"models:/{self.model}@{self.alias}"
        return f"models:/{self.model}/{self.version}"


class ModelSource(SpecModel):
    """Where a file or model comes from, fetched on the host where gitops-nodes runs into a
    cache keyed by content digest and built into the image: `s3://bucket/key` (or
    `{url: s3://..., sha256: ...}`), `{url: https://..., sha256: ...}`, or
    `{mlflow: {model: iris, alias: champion}}`. Credentials come from the environment."""

    url: SourceUrl | None = Field(
        default=None, description="s3://bucket/key or https://host/path (sha256 required)"
    )
    sha256: Sha256 | None = Field(
        default=None,
        description="the content's sha256 (hex): required for https, checked when given",
    )
    mlflow: MlflowModel | None = Field(
        default=None, description="a registered model of the MLflow registry"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"url": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.url is None) == (self.mlflow is None):
            raise PydanticCustomError(
                "model_source", "expected exactly one of 'url' (s3:// or https://) or 'mlflow'"
            )
        if self.url is not None and not self.url.startswith("s3://") and self.sha256 is None:
            raise PydanticCustomError(
                "source_sha256",
                "expected a sha256 for an https:// source: what is built in is pinned",
            )
        if self.mlflow is not None and self.sha256 is not None:
            raise PydanticCustomError(
                "source_sha256", "expected no sha256 with mlflow: the registry names the version"
            )
        return self

    def shown(self) -> str:
        """The source as plans and messages name it (never with credentials)."""
        if self.mlflow is not None:
            return self.mlflow.uri()
        return self.url or ""


def _source_kind(value: Any) -> str:
    if isinstance(value, str) and not value.startswith(_REMOTE_SCHEMES):
        return "repo-file"
    return "model-source"


# A repository file (a path relative to this YAML file), or a model source.
FileSource = Annotated[
    Annotated[RepoFile, Tag("repo-file")] | Annotated[ModelSource, Tag("model-source")],
    Discriminator(_source_kind),
]
SOURCE_TAGS = ("repo-file", "model-source")  # union tags pydantic puts in error locations


def _file_name(value: Any) -> str:
    if isinstance(value, str) and _FILE_NAME.match(value):
        return value
    raise PydanticCustomError(
        "file_name", "expected a file name: letters, digits, '.', '_' and '-', at most 128"
    )


FileName = Annotated[
    str,
    PlainValidator(_file_name),
    WithJsonSchema({"type": "string", "pattern": _FILE_NAME.pattern}),
]


def _io_variable(value: Any) -> str:
    # The rule the node's image applies (pynode/config.py), checked here so the problem is
    # reported at the variable's key rather than at the code that was being checked.
    if (
        isinstance(value, str)
        and value.isidentifier()
        and not keyword.iskeyword(value)
        and not value.startswith("__")
    ):
        return value
    raise PydanticCustomError(
        "io_variable",
        "expected a Python variable name: letters, digits and '_', not starting with a digit "
        "or '__', not a keyword",
    )


# The schema has the pattern editors can check; keywords and '__' are more than it says.
IoVariable = Annotated[
    str,
    PlainValidator(_io_variable),
    WithJsonSchema({"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"}),
]


class PythonSource(SpecModel):
    """A node made from Python code (a file, or a notebook's cell), a checkpoint of
    interpreter state, and the variables selected as its API's inputs and outputs."""

    code: RepoFile | None = Field(
        default=None, description="a Python file run on every request; or notebook and cell"
    )
    notebook: RepoFile | None = Field(
        default=None, description="a Jupyter notebook whose cell `cell` is the request code"
    )
    cell: str | None = Field(
        default=None,
        min_length=1,
        description="the tag (Jupyter cell tags) or id of the notebook's request code cell",
    )
    checkpoint: FileSource | None = Field(
        default=None,
        description="the interpreter state loaded once: a pickled dict of variables, from the "
        "repository, s3://, https:// (with sha256)",
    )
    files: dict[FileName, FileSource] = Field(
        default_factory=dict,
        description="extra files the code reads, under files/<name> in its working folder; "
        "an mlflow source gives the model's artifacts as a folder",
    )
    models: dict[IoVariable, ModelSource] = Field(
        default_factory=dict,
        description="MLflow models loaded as pyfunc into these variables before set-up runs",
    )
    setup: RepoFile | None = Field(default=None, description="A Python file run once at start.")
    inputs: dict[IoVariable, VariableType] = Field(
        min_length=1,
        description="The variables a request sets, each with its type; the code must not "
        "redefine them.",
    )
    outputs: dict[IoVariable, VariableType] = Field(
        min_length=1, description="The variables the response carries, each with its type."
    )
    packages: list[Pinned] = Field(
        default_factory=list,
        description="Pinned requirements (name==version), downloaded as wheels on the host.",
    )
    base_image: BaseImage = Field(
        default=DEFAULT_BASE,
        description="The image the node's image is built on; auto: python:3.11-slim if it "
        "can be had, else the offline Debian base.",
    )
    traceback: bool = Field(
        default=False, description="Whether an error answer carries the code's traceback."
    )
    batch: PythonBatch | None = Field(
        default=None,
        description="Dynamic batching: the code runs once for many requests, each input "
        "variable holding the batch's values and each output set to a list of one value per "
        "request. Unset: one run per request.",
    )
    allow_non_finite: bool = Field(
        default=False,
        description="Answer NaN and infinite float outputs as null. Unset or false: such an "
        "output is a 500 InvalidOutput naming it.",
    )

    @model_validator(mode="after")
    def _one_code(self) -> PythonSource:
        if (self.code is None) == (self.notebook is None):
            raise PydanticCustomError(
                "python_code", "expected exactly one of 'code' (a file) or 'notebook' and 'cell'"
            )
        if (self.notebook is None) != (self.cell is None):
            raise PydanticCustomError(
                "notebook_cell", "expected 'cell' (a cell's tag or id) with 'notebook', only"
            )
        for name, source in self.models.items():
            if source.mlflow is None:
                raise PydanticCustomError(
                    "python_models",
                    "expected an mlflow source for model variable {name}: only MLflow models "
                    "load as pyfunc (put other files under 'files')",
                    {"name": name},
                )
        return self


class AccessKeySource(SpecModel):
    """A caller allowed on a private node or alias: its name, and where gitops-nodes reads its
    key when it runs (an environment variable or a file), never the key itself."""

    model_config = ConfigDict(json_schema_extra=_exactly_one("fromEnv", "fromFile", "string"))

    name: DnsLabel = Field(
        description="The caller's name, shown in logs and passed to instances; never the key."
    )
    from_env: KeyEnv | None = Field(
        default=None,
        description="An environment variable holding the key where gitops-nodes runs. "
        "Exactly one of fromEnv and fromFile.",
    )
    from_file: KeyFile | None = Field(
        default=None,
        description="The absolute path of a file holding the key, outside the repository. "
        "Exactly one of fromEnv and fromFile.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_literal_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and {"key", "value", "secret", "token"} & set(data):
            raise PydanticCustomError(
                "literal_key",
                "expected 'fromEnv' or 'fromFile' naming where the key is: a key itself never "
                "goes into the spec",
            )
        return data

    @model_validator(mode="after")
    def _one_source(self) -> AccessKeySource:
        if (self.from_env is None) == (self.from_file is None):
            raise PydanticCustomError(
                "key_source",
                "expected exactly one of 'fromEnv' (an environment variable) or 'fromFile' "
                "(a file outside the repository) holding the key",
            )
        return self


_SECRET_REFERENCE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[A-Za-z_][A-Za-z0-9_.-]*$")
# An absolute, normalized path in a container, for a secret file.
_CONTAINER_PATH = re.compile(r"^(/[A-Za-z0-9._@+-]+)+$")


def _secret_reference(value: Any) -> str:
    if isinstance(value, str) and len(value) <= 256 and _SECRET_REFERENCE.match(value):
        return value
    raise PydanticCustomError(
        "secret_reference",
        "expected <name>/<key>: the secrets file secrets/<name>.yaml (or .yml, .json) of the "
        "repository and a key in it, such as db/password",
    )


def _container_path(value: Any) -> str:
    if (
        isinstance(value, str)
        and len(value) <= MAX_URL_PATH
        and _CONTAINER_PATH.match(value)
        and not {".", ".."} & set(value.split("/"))
    ):
        return value
    raise PydanticCustomError(
        "container_path",
        "expected an absolute path of a file in the container, such as /run/secrets/db.json "
        "(no '.' or '..' parts, no spaces)",
    )


SecretReference = Annotated[
    str,
    PlainValidator(_secret_reference),
    WithJsonSchema({"type": "string", "pattern": _SECRET_REFERENCE.pattern, "maxLength": 256}),
]
ContainerPath = Annotated[
    str,
    PlainValidator(_container_path),
    WithJsonSchema({"type": "string", "pattern": _CONTAINER_PATH.pattern}),
]


class SecretSource(SpecModel):
    """Where gitops-nodes reads a secret value when it runs, never the value itself: exactly
    one of an environment variable, a file outside the repository, or a key of a
    SOPS-encrypted file of the repository."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [{"required": [name]} for name in ("fromEnv", "fromFile", "fromSecret")]
        }
    )

    from_env: KeyEnv | None = Field(
        default=None,
        description="the name of an environment variable of the process that runs gitops-nodes",
    )
    from_file: KeyFile | None = Field(
        default=None,
        description="the absolute path of a file outside the repository holding the value",
    )
    from_secret: SecretReference | None = Field(
        default=None,
        description=(
            "<name>/<key>: the key of the SOPS-encrypted file secrets/<name>.yaml (or .yml, "
            ".json) of the repository, decrypted with the age keys in SOPS_AGE_KEY_FILE or "
            "SOPS_AGE_KEY"
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> SecretSource:
        given = [s for s in (self.from_env, self.from_file, self.from_secret) if s is not None]
        if len(given) != 1:
            raise PydanticCustomError(
                "secret_source",
                "expected exactly one of 'fromEnv' (an environment variable), 'fromFile' (a "
                "file outside the repository) or 'fromSecret' (<name>/<key> of a SOPS file in "
                "secrets/)",
            )
        return self

    @property
    def field(self) -> str:
        """The YAML name of the source given: where a problem reading it is reported."""
        if self.from_env is not None:
            return "fromEnv"
        return "fromFile" if self.from_file is not None else "fromSecret"


def _env_kind(value: Any) -> str:
    return "secret" if isinstance(value, dict | SecretSource) else "literal"


# An env value: a string as the container sees it, or a mapping naming a secret's source.
# Discriminated by its shape, so a wrong value gets the errors of what it looks like only.
EnvEntry = Annotated[
    Annotated[EnvValue, Tag("literal")] | Annotated[SecretSource, Tag("secret")],
    Discriminator(_env_kind),
]


class Access(SpecModel):
    """Who may call a private node or alias: the keys it accepts, and optionally the folder ids
    a call's `x-folder-id` must name. Without `access`, anyone may call it."""

    keys: list[AccessKeySource] = Field(
        min_length=1, description="The callers allowed, each with where its key is."
    )
    folders: list[FolderId] = Field(
        default_factory=list,
        description="When set, a call's x-folder-id must name one of these folders.",
        json_schema_extra={"uniqueItems": True},
    )

    @model_validator(mode="after")
    def _unique(self) -> Access:
        duplicates = repeated(key.name for key in self.keys)
        if duplicates:
            raise PydanticCustomError(
                "access_keys",
                "expected each key name once, {names} listed more than once",
                {"names": ", ".join(duplicates)},
            )
        if len(set(self.folders)) != len(self.folders):
            raise PydanticCustomError("access_folders", "expected each folder once")
        return self


_KERNEL_FOLDERS = ("/proc/", "/sys/")


class NodeSpec(SpecModel):
    """A node: identical instances behind one load-balanced API."""

    model_config = ConfigDict(json_schema_extra=_exactly_one("image", "python", "object"))

    image: ImageSource | None = Field(
        default=None,
        description="An HTTP service in a Docker image. Exactly one of image and python.",
    )
    python: PythonSource | None = Field(
        default=None,
        description="A node made from Python code, its API generated from the variables "
        "selected. Exactly one of image and python.",
    )
    instances: int = Field(
        default=1, ge=1, le=MAX_INSTANCES, description="How many identical instances run."
    )
    min_healthy: int = Field(
        default=1,
        ge=0,
        description="The fewest Healthy instances the node needs (at most instances); "
        "never fewer while instances are replaced.",
    )
    env: dict[EnvName, EnvEntry] = Field(
        default_factory=dict,
        description="Environment variables of each instance: a string (quote numbers and "
        'booleans: "8080", "true"), or a secret\'s source ({fromEnv: NAME}, {fromFile: '
        "/abs/path} or {fromSecret: name/key}), never shown in plans or labels.",
    )
    secret_files: dict[ContainerPath, SecretSource] = Field(
        default_factory=dict,
        description="Files mounted read-only in each instance at the path given (the key), "
        "each holding a secret read from its source; never shown in plans or labels.",
    )
    resources: Resources = Field(
        default_factory=Resources, description="Limits for each instance's container."
    )
    health_check: HealthCheck = Field(
        default_factory=HealthCheck,
        description="How an instance is judged Healthy and taken into balancing.",
    )
    endpoint: EndpointSettings = Field(
        default_factory=EndpointSettings,
        description="How the balancer talks to the instances: request and idle timeouts.",
    )
    # How many instances are replaced at once (each make-before-break); see plan.py.
    maintenance_limit: int = Field(
        default=1,
        ge=1,
        description="How many instances are replaced at once, each make-before-break "
        "(at most instances).",
    )
    # Instances stopped (no cost), definition, image and alias entries kept.
    suspended: bool = Field(
        default=False,
        description="true: the instances are stopped; the definition and alias entries are kept.",
    )
    access: Access | None = Field(
        default=None,
        description="Makes the node private: calls to /nodes/<name>/ need one of these keys.",
    )
    telemetry: Telemetry | None = Field(
        default=None,
        description="Where each instance serves its own metrics, in Prometheus text format.",
    )
    # Answers to /nodes/<name>/...: Location and cookie paths put under that prefix.
    prefix_rewrite: bool = Field(
        default=False,
        description="true: Location and cookie paths of answers to /nodes/<name>/... are put "
        "under that prefix.",
    )
    # The output's budget; unset: DEFAULT_LOG_MAX_SIZE × DEFAULT_LOG_MAX_FILES (see Logs).
    logs: Logs | None = Field(
        default=None,
        description="Each instance's log budget. Default: 3 files of 10Mi.",
    )

    @model_validator(mode="after")
    def _secret_files_apart(self) -> NodeSpec:
        # Each is a file bound at its path: one cannot be inside another (a file is no
        # folder), and the kernel's own file systems take no mounts (the engine refuses).
        paths = sorted(self.secret_files)
        for path in paths:
            if path.startswith(_KERNEL_FOLDERS):
                raise PydanticCustomError(
                    "secret_files",
                    "expected paths outside /proc and /sys, where nothing can be mounted; "
                    "got {path}",
                    {"path": path},
                )
        files = set(paths)
        for path in paths:
            parts = path.split("/")
            inside = ("/".join(parts[:end]) for end in range(2, len(parts)))
            first = next((folder for folder in inside if folder in files), None)
            if first is not None:
                raise PydanticCustomError(
                    "secret_files",
                    "expected files apart: {first} is a file, so {second} cannot be inside it",
                    {"first": first, "second": path},
                )
        return self

    @model_validator(mode="after")
    def _one_kind(self) -> NodeSpec:
        if (self.image is None) == (self.python is None):
            raise PydanticCustomError("node_kind", "expected exactly one of 'image' or 'python'")
        return self

    @model_validator(mode="after")
    def _min_within_instances(self) -> NodeSpec:
        if self.min_healthy > self.instances:
            raise PydanticCustomError(
                "min_healthy",
                "expected minHealthy ≤ instances ({instances}), got {min}",
                {"instances": self.instances, "min": self.min_healthy},
            )
        return self

    @model_validator(mode="after")
    def _limit_within_instances(self) -> NodeSpec:
        if self.maintenance_limit > self.instances:
            raise PydanticCustomError(
                "maintenance_limit",
                "expected maintenanceLimit ≤ instances ({instances}), got {limit}",
                {"instances": self.instances, "limit": self.maintenance_limit},
            )
        return self


class Metadata(SpecModel):
    """The document's identity."""

    name: DnsLabel = Field(
        description="The document's name: a DNS label, unique among the documents of its kind."
    )
    description: str | None = Field(default=None, description="Free text for people.")


class NodeDocument(SpecModel):
    """`kind: Node`."""

    api_version: Literal["gitops-nodes/v1"] = Field(
        description="The spec's version: gitops-nodes/v1."
    )
    kind: Literal["Node"] = Field(description=_KIND)
    metadata: Metadata = Field(description="The document's name and description.")
    spec: NodeSpec = Field(description="A node: identical instances behind one load-balanced API.")


class AliasRoute(SpecModel):
    """One node behind an alias and its share of the alias's requests."""

    node: DnsLabel = Field(description="The name of a Node in the spec.")
    weight: int = Field(
        default=100,
        ge=0,
        le=MAX_WEIGHT,
        description="The node's share of the alias's requests, relative to the others' weights.",
    )


class SessionAffinity(SpecModel):
    """Requests carrying the same value of a header go to the same instance while it serves."""

    header: str = Field(
        pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
        description="The request header whose value picks the instance.",
    )


class Rollout(SpecModel):
    """How `watch` moves an alias to new weights: in steps, each judged before the next."""

    steps: list[int] = Field(
        min_length=1,
        description="Increasing percentages (1 to 99) of the way to the new weights; "
        "100 is always the last step.",
        json_schema_extra={"items": {"type": "integer", "minimum": 1, "maximum": 99}},
    )  # percent of the way to the new weights
    pause: RolloutPause = _written(30.0, "30s", "How long each step is watched before the next.")
    max_error_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="The share of failed requests (0 to 1) above which a step rolls back.",
    )
    # A step is judged only on this many requests to the nodes gaining share (R-data): with
    # none, a node failing every request would pass a pause nobody called it in. 20 is the
    # fewest at which the default 5% bound can tell one failure from none.
    min_requests: int = Field(
        default=20,
        ge=0,
        le=MAX_MIN_REQUESTS,
        description="The fewest requests to the nodes gaining share on which a step is judged.",
    )

    @model_validator(mode="after")
    def _increasing_percentages(self) -> Rollout:
        steps = self.steps
        if any(not 0 < s < 100 for s in steps) or any(a >= b for a, b in pairwise(steps)):
            raise PydanticCustomError(
                "rollout_steps",
                "expected increasing percentages between 1 and 99 (100 is always the last "
                "step), got {steps}",
                {"steps": steps},
            )
        return self


class AliasSpec(SpecModel):
    """A stable name that routes to nodes by weight."""

    nodes: list[AliasRoute] = Field(
        min_length=1,
        description="The nodes behind the alias, each once, with weights not all 0.",
        # At least one route whose weight is not 0 (an absent weight is 100). In an allOf of
        # its own so that editors show this message for this rule only.
        json_schema_extra={
            "allOf": [
                {
                    "contains": {
                        "not": {"required": ["weight"], "properties": {"weight": {"const": 0}}}
                    },
                    "errorMessage": "expected at least one weight above 0, all are 0",
                }
            ]
        },
    )
    session_affinity: SessionAffinity | None = Field(
        default=None,
        description="Requests with the same value of a header go to the same instance.",
    )
    rollout: Rollout | None = Field(
        default=None, description="How watch moves the alias to new weights: in judged steps."
    )
    access: Access | None = Field(
        default=None, description="Makes the alias private: calls to it need one of these keys."
    )
    # Answers to /aliases/<name>/...: Location and cookie paths put under that prefix.
    prefix_rewrite: bool = Field(
        default=False,
        description="true: Location and cookie paths of answers to /aliases/<name>/... are put "
        "under that prefix.",
    )

    @model_validator(mode="after")
    def _weights_and_unique_nodes(self) -> AliasSpec:
        duplicates = repeated(route.node for route in self.nodes)
        if duplicates:
            raise PydanticCustomError(
                "alias_nodes",
                "expected each node once, {names} listed more than once",
                {"names": ", ".join(duplicates)},
            )
        if not any(route.weight for route in self.nodes):
            raise PydanticCustomError(
                "alias_weights", "expected at least one weight above 0, all are 0"
            )
        return self


class AliasDocument(SpecModel):
    """`kind: Alias`."""

    api_version: Literal["gitops-nodes/v1"] = Field(
        description="The spec's version: gitops-nodes/v1."
    )
    kind: Literal["Alias"] = Field(description=_KIND)
    metadata: Metadata = Field(description="The document's name and description.")
    spec: AliasSpec = Field(description="An alias: a stable name that routes to nodes by weight.")


Document = Annotated[NodeDocument | AliasDocument, Field(discriminator="kind")]
