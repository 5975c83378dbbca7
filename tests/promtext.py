"""A strict reader of the Prometheus text format (0.0.4) for tests, written apart from
balancer/exposition.py so that the balancer's output is checked by code it does not share.

`read(text)` returns the families and raises AssertionError, naming the line, for anything a
Prometheus server would reject or silently mangle: a family's HELP or TYPE twice or late, its
samples not together, a sample name its type does not allow, a bad label name, value, escape
or timestamp, the same series twice, and histograms whose buckets are not cumulative or whose
+Inf bucket differs from their _count.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(
    rf"({_NAME})(?:\{{((?:{_LABEL},)*(?:{_LABEL})?)\}})? "
    r"([+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|Inf|NaN))(?: (-?\d+))?"
)
_ONE_LABEL = re.compile(_LABEL)
_ALLOWED = {
    "counter": ("",),
    "gauge": ("",),
    "untyped": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


@dataclass
class Family:
    name: str
    type: str = "untyped"
    help: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def value(self, name: str, **labels: str) -> float:
        """The value of the one sample with this name and exactly these labels."""
        found = [v for n, ls, v in self.samples if n == name and ls == labels]
        assert len(found) == 1, f"{len(found)} samples {name}{labels} in {self.samples}"
        return found[0]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def read(text: str) -> dict[str, Family]:
    """Every family of text, by name; AssertionError at the first thing that is wrong."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, Family] = {}
    owner: dict[str, str] = {}  # sample name -> family
    closed: set[str] = set()  # families whose samples are over: none may follow
    current: str | None = None
    series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for number, line in enumerate(text[:-1].split("\n"), start=1):
        where = f"line {number} {line!r}"
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            assert len(parts) >= 3 and re.fullmatch(_NAME, parts[2]), where
            name = parts[2]
            family = families.setdefault(name, Family(name))
            if parts[1] == "HELP":
                assert family.help is None, f"{where}: second HELP"
                family.help = parts[3] if len(parts) == 4 else ""
            else:
                assert len(parts) == 4 and parts[3] in _ALLOWED, f"{where}: bad type"
                assert family.type == "untyped" and not family.samples, f"{where}: late TYPE"
                family.type = parts[3]
                for suffix in _ALLOWED[parts[3]]:
                    assert owner.setdefault(name + suffix, name) == name, f"{where}: clash"
            continue
        if line.startswith("#"):
            continue
        assert line, f"{where}: empty line"
        match = _SAMPLE.fullmatch(line)
        assert match is not None, f"{where}: not a sample line"
        name = match.group(1)
        family_name = owner.get(name)
        if family_name is None:  # an untyped family with no TYPE line
            family_name = owner[name] = name
            families.setdefault(name, Family(name))
        family = families[family_name]
        assert name in [family_name + s for s in _ALLOWED[family.type]], f"{where}: bad name"
        if current != family_name:
            assert family_name not in closed, f"{where}: {family_name}'s samples are split"
            if current is not None:
                closed.add(current)
            current = family_name
        labels: dict[str, str] = {}
        for label in _ONE_LABEL.finditer(match.group(2) or ""):
            assert label.group(1) not in labels, f"{where}: label {label.group(1)} twice"
            labels[label.group(1)] = _unescape(label.group(2))
        key = (name, tuple(sorted(labels.items())))
        assert key not in series, f"{where}: the same series twice"
        series.add(key)
        family.samples.append((name, labels, float(match.group(7))))
    for family in families.values():
        if family.type == "histogram":
            _check_histogram(family)
    return families


def _check_histogram(family: Family) -> None:
    groups: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    counts: dict[tuple[tuple[str, str], ...], float] = {}
    for name, labels, value in family.samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        if name.endswith("_bucket"):
            assert "le" in labels, f"{family.name}: a bucket without le"
            groups.setdefault(rest, []).append((float(labels["le"]), value))
        elif name.endswith("_count"):
            counts[rest] = value
    for rest, buckets in groups.items():
        bounds = [b for b, _ in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf, f"{family.name}{rest}"
        values = [v for _, v in buckets]
        assert values == sorted(values), f"{family.name}{rest}: buckets not cumulative"
        assert counts.get(rest) == values[-1], f"{family.name}{rest}: +Inf != _count"
