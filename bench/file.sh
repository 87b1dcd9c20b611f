#!/usr/bin/env bash
# The file input on a large CSV: `patchbay run --once` takes one CSV of
# BENCH_FILE_SIZE bytes (default 1 GB: about 13 million rows of ~80 bytes, quoted
# fields included) from a folder, each row a message committed to the state store,
# delivered to the `drop` output, the file archived at the end. Reports:
#
#   rows, file MB, wall seconds, records/s (rows / wall time, from start to exit),
#   MB/s of CSV read, peak RSS (VmHWM, sampled every 0.2 s, and /usr/bin/time's
#   maximum resident set size when it is there) and RSS at 10 % steps of the file,
#   to show memory stays flat while the file streams (it must not grow with the file).
#
# The run is what a nightly import does: the file is read twice (checked and hashed,
# then committed in batches of BENCH_BATCH records with the checkpoint), every row is
# one message plus one delivery in the store. The state store's group commit is the
# limit on this machine, not the reading: BENCH_PASS1_ONLY=1 also times a pass of the
# reader alone (a file whose last row is broken: it is read, checked and refused, with
# nothing committed).
#
# Usage: bench/file.sh          (build first: ./dev.sh build)
# Env:   BUILD_DIR (build/), BENCH_FILE_SIZE (1000000000), BENCH_BATCH (1000),
#        BENCH_WORKDIR (where the CSV and the store go; default ${TMPDIR:-/tmp}; a disk,
#        not tmpfs, for a fair commit cost), BENCH_PASS1_ONLY (0), KEEP=1 keeps it all.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=${BUILD_DIR:-$root/build}
[[ $build == /* ]] || build=$root/$build
PB=$build/patchbay
SIZE=${BENCH_FILE_SIZE:-1000000000}
BATCH=${BENCH_BATCH:-1000}
[[ -x $PB ]] || { echo "no $PB: build first (./dev.sh build)" >&2; exit 2; }

work=$(mktemp -d "${BENCH_WORKDIR:-${TMPDIR:-/tmp}}/pb-bench-file-XXXXXX")
cleanup() { [[ ${KEEP:-0} == 1 ]] && echo "kept $work" >&2 || rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/inbox" "$work/done" "$work/failed" "$work/stage"

echo "making a CSV of $SIZE bytes in $work ..." >&2
python3 - "$work/stage/big.csv" "$SIZE" <<'EOF'
import sys
path, size = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    f.write(b"id,sku,qty,price,customer,note\n")
    i = 0
    while f.tell() < size:
        rows = []
        for _ in range(20000):
            i += 1
            rows.append(b'%d,SKU-%05d,%d,%d.%02d,Customer %d,"note, with ""quotes"" %d"\n'
                        % (i, i % 99991, i % 17, i % 1000, i % 100, i % 50000, i))
        f.write(b"".join(rows))
print(i, file=sys.stderr)
EOF
rows=$(($(wc -l <"$work/stage/big.csv") - 1))
bytes=$(stat -c %s "$work/stage/big.csv")

cat >"$work/patchbay.yaml" <<EOF
server: { listen: "127.0.0.1:0" }
state: sqlite:$work/state/state.db
pipelines:
  bench:
    input:
      file:
        paths: ["$work/inbox/*.csv"]
        format: csv
        archive_dir: $work/done
        error_dir: $work/failed
        min_age: 0s
        batch: $BATCH
    outputs:
      drop: { drop: {} }
EOF

# run LABEL: take whatever is in the inbox with run --once; print the figures.
run() {
    local label=$1 t0 t1 peak=0 rss cur series="" n=0
    t0=$(date +%s.%N)
    "$PB" run --once "$work/patchbay.yaml" 2>"$work/log.$label" &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        rss=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        cur=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        [[ -n $rss && $rss -gt $peak ]] && peak=$rss
        # The resident size every 5 s: it must stay flat while the file streams.
        if ((n % 25 == 0)) && [[ -n $cur ]]; then
            series+=" $((cur / 1024))"
        fi
        n=$((n + 1))
        sleep 0.2
    done
    wait "$pid" || { echo "patchbay failed:" >&2; tail -20 "$work/log.$label" >&2; exit 1; }
    t1=$(date +%s.%N)
    awk -v l="$label" -v r="$rows" -v b="$bytes" -v t0="$t0" -v t1="$t1" -v p="$peak" 'BEGIN {
        s = t1 - t0
        printf "%-10s rows=%d file_MB=%.0f wall_s=%.1f records_per_s=%.0f read_MB_per_s=%.1f peak_rss_MB=%d\n",
            l, r, b / 1e6, s, r / s, b / 1e6 / s, p / 1024 }'
    echo "           rss_MB every 5 s:${series}"
    grep -h "run --once:" "$work/log.$label" | sed 's/^/           /'
}

if [[ ${BENCH_PASS1_ONLY:-0} == 1 ]]; then
    cp "$work/stage/big.csv" "$work/inbox/broken.csv"
    printf '"never closed\n' >>"$work/inbox/broken.csv"
    run read-only
    rm -f "$work/failed/"*
fi
mv "$work/stage/big.csv" "$work/inbox/big.csv"
run commit
[[ -f $work/done/big.csv ]] || { echo "the file was not archived" >&2; exit 1; }
