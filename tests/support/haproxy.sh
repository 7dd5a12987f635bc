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

LOCK=/tmp/tokenizer-auth-haproxy-install.lock

say() {
    echo "haproxy.sh: $*" >&2
}

found() {
    command -v haproxy || { [[ -x /usr/sbin/haproxy ]] && echo /usr/sbin/haproxy; } || true
}

path=$(found)
if [[ -n $path ]]; then
    echo "$path"
    exit 0
fi

touch "$LOCK" 2>/dev/null || true
exec 9<"$LOCK"
flock -w 1200 9 || {
    say "timed out waiting for $LOCK"
    exit 1
}
path=$(found)
if [[ -n $path ]]; then
    echo "$path"
    exit 0
fi

as_root=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        say "installing HAProxy needs root (or password-less sudo): run, as root,"
        say "  apt-get update && apt-get install -y haproxy"
        exit 1
    fi
fi

say "apt-get update"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
say "apt-get install -y --no-install-recommends haproxy"
# policy-rc.d 101: the package's service is not started on install.
"${as_root[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >&2 || {
    "${as_root[@]}" rm -f /usr/sbin/policy-rc.d
    exit 1
}
"${as_root[@]}" rm -f /usr/sbin/policy-rc.d

path=$(found)
if [[ -z $path ]]; then
    say "installed the haproxy package, but found no haproxy program"
    exit 1
fi
say "installed HAProxy: $path"
echo "$path"
