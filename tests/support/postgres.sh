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
# exclusive lock (install-once.sh), and whoever waited checks again before
# installing.
#
# The package would normally also create and start a system cluster
# ("main", port 5432). The tests need none, so before installing this
# script asks postgresql-common not to create it (a snippet in
# /etc/postgresql-common/createcluster.d/): nothing is left running.
set -euo pipefail

NO_MAIN_CLUSTER=/etc/postgresql-common/createcluster.d/tokenizer-auth-tests.conf
SCRIPT=postgres.sh
# shellcheck source=install-once.sh
source "$(dirname "$0")/install-once.sh"

# The newest installed version's bin folder, or nothing.
bindir() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        if [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]]; then
            echo "$dir"
        fi
    done | sort -V | tail -n 1
}

no_main_cluster() {
    say "asking postgresql-common to create no system cluster ($NO_MAIN_CLUSTER)"
    "${as_root[@]}" mkdir -p "$(dirname "$NO_MAIN_CLUSTER")"
    echo "create_main_cluster = false" | "${as_root[@]}" tee "$NO_MAIN_CLUSTER" >/dev/null
}

install_once postgresql postgresql bindir no_main_cluster
