"""Jupyter notebooks as python nodes: a cell's code (found by tag or id) as the request code,
and the notebook run up to that cell to save a checkpoint (`gitops-nodes checkpoint`).

Reading a cell needs only the JSON of the notebook; running it needs nbclient and a kernel
(ipykernel), imported only by `run_checkpoint`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gitops_nodes.errors import GitopsNodesError

PACKAGE_PARENT = Path(__file__).resolve().parent.parent
MAX_LISTED_TAGS = 20  # of a notebook's tags, named in the message for a cell it has not


class NotebookError(GitopsNodesError):
    """A notebook that cannot be read, or has no such cell."""


def read_cells(path: Path) -> list[dict[str, Any]]:
    """The notebook's cells (nbformat 4 JSON)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise NotebookError(f"cannot read the notebook {path.name}: {exc.strerror}") from None
    except ValueError as exc:
        raise NotebookError(f"the notebook {path.name} is not JSON: {exc}") from None
    except RecursionError:  # json's decoder recurses once per level of nesting
        raise NotebookError(
            f"the notebook {path.name} is nested too deeply to read (expected nbformat 4 JSON)"
        ) from None
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list):
        raise NotebookError(f"the notebook {path.name} has no cells (expected nbformat 4)")
    return [cell for cell in cells if isinstance(cell, dict)]


def _source(cell: dict[str, Any], name: str, notebook: str) -> str:
    """The cell's code: nbformat 4 writes it as a string or a list of lines."""
    source = cell.get("source", "")
    if isinstance(source, list) and all(isinstance(line, str) for line in source):
        source = "".join(source)
    if not isinstance(source, str):
        raise NotebookError(
            f"cell {name!r} of {notebook}: expected its source as a string or a list of "
            "strings (nbformat 4)"
        )
    try:
        source.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON's \ud800 escapes decode to lone surrogates
        line = source.count("\n", 0, exc.start) + 1
        raise NotebookError(
            f"cell {name!r} of {notebook}, line {line}: expected Unicode text, "
            f"{source[exc.start]!r} is half of a surrogate pair"
        ) from None
    return source


def _tags(cell: dict[str, Any]) -> list[str]:
    metadata = cell.get("metadata")
    tags = metadata.get("tags") if isinstance(metadata, dict) else None
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def find_cell(cells: list[dict[str, Any]], name: str, notebook: str) -> int:
    """The index of the code cell tagged name, or whose id is name."""
    for index, cell in enumerate(cells):
        if cell.get("cell_type") == "code" and (name in _tags(cell) or cell.get("id") == name):
            return index
    tags = sorted({t for cell in cells for t in _tags(cell)})
    shown = ", ".join(tags[:MAX_LISTED_TAGS])  # a message stays one readable line
    more = f" and {len(tags) - MAX_LISTED_TAGS} more" if len(tags) > MAX_LISTED_TAGS else ""
    known = f" (its tags: {shown}{more})" if tags else " (it has no tagged cells)"
    raise NotebookError(
        f"expected the tag or id of a code cell of {notebook}; no code cell is tagged or has "
        f"the id {name!r}{known}"
    )


def cell_code(path: Path, name: str, shown: str) -> str:
    """The Python code of the notebook's cell `name`; IPython magics and shell lines refused."""
    cells = read_cells(path)
    code = _source(cells[find_cell(cells, name, shown)], name, shown)
    for number, line in enumerate(code.splitlines(), 1):
        if line.lstrip().startswith(("%", "!")):
            raise NotebookError(
                f"cell {name!r} of {shown}, line {number}: IPython magics and shell commands "
                f"({line.strip()[:40]!r}) do not run in a node; use plain Python"
            )
    return code if code.endswith("\n") else code + "\n"


def run_checkpoint(
    notebook: Path,
    variables: list[str],
    output: Path,
    cell: str | None = None,
    timeout: float = 600.0,
) -> Path:
    """Run the notebook's cells (up to, not including, cell when given) in a kernel of this
    environment, then save the variables there with gitops_nodes.checkpoint.save."""
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
    except ImportError:
        raise NotebookError(
            "running a notebook needs nbclient and ipykernel "
            "(pip install 'gitops-nodes[notebooks]')"
        ) from None
    cells = read_cells(notebook)
    stop = find_cell(cells, cell, notebook.name) if cell is not None else len(cells)
    book = nbformat.read(str(notebook), as_version=4)
    book.cells = book.cells[:stop]
    arguments = ", ".join(f"{name}={name}" for name in variables)
    save = (
        "import sys as _gn_sys\n"
        f"_gn_sys.path.insert(0, {str(PACKAGE_PARENT)!r})\n"
        "import gitops_nodes.checkpoint as _gn_checkpoint\n"
        f"_gn_checkpoint.save({str(output.resolve())!r}, {arguments})\n"
    )
    book.cells.append(nbformat.v4.new_code_cell(save))
    client = NotebookClient(
        book,
        timeout=int(timeout),
        kernel_name="python3",
        resources={"metadata": {"path": str(notebook.resolve().parent)}},
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        raise NotebookError(f"running {notebook.name} failed:\n{exc}") from None
    except Exception as exc:  # the kernel could not start, or died
        raise NotebookError(
            f"running {notebook.name} failed: {type(exc).__name__}: {exc}"
        ) from None
    return output
