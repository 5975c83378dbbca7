#!/usr/bin/env bash
# Install this project (editable, with the dev extra) into the current Python when it is
# not importable yet or pyproject.toml changed since the last install (stamp: .venv-stamp
# at the repo root, gitignored). Silent when there is nothing to do.
# Environment: PYTHON (default python3) selects the interpreter to install into.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly ROOT PY=${PYTHON:-python3} STAMP=$ROOT/.venv-stamp

say() { echo "ensure-python-deps: $*" >&2; }
die() { say "error: $*"; exit 1; }

[[ -f $ROOT/pyproject.toml ]] || die "no pyproject.toml in $ROOT"
command -v "$PY" >/dev/null 2>&1 || die "'$PY' not found (set PYTHON=...)"

# Check from / so the repo checkout itself (cwd on sys.path) does not fake an install.
if (cd / && "$PY" -c 'import gitops_nodes' >/dev/null 2>&1) && [[ ! $ROOT/pyproject.toml -nt $STAMP ]]; then
    exit 0
fi

t0=${EPOCHREALTIME/,/.}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! (cd "$ROOT" && "$PY" -m pip install -q -e '.[dev]') >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "'$PY -m pip install -e .[dev]' failed in $ROOT (if pip reports an externally-managed
  environment, create and activate a virtualenv first: python3 -m venv .venv && . .venv/bin/activate)"
fi
touch "$STAMP"
say "installed gitops-nodes[dev] into $("$PY" -c 'import sys; print(sys.prefix)'): $(awk -v a="$t0" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f s", b - a }')"
