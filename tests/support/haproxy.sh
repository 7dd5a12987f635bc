#!/usr/bin/env bash
# Makes sure HAProxy is on this machine, for the tests that put a real load
# balancer in front of the servers (tests/src/haproxy.rs runs this script
# when it finds none). Prints the path of the haproxy program as the one
# line on stdout; says what it does on stderr.
#
# When it is missing it installs Debian's `haproxy` package with apt-get,
# as root (or through `sudo -n`), under an exclusive lock so that test
# processes running at once install it once. The package's own service is
# not needed: it is stopped and disabled where systemd runs, and nothing
# listens on its behalf (the tests start haproxy themselves, on loopback).
set -euo pipefail

SCRIPT=haproxy.sh
# shellcheck source=install-once.sh
source "$(dirname "$0")/install-once.sh"

found() {
    command -v haproxy || { [[ -x /usr/sbin/haproxy ]] && echo /usr/sbin/haproxy; } || true
}

# policy-rc.d 101: the package's service is not started by the install
# (removed again when this script exits).
no_service() {
    "${as_root[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
    trap '"${as_root[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
}

install_once haproxy haproxy found no_service
