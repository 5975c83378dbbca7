"""Installing wheels into a python node's image without pip: unpack, then place .data parts.

    python3 wheels.py SITE SCRIPTS WHEEL...

Runs inside the image being built (the base image's own python3, no network, no pip needed),
so it uses the standard library only. A wheel is a zip of what goes into site-packages, plus
an optional `<name>-<version>.data/` folder whose `purelib/` and `platlib/` parts also belong
in site-packages and whose `scripts/` belong on PATH (the wheel spec's "spreading" step, which
a plain unzip skips: a package shipping its code that way would not import). `headers/` and
`data/` parts are left where they unpack: a model server has no use for C headers or shared
data files outside its packages.
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

SPREAD_TO_SITE = ("purelib", "platlib")


def install(wheel: Path, site: Path, scripts: Path) -> None:
    """Unpack one wheel into `site`, then move its .data parts to where they belong."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
        data_dirs = {name.split("/", 1)[0] for name in archive.namelist() if ".data/" in name}
    for data_dir in sorted(data_dirs):
        if not data_dir.endswith(".data"):
            continue
        root = site / data_dir
        for part in SPREAD_TO_SITE:
            _merge(root / part, site)
        _merge(root / "scripts", scripts, executable=True)
        for part in (*SPREAD_TO_SITE, "scripts"):
            shutil.rmtree(root / part, ignore_errors=True)


def _merge(source: Path, target: Path, executable: bool = False) -> None:
    if not source.is_dir():
        return
    for path in sorted(source.rglob("*")):
        if path.is_dir():
            continue
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), destination)
        if executable:
            destination.chmod(0o755)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        sys.stderr.write("usage: wheels.py SITE SCRIPTS WHEEL...\n")
        return 2
    site, scripts = Path(argv[0]), Path(argv[1])
    site.mkdir(parents=True, exist_ok=True)
    scripts.mkdir(parents=True, exist_ok=True)
    for wheel in argv[2:]:
        install(Path(wheel), site, scripts)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
