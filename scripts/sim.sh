#!/usr/bin/env bash
# Soak of the whole-system simulation (docs/SIMULATION.md): random seeds,
# batch after batch, for HOURS hours (fractions allowed, e.g. 0.1).
#
#   scripts/sim.sh HOURS [REQUESTS_PER_SEED]
#
# Each batch starts at a random seed and runs 200 seeds in a row. The first
# violation stops the soak, with the seed and the command that replays it
# (exit 1). The last line is the JSON of the whole soak, summed over the
# batches, in the format of one `sim` run. Batch lines go to
# target/sim-soak.log. SIM_BIN runs a binary built before (so that a
# rebuild during the soak does not change what it runs).
set -euo pipefail
cd "$(dirname "$0")/.."

hours=${1:?usage: scripts/sim.sh HOURS [REQUESTS_PER_SEED]}
requests=${2:-10000}
batch=200
if [ -z "${SIM_BIN:-}" ]; then
    cargo build --release --quiet --bin sim
fi
sim=${SIM_BIN:-target/release/sim}
end=$(python3 -c "import time; print(int(time.time() + float('$hours') * 3600))")
log=target/sim-soak.log
: >"$log"
started=$(date +%s)
while [ "$(date +%s)" -lt "$end" ]; do
    from=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
    if ! out=$("$sim" --seeds "$batch" --from "$from" --requests "$requests"); then
        printf '%s\n' "$out" | grep -E 'VIOLATION|replay with' >&2
        printf '%s\n' "$out" | tail -n 1 >>"$log"
        echo "sim.sh: a seed broke a rule (batch from $from)" >&2
        status=1
        break
    fi
    printf '%s\n' "$out" | tail -n 1 >>"$log"
done
python3 - "$log" "$started" <<'PY'
import json, sys, time
totals = {"seeds": 0, "requests": 0, "faults": {}, "violations": 0}
for line in open(sys.argv[1]):
    run = json.loads(line)
    for key in ("seeds", "requests", "violations"):
        totals[key] += run[key]
    for kind, n in run["faults"].items():
        totals["faults"][kind] = totals["faults"].get(kind, 0) + n
wall = max(time.time() - int(sys.argv[2]), 1)
totals["hours"] = round(wall / 3600, 3)
totals["requests_per_sec"] = round(totals["requests"] / wall)
print(json.dumps(totals, sort_keys=True))
PY
exit "${status:-0}"
