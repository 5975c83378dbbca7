"""A YAML file, not spec, whose name is not UTF-8 (Latin-1 'café'): listed, escaped, after
"The spec is valid", where printing it under a strict UTF-8 output failed with a traceback."""

import os
from pathlib import Path


def make(repo: Path) -> None:
    name = os.fsencode(repo) + b"/caf\xe9.yaml"
    with open(name, "w") as file:
        file.write("a: 1\n")
