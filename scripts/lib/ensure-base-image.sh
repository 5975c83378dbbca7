#!/usr/bin/env bash
# Make sure the local image gitops-nodes/python-base:bookworm exists: Debian bookworm
# (debootstrap minbase + python3) built offline from the host's Debian mirror and
# imported with `docker import` -- no image registry needed.
# Idempotent: does nothing when `docker image inspect` finds the image. Prints the time
# of each step only when it actually ran; failures show the tail of the step's log.
set -euo pipefail

readonly IMAGE=gitops-nodes/python-base:bookworm
readonly SUITE=bookworm
readonly DEFAULT_MIRROR=http://deb.debian.org/debian
readonly LOCK=/var/tmp/gitops-nodes-base-image.lock
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE

say() { echo "ensure-base-image: $*" >&2; }
die() { say "error: $*"; exit 1; }
now() { echo "${EPOCHREALTIME/,/.}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
have_image() { docker image inspect "$IMAGE" >/dev/null 2>&1; }

"$HERE/ensure-docker.sh"
have_image && exit 0

[[ $(id -u) -eq 0 ]] || die "image $IMAGE is missing and building it (debootstrap) needs root; run this as root once"

# One builder at a time; whoever waited re-checks, the image may exist by now.
exec 9>"$LOCK"
flock 9
have_image && exit 0

# Mirror for $SUITE from the host's apt configuration (deb822 .sources first, then
# one-line sources.list), so the build uses whatever mirror/proxy the host is set up for.
host_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        uri=$(awk -v suite="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }        # one deb822 stanza per record
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/) continue
                    key = tolower(line); sub(/:.*/, "", key)
                    val = line; sub(/^[^:]*:[ \t]*/, "", val)
                    if (key == "types") types = val
                    else if (key == "uris") uris = val
                    else if (key == "suites") suites = val
                    else if (key == "enabled") enabled = tolower(val)
                }
                if (enabled == "no" || (" " types " ") !~ / deb /) next
                if ((" " suites " ") ~ (" " suite " ")) { split(uris, u, /[ \t]+/); print u[1]; exit }
            }' "$f")
        [[ -n $uri ]] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        # deb [options] URI SUITE COMPONENT...
        uri=$(awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f")
        [[ -n $uri ]] && { echo "$uri"; return; }
    done
    echo "$DEFAULT_MIRROR"
}

WORK=$(mktemp -d /var/tmp/gitops-nodes-base.XXXXXX)
readonly WORK ROOTFS=$WORK/rootfs LOG=$WORK/step.log
cleanup() {
    # debootstrap may leave /proc, /sys... mounted in the target if it fails: unmount
    # (deepest first) before deleting, and never cross into another file system.
    local m
    awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

run_logged() { # run_logged NAME CMD...: quiet on success, tail of log on failure
    local name=$1; shift
    if ! "$@" >"$LOG" 2>&1; then
        tail -n 25 "$LOG" >&2
        [[ -r $ROOTFS/debootstrap/debootstrap.log ]] && tail -n 15 "$ROOTFS/debootstrap/debootstrap.log" >&2
        die "$name failed"
    fi
}

if ! command -v debootstrap >/dev/null 2>&1; then
    t0=$(now)
    if ! apt-cache show --no-all-versions debootstrap >/dev/null 2>&1; then
        run_logged "apt-get update" apt-get -q -o DPkg::Lock::Timeout=300 update
    fi
    run_logged "apt-get install debootstrap" env DEBIAN_FRONTEND=noninteractive \
        apt-get -q -o DPkg::Lock::Timeout=300 install -y --no-install-recommends debootstrap
    say "installed debootstrap in $(elapsed "$t0")"
fi

MIRROR=$(host_mirror)
t0=$(now)
run_logged "debootstrap ($MIRROR)" \
    debootstrap --variant=minbase --include=python3 "$SUITE" "$ROOTFS" "$MIRROR"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/usr/share/doc "$ROOTFS"/usr/share/man "$ROOTFS"/usr/share/locale
say "debootstrap $SUITE minbase + python3 from $MIRROR: $(elapsed "$t0")"

t0=$(now)
import_rootfs() {
    tar --numeric-owner -C "$ROOTFS" -c . |
        docker import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' \
            -c 'LABEL io.gitops-nodes.base=1' - "$IMAGE"
}
run_logged "docker import" import_rootfs
say "docker import $IMAGE: $(elapsed "$t0")"

t0=$(now)
out=$(docker run --rm "$IMAGE" python3 -c 'import http.server, json; print("ok")' 2>&1) ||
    die "verifying $IMAGE failed: $out"
[[ $out == ok ]] || die "verifying $IMAGE: expected 'ok', got: $out"
say "verified $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" |
    awk '{ printf "%.0f MB", $1 / 1e6 }')): $(elapsed "$t0")"
