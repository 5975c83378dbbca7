"""The command line's own output meeting a closed pipe or a full disk: one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

COMMAND = [sys.executable, "-m", "gitops_nodes", "schema"]  # output without a repository


def test_a_reader_that_left_ends_the_command_quietly() -> None:
    # `gitops-nodes logs api | head -1`: before, BrokenPipeError's traceback.
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write
    try:
        done = subprocess.run(COMMAND, stdout=write, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(write)
    assert done.returncode == 1
    assert done.stderr == b""


def test_a_full_disk_is_said_in_one_line() -> None:
    with open("/dev/full", "wb") as full:
        done = subprocess.run(COMMAND, stdout=full, stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 1
    assert done.stderr.decode() == "error: No space left on device\n"
