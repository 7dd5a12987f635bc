#!/usr/bin/env bash
# Makes sure openssl is on this machine, for the Python client's TLS tests
# (support.py runs this when it finds none), the way the project's other
# test tools are installed: Debian's `openssl` package through
# tests/support/install-once.sh, as root (or `sudo -n`), once however many
# test processes ask. Prints the path of the openssl program on stdout.
set -euo pipefail

SCRIPT=install-openssl.sh
# shellcheck source=../../../tests/support/install-once.sh
source "$(dirname "$0")/../../../tests/support/install-once.sh"

found() {
    command -v openssl || { [[ -x /usr/bin/openssl ]] && echo /usr/bin/openssl; } || true
}

install_once openssl openssl found
