#!/usr/bin/env bash
# Make sure an MLflow tracking server can be started by the model sources' tests: `mlflow`
# (the full package, with its server) in a virtualenv of its own, because the server pins
# gunicorn below the version the project's dev extra needs. The project itself uses only
# mlflow-skinny (the client), from its extras.
#
# The venv: /opt/gitops-nodes-test/mlflow as root, else ~/.cache/gitops-nodes-test/mlflow
# (tests/integration/model_servers.py looks in both; GITOPS_NODES_MLFLOW overrides).
# Idempotent; silent when it is there.
set -euo pipefail

readonly PY=${PYTHON:-python3}
if [[ $(id -u) -eq 0 ]]; then
    readonly VENV=/opt/gitops-nodes-test/mlflow
else
    readonly VENV=${HOME}/.cache/gitops-nodes-test/mlflow
fi

say() { echo "ensure-mlflow-server: $*" >&2; }
die() { say "error: $*"; exit 1; }

[[ -x $VENV/bin/mlflow ]] && exit 0

t0=${EPOCHREALTIME/,/.}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
mkdir -p "$(dirname "$VENV")"
if ! { "$PY" -m venv "$VENV" && "$VENV/bin/python" -m pip install -q mlflow; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    rm -rf "$VENV"
    die "could not install mlflow into $VENV (the model sources' tests start its server)"
fi
say "installed mlflow (the tracking server for tests) into $VENV: $(awk -v a="$t0" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f s", b - a }')"
