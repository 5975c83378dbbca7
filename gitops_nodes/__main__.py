"""`python -m gitops_nodes` runs the command line, as the `gitops-nodes` script does."""

from __future__ import annotations

import sys

from gitops_nodes.cli import main

sys.exit(main())
