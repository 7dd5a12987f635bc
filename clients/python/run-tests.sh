#!/usr/bin/env bash
# Runs the Python client's tests against the real server binary. Builds
# nothing: the binary is TOKENIZER_AUTH_BIN, else target/debug/tokenizer-auth
# at the repository's root (what `cargo test` or `cargo build -p
# tokenizer-auth` leaves there). Exits non-zero when a test fails.
#
#   clients/python/run-tests.sh [unittest arguments, e.g. -k renewal]
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
export TOKENIZER_AUTH_BIN=${TOKENIZER_AUTH_BIN:-$root/target/debug/tokenizer-auth}
if [[ ! -x $TOKENIZER_AUTH_BIN ]]; then
    echo "run-tests.sh: no server binary at $TOKENIZER_AUTH_BIN: run \`cargo build -p tokenizer-auth\`, or set TOKENIZER_AUTH_BIN" >&2
    exit 1
fi
cd "$root"
exec python3 -m unittest discover -s clients/python/tests -t clients/python/tests -v "$@"
