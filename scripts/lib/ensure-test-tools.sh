#!/usr/bin/env bash
# Make sure the programs the tests run (beyond Python packages) are installed:
# - `prometheus` and `promtool` from Debian's prometheus package. The balancer's tests start
#   their own Prometheus server on a free loopback port with a temporary configuration, and
#   check /-/metrics with `promtool check metrics`.
# - `node` from Debian's nodejs package: it runs the GitHub Actions example's comment script
#   (examples/ci/) against a stand-in API.
# - `chromium` and `chromedriver` from Debian's chromium and chromium-driver packages: the web
#   console's browser tests drive headless Chromium with selenium.
# - `docker-registry` from Debian's docker-registry package (the distribution v2 image
#   registry): scripts/swarm-lab runs one for the three-engine Swarm the multi-host tests
#   use (tests/integration/swarm_lab/), in a network namespace of its own. The package's
#   own service is not used.
# - From the npm registry (npm from Debian's npm package when the machine has none):
#   yaml-language-server, the editors' YAML checker, into tests/editors/node_modules (the
#   version pinned by tests/editors/package-lock.json), which tests/editors/ drives over
#   stdio; and axe-core into .test-tools/ of this checkout, which the console's
#   accessibility check runs inside that browser. Both gitignored.
#
# Missing and root: apt-get install them (apt-get update first only when the package lists
# do not know the package yet, or when the install fails on stale lists). Missing and not
# root: exit 1 and say what to run. Idempotent; silent when everything is there.
set -euo pipefail

readonly LOCK_WAIT_S=300
readonly AXE_VERSION=4.14.1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
readonly ROOT
readonly TOOLS="$ROOT/.test-tools"
readonly AXE="$TOOLS/node_modules/axe-core/axe.min.js"
readonly EDITORS="$ROOT/tests/editors"
readonly STAMP="$EDITORS/node_modules/.installed"

say() { echo "ensure-test-tools: $*" >&2; }
die() { say "error: $*"; exit 1; }
now() { echo "${EPOCHREALTIME/,/.}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

# npm ci again when the lock file changed since the last install.
editor_tools_missing() { [[ ! -f $STAMP || $EDITORS/package-lock.json -nt $STAMP ]]; }

wanted() {
    local packages=()
    if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
        packages+=(prometheus)
    fi
    command -v node >/dev/null 2>&1 || packages+=(nodejs)
    command -v chromium >/dev/null 2>&1 || packages+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || packages+=(chromium-driver)
    command -v docker-registry >/dev/null 2>&1 || packages+=(docker-registry)
    if { [[ ! -f $AXE ]] || editor_tools_missing; } && ! command -v npm >/dev/null 2>&1; then
        packages+=(npm)
    fi
    echo "${packages[@]}"
}

read -r -a PACKAGES <<<"$(wanted)"
if [[ ${#PACKAGES[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        die "the tests need ${PACKAGES[*]}: run 'sudo apt-get install -y ${PACKAGES[*]}'
  (Debian/Ubuntu)"
    fi
    # shellcheck source=apt.sh
    source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
    t0=$(now)
    apt_install "${PACKAGES[@]}"
    read -r -a STILL <<<"$(wanted)"
    [[ ${#STILL[@]} -eq 0 ]] || die "installed ${PACKAGES[*]}, but ${STILL[*]} is still missing"
    say "installed ${PACKAGES[*]} in $(elapsed "$t0")"
fi

if editor_tools_missing; then
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
fi

if [[ ! -f $AXE ]]; then
    t0=$(now)
    mkdir -p "$TOOLS"
    npm install --prefix "$TOOLS" --no-audit --no-fund --silent "axe-core@$AXE_VERSION" >&2 \
        || die "npm install axe-core@$AXE_VERSION into $TOOLS failed"
    [[ -f $AXE ]] || die "npm installed axe-core, but $AXE is not there"
    say "installed axe-core $AXE_VERSION into $TOOLS in $(elapsed "$t0")"
fi
