# Debian package installs for the ensure-*.sh scripts; sourced, never run. The sourcing script
# defines say() and die() and LOCK_WAIT_S (how long to wait for another dpkg run's lock).

# apt-get, quiet unless it fails (then its last 20 lines on stderr).
apt_get() {
    local out
    out=$(mktemp)
    if ! DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout="$LOCK_WAIT_S" "$@" >"$out" 2>&1; then
        tail -n 20 "$out" >&2
        rm -f "$out"
        return 1
    fi
    rm -f "$out"
}

# Install the packages: 'apt-get update' first only when the package lists do not know them
# yet, and once more when the install fails on stale lists (a 404 from the mirror).
apt_install() {
    if ! apt-cache show --no-all-versions "$@" >/dev/null 2>&1; then
        apt_get update || die "apt-get update failed"
    fi
    if ! apt_get install -y --no-install-recommends "$@"; then
        say "install failed; refreshing package lists and retrying"
        apt_get update || die "apt-get update failed"
        apt_get install -y --no-install-recommends "$@" || die "apt-get install $* failed"
    fi
}
