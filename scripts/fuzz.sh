#!/usr/bin/env bash
# Runs every fuzz target for a while and says, per target, how many inputs
# it ran and whether it found a crash. See docs/FUZZING.md.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60, all)
#
# Environment:
#   FUZZ_SANITIZER  none (default) or address. The engine forbids unsafe
#                   code, so AddressSanitizer only watches the dependencies;
#                   it needs `-Zsanitizer`, which a stable toolchain accepts
#                   with RUSTC_BOOTSTRAP=1 (set here when needed).
#   FUZZ_ARGS       extra libFuzzer flags, e.g. "-max_len=8192".
#   FUZZ_JOBS       processes per target, side by side on the same work
#                   corpus (default 1; one per core is the most useful).
#                   The executions reported are their sum.
#
# Each target starts from its seed corpus (fuzz/corpus/<target>/, read only)
# and its regressions (fuzz/regressions/<target>/), and keeps what it learns
# in fuzz/work/<target>/ (not committed), so a second run goes on from the
# first. A crash is written to fuzz/artifacts/<target>/; minimise it with
#   cargo fuzz tmin -s none <target> <file>
# and keep the result in fuzz/regressions/<target>/, which the engine's test
# suite replays (engine/tests/fuzz_corpus.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
shift || true
ALL_TARGETS=(native_line legacy_framing engine capture_reader proxy_header)
TARGETS=("${@:-${ALL_TARGETS[@]}}")
SANITIZER="${FUZZ_SANITIZER:-none}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: installing it (cargo install cargo-fuzz)"
    cargo install cargo-fuzz
fi
if [ "$SANITIZER" != none ] && ! rustc -V | grep -q nightly; then
    # Sanitizers are a -Z flag; a stable toolchain takes it only this way.
    export RUSTC_BOOTSTRAP=1
fi

echo "building the fuzz targets (sanitizer: $SANITIZER)"
cargo fuzz build -s "$SANITIZER"

declare -A EXECS RESULT RATE
failed=0
JOBS="${FUZZ_JOBS:-1}"
for target in "${TARGETS[@]}"; do
    work="fuzz/work/$target"
    mkdir -p "$work" "fuzz/regressions/$target"
    echo "fuzzing $target for ${SECONDS_PER_TARGET}s ($JOBS process(es))"
    pids=()
    for ((job = 1; job <= JOBS; job++)); do
        log="fuzz/work/$target.log"
        ((JOBS == 1)) || log="fuzz/work/$target.$job.log"
        # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
        cargo fuzz run -s "$SANITIZER" "$target" "$work" "fuzz/corpus/$target" "fuzz/regressions/$target" -- \
            -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=512 \
            -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1 &
        pids+=("$!:$log")
    done
    total=0 rate=0 result="no crash"
    for entry in "${pids[@]}"; do
        pid=${entry%%:*} log=${entry#*:}
        set +e
        wait "$pid"
        status=$?
        set -e
        execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
        if [ -z "$execs" ]; then
            # A crash may cut the final statistics short: take the last status line.
            execs=$(grep -oE '^#[0-9]+' "$log" | tr -d '#' | tail -1 || true)
        fi
        total=$((total + ${execs:-0}))
        r=$(grep -oE 'exec/s: [0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1 || true)
        rate=$((rate + ${r:-0}))
        if [ "$status" -ne 0 ]; then
            failed=1
            artifact=$(grep -oE 'Test unit written to \S+' "$log" | awk '{print $5}' | tail -1 || true)
            result="CRASH: ${artifact:-see $log}"
            grep -m1 -A2 -E 'panicked at|ERROR: libFuzzer' "$log" | sed 's/^/    /' || true
        fi
    done
    EXECS[$target]=$total
    RATE[$target]=$rate
    RESULT[$target]=$result
done

echo
printf '%-16s %14s %10s  %s\n' target executions 'exec/s' result
for target in "${TARGETS[@]}"; do
    printf '%-16s %14s %10s  %s\n' "$target" "${EXECS[$target]}" "${RATE[$target]:-?}" "${RESULT[$target]}"
done
echo "(${SECONDS_PER_TARGET}s per target, $JOBS process(es) each, sanitizer $SANITIZER; logs in fuzz/work/<target>[.N].log)"
exit "$failed"
