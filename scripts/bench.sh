#!/usr/bin/env bash
# The server benchmarks (docs/BENCHMARKS.md, section "Servers").
#
# Builds in release, seeds the data folders, and for each scenario starts
# the server on free ports (--listen 127.0.0.1:0 ...; the bound addresses
# come from its JSON `listening` log line), runs tokenizer-auth-bench
# against a baseline and then the server with the same client settings,
# and stops the server with SIGTERM by its PID. At the end it prints the
# report (every run's figures and each goal, met or not).
#
# Usage: scripts/bench.sh [OUT_DIR]        (default target/bench/<date-time>)
# Environment:
#   SCENARIOS   which to run, default "a b c d e f"; extras: c-hash2 (c with
#               two hash workers, one per core of this machine, instead of
#               the default cores - 1), e-limits (e with the default
#               brute-force limits), c-reserve and e-reserve (c and e with
#               the brute-force limits on but far out of reach, so that every
#               request commits its reservation and none is refused), i
#               (a over TLS and in plaintext, one after the other; needs
#               openssl for the certificate), pg (a and d on a PostgreSQL
#               database, store_url, each right after the same on SQLite;
#               starts a PostgreSQL server of its own on 127.0.0.1,
#               installed by tests/support/postgres.sh when missing)
#   SERVER_BIN  the server binary to measure, default the one built here
#               (target/release/tokenizer-auth); to compare with another
#               build, e.g. one of the branch point
#   DURATION    measured window per run, default 10s
#   WARMUP      load before measuring, default 1s
#   QUIET_LOAD  wait until the 1-minute load average is below this, default 0.5
#   QUIET_MAX   ... for at most this many seconds, default 900 (0: do not wait)
#   KEEP_DATA   1 keeps the seeded data folders (the 1M one is ~250 MB)
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-"a b c d e f"}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-1s}
QUIET_LOAD=${QUIET_LOAD:-0.5}
QUIET_MAX=${QUIET_MAX:-900}
OUT=${1:-target/bench/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
DATA="$OUT/data"

cargo build --release -p tokenizer-auth -p tokenizer-auth-bench
BIN=${SERVER_BIN:-target/release/tokenizer-auth}
BENCH=target/release/tokenizer-auth-bench

PID=""
cleanup() {
    if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    if [[ "${KEEP_DATA:-0}" != 1 ]]; then rm -rf "$DATA"; fi
}
trap cleanup EXIT

load1() { cut -d' ' -f1 /proc/loadavg; }

wait_quiet() {
    local waited=0
    while awk -v l="$(load1)" -v q="$QUIET_LOAD" 'BEGIN { exit !(l >= q) }'; do
        if ((waited >= QUIET_MAX)); then
            echo "bench: load average still $(load1) after ${waited}s; measuring anyway" >&2
            return
        fi
        if ((waited % 30 == 0)); then echo "bench: waiting for a quiet machine (load average $(load1))" >&2; fi
        sleep 5
        waited=$((waited + 5))
    done
}

# start_server NAME RUNTIME DATA_DIR [VAR=VALUE...]
# Sets PID, NATIVE, LEGACY_LOGIN, READY_MS (spawn to the `listening` line).
start_server() {
    local name=$1 runtime=$2 dir=$3
    shift 3
    local log="$OUT/$name.server.log"
    local t0 t1 line
    t0=$(date +%s%N)
    env TOKENIZER_AUTH_LOG_FORMAT=json "$@" "$BIN" --data-dir "$dir" serve --runtime "$runtime" \
        --listen 127.0.0.1:0 --legacy-passcode-listen 127.0.0.1:0 --legacy-login-listen 127.0.0.1:0 \
        2>"$log" &
    PID=$!
    until line=$(grep -m1 '"listening"' "$log"); do
        if ! kill -0 "$PID" 2>/dev/null; then
            echo "bench: the server exited before listening:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.005
    done
    t1=$(date +%s%N)
    READY_MS=$(((t1 - t0) / 1000000))
    NATIVE=$(sed -n 's/.*"native":"\([^"]*\)".*/\1/p' <<<"$line")
    LEGACY_LOGIN=$(sed -n 's/.*"legacy_login":"\([^"]*\)".*/\1/p' <<<"$line")
    echo "bench: $name: $runtime server $PID ready in ${READY_MS} ms on $NATIVE (legacy login $LEGACY_LOGIN)" >&2
}

stop_server() {
    kill -TERM "$PID"
    wait "$PID" || true
    PID=""
}

# bench LABEL ARGS...: one run against the server started last.
bench() {
    local label=$1
    shift
    "$BENCH" run --label "$label" --duration "$DURATION" --warmup "$WARMUP" --server-pid "$PID" \
        --note "ready_ms=$READY_MS" --note "load_before=$(load1)" --note "date=$(date -u +%FT%TZ)" "$@" |
        tee "$OUT/$label.txt"
}

has() { [[ " $SCENARIOS " == *" $1 "* ]]; }

# Rejected logins must each cost a password verification: the brute-force
# limits would otherwise answer a one-address flood `rate_limited` after 100
# failures, without hashing.
NO_LIMITS=(TOKENIZER_AUTH_FAILURES_PER_IP=0 TOKENIZER_AUTH_FAILURES_PER_EMAIL=0
    TOKENIZER_AUTH_MAX_CONSECUTIVE_FAILURES=0)

{
    echo "date: $(date -u +%FT%TZ)"
    echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
    echo "settings: DURATION=$DURATION WARMUP=$WARMUP SCENARIOS=\"$SCENARIOS\""
} | tee "$OUT/machine.txt"

if has a || has c || has c-hash2 || has c-reserve || has e || has e-reserve || has e-limits || has f || has i || has pg; then
    "$BENCH" seed --data-dir "$DATA/100k" --tokens "$DATA/100k.tokens" --sessions 100000
fi
if has b; then
    "$BENCH" seed --data-dir "$DATA/1m" --tokens "$DATA/1m.tokens" --sessions 1000000
fi
if has d || has pg; then
    "$BENCH" seed --data-dir "$DATA/expired" --tokens "$DATA/expired.tokens" --sessions 100000 --expired
fi

wait_quiet

# a. Authorized token checks, mio, 100,000 sessions, N=32, D=16.
if has a; then
    start_server a mio "$DATA/100k"
    bench a --addr "$NATIVE" --tokens "$DATA/100k.tokens" -c 32 -d 16 \
        --note "creds_db_bytes=$(stat -c %s "$DATA/100k/op_creds.db")"
    stop_server
fi

# b. The same with 1,000,000 sessions.
if has b; then
    start_server b mio "$DATA/1m"
    bench b --addr "$NATIVE" --tokens "$DATA/1m.tokens" -c 32 -d 16 \
        --note "creds_db_bytes=$(stat -c %s "$DATA/1m/op_creds.db")"
    stop_server
fi

# c. (a) with 200 logins per second that each need a password verification.
if has c; then
    start_server c mio "$DATA/100k" "${NO_LIMITS[@]}"
    bench c --addr "$NATIVE" --tokens "$DATA/100k.tokens" -c 32 -d 16 --logins-per-sec 200
    stop_server
fi

# c-hash2 (extra). (c) with two hash workers instead of cores - 1.
if has c-hash2; then
    start_server c-hash2 mio "$DATA/100k" "${NO_LIMITS[@]}" TOKENIZER_AUTH_HASH_WORKERS=2
    bench c-hash2 --addr "$NATIVE" --tokens "$DATA/100k.tokens" -c 32 -d 16 --logins-per-sec 200
    stop_server
fi

# d. Renewals: every request rotates an expired session (a committed write);
#    a 1-second token lifetime makes renewed tokens renewable again.
if has d; then
    start_server d mio "$DATA/expired" TOKENIZER_AUTH_TOKEN_TTL=1s
    bench d --mode renew --addr "$NATIVE" --tokens "$DATA/expired.tokens" -c 32 -d 16
    stop_server
fi

# e. The legacy login port, one rejected login per connection.
if has e; then
    start_server e mio "$DATA/100k" "${NO_LIMITS[@]}"
    bench e --mode legacy --addr "$LEGACY_LOGIN" -c 32
    stop_server
fi

# c-reserve, e-reserve (extra). (c) and (e) with the limits on but out of
# reach: every verification is first reserved by a committed write.
FAR_LIMITS=(TOKENIZER_AUTH_FAILURES_PER_IP=1000000000 TOKENIZER_AUTH_FAILURES_PER_EMAIL=1000000000
    TOKENIZER_AUTH_MAX_CONSECUTIVE_FAILURES=1000000000)
if has c-reserve; then
    start_server c-reserve mio "$DATA/100k" "${FAR_LIMITS[@]}"
    bench c-reserve --addr "$NATIVE" --tokens "$DATA/100k.tokens" -c 32 -d 16 --logins-per-sec 200
    stop_server
fi
if has e-reserve; then
    start_server e-reserve mio "$DATA/100k" "${FAR_LIMITS[@]}"
    bench e-reserve --mode legacy --addr "$LEGACY_LOGIN" -c 32
    stop_server
fi

# e-limits (extra). The same with the default brute-force limits.
if has e-limits; then
    start_server e-limits mio "$DATA/100k"
    bench e-limits --mode legacy --addr "$LEGACY_LOGIN" -c 32
    stop_server
fi

# i. (a) over TLS, and in plaintext in the same run: a certificate for
# localhost from an authority made here.
if has i; then
    PKI="$OUT/pki"
    mkdir -p "$PKI"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
        -keyout "$PKI/ca.key" -out "$PKI/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
        -keyout "$PKI/key.pem" -out "$PKI/leaf.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$PKI/ext"
    openssl x509 -req -in "$PKI/leaf.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial -days 2 \
        -extfile "$PKI/ext" -out "$PKI/cert.pem" 2>/dev/null
    start_server i-plain mio "$DATA/100k"
    bench i-plain --addr "$NATIVE" --tokens "$DATA/100k.tokens" -c 32 -d 16
    stop_server
    start_server i-tls mio "$DATA/100k" TOKENIZER_AUTH_TLS_CERT="$PKI/cert.pem" TOKENIZER_AUTH_TLS_KEY="$PKI/key.pem"
    bench i-tls --addr "$NATIVE" --tokens "$DATA/100k.tokens" -c 32 -d 16 --tls-ca "$PKI/ca.pem"
    stop_server
fi

# pg. (a) and (d) with the records in PostgreSQL (store_url), each right
#     after the same on SQLite; (a) on PostgreSQL with its session cache and
#     without; (d) with three more, idle servers listening on the database
#     (d-pg-listeners); and logins alone (l-pg). The database's CPU is measured too
#     (--db-pid: the postmaster and its processes). A cluster of its own in $OUT/pg, on
#     127.0.0.1 and a free port (as the postgres user under root, which
#     PostgreSQL refuses), the seeded folders moved in by `store copy`.
PG_DIR=""
pg_stop() {
    if [[ -n "$PG_DIR" ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" stop -m fast -w >/dev/null 2>&1 || true
        PG_DIR=""
    fi
}
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if has pg; then
    PG_BIN=$(tests/support/postgres.sh)
    PG_DIR="$(cd "$OUT" && pwd)/pg"
    mkdir -p "$PG_DIR"
    if [[ $(id -u) -eq 0 ]]; then chown postgres "$PG_DIR"; fi
    trap 'pg_stop; cleanup' EXIT
    PG_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U bench --auth=trust >/dev/null
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c max_connections=200" start >/dev/null
    pg_url() { echo "postgres://bench@127.0.0.1:$PG_PORT/$1"; }
    pg_key() { od -An -tx1 "$1/server.key" | tr -d ' \n'; }
    for db in a d d4; do
        as_pg "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U bench -d postgres -c "CREATE DATABASE $db"
    done
    "$BIN" --data-dir "$OUT/pg-server" store copy --from "$DATA/100k" --to "$(pg_url a)" >&2
    "$BIN" --data-dir "$OUT/pg-server" store copy --from "$DATA/expired" --to "$(pg_url d)" >&2
    "$BIN" --data-dir "$OUT/pg-server" store copy --from "$DATA/expired" --to "$(pg_url d4)" >&2

    PG_PID=$(head -1 "$PG_DIR/data/postmaster.pid")
    A_PG=(TOKENIZER_AUTH_STORE_URL="$(pg_url a)" TOKENIZER_AUTH_SERVER_KEY="$(pg_key "$DATA/100k")")
    start_server a-sqlite mio "$DATA/100k"
    bench a-sqlite --addr "$NATIVE" --tokens "$DATA/100k.tokens" -c 32 -d 16
    stop_server
    # With the session cache (revocation_delay 1 s), then without: every
    # check a database read, which gives the database's cost of a miss.
    start_server a-pg mio "$OUT/pg-server" "${A_PG[@]}"
    bench a-pg --addr "$NATIVE" --tokens "$DATA/100k.tokens" -c 32 -d 16 --db-pid "$PG_PID"
    stop_server
    start_server a-pg-nocache mio "$OUT/pg-server" "${A_PG[@]}" TOKENIZER_AUTH_REVOCATION_DELAY=0s
    bench a-pg-nocache --addr "$NATIVE" --tokens "$DATA/100k.tokens" -c 32 -d 16 --db-pid "$PG_PID"
    stop_server
    start_server d-sqlite mio "$DATA/expired" TOKENIZER_AUTH_TOKEN_TTL=1s
    bench d-sqlite --mode renew --addr "$NATIVE" --tokens "$DATA/expired.tokens" -c 32 -d 16
    stop_server
    start_server d-pg mio "$OUT/pg-server" TOKENIZER_AUTH_TOKEN_TTL=1s TOKENIZER_AUTH_STORE_URL="$(pg_url d)" \
        TOKENIZER_AUTH_SERVER_KEY="$(pg_key "$DATA/expired")"
    bench d-pg --mode renew --addr "$NATIVE" --tokens "$DATA/expired.tokens" -c 32 -d 16 --db-pid "$PG_PID"
    stop_server
    # d-pg-listeners: (d) again with three more servers on the database,
    # idle but listening, for what delivering every change to each
    # further server costs the database.
    IDLE=()
    for i in 1 2 3; do
        env TOKENIZER_AUTH_LOG_FORMAT=json TOKENIZER_AUTH_STORE_URL="$(pg_url d4)" \
            TOKENIZER_AUTH_SERVER_KEY="$(pg_key "$DATA/expired")" "$BIN" --data-dir "$OUT/pg-idle-$i" serve \
            --listen 127.0.0.1:0 --legacy-passcode-listen 127.0.0.1:0 --legacy-login-listen 127.0.0.1:0 \
            2>"$OUT/pg-idle-$i.log" &
        IDLE+=($!)
        until grep -q '"listening"' "$OUT/pg-idle-$i.log"; do sleep 0.05; done
    done
    start_server d-pg-listeners mio "$OUT/pg-server" TOKENIZER_AUTH_TOKEN_TTL=1s \
        TOKENIZER_AUTH_STORE_URL="$(pg_url d4)" TOKENIZER_AUTH_SERVER_KEY="$(pg_key "$DATA/expired")"
    bench d-pg-listeners --mode renew --addr "$NATIVE" --tokens "$DATA/expired.tokens" -c 32 -d 16 --db-pid "$PG_PID"
    stop_server
    kill -TERM "${IDLE[@]}"
    wait "${IDLE[@]}" || true
    # Logins alone, for their cost on the database: 40 a second (what one
    # hash worker verifies), beside one connection of cached checks.
    start_server l-pg mio "$OUT/pg-server" "${A_PG[@]}" "${NO_LIMITS[@]}"
    bench l-pg --addr "$NATIVE" --tokens "$DATA/100k.tokens" -c 1 -d 1 --logins-per-sec 40 --db-pid "$PG_PID"
    stop_server
    pg_stop
fi

# f. The std runtime on (a) and (e).
if has f; then
    start_server f-a std "$DATA/100k"
    bench f-a --addr "$NATIVE" --tokens "$DATA/100k.tokens" -c 32 -d 16
    stop_server
    start_server f-e std "$DATA/100k" "${NO_LIMITS[@]}"
    bench f-e --mode legacy --addr "$LEGACY_LOGIN" -c 32
    stop_server
fi

echo
"$BENCH" report "$OUT"/*.txt | tee "$OUT/report.md"
echo "bench: results in $OUT" >&2
