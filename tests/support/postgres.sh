#!/usr/bin/env bash
# Makes sure PostgreSQL's server programs (initdb, pg_ctl, postgres) are on
# this machine, for the tests' real PostgreSQL server (tests/src/postgres.rs
# runs this script when it finds none).
#
# Usage: postgres.sh
#
# Prints the folder that holds the programs as the one line on stdout (the
# newest /usr/lib/postgresql/<version>/bin); says what it does on stderr.
# When none is installed it installs Debian's `postgresql` package with
# apt-get, as root (or through `sudo -n` when not root). Idempotent: a
# second run finds the programs and installs nothing. Several test
# processes may call it at once: the check and the install happen under an
# exclusive lock on $LOCK, and whoever waited checks again before
# installing.
#
# The package would normally also create and start a system cluster
# ("main", port 5432). The tests need none, so before installing this
# script asks postgresql-common not to create it (a snippet in
# /etc/postgresql-common/createcluster.d/): nothing is left running.
set -euo pipefail

LOCK=/tmp/tokenizer-auth-postgres-install.lock
NO_MAIN_CLUSTER=/etc/postgresql-common/createcluster.d/tokenizer-auth-tests.conf

say() {
    echo "postgres.sh: $*" >&2
}

# The newest installed version's bin folder, or nothing.
bindir() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        if [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]]; then
            echo "$dir"
        fi
    done | sort -V | tail -n 1
}

found=$(bindir)
if [[ -n $found ]]; then
    say "found PostgreSQL in $found"
    echo "$found"
    exit 0
fi

say "no PostgreSQL server programs in /usr/lib/postgresql/*/bin; waiting for $LOCK"
# Opened for reading, so that a lock file left by another user still serves.
touch "$LOCK" 2>/dev/null || true
exec 9<"$LOCK"
# Another process may be installing: wait for it (apt can take minutes).
flock -w 1200 9 || {
    say "timed out waiting for $LOCK"
    exit 1
}

found=$(bindir)
if [[ -n $found ]]; then
    say "another process installed PostgreSQL in $found"
    echo "$found"
    exit 0
fi

as_root=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        say "installing PostgreSQL needs root (or password-less sudo): run, as root,"
        say "  apt-get update && apt-get install -y postgresql"
        exit 1
    fi
fi

say "asking postgresql-common to create no system cluster ($NO_MAIN_CLUSTER)"
"${as_root[@]}" mkdir -p "$(dirname "$NO_MAIN_CLUSTER")"
echo "create_main_cluster = false" | "${as_root[@]}" tee "$NO_MAIN_CLUSTER" >/dev/null

say "apt-get update"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
say "apt-get install -y --no-install-recommends postgresql"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2

found=$(bindir)
if [[ -z $found ]]; then
    say "installed the postgresql package, but found no initdb in /usr/lib/postgresql/*/bin"
    exit 1
fi
say "installed PostgreSQL in $found"
echo "$found"
