#!/usr/bin/env bash
# run_long.sh - every fault scenario in its long form, one after the other.
#
#   tests/fault/run_long.sh [BUILD_DIR] [SCENARIO...]
#
# BUILD_DIR (default build/) holds patchbay and pb_sink; it is built first.
# SCENARIO names a test file (kill9, sigterm, partner_outage, slow_peers,
# disk_full, corrupt_store, memory_bound); default all. Each scenario's
# figures are written to BUILD_DIR/fault-results/NAME.json and summed up
# in a table at the end (the one docs/reliability.md shows). Takes about
# 15 minutes on 2 cores; the disk-full scenario needs root (mount).
# PB_FAULT_SEED fixes the random choices.
set -uo pipefail
cd "$(dirname "$0")/../.."

build=${1:-build}
shift || true
if [[ ! -f $build/build.ninja ]]; then
    cmake -S . -B "$build" -G Ninja >/dev/null || exit 1
fi
ninja -C "$build" patchbay pb_sink >/dev/null || exit 1
sanitize=OFF
grep -q '^PB_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" && sanitize=ON

export PB_BIN=$PWD/$build/patchbay PB_SINK=$PWD/$build/pb_sink PB_SANITIZE=$sanitize
export PB_FAULT_RESULTS=$PWD/$build/fault-results
rm -rf "$PB_FAULT_RESULTS"
mkdir -p "$PB_FAULT_RESULTS"

scenarios=("$@")
((${#scenarios[@]})) || scenarios=(kill9 sigterm partner_outage slow_peers disk_full corrupt_store memory_bound)
status=0
declare -A outcome
for s in "${scenarios[@]}"; do
    echo "==== $s (long form)"
    t0=$SECONDS
    python3 "tests/fault/test_$s.py" --long 2>&1 | tee "$PB_FAULT_RESULTS/$s.log" |
        grep -E '^(----|PASS|FAIL|SKIP|KNOWN-DEFECT|cycle|phase|round|[0-9]+ acknowledged)' || true
    rc=${PIPESTATUS[0]}
    case $rc in
    0) outcome[$s]="passed in $((SECONDS - t0))s" ;;
    77) outcome[$s]="skipped" ;;
    *) outcome[$s]="FAILED (exit $rc; log in $PB_FAULT_RESULTS/$s.log)"; status=1 ;;
    esac
done

echo
echo "==== summary ($build, sanitizers $sanitize)"
for s in "${scenarios[@]}"; do
    printf '%-16s %s\n' "$s" "${outcome[$s]}"
done
echo
python3 - "$PB_FAULT_RESULTS" <<'PY'
import json, os, sys
d = sys.argv[1]
rows = []
for name in sorted(os.listdir(d)):
    if not name.endswith(".json"):
        continue
    r = json.load(open(os.path.join(d, name)))
    cycles = r.get("cycles") or r.get("rounds") and len(r["rounds"]) or r.get("damages") or ""
    rows.append((r["scenario"], cycles, r.get("acknowledged", ""), r.get("lost", ""),
                 r.get("duplicate_deliveries", ""), ", ".join(r.get("known_defects", [])) or "-"))
print("| scenario | cycles | acknowledged | lost | duplicate deliveries | known defects |")
print("|---|---|---|---|---|---|")
for row in rows:
    print("| " + " | ".join(str(x) for x in row) + " |")
PY
exit $status
