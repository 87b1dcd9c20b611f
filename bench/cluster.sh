#!/usr/bin/env bash
# Cluster rows: the same load against one patchbay node on SQLite, one node on
# PostgreSQL and three nodes on one PostgreSQL, in one run. The load is bench/run.sh's
# patchbay row: wrk posts a ~1 KB JSON order (bench/post.lua) over BENCH_CONNECTIONS (64)
# connections for BENCH_SECONDS (15); patchbay commits it, maps it with jq and delivers it
# over HTTP to pb_sink --quiet (concurrency BENCH_CONCURRENCY, 64); then the backlog
# drains. With three nodes the connections are split over three wrk processes, one per
# node (a client posting to every node, as behind a load balancer).
#
#   sqlite-1     one node, state: sqlite (synchronous=FULL) in the work directory.
#   postgres-1   one node, state: postgres:// on a throwaway cluster (bench/broker.py
#                postgres: initdb in the work directory, fsync on, synchronous_commit on).
#   postgres-3   three nodes (cluster: {node: n1..n3}) on that cluster, in a schema of
#                their own.
#
# Per row: accepted/s (wrk's 2xx over the load), delivered/s (pb_sink's 200s over load +
# drain), wrk's p99 (three nodes: the largest of the three wrk processes' p99), patchbay's
# CPU per delivered message (utime+stime of every node from /proc, over load + drain),
# PostgreSQL's CPU per delivered message (the postmaster's own and reaped backends' ticks
# plus its live backends', over the same window), and how busy the whole machine was
# (every process's CPU over the window, of all cores: the noise on a shared machine).
#
# Usage: bench/cluster.sh   (build first: ./dev.sh build)
# Env:   BUILD_DIR (build/), BENCH_SECONDS (15), BENCH_CONNECTIONS (64, a multiple of 3 is
#        used for three nodes), BENCH_CONCURRENCY (64), BENCH_DRAIN_LIMIT (120 s: the
#        longest wait for a row's backlog), BENCH_WORKDIR (a disk, not tmpfs), BENCH_OUT
#        (a file to copy the table to), KEEP=1 keeps the work directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=${BUILD_DIR:-$root/build}
[[ $build == /* ]] || build=$root/$build
PB=$build/patchbay
SINK=$build/pb_sink
SECS=${BENCH_SECONDS:-15}
CONNS=${BENCH_CONNECTIONS:-64}
CONCURRENCY=${BENCH_CONCURRENCY:-64}
DRAIN_LIMIT=${BENCH_DRAIN_LIMIT:-120}
HZ=$(getconf CLK_TCK)
for f in "$PB" "$SINK"; do
    [[ -x $f ]] || {
        echo "no $f: build first (./dev.sh build)" >&2
        exit 2
    }
done
for tool in wrk curl python3 ps; do
    command -v "$tool" >/dev/null || {
        echo "$tool not found (./dev.sh bench installs wrk)" >&2
        exit 2
    }
done

work=$(mktemp -d "${BENCH_WORKDIR:-${TMPDIR:-/tmp}}/pb-bench-cluster-XXXXXX")
chmod 755 "$work"
pids=()
broker_pid=""
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ -n $broker_pid ]]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    if [[ ${KEEP:-0} == 1 ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
say() { printf '==> %s\n' "$*" >&2; }
now() { date +%s.%N; }
calc() {
    local fmt=$1
    shift
    awk "BEGIN { printf \"$fmt\\n\", $(IFS=,; echo "$*") }"
}
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_for() { # WHAT SECONDS CMD...
    local what=$1 deadline=$((SECONDS + $2))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || {
            echo "timed out waiting for $what" >&2
            return 1
        }
        sleep 0.1
    done
}

# ---- CPU -----------------------------------------------------------------------------------
own_child_ticks() { sed 's/.*) //' "/proc/$$/stat" | awk '{ print $14 + $15 }'; }
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }
proc_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'; }
pids_ticks() { # PID...: utime+stime summed
    local t=0 p v
    for p in "$@"; do
        v=$(proc_ticks "$p") || v=0
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
# PostgreSQL: the postmaster with its reaped backends (cutime+cstime), plus the live ones.
pg_ticks() {
    local t p v
    t=$(sed 's/.*) //' "/proc/$pg_pid/stat" | awk '{ print $12 + $13 + $14 + $15 }')
    for p in $(ps -o pid= --ppid "$pg_pid"); do
        v=$(proc_ticks "$p") || v=0
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

# ---- the database --------------------------------------------------------------------------
say "starting PostgreSQL in $work/pg"
PB_SINK=$SINK python3 "$here/broker.py" postgres "$work/pg" >"$work/pg.log" 2>&1 &
broker_pid=$!
for _ in $(seq 600); do
    [[ -f $work/pg/broker.env ]] && break
    kill -0 "$broker_pid" 2>/dev/null || {
        cat "$work/pg.log" >&2
        exit 1
    }
    sleep 0.1
done
[[ -f $work/pg/broker.env ]] || {
    echo "PostgreSQL did not start" >&2
    exit 1
}
# shellcheck disable=SC1091 # written by broker.py: url, port, pid
. "$work/pg/broker.env"
# shellcheck disable=SC2154
pg_pid=$pid pg_port=$port
PGBIN=$(dirname "$(find /usr/lib/postgresql/*/bin -name postgres | sort -V | tail -1)")
"$PGBIN/psql" -X -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -c "CREATE DATABASE bench"
dsn="postgres://postgres@127.0.0.1:$pg_port/bench"

# ---- the sink and the nodes --------------------------------------------------------------------
sink_port_file=$work/sink.port
"$SINK" --listen 127.0.0.1:0 --port-file "$sink_port_file" --threads 2 --quiet &
sink_pid=$!
pids+=("$sink_pid")
wait_for pb_sink 10 test -s "$sink_port_file"
sink_port=$(cat "$sink_port_file")
sink_200() {
    curl -fsS "http://127.0.0.1:$sink_port/_sink/stats" |
        awk '{ if (match($0, /"200":[0-9]+/)) n = substr($0, RSTART + 6, RLENGTH - 6) }
             END { print n + 0 }'
}
metric_sum() { # PORT NAME
    curl -fsS "http://127.0.0.1:$1/metrics" |
        awk -v name="$2" '($1 == name || index($1, name "{") == 1) { s += $NF }
                          END { printf "%d\n", s }'
}

# start_node DIR STATE [CLUSTER]: sets node_pid, node_port
start_node() {
    local dir=$1 state=$2 cluster=${3:-}
    node_port=$(free_port)
    mkdir -p "$dir"
    cat >"$dir/patchbay.yaml" <<EOF
server: { listen: 127.0.0.1:$node_port, admin_token: bench-token }
state: "$state"
$cluster
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop, max_body: 64KiB, format: json }
    process:
      - map: '{order_id: .id, cents: .total_cents, email: .customer.email, items: [.items[] | {sku, qty}]}'
    outputs:
      fulfillment:
        http:
          url: http://127.0.0.1:$sink_port/orders
          timeout: 5s
          map: '{order: .order_id, amount: .cents, currency: "eur", lines: (.items | length)}'
          retry: { max_attempts: 10, initial: 100ms, max: 2s, max_age: 1h }
          concurrency: $CONCURRENCY
EOF
    "$PB" run "$dir/patchbay.yaml" >"$dir/patchbay.out" 2>"$dir/patchbay.log" &
    node_pid=$!
    pids+=("$node_pid")
    wait_for "patchbay /ready" 60 curl -fsS "http://127.0.0.1:$node_port/ready"
}

# wrk_fields FILE: requests/s, p99 ms, completed requests, non-2xx, seconds (tab separated)
wrk_fields() {
    python3 - "$1" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
def ms(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    v, u = float(m.group(1)), m.group(2)
    return v * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[u]
rps = re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)
p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
total = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", t)
secs = float(total.group(2)) * {"ms": 0.001, "s": 1, "m": 60}[total.group(3)]
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
print(rps, f"{p99:.2f}", total.group(1), non2xx.group(1) if non2xx else 0, f"{secs:.2f}",
      sep="\t")
EOF
}

rows=$work/rows.tsv
: >"$rows"
notes=$work/notes.txt
: >"$notes"

# run_row NAME WHAT PORT... (the nodes' ports; node_pids holds their pids)
run_row() {
    local name=$1 what=$2
    shift 2
    local ports=("$@") n=$# c p i wpids=() before t0 m0 g0 c0 k0 o0 t_load t1 m1
    c=$((CONNS / n))
    before=$(sink_200)
    t0=$(now)
    m0=$(machine_ticks)
    g0=$(pg_ticks)
    c0=$(pids_ticks "${node_pids[@]}")
    k0=$(pids_ticks "$sink_pid")
    o0=$(own_child_ticks)
    i=0
    for p in "${ports[@]}"; do
        i=$((i + 1))
        wrk -t$((n == 1 ? 2 : 1)) -c"$c" -d"${SECS}s" --latency -s "$here/post.lua" \
            "http://127.0.0.1:$p/hooks/shop" >"$work/wrk-$name-$i.txt" &
        wpids+=($!)
    done
    for p in "${wpids[@]}"; do wait "$p"; done
    t_load=$(now)
    # accepted: what the nodes committed; delivered: the sink's 200s since the row began
    # (re-read while draining: requests wrk left in flight may still commit)
    local accepted delivered deadline=$((SECONDS + DRAIN_LIMIT)) drained=yes
    while :; do
        accepted=0
        for p in "${ports[@]}"; do
            accepted=$((accepted + $(metric_sum "$p" patchbay_messages_accepted_total)))
        done
        delivered=$(($(sink_200) - before))
        ((delivered >= accepted)) && break
        ((SECONDS < deadline)) || {
            drained="no ($delivered of $accepted after $DRAIN_LIMIT s)"
            break
        }
        sleep 0.1
    done
    t1=$(now)
    m1=$(machine_ticks)
    local pb_t pg_t secs busy p99=0 non2xx=0 f q x
    pb_t=$(($(pids_ticks "${node_pids[@]}") - c0))
    pg_t=$(($(pg_ticks) - g0))
    local sink_t wrk_t other_t
    sink_t=$(($(pids_ticks "$sink_pid") - k0))
    wrk_t=$(($(own_child_ticks) - o0))
    other_t=$((m1 - m0 - pb_t - pg_t - sink_t - wrk_t))
    ((other_t < 0)) && other_t=0
    secs=$(calc %.2f "$t1 - $t0")
    busy=$(calc %.0f "100 * ($m1 - $m0) / $HZ / $(nproc) / $secs")
    for f in "$work"/wrk-"$name"-*.txt; do
        IFS=$'\t' read -r _ q _ x _ < <(wrk_fields "$f")
        non2xx=$((non2xx + x))
        p99=$(calc %.2f "($q > $p99) ? $q : $p99")
    done
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$what" "$accepted" \
        "$delivered" "$secs" "$(calc %.2f "$t_load - $t0")" "$p99" "$pb_t" "$pg_t" "$busy" \
        "$non2xx" >>"$rows"
    echo "$name: $accepted accepted ($non2xx non-2xx answers = 503 back-pressure), $delivered" \
        "delivered, drained: $drained; load $(calc %.1f "$t_load - $t0") s + drain" \
        "$(calc %.1f "$t1 - $t_load") s; CPU over the window: patchbay $(calc %.1f "$pb_t / $HZ") s," \
        "PostgreSQL $(calc %.1f "$pg_t / $HZ") s, wrk and curl $(calc %.1f "$wrk_t / $HZ") s," \
        "pb_sink $(calc %.1f "$sink_t / $HZ") s, the rest of the machine" \
        "$(calc %.1f "$other_t / $HZ") s (of $(calc %.1f "$(nproc) * $secs") core-seconds)" >>"$notes"
    say "$name: $accepted accepted, $delivered delivered in $secs s, p99 $p99 ms"
}

stop_nodes() {
    local p
    for p in "${node_pids[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}

# ---- the rows ------------------------------------------------------------------------------------
say "sqlite-1: one node on SQLite"
start_node "$work/sqlite-1" "sqlite:$work/sqlite-1/state.db"
node_pids=("$node_pid")
run_row sqlite-1 "1 node, SQLite" "$node_port"
stop_nodes

say "postgres-1: one node on PostgreSQL"
start_node "$work/postgres-1" "$dsn?schema=one"
node_pids=("$node_pid")
run_row postgres-1 "1 node, PostgreSQL" "$node_port"
stop_nodes

say "postgres-3: three nodes on one PostgreSQL"
node_pids=()
ports=()
for n in n1 n2 n3; do
    start_node "$work/postgres-3-$n" "$dsn?schema=three" "cluster: { node: $n }"
    node_pids+=("$node_pid")
    ports+=("$node_port")
done
run_row postgres-3 "3 nodes, one PostgreSQL" "${ports[@]}"
stop_nodes

# ---- the table -------------------------------------------------------------------------------------
{
    echo "Cluster rows: wrk ${SECS} s, $CONNS connections, ~1 KB orders, jq map, HTTP delivery" \
        "to pb_sink (concurrency $CONCURRENCY); $(nproc) cores, $("$PGBIN/postgres" --version)," \
        "rev $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')," \
        "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| row | what | accepted/s | delivered/s | p99 ms | patchbay CPU-µs/msg | PostgreSQL CPU-µs/msg | machine busy |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' -v hz="$HZ" '{
        d = ($4 > 0) ? $4 : 1
        printf "| %s | %s | %.0f | %.0f | %s | %.0f | %.0f | %s%% |\n",
            $1, $2, $3 / $6, $4 / $5, $7, $8 / hz * 1e6 / d, $9 / hz * 1e6 / d, $10 }' "$rows"
    echo
    sed 's/^/- /' "$notes"
} | tee "$work/table.md"
[[ -z ${BENCH_OUT:-} ]] || cp "$work/table.md" "$BENCH_OUT"
