#!/usr/bin/env bash
# Make sure the programs the tests run (beyond Python packages) are installed: `prometheus`
# and `promtool` from Debian's prometheus package. The balancer's tests start their own
# Prometheus server on a free loopback port with a temporary configuration, and check
# /-/metrics with `promtool check metrics`. `node` from Debian's nodejs package runs the
# GitHub Actions example's comment script (examples/ci/) against a stand-in API. And
# yaml-language-server, the editors' YAML checker, from npm into tests/editors/node_modules
# (gitignored; the version pinned by tests/editors/package-lock.json), which tests/editors/
# drives over stdio; node and npm come from Debian's nodejs and npm packages when missing.
#
# Missing and root: apt-get install them (apt-get update first only when the package lists
# do not know the package yet, or when the install fails on stale lists). Missing and not
# root: exit 1 and say what to run. Idempotent; silent when everything is there.
set -euo pipefail

readonly LOCK_WAIT_S=300
readonly PACKAGES=(prometheus nodejs)  # /usr/bin/prometheus, /usr/bin/promtool, /usr/bin/node

say() { echo "ensure-test-tools: $*" >&2; }
die() { say "error: $*"; exit 1; }
now() { echo "${EPOCHREALTIME/,/.}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

missing() {
    local tool
    for tool in prometheus promtool node; do
        command -v "$tool" >/dev/null 2>&1 || return 0
    done
    return 1
}

EDITORS=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../tests/editors" && pwd)
readonly EDITORS STAMP=$EDITORS/node_modules/.installed

# npm ci again when the lock file changed since the last install.
editor_tools_missing() { [[ ! -f $STAMP || $EDITORS/package-lock.json -nt $STAMP ]]; }

ensure_editor_tools() {
    editor_tools_missing || return 0
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        [[ $(id -u) -eq 0 ]] || die "the editor tests need node and npm: run
  'sudo apt-get install -y nodejs npm', or install Node.js from nodejs.org"
        # shellcheck source=apt.sh
        source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
        apt_install nodejs npm
    fi
    local t0 log
    t0=$(now)
    log=$(mktemp)
    if ! (cd "$EDITORS" && npm ci --no-audit --no-fund --loglevel=error) >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -f "$log"
        die "'npm ci' in $EDITORS failed (it needs the npm registry, registry.npmjs.org)"
    fi
    rm -f "$log"
    touch "$STAMP"
    say "installed yaml-language-server into $EDITORS/node_modules in $(elapsed "$t0")"
}

ensure_editor_tools
missing || exit 0

if [[ $(id -u) -ne 0 ]]; then
    die "the tests need prometheus, promtool and node: run 'sudo apt-get install -y prometheus
  nodejs' (Debian/Ubuntu), or put the binaries (prometheus.io, nodejs.org) on PATH"
fi

# shellcheck source=apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

t0=$(now)
apt_install "${PACKAGES[@]}"
missing && die "installed ${PACKAGES[*]}, but prometheus, promtool or node is still not on PATH"
say "installed ${PACKAGES[*]} (prometheus, promtool, node) in $(elapsed "$t0")"
