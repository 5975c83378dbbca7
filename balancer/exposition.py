"""The Prometheus text format (version 0.0.4), both ways: parse one exposition strictly, and
merge several into one, every sample given labels naming where it came from.

Parsing follows the format's rules as Prometheus's own parser applies them: `# HELP` and
`# TYPE` at most once per family, TYPE before the family's samples, label values with only the
escapes `\\\\`, `\\"` and `\\n`, values as Go floats (`NaN`, `+Inf`...), an optional integer
timestamp. A violation is an `ExpositionError` naming the line, so one bad instance is reported
rather than copied into the balancer's output.

Merging keeps the output valid whatever the sources say: each family's HELP and TYPE once and
its samples together; a family whose TYPE disagrees with the one seen first, or whose sample
names are already someone else's (the balancer's own families, say), is dropped and counted.
A source label that a sample already has pushes the sample's own to `exported_<name>`, as
Prometheus does when it attaches target labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
# The sample names of a family of each type, as suffixes of the family's name.
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_DIRECTIVE = re.compile(r"#[ \t]+(HELP|TYPE)(?:[ \t]+(\S+))?(?:[ \t](.*))?")
_VALUE = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|Inf|inf|NaN|nan)")
_TIMESTAMP = re.compile(r"-?\d+")
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}

Labels = tuple[tuple[str, str], ...]  # (name, value unescaped), in the order written


class ExpositionError(ValueError):
    """Text that is not valid Prometheus text format; the message names the line."""


@dataclass(frozen=True)
class Sample:
    """One sample line: its name, labels, value and timestamp as written."""

    name: str
    labels: Labels
    value: str
    timestamp: str | None = None


@dataclass
class Family:
    """A metric family: its TYPE (untyped without a TYPE line), HELP and samples."""

    name: str
    type: str = "untyped"
    help: str | None = None
    samples: list[Sample] = field(default_factory=list)


def escape_label(value: str) -> str:
    """A label value escaped for the text format (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """A HELP text escaped for the text format (backslash, newline)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def sample_names(family: str, kind: str) -> tuple[str, ...]:
    """Every sample name a family of that type may use."""
    return tuple(family + suffix for suffix in _SUFFIXES.get(kind, ("",)))


def parse(text: str) -> list[Family]:
    """The families of an exposition, in the order they first appear; ExpositionError when
    the text breaks the format."""
    families: dict[str, Family] = {}
    sampled: set[str] = set()  # sample names already seen: too late for their family's TYPE
    typed: set[str] = set()  # families with a TYPE line
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip(" \t\r")
        if not line:
            continue
        try:
            if line.startswith("#"):
                _directive(line, families, sampled, typed)
                continue
            sample = _sample(line)
            family = _family_of(sample, families)
        except ExpositionError as exc:
            raise ExpositionError(f"line {number}: {exc}") from None
        family.samples.append(sample)
        sampled.add(sample.name)
    return list(families.values())


def _directive(line: str, families: dict[str, Family], sampled: set[str], typed: set[str]) -> None:
    """A HELP or TYPE line into families; any other comment is ignored."""
    match = _DIRECTIVE.fullmatch(line)
    if match is None:
        return
    keyword, name, rest = match.group(1), match.group(2), match.group(3) or ""
    if name is None or not _METRIC_NAME.fullmatch(name):
        raise ExpositionError(f"# {keyword} needs a metric name, got {name!r}")
    family = families.get(name)
    if family is None:
        family = families[name] = Family(name)
    if keyword == "HELP":
        if family.help is not None:
            raise ExpositionError(f"a second HELP line for {name}")
        family.help = _unescape_help(rest)
        return
    kind = rest.strip(" \t")
    if kind not in TYPES:
        raise ExpositionError(f"TYPE of {name} must be one of {', '.join(sorted(TYPES))}")
    if name in typed:
        raise ExpositionError(f"a second TYPE line for {name}")
    if any(sample in sampled for sample in sample_names(name, kind)):
        raise ExpositionError(f"the TYPE line of {name} comes after its samples")
    typed.add(name)
    family.type = kind


def _family_of(sample: Sample, families: dict[str, Family]) -> Family:
    """The family a sample belongs to: a typed family naming it, else its own (untyped)."""
    name = sample.name
    for suffix in ("", "_bucket", "_sum", "_count"):
        if suffix and not name.endswith(suffix):
            continue
        base = families.get(name[: len(name) - len(suffix)] if suffix else name)
        if base is None or name not in sample_names(base.name, base.type):
            continue
        label_names = {label for label, _ in sample.labels}
        if base.type == "histogram" and suffix == "_bucket" and "le" not in label_names:
            raise ExpositionError(f"{name} has no le label")
        return base
    family = families.get(name)
    if family is not None and family.type in _SUFFIXES:
        raise ExpositionError(f"{family.type} {name} cannot have a sample named {name}")
    if family is None:
        family = families[name] = Family(name)
    return family


def _sample(line: str) -> Sample:
    match = _METRIC_NAME.match(line)
    if match is None:
        raise ExpositionError(f"expected a metric name at the start of {line[:60]!r}")
    name, position = match.group(), match.end()
    labels: Labels = ()
    if position < len(line) and line[position] == "{":
        labels, position = _labels(line, position + 1)
    rest = line[position:]
    if rest[:1] not in (" ", "\t"):
        raise ExpositionError(f"expected a space and a value after {line[:position][:60]!r}")
    tokens = rest.split()
    if len(tokens) not in (1, 2):
        raise ExpositionError(f"expected a value and at most a timestamp, got {rest.strip()!r}")
    if not _VALUE.fullmatch(tokens[0]):
        raise ExpositionError(f"{tokens[0]!r} is not a number")
    if len(tokens) == 2 and not _TIMESTAMP.fullmatch(tokens[1]):
        raise ExpositionError(f"{tokens[1]!r} is not a timestamp in milliseconds")
    return Sample(name, labels, tokens[0], tokens[1] if len(tokens) == 2 else None)


def _labels(line: str, position: int) -> tuple[Labels, int]:
    """The labels from just after `{` up to and including `}`; and where they end."""
    labels: list[tuple[str, str]] = []
    end = len(line)
    while True:
        position = _skip_blanks(line, position)
        if position < end and line[position] == "}":
            break
        match = _LABEL_NAME.match(line, position)
        if match is None:
            raise ExpositionError(f"expected a label name at column {position + 1}")
        name = match.group()
        if any(name == seen for seen, _ in labels):
            raise ExpositionError(f"label {name} appears twice")
        position = _skip_blanks(line, match.end())
        if line[position : position + 1] != "=":
            raise ExpositionError(f"expected '=' after label {name}")
        position = _skip_blanks(line, position + 1)
        if line[position : position + 1] != '"':
            raise ExpositionError(f"expected a quoted value for label {name}")
        value, position = _label_value(line, position + 1, name)
        labels.append((name, value))
        position = _skip_blanks(line, position)
        if line[position : position + 1] == ",":
            position += 1
            continue
        if line[position : position + 1] != "}":
            raise ExpositionError(f"expected ',' or '}}' after label {name}")
        break
    return tuple(labels), position + 1


def _label_value(line: str, position: int, name: str) -> tuple[str, int]:
    """A label value from just after its opening quote; and the position after its closing one."""
    chars: list[str] = []
    end = len(line)
    while position < end:
        char = line[position]
        if char == '"':
            return "".join(chars), position + 1
        if char == "\\":
            escaped = line[position + 1 : position + 2]
            if escaped not in _UNESCAPE:
                raise ExpositionError(f"invalid escape \\{escaped} in the value of label {name}")
            chars.append(_UNESCAPE[escaped])
            position += 2
            continue
        chars.append(char)
        position += 1
    raise ExpositionError(f"the value of label {name} has no closing quote")


def _unescape_help(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        escaped = match.group(1)
        if escaped == "\\":
            return "\\"
        if escaped == "n":
            return "\n"
        raise ExpositionError(f"invalid escape \\{escaped} in a HELP line")

    return re.sub(r"\\(.?)", replace, text)


def _skip_blanks(line: str, position: int) -> int:
    end = len(line)
    while position < end and line[position] in " \t":
        position += 1
    return position


def relabel(labels: Labels, source: Labels) -> Labels:
    """source's labels, then the sample's own; an own label that source also names is kept
    as exported_<name> (Prometheus's way when a target label meets a scraped one)."""
    taken = {name for name, _ in source} | {name for name, _ in labels}
    merged = list(source)
    reserved = {name for name, _ in source}
    for name, value in labels:
        if name in reserved:
            renamed = f"exported_{name}"
            while renamed in taken:
                renamed = f"exported_{renamed}"
            taken.add(renamed)
            name = renamed
        merged.append((name, value))
    return tuple(merged)


def sample_line(name: str, labels: Labels, value: str, timestamp: str | None = None) -> str:
    """One sample in the text format."""
    text = name
    if labels:
        text += "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels) + "}"
    text += f" {value}"
    return f"{text} {timestamp}" if timestamp is not None else text


class Merger:
    """Families from several expositions, each sample with its source's labels added, as one
    valid exposition: every family once, with its samples together."""

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        # Sample name -> the family that owns it; reserved names belong to someone else ("").
        self.owner: dict[str, str] = dict.fromkeys(reserved, "")
        self.families: dict[str, tuple[str, str | None, list[str]]] = {}

    def add(self, families: Iterable[Family], source: Labels) -> tuple[int, int]:
        """Add one exposition's families; (samples added, samples dropped as conflicting)."""
        added = dropped = 0
        for family in families:
            names = sample_names(family.name, family.type)
            merged = self.families.get(family.name)
            conflict = (merged is not None and merged[0] != family.type) or any(
                self.owner.get(name, family.name) != family.name for name in (family.name, *names)
            )
            if conflict:
                dropped += len(family.samples)
                continue
            if merged is None:
                merged = self.families[family.name] = (family.type, family.help, [])
            elif merged[1] is None and family.help is not None:
                merged = self.families[family.name] = (merged[0], family.help, merged[2])
            for name in (family.name, *names):
                self.owner[name] = family.name
            lines = merged[2]
            for sample in family.samples:
                lines.append(
                    sample_line(
                        sample.name, relabel(sample.labels, source), sample.value, sample.timestamp
                    )
                )
            added += len(family.samples)
        return added, dropped

    def render(self) -> str:
        """The merged exposition, families sorted by name; empty text when there is none."""
        out: list[str] = []
        for name in sorted(self.families):
            kind, help_text, lines = self.families[name]
            if help_text is not None:
                out.append(f"# HELP {name} {escape_help(help_text)}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)
        return "\n".join(out) + "\n" if out else ""
