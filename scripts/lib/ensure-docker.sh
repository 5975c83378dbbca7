#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`.
#
# If none answers and we are root: install Debian's docker.io when dockerd (or the
# docker CLI) is missing, start dockerd fully detached (setsid + nohup, log in
# /var/log/gitops-nodes-dockerd.log) and poll `docker info` until it answers or the
# deadline passes. Not root and no engine: exit 1 and say what to do.
# The engine started here runs without the userland proxy (--userland-proxy=false), so
# traffic to a port published on 127.0.0.1 is forwarded by the kernel (iptables DNAT)
# instead of being copied through one docker-proxy process per port: measured on a Python
# node, the proxy cost about 30% of its requests/s. An engine already running is used as
# it is; the flag is left out when /etc/docker/daemon.json sets userland-proxy itself.
# Idempotent; silent when the engine already answers.
#
# Environment: GITOPS_NODES_DOCKERD_TIMEOUT (seconds, default 60),
#              GITOPS_NODES_DOCKERD_LOG (default /var/log/gitops-nodes-dockerd.log).
set -euo pipefail

readonly DOCKERD_LOG=${GITOPS_NODES_DOCKERD_LOG:-/var/log/gitops-nodes-dockerd.log}
readonly DEADLINE_S=${GITOPS_NODES_DOCKERD_TIMEOUT:-60}
readonly LOCK_WAIT_S=300

say() { echo "ensure-docker: $*" >&2; }
die() { say "error: $*"; exit 1; }
engine_up() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }
now() { echo "${EPOCHREALTIME/,/.}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

engine_up && exit 0

if [[ $(id -u) -ne 0 ]]; then
    die "no Docker engine answers 'docker info'${DOCKER_HOST:+ (DOCKER_HOST=$DOCKER_HOST)}.
  Start Docker (e.g. 'sudo systemctl start docker' or 'sudo dockerd &'), make sure your user
  may use its socket (member of group 'docker'), or run this command as root so it can
  install and start the engine itself."
fi

# An apt-get/dpkg run (e.g. a docker.io install started in the background) may hold the
# dpkg locks right now: wait for it to finish before looking at what is installed.
wait_for_dpkg() {
    command -v fuser >/dev/null 2>&1 || return 0
    local t0=$SECONDS said=
    while fuser -s /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock 2>/dev/null; do
        if [[ -z $said ]]; then say "waiting for a running apt-get/dpkg to finish..."; said=1; fi
        (( SECONDS - t0 < LOCK_WAIT_S )) || die "dpkg is still locked after ${LOCK_WAIT_S} s (see 'fuser -v /var/lib/dpkg/lock-frontend')"
        sleep 1
    done
}

# shellcheck source=apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

install_docker() {
    local t0
    t0=$(now)
    apt_install docker.io
    say "installed docker.io in $(elapsed "$t0")"
}

wait_for_dpkg
if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    install_docker
fi
engine_up && exit 0

# The dockerd of the default socket, by its pidfile: `pgrep dockerd` would also find the
# engines of the test suite's Swarm lab (scripts/swarm-lab), which serve other sockets.
default_dockerd() {
    local pid
    pid=$(cat /var/run/docker.pid 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]
}

t0=$(now)
if default_dockerd; then
    say "dockerd is already running but not answering yet; waiting for it"
else
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # setsid: own session, so the engine outlives this script and its terminal/job.
    flags=(--userland-proxy=false)
    if grep -qs '"userland-proxy"' /etc/docker/daemon.json; then
        flags=()
    fi
    setsid nohup dockerd "${flags[@]}" >>"$DOCKERD_LOG" 2>&1 </dev/null &
    started=$!
fi

until engine_up; do
    if ! default_dockerd && { [ -z "${started:-}" ] || ! kill -0 "$started" 2>/dev/null; }; then
        tail -n 20 "$DOCKERD_LOG" >&2 || true
        die "dockerd exited during startup (log: $DOCKERD_LOG)"
    fi
    if awk -v a="$t0" -v b="$(now)" -v d="$DEADLINE_S" 'BEGIN { exit !(b - a >= d) }'; then
        tail -n 20 "$DOCKERD_LOG" >&2 || true
        die "Docker engine did not answer within ${DEADLINE_S} s (log: $DOCKERD_LOG)"
    fi
    sleep 0.2
done
say "started dockerd in $(elapsed "$t0") (log: $DOCKERD_LOG)"
