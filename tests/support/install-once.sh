# Sourced by the tests' install scripts (postgres.sh, haproxy.sh): installs
# one Debian package at most once however many test processes ask at once.
#
#   install_once NAME PACKAGE FIND [PREPARE]
#
# FIND is a function that prints the installed program's path (or nothing);
# PREPARE, if given, runs (with $as_root set) just before apt-get. Prints the
# path FIND gives and returns, or exits 1 with why. The check and the
# install happen under an exclusive lock on /tmp/tokenizer-auth-NAME-install.lock,
# and whoever waited checks again before installing. Installing needs root,
# or password-less sudo.

say() {
    echo "$SCRIPT: $*" >&2
}

install_once() {
    local name=$1 package=$2 find=$3 prepare=${4:-}
    local found lock=/tmp/tokenizer-auth-$name-install.lock
    found=$("$find")
    if [[ -n $found ]]; then
        echo "$found"
        return 0
    fi
    say "no $name here; waiting for $lock"
    # Opened for reading, so that a lock file left by another user serves.
    touch "$lock" 2>/dev/null || true
    exec 9<"$lock"
    # Another process may be installing: wait for it (apt can take minutes).
    flock -w 1200 9 || {
        say "timed out waiting for $lock"
        exit 1
    }
    found=$("$find")
    if [[ -n $found ]]; then
        say "another process installed $name: $found"
        echo "$found"
        return 0
    fi
    as_root=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            as_root=(sudo -n)
        else
            say "installing $name needs root (or password-less sudo): run, as root,"
            say "  apt-get update && apt-get install -y $package"
            exit 1
        fi
    fi
    if [[ -n $prepare ]]; then "$prepare"; fi
    say "apt-get update"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    say "apt-get install -y --no-install-recommends $package"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >&2
    found=$("$find")
    if [[ -z $found ]]; then
        say "installed the $package package, but found no $name program"
        exit 1
    fi
    say "installed $name: $found"
    echo "$found"
}
