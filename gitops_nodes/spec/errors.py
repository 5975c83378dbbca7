"""Spec problems with their positions, collected so one run reports them all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gitops_nodes.errors import GitopsNodesError


@dataclass(frozen=True, order=True)
class SpecProblem:
    """One thing wrong in the spec: where it is, which field, and what was expected."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        # Line 0: about the file as a whole (it could not be read, or is not a regular file).
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class SpecErrors(GitopsNodesError):
    """Every problem found in one load of the spec, sorted by file and position."""

    def __init__(self, problems: Iterable[SpecProblem]) -> None:
        self.problems: tuple[SpecProblem, ...] = tuple(sorted(set(problems)))
        count = len(self.problems)
        head = f"the spec has {count} error{'s' if count != 1 else ''}:"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))
