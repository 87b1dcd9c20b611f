#!/usr/bin/env bash
# One benchmark run, on loopback, same load for every server: wrk posts a ~1 KB JSON
# order (bench/post.lua), a distinct id per request, over 64 connections from 2 threads
# for BENCH_SECONDS (default 15).
#
#   nginx        one worker answering every POST with a fixed 202: the ceiling of an HTTP
#                server on this machine with this load generator.
#   nginx-relay  one nginx worker as a stateless reverse proxy (proxy_pass over keep-alive
#                upstream connections, nothing logged or buffered to disk) to pb_sink
#                --quiet: the relay limit, what forwarding each POST costs with nothing
#                stored or transformed. delivered/s = sink 200s / load time.
#   patchbay     ingest (commit, synchronous=FULL) -> jq map -> output jq map -> HTTP
#                delivery to pb_sink --quiet, concurrency 64. Afterwards the backlog
#                drains; delivered/s = sink 200s / (load + drain).
#   node-red     Node-RED from npm (bench/node-red/) doing the same flow: http in ->
#                function (the same mapping in JS) -> http request (to pb_sink) -> http
#                response. It answers after the delivery: its accepted = delivered.
#   drain        delivery only: BENCH_BACKLOG (50000) orders posted while pb_sink is
#                down, then pb_sink started and the drain timed, with no load running.
#   partner-10ms the patchbay flow against pb_sink --delay-ms 10 (concurrency 64): what
#                concurrency buys against a slow partner (a serial client gets 100/s).
#
# For every row: accepted/s, delivered/s, wrk's p50/p99, peak RSS (VmHWM) and CPU seconds
# (utime+stime from /proc/PID/stat, the server process and its children, over the
# measured window), CPU-µs per delivered message, ratios to nginx (the 202 ceiling) and
# to nginx-relay (delivered/s, CPU-µs per message), and disk KB/msg: write_bytes from
# /proc/PID/io (all threads; bytes sent towards the block layer) over the window, per
# accepted message, 1 KB = 1000 bytes, next to the mean body size post.lua sent. The
# notes add patchbay's CPU per thread and "other CPU": what the rest of the machine used
# in the window (the noise figure on a shared machine). Prints a table and writes
# bench/results/latest.md (plus a timestamped copy). Method: docs/performance.md.
#
# Message brokers (bench/brokers.sh; a table of their own): per broker, consuming (X-in:
# the broker's own client, then patchbay: broker -> jq -> pb_sink) and publishing (X-out:
# the broker's own client, then wrk -> patchbay -> broker), each with messages/s and CPU
# per message of the client and of the broker. Brokers are started by bench/broker.py
# as the system tests start them (a directory under the work directory, free ports) and
# stopped after their rows; Kafka is librdkafka's mock cluster.
#
# BENCH_SCENARIOS: any of nginx nginx-relay patchbay node-red drain partner-10ms nats-in
# nats-out amqp-in amqp-out redis-in redis-out mqtt-in mqtt-out kafka-in kafka-out, or
# "brokers" (the ten broker rows) or "all" (a space-separated list; the rows always run
# in that order; default: the first six). The ratio columns need their reference row in
# the same run (nginx, nginx-relay), else they say —.
#
# The work directory must be on a disk: write_bytes is 0 on tmpfs. It is made in
# BENCH_WORKDIR, else in ${TMPDIR:-/tmp}, or under BUILD_DIR when that is tmpfs/ramfs.
#
# Usage: bench/run.sh   (or ./dev.sh bench, which installs wrk, nginx-light, the brokers and
#        mosquitto-clients, and builds)
# Env:   BUILD_DIR (default build/), BENCH_SECONDS (15), BENCH_CONNECTIONS (64),
#        BENCH_THREADS (2), BENCH_DRAIN_LIMIT (60 s), BENCH_BACKLOG (50000),
#        BENCH_DELAY_MS (10), BENCH_CONCURRENCY (64),
#        BENCH_SCENARIOS (default "nginx nginx-relay patchbay node-red drain partner-10ms"),
#        BENCH_BROKER_MESSAGES (30000, rounded up to a multiple of 400: messages per broker
#        client row and per consume row), BENCH_BROKER_LIMIT (180 s: the longest wait for
#        a consume row or a publish row's drain),
#        BENCH_WORKDIR (where the work directory is made; see above),
#        BENCH_REV (the revision to print; default from git, for builds of this tree),
#        KEEP=1 keeps the work directory (logs, configs, wrk output, state databases).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=${BUILD_DIR:-$root/build}
[[ $build == /* ]] || build=$root/$build
PB=$build/patchbay
SINK=$build/pb_sink
SECS=${BENCH_SECONDS:-15}
CONNS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
DRAIN_LIMIT=${BENCH_DRAIN_LIMIT:-60}
BACKLOG=${BENCH_BACKLOG:-50000}
DELAY_MS=${BENCH_DELAY_MS:-10}
CONCURRENCY=${BENCH_CONCURRENCY:-64}
ALL_SCENARIOS="nginx nginx-relay patchbay node-red drain partner-10ms"
BROKER_SCENARIOS="nats-in nats-out amqp-in amqp-out redis-in redis-out mqtt-in mqtt-out kafka-in kafka-out"
NR_DIR=$here/node-red

# "brokers" names the ten broker rows, "all" every row.
SCENARIOS=
for s in ${BENCH_SCENARIOS:-$ALL_SCENARIOS}; do
    case $s in
    brokers) SCENARIOS+=" $BROKER_SCENARIOS" ;;
    all) SCENARIOS+=" $ALL_SCENARIOS $BROKER_SCENARIOS" ;;
    *)
        [[ " $ALL_SCENARIOS $BROKER_SCENARIOS " == *" $s "* ]] || {
            echo "unknown scenario '$s' in BENCH_SCENARIOS (known: $ALL_SCENARIOS" \
                "$BROKER_SCENARIOS, brokers, all)" >&2
            exit 1
        }
        SCENARIOS+=" $s"
        ;;
    esac
done

for bin in "$PB" "$SINK"; do
    [[ -x $bin ]] || {
        echo "missing $bin: run ./dev.sh bench (it builds first), or set BUILD_DIR" >&2
        exit 1
    }
done
for tool in wrk nginx curl python3 ps; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || {
        echo "missing $tool: run ./dev.sh bench (it installs it)" >&2
        exit 1
    }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HZ=$(getconf CLK_TCK)

# The work directory holds the state databases: on tmpfs nothing reaches a block device
# and write_bytes stays 0, so the disk column would mean nothing there.
fs_type() { stat -f -c %T "$1" 2>/dev/null || echo unknown; }
in_memory_fs() {
    case $(fs_type "$1") in
    tmpfs | ramfs) return 0 ;;
    *) return 1 ;;
    esac
}
work_parent=${BENCH_WORKDIR:-${TMPDIR:-/tmp}}
if [[ -z ${BENCH_WORKDIR:-} ]] && in_memory_fs "$work_parent"; then
    work_parent=$build # git-ignored, and on the disk the build was made on
fi
mkdir -p "$work_parent"
work=$(mktemp -d "$work_parent/patchbay-bench.XXXXXX")
work_fs=$(fs_type "$work")
disk_ok=1
if in_memory_fs "$work"; then
    disk_ok=0
    echo "warning: $work is on $work_fs: write_bytes is 0 there, disk KB/msg is not measured" \
        "(set BENCH_WORKDIR to a directory on a disk)" >&2
fi
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '==> %s\n' "$*" >&2; }
want() { [[ " $SCENARIOS " == *" $1 "* ]]; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {
    local what=$1 secs=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "timed out waiting for $what" >&2
            return 1
        fi
        sleep 0.1
    done
}

now() { date +%s.%N; }

# calc FORMAT EXPR...: awk arithmetic (python3 can take most of a second to start on a busy
# machine; nothing inside a measured window may be that slow).
calc() {
    local fmt=$1
    shift
    awk "BEGIN { printf \"$fmt\\n\", $(IFS=,; echo "$*") }"
}

# stop PID: SIGTERM and reap.
stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# ---- what a process costs: CPU ticks and peak RSS, children included --------------------

tree_pids() { # PID...: these processes and all their descendants
    local p
    for p in "$@"; do
        [[ -d /proc/$p ]] || continue
        echo "$p"
        # shellcheck disable=SC2046
        tree_pids $(ps -o pid= --ppid "$p" 2>/dev/null)
    done
}

cpu_ticks() { # PID...: utime+stime (clock ticks), summed over the tree
    local t=0 p v
    for p in $(tree_pids "$@"); do
        v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }') || v=0
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

hwm_kb() { # PID...: VmHWM (kB), summed over the tree
    local t=0 p v
    for p in $(tree_pids "$@"); do
        v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$p/status" 2>/dev/null) || v=0
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

# io_bytes PID...: "write_bytes cancelled_write_bytes" from /proc/PID/io, summed over the
# tree. The file covers every thread of the process (and reaped children). The kernel
# counts a page when it is dirtied in the page cache (or at submission for direct I/O),
# so it is what the process sent towards storage, in whole pages, and is complete as soon
# as the write() returns; cancelled_write_bytes is what was truncated away before
# writeback. A file on tmpfs is never counted.
io_bytes() {
    local w=0 c=0 p a b
    for p in $(tree_pids "$@"); do
        a=0 b=0
        read -r a b < <(awk '/^write_bytes:/ { w = $2 } /^cancelled_write_bytes:/ { c = $2 }
                             END { print w + 0, c + 0 }' "/proc/$p/io" 2>/dev/null) || true
        w=$((w + ${a:-0}))
        c=$((c + ${b:-0}))
    done
    echo "$w $c"
}

# thread_ticks PID: "name ticks" per thread name (pb-dispatch, pb-store, pb-sync; the
# listener and main threads keep the process name).
thread_ticks() {
    local t
    for t in /proc/"$1"/task/*; do
        printf '%s %s\n' "$(cat "$t/comm" 2>/dev/null)" \
            "$(sed 's/.*) //' "$t/stat" 2>/dev/null | awk '{ print $12 + $13 }')"
    done | awk 'NF == 2 { a[$1] += $2 } END { for (k in a) print k, a[k] }'
}

# thread_split BEFORE AFTER SECONDS: "pb-dispatch 6.1 s (92%), ..." -- CPU per thread name
# over the window, and how much of one core that is.
thread_split() {
    awk -v hz="$HZ" -v secs="$3" 'NR == FNR { b[$1] = $2; next }
        { d = ($2 - b[$1]) / hz; if (d > 0) out[$1] = d }
        END { n = 0; for (k in out) names[++n] = k
              for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
                  if (out[names[j]] > out[names[i]]) { t = names[i]; names[i] = names[j]; names[j] = t }
              for (i = 1; i <= n; i++)
                  printf "%s%s %.1f s (%.0f%%)", (i > 1 ? ", " : ""), names[i], out[names[i]],
                         100 * out[names[i]] / secs
              print "" }' "$1" "$2"
}

# Machine-wide busy ticks (user+nice+system+irq+softirq) and this shell's reaped children
# (wrk, curl, python3): with the servers' own ticks they tell how much CPU went to other
# people's work during a window -- the noise figure of each row.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }
own_child_ticks() { sed 's/.*) //' "/proc/$$/stat" | awk '{ print $14 + $15 }'; }

# window_start / window_end VAR PID...: CPU of PID... (and noise) over a window.
window_start() {
    w_t0=$(now)
    w_m0=$(machine_ticks)
    w_c0=$(own_child_ticks)
    w_p0=$(cpu_ticks "$@")
    read -r w_io0 w_iox0 < <(io_bytes "$@")
}
window_end() { # sets w_secs w_cpu_ticks w_other_ticks w_disk_bytes w_disk_cancelled;
    # extra PIDs (sinks) count as ours. The window closes now, or at W_END (a time taken
    # earlier) when it is set. W_IO0="write_bytes cancelled" (from io_bytes) starts the
    # disk count earlier than window_start.
    local server_pids=$1
    shift
    local t1 m1 c1 p1 x1 io1 iox1
    t1=${W_END:-$(now)}
    # shellcheck disable=SC2086
    p1=$(cpu_ticks $server_pids)
    # shellcheck disable=SC2086
    read -r io1 iox1 < <(io_bytes $server_pids)
    [[ -z ${W_IO0:-} ]] || read -r w_io0 w_iox0 <<<"$W_IO0"
    w_disk_bytes=$((io1 - w_io0))
    w_disk_cancelled=$((iox1 - w_iox0))
    x1=$(cpu_ticks "$@")
    m1=$(machine_ticks)
    c1=$(own_child_ticks)
    w_secs=$(calc %.2f "$t1 - $w_t0")
    w_cpu_ticks=$((p1 - w_p0))
    w_partner_ticks=$((x1 - w_x0))
    w_other_ticks=$((m1 - w_m0 - w_cpu_ticks - w_partner_ticks - (c1 - w_c0)))
    ((w_other_ticks < 0)) && w_other_ticks=0
    w_busy_pct=$(calc %.0f "100 * ($m1 - $w_m0) / $HZ / $(nproc) / ($(now) - $w_t0)")
    return 0
}
partner_start() { w_x0=$(cpu_ticks "$@"); }

# ---- the load ----------------------------------------------------------------------------

run_wrk() { # URL OUT [SECONDS]
    wrk -t"$THREADS" -c"$CONNS" -d"${3:-$SECS}s" --latency -s "$here/post.lua" "$1" >"$2"
}

# wrk_fields FILE: requests/s, p50 ms, p99 ms, completed requests, non-2xx, seconds,
# socket errors (tab separated).
wrk_fields() {
    python3 - "$1" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
def ms(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    v, u = float(m.group(1)), m.group(2)
    return v * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[u]
rps = re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)
p50 = ms(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
total = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", t)
secs = float(total.group(2)) * {"ms": 0.001, "s": 1, "m": 60}[total.group(3)]
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
errors = re.search(r"Socket errors:(.*)", t)
print(rps, f"{p50:.2f}", f"{p99:.2f}", total.group(1), non2xx.group(1) if non2xx else 0,
      f"{secs:.2f}", errors.group(1).strip() if errors else "-", sep="\t")
EOF
}

metric_sum() { # PORT NAME: sum over every series of NAME
    curl -fsS "http://127.0.0.1:$1/metrics" |
        awk -v name="$2" '($1 == name || index($1, name "{") == 1) { s += $NF }
                          END { printf "%d\n", s }'
}

sink_200() { # PORT: the sink's 200 count
    curl -fsS "http://127.0.0.1:$1/_sink/stats" |
        awk '{ if (match($0, /"200":[0-9]+/)) n = substr($0, RSTART + 6, RLENGTH - 6) }
             END { print n + 0 }'
}

# start_sink PORT|0 [pb_sink args...]: sets sink_pid, sink_port.
start_sink() {
    local port=$1
    shift
    rm -f "$work/sink.port"
    "$SINK" --listen "127.0.0.1:$port" --port-file "$work/sink.port" --threads 2 --quiet "$@" &
    sink_pid=$!
    pids+=("$sink_pid")
    wait_for pb_sink 10 test -s "$work/sink.port"
    sink_port=$(cat "$work/sink.port")
}

# start_patchbay NAME SINK_PORT [retry]: a fresh store, sets pb_pid, pb_port.
start_patchbay() {
    local name=$1 port=$2
    local retry=${3:-"{ max_attempts: 10, initial: 100ms, max: 2s, max_age: 1h }"}
    pb_port=$(free_port)
    mkdir -p "$work/$name"
    cat >"$work/$name/patchbay.yaml" <<EOF
server: { listen: 127.0.0.1:$pb_port, admin_token: bench-token }
state: sqlite:$work/$name/state.db
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
          url: http://127.0.0.1:$port/orders
          timeout: 5s
          map: '{order: .order_id, amount: .cents, currency: "eur", lines: (.items | length)}'
          retry: $retry
          concurrency: $CONCURRENCY
EOF
    "$PB" run "$work/$name/patchbay.yaml" >"$work/$name/patchbay.out" 2>"$work/$name/patchbay.log" &
    pb_pid=$!
    pids+=("$pb_pid")
    wait_for "patchbay /ready" 30 curl -fsS "http://127.0.0.1:$pb_port/ready"
}

# wait_drained PORT LIMIT: until the backlog is 0; sets drained and t_drain.
wait_drained() {
    local backlog deadline=$((SECONDS + $2))
    drained=yes
    while :; do
        backlog=$(metric_sum "$1" patchbay_backlog)
        t_drain=$(now)
        ((backlog == 0)) && break
        if ((SECONDS >= deadline)); then
            drained="no (backlog $backlog after $2 s)"
            break
        fi
        sleep 0.1
    done
}

# post.lua's own count of the bodies it sent (its done() line in wrk's output)
body_stats() { # FILE: "bodies bytes mean", or "0 0 0"
    awk '/^post.lua: / { n = $2; b = $4; m = $7 } END { print n + 0, b + 0, m + 0 }' "$1"
}

# disk_note BYTES CANCELLED MSGS [DIR]: what the server wrote, per message, and what the
# state files in DIR hold now (du), to judge the figure by.
disk_note() {
    local per files=
    ((disk_ok)) || {
        echo "disk: not measured (work directory on $work_fs)"
        return 0
    }
    per=$(calc %.2f "$1 / 1000 / ($3 > 0 ? $3 : 1)")
    if [[ -n ${4:-} ]]; then
        files=$(cd "$4" && du -k state.db state.db-wal state.db-shm 2>/dev/null |
            awk '{ s += $1; printf "%s%s %.1f MB", (NR > 1 ? ", " : ""), $2, $1 * 1024 / 1e6 }
                 END { if (NR) printf " (du; %.1f MB in all)", s * 1024 / 1e6 }') || true
        files="; its state files at the end of the window: ${files:-none}"
    fi
    echo "disk: $(calc %.1f "$1 / 1e6") MB written (write_bytes; $(calc %.1f "$2 / 1e6") MB" \
        "cancelled before writeback) for $3 messages = $per KB/msg$files"
}

# ---- results -------------------------------------------------------------------------------
# rows.tsv: key (the scenario), name, accepted/s, delivered/s, p50, p99, peak RSS kB,
#           CPU ticks, delivered messages (for CPU µs/msg), other-CPU ticks, window s,
#           machine busy %, disk write bytes, messages they are divided by
rows=$work/rows.tsv
notes=$work/notes.md
: >"$rows"
: >"$notes"
row() {
    (($# == 14)) || {
        echo "row: $# fields, want 14" >&2
        exit 1
    }
    local IFS=$'\t'
    echo "$*" >>"$rows"
}
note() { printf -- '- %s\n' "$*" >>"$notes"; }
ticks_s() { calc %.1f "$1 / $HZ"; }

# start_nginx NAME PORT HTTP SERVER: one worker, no access log, with HTTP added to the
# http block and SERVER to the server block; sets nginx_pid.
start_nginx() {
    local dir=$work/$1
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    client_body_buffer_size 16k;
    keepalive_requests 1000000;
$3
    server {
        listen 127.0.0.1:$2;
$4
    }
}
EOF
    "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" &
    nginx_pid=$!
    pids+=("$nginx_pid")
}

# ---- (a) nginx ceiling ---------------------------------------------------------------------
if want nginx; then
    say "nginx ceiling: worker_processes 1, return 202"
    nginx_port=$(free_port)
    start_nginx nginx "$nginx_port" "" "        location / { return 202 '{\"id\":\"x\"}'; }"
    wait_for nginx 10 curl -fsS -X POST -d '{}' "http://127.0.0.1:$nginx_port/"
    partner_start
    window_start "$nginx_pid"
    run_wrk "http://127.0.0.1:$nginx_port/hooks/shop" "$work/wrk-nginx.txt"
    window_end "$nginx_pid"
    IFS=$'\t' read -r n_rps n_p50 n_p99 n_total n_non2xx _ n_err < <(wrk_fields "$work/wrk-nginx.txt")
    n_rss=$(hwm_kb "$nginx_pid")
    stop "$nginx_pid"
    row nginx "nginx 202 (1 worker)" "$n_rps" "-" "$n_p50" "$n_p99" "$n_rss" "$w_cpu_ticks" \
        "$n_total" "$w_other_ticks" "$w_secs" "$w_busy_pct" "$w_disk_bytes" "$n_total"
    note "nginx: $n_total requests in ${w_secs} s, $n_non2xx non-2xx, socket errors: $n_err." \
        "CPU µs/msg here is per answered request (master + worker)."
    say "nginx: $n_rps req/s, p50 ${n_p50} ms, p99 ${n_p99} ms"
fi

# ---- (a2) nginx as a stateless relay to pb_sink: the relay limit ----------------------------
if want nginx-relay; then
    say "nginx relay: worker_processes 1, proxy_pass over keep-alive connections to pb_sink"
    start_sink 0
    relay_port=$(free_port)
    # The body (≤ 64k, as patchbay's max_body) is read into memory and the sink's answer
    # buffered in memory: nothing goes to a temp file. Timeouts as patchbay's output (5 s).
    start_nginx relay "$relay_port" "    upstream pb_sink {
        server 127.0.0.1:$sink_port;
        keepalive $CONNS;
        keepalive_requests 1000000;
    }" "        client_max_body_size 64k;
        client_body_buffer_size 64k;
        location / {
            proxy_pass http://pb_sink/orders;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_max_temp_file_size 0;
            proxy_connect_timeout 5s;
            proxy_send_timeout 5s;
            proxy_read_timeout 5s;
        }"
    wait_for "nginx relay" 10 curl -fsS -X POST -d '{}' "http://127.0.0.1:$relay_port/hooks/shop"
    before=$(sink_200 "$sink_port")
    partner_start "$sink_pid"
    window_start "$nginx_pid"
    run_wrk "http://127.0.0.1:$relay_port/hooks/shop" "$work/wrk-relay.txt"
    window_end "$nginx_pid" "$sink_pid"
    IFS=$'\t' read -r _ l_p50 l_p99 l_total l_non2xx l_secs l_err < <(wrk_fields "$work/wrk-relay.txt")
    l_delivered=$(($(sink_200 "$sink_port") - before))
    l_rss=$(hwm_kb "$nginx_pid")
    stop "$nginx_pid"
    stop "$sink_pid"
    l_answered=$((l_total - l_non2xx))
    l_errlog=$(grep -c . "$work/relay/error.log" || true)
    read -r l_acc_rps l_dlv_rps < <(calc "%.0f %.0f" "$l_answered / $l_secs" "$l_delivered / $l_secs")
    row nginx-relay "nginx relay → pb_sink (1 worker)" "$l_acc_rps" "$l_dlv_rps" "$l_p50" "$l_p99" \
        "$l_rss" "$w_cpu_ticks" "$l_delivered" "$w_other_ticks" "$w_secs" "$w_busy_pct" \
        "$w_disk_bytes" "$l_answered"
    note "nginx relay: $l_total requests in ${l_secs} s, $l_non2xx non-2xx, socket errors: $l_err;" \
        "$l_delivered delivered (pb_sink's 200s: it also counts the requests, up to $CONNS, still" \
        "in flight when wrk stopped); upstream keepalive $CONNS, HTTP/1.1;" \
        "error.log: $l_errlog lines. pb_sink used $(ticks_s "$w_partner_ticks") CPU s; CPU s is" \
        "nginx's (master + worker). $(disk_note "$w_disk_bytes" "$w_disk_cancelled" "$l_answered")."
    say "nginx relay: $l_acc_rps answered/s, $l_dlv_rps delivered/s, p50 ${l_p50} ms, p99 ${l_p99} ms"
fi

# ---- (b) patchbay --------------------------------------------------------------------------
if want patchbay; then
    say "patchbay: ingest -> SQLite -> jq map -> HTTP delivery to pb_sink --quiet"
    start_sink 0
    start_patchbay patchbay "$sink_port"
    partner_start "$sink_pid"
    thread_ticks "$pb_pid" >"$work/patchbay/threads.0"
    window_start "$pb_pid"
    run_wrk "http://127.0.0.1:$pb_port/hooks/shop" "$work/wrk-patchbay.txt"
    t_load=$(now)
    backlog_end=$(metric_sum "$pb_port" patchbay_backlog)
    dlv_load=$(sink_200 "$sink_port")
    wait_drained "$pb_port" "$DRAIN_LIMIT"
    W_END=$t_drain window_end "$pb_pid" "$sink_pid"
    thread_ticks "$pb_pid" >"$work/patchbay/threads.1"
    delivered=$(sink_200 "$sink_port")
    accepted=$(metric_sum "$pb_port" patchbay_messages_accepted_total)
    attempts=$(metric_sum "$pb_port" patchbay_delivery_attempts_total)
    ops=$(metric_sum "$pb_port" patchbay_store_ops_total)
    commits=$(metric_sum "$pb_port" patchbay_store_commits_total)
    p_rss=$(hwm_kb "$pb_pid")
    p_disk=$(disk_note "$w_disk_bytes" "$w_disk_cancelled" "$accepted" "$work/patchbay")
    stop "$pb_pid"
    stop "$sink_pid"
    IFS=$'\t' read -r _ p_p50 p_p99 _ p_non2xx p_secs p_err \
        < <(wrk_fields "$work/wrk-patchbay.txt")
    read -r p_acc_rps p_dlv_rps p_drain p_dlv_load_rps p_batch < <(calc "%.0f %.0f %.1f %.0f %.0f" \
        "$accepted / $p_secs" "$delivered / $w_secs" "$t_drain - $t_load" \
        "$dlv_load / ($t_load - $w_t0)" "$ops / ($commits > 0 ? $commits : 1)")
    row patchbay "patchbay → jq → pb_sink" "$p_acc_rps" "$p_dlv_rps" "$p_p50" "$p_p99" "$p_rss" \
        "$w_cpu_ticks" "$delivered" "$w_other_ticks" "$w_secs" "$w_busy_pct" "$w_disk_bytes" \
        "$accepted"
    note "patchbay: $accepted accepted in ${p_secs} s ($p_non2xx non-2xx = 503 back-pressure;" \
        "socket errors: $p_err); $dlv_load delivered while the load ran ($p_dlv_load_rps/s)," \
        "backlog $backlog_end when it stopped, drained ${p_drain} s later ($drained);" \
        "$delivered delivered to pb_sink in all, $attempts attempts; group commit" \
        "$p_batch ops/commit; pb_sink used $(ticks_s "$w_partner_ticks") CPU s." \
        "CPU and delivered/s cover load + drain. patchbay's threads (share of one core):" \
        "$(thread_split "$work/patchbay/threads.0" "$work/patchbay/threads.1" "$w_secs")." \
        "$p_disk, over load + drain; patchbay.log $(stat -c %s "$work/patchbay/patchbay.log") bytes."
    say "patchbay: $p_acc_rps accepted/s, $p_dlv_rps delivered/s"
fi

# ---- (c) Node-RED --------------------------------------------------------------------------
nr_ready() {
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$nr_port/") || return 1
    [[ $code == 404 ]]
}

node_red_install() { # bench/node-red/node_modules as the lock file says
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        nr_skip="node/npm not found (./dev.sh deps installs them)"
        return 1
    fi
    node -e 'const [a, b] = process.versions.node.split(".").map(Number);
             process.exit(a > 18 || (a == 18 && b >= 5) ? 0 : 1)' || {
        nr_skip="Node.js $(node --version) is older than 18.5"
        return 1
    }
    local want_v have_v
    want_v=$(node -p 'require(process.argv[1]).dependencies["node-red"]' "$NR_DIR/package.json")
    have_v=$(node -p 'require(process.argv[1]).version' \
        "$NR_DIR/node_modules/node-red/package.json" 2>/dev/null || echo none)
    if [[ $have_v != "$want_v" ]]; then
        say "installing node-red $want_v into bench/node-red/node_modules (npm ci)"
        (cd "$NR_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2) || {
            nr_skip="npm ci failed in bench/node-red"
            return 1
        }
    fi
    nr_version=$want_v
}

if want node-red; then
    nr_skip=
    if node_red_install; then
        say "node-red $nr_version: http in -> function -> http request (pb_sink) -> http response"
        start_sink 0
        nr_port=$(free_port)
        mkdir -p "$work/node-red"
        cp "$NR_DIR/flows.json" "$work/node-red/flows.json"
        PB_BENCH_NR_PORT=$nr_port PB_BENCH_NR_USERDIR=$work/node-red \
            PB_BENCH_SINK_URL=http://127.0.0.1:$sink_port/orders \
            node "$NR_DIR/node_modules/node-red/red.js" --settings "$NR_DIR/settings.js" \
            >"$work/node-red/node-red.log" 2>&1 &
        nr_pid=$!
        pids+=("$nr_pid")
        wait_for node-red 60 nr_ready
        # V8 compiles hot code as it runs: 3 s of the same load first, not counted.
        run_wrk "http://127.0.0.1:$nr_port/hooks/shop" "$work/wrk-node-red-warmup.txt" 3
        before=$(sink_200 "$sink_port")
        partner_start "$sink_pid"
        window_start "$nr_pid"
        run_wrk "http://127.0.0.1:$nr_port/hooks/shop" "$work/wrk-node-red.txt"
        window_end "$nr_pid" "$sink_pid"
        IFS=$'\t' read -r _ r_p50 r_p99 r_total r_non2xx r_secs r_err \
            < <(wrk_fields "$work/wrk-node-red.txt")
        r_delivered=$(($(sink_200 "$sink_port") - before))
        r_rss=$(hwm_kb "$nr_pid")
        stop "$nr_pid"
        stop "$sink_pid"
        read -r r_acc_rps r_dlv_rps < <(calc "%.0f %.0f" "($r_total - $r_non2xx) / $r_secs" \
            "$r_delivered / $r_secs")
        row node-red "Node-RED $nr_version (same flow)" "$r_acc_rps" "$r_dlv_rps" "$r_p50" "$r_p99" \
            "$r_rss" "$w_cpu_ticks" "$r_delivered" "$w_other_ticks" "$w_secs" "$w_busy_pct" \
            "$w_disk_bytes" "$((r_total - r_non2xx))"
        note "Node-RED $nr_version on Node.js $(node --version): answers after its http request" \
            "node completes, so accepted = delivered and its latency includes the delivery;" \
            "nothing is stored (a crash loses what is in flight). $r_total requests in" \
            "${r_secs} s, $r_non2xx non-2xx, socket errors: $r_err; $r_delivered delivered;" \
            "after a 3 s warm-up (JIT) not counted. pb_sink used $(ticks_s "$w_partner_ticks") CPU s." \
            "$(disk_note "$w_disk_bytes" "$w_disk_cancelled" "$((r_total - r_non2xx))")."
        say "node-red: $r_acc_rps accepted/s, $r_dlv_rps delivered/s"
    else
        say "node-red skipped: $nr_skip"
        row node-red "Node-RED (skipped)" "-" "-" "-" "-" "-" "-" "-" "-" "-" "-" "-" "-"
        note "Node-RED skipped: $nr_skip."
    fi
fi

# ---- (d) delivery only: drain a backlog built while the partner was down -------------------
if want drain; then
    say "delivery only: $BACKLOG orders posted while pb_sink is down, then drained"
    down_port=$(free_port)
    start_patchbay drain "$down_port" "{ max_attempts: 1000, initial: 100ms, max: 1s, max_age: 1h }"
    d_io0=$(io_bytes "$pb_pid")
    wrk -t"$THREADS" -c"$CONNS" -d120s --latency -s "$here/post.lua" \
        "http://127.0.0.1:$pb_port/hooks/shop" >"$work/wrk-drain-build.txt" &
    wrk_pid=$!
    pids+=("$wrk_pid")
    t_build=$(now)
    while (($(metric_sum "$pb_port" patchbay_messages_accepted_total) < BACKLOG)); do
        kill -0 "$wrk_pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -INT "$wrk_pid" 2>/dev/null || true
    wait "$wrk_pid" 2>/dev/null || true
    t_built=$(now)
    sleep 1 # the last commits, and every delivery has been tried at least once
    accepted=$(metric_sum "$pb_port" patchbay_messages_accepted_total)
    refused=$(metric_sum "$pb_port" patchbay_deliveries_retried_total)
    build_rate=$(calc %.0f "$accepted / ($t_built - $t_build)")
    say "backlog: $accepted accepted ($build_rate/s, $refused refused attempts); starting pb_sink"
    thread_ticks "$pb_pid" >"$work/drain/threads.0"
    window_start "$pb_pid"
    start_sink "$down_port"
    partner_start "$sink_pid"
    first=
    deadline=$((SECONDS + DRAIN_LIMIT))
    drained=yes
    while :; do
        if [[ -z $first ]] && (($(sink_200 "$sink_port") > 0)); then
            first=$(now)
        fi
        backlog=$(metric_sum "$pb_port" patchbay_backlog)
        t_done=$(now)
        ((backlog == 0)) && break
        if ((SECONDS >= deadline)); then
            drained="no (backlog $backlog after $DRAIN_LIMIT s)"
            break
        fi
        sleep 0.05
    done
    # The disk figure covers a message's whole life here: from before the backlog was
    # built (ingest, refused attempts, rescheduling) to the end of the drain.
    W_IO0=$d_io0 W_END=$t_done window_end "$pb_pid" "$sink_pid"
    thread_ticks "$pb_pid" >"$work/drain/threads.1"
    d_delivered=$(sink_200 "$sink_port")
    dead=$(metric_sum "$pb_port" patchbay_deliveries_dead_total)
    d_rss=$(hwm_kb "$pb_pid")
    d_disk=$(disk_note "$w_disk_bytes" "$w_disk_cancelled" "$accepted" "$work/drain")
    stop "$pb_pid"
    stop "$sink_pid"
    first=${first:-$t_done}
    read -r d_rps d_first d_rps_first < <(calc "%.0f %.2f %.0f" "$d_delivered / $w_secs" \
        "$first - $w_t0" "$d_delivered / ($t_done - $first + 0.001)")
    row drain "delivery only (drain $accepted)" "-" "$d_rps" "-" "-" "$d_rss" "$w_cpu_ticks" \
        "$d_delivered" "$w_other_ticks" "$w_secs" "$w_busy_pct" "$w_disk_bytes" "$accepted"
    note "delivery only: $accepted orders accepted at $build_rate/s with pb_sink down" \
        "($refused attempts refused and rescheduled, retry initial 100ms, max 1s); pb_sink" \
        "started, $d_delivered delivered in $w_secs s (drained: $drained; $dead dead-lettered)." \
        "The first delivery came $d_first s after the start (retry timers); from then on" \
        "$d_rps_first/s. delivered/s in the table counts from the sink's start; CPU and RSS" \
        "are patchbay's over the drain (RSS: peak of the whole run, outage included)." \
        "pb_sink used $(ticks_s "$w_partner_ticks") CPU s. patchbay's threads:" \
        "$(thread_split "$work/drain/threads.0" "$work/drain/threads.1" "$w_secs")." \
        "$d_disk — from before the backlog was built to the end of the drain (ingest, refused" \
        "attempts and rescheduling included), not the drain's window."
    say "drain: $d_rps delivered/s"
fi

# ---- (e) a partner answering after 10 ms -------------------------------------------------
if want partner-10ms; then
    say "patchbay against pb_sink --delay-ms $DELAY_MS, concurrency $CONCURRENCY"
    start_sink 0 --delay-ms "$DELAY_MS"
    start_patchbay slow "$sink_port"
    partner_start "$sink_pid"
    thread_ticks "$pb_pid" >"$work/slow/threads.0"
    window_start "$pb_pid"
    run_wrk "http://127.0.0.1:$pb_port/hooks/shop" "$work/wrk-slow.txt" &
    wrk_pid=$!
    pids+=("$wrk_pid")
    max_inflight=0
    while kill -0 "$wrk_pid" 2>/dev/null; do
        v=$(metric_sum "$pb_port" patchbay_deliveries_inflight 2>/dev/null || echo 0)
        ((v > max_inflight)) && max_inflight=$v
        sleep 0.5
    done
    wait "$wrk_pid" || true
    t_end=$(now)
    s_delivered=$(sink_200 "$sink_port")
    backlog_end=$(metric_sum "$pb_port" patchbay_backlog)
    lat_sum=$(curl -fsS "http://127.0.0.1:$pb_port/metrics" |
        awk '/^patchbay_delivery_latency_seconds_sum/ { s += $NF } END { printf "%f", s }')
    lat_n=$(metric_sum "$pb_port" patchbay_delivery_latency_seconds_count)
    W_END=$t_end window_end "$pb_pid" "$sink_pid"
    thread_ticks "$pb_pid" >"$work/slow/threads.1"
    IFS=$'\t' read -r _ s_p50 s_p99 _ s_non2xx s_secs s_err \
        < <(wrk_fields "$work/wrk-slow.txt")
    accepted=$(metric_sum "$pb_port" patchbay_messages_accepted_total)
    s_rss=$(hwm_kb "$pb_pid")
    s_disk=$(disk_note "$w_disk_bytes" "$w_disk_cancelled" "$accepted" "$work/slow")
    stop "$pb_pid"
    stop "$sink_pid"
    read -r s_acc_rps s_dlv_rps s_ceiling s_serial s_attempt_ms < <(calc "%.0f %.0f %.0f %.0f %.1f" \
        "$accepted / $s_secs" "$s_delivered / $w_secs" "$CONCURRENCY * 1000 / $DELAY_MS" \
        "$s_delivered / $w_secs / (1000 / $DELAY_MS)" "1000 * $lat_sum / ($lat_n > 0 ? $lat_n : 1)")
    row partner-10ms "patchbay → ${DELAY_MS} ms partner" "$s_acc_rps" "$s_dlv_rps" "$s_p50" "$s_p99" \
        "$s_rss" "$w_cpu_ticks" "$s_delivered" "$w_other_ticks" "$w_secs" "$w_busy_pct" \
        "$w_disk_bytes" "$accepted"
    note "${DELAY_MS} ms partner: $s_delivered delivered during the ${w_secs} s load =" \
        "$s_dlv_rps/s, ${s_serial}× a serial client ($((1000 / DELAY_MS))/s); the bound with" \
        "concurrency $CONCURRENCY is $s_ceiling/s; up to $max_inflight attempts in flight" \
        "(sampled), a mean attempt of $s_attempt_ms ms (patchbay's delivery latency" \
        "histogram: $CONCURRENCY / that = the rate). Ingest went on at $s_acc_rps/s" \
        "($s_non2xx non-2xx; socket errors: $s_err); $backlog_end" \
        "deliveries were still pending when the load stopped (not waited for). Its CPU µs/msg divides" \
        "ingest of all $accepted accepted by the $s_delivered delivered, so it is not" \
        "comparable with the other rows. pb_sink used $(ticks_s "$w_partner_ticks") CPU s." \
        "patchbay's threads: $(thread_split "$work/slow/threads.0" "$work/slow/threads.1" "$w_secs")." \
        "$s_disk, during the load only: the results of the deliveries still pending are not in it."
    say "${DELAY_MS} ms partner: $s_dlv_rps delivered/s"
fi

# ---- (f) message brokers: the broker's own client, then patchbay, per direction -----------
# shellcheck source=bench/brokers.sh
. "$here/brokers.sh"
run_brokers

# ---- report --------------------------------------------------------------------------------
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
# What was measured: the build's source tree (from its CMake cache), its git revision.
src_dir=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
if [[ -n ${BENCH_REV:-} ]]; then
    rev=$BENCH_REV
elif [[ -z $src_dir || $src_dir == "$root" ]]; then
    rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git -C "$root" status --porcelain --untracked-files=no -- src include \
        CMakeLists.txt tests/tools 2>/dev/null) ]]; then
        rev="$rev + uncommitted changes"
    fi
else
    rev="unknown (built from $src_dir; set BENCH_REV)"
fi
stamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)
mkdir -p "$here/results"
out=$here/results/latest.md
# post.lua's bodies over every load of this run (they are all built the same way)
read -r body_n _ body_mean < <(cat "$work"/wrk-*.txt 2>/dev/null |
    awk '/^post.lua: / { n += $2; b += $4 } END { printf "%d %d %.1f\n", n, b, n ? b / n : 0 }')
python3 - "$rows" "$HZ" "$disk_ok" >"$work/table.md" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
hz = float(sys.argv[2])
disk_ok = sys.argv[3] == "1"
num = lambda s: None if s in ("-", "") else float(s)
by = {r[0]: r for r in rows}
def per_msg(r):  # CPU µs per delivered message (nginx: per answered request)
    ticks, msgs = num(r[7]), num(r[8])
    return None if ticks is None or not msgs else ticks / hz * 1e6 / msgs
ceiling = num(by["nginx"][2]) if "nginx" in by else None
relay_dlv = num(by["nginx-relay"][3]) if "nginx-relay" in by else None
relay_per = per_msg(by["nginx-relay"]) if "nginx-relay" in by else None
def pct(v, ref):
    return "—" if v is None or not ref else f"{100 * v / ref:.0f}%"
def times(v, ref):
    return "—" if v is None or not ref else f"{v / ref:.1f}×"
def f0(v):
    return "—" if v is None else f"{v:.0f}"
def ms(v):
    return "—" if v in ("-", "") else f"{v} ms"
def disk(b, n):
    if not disk_ok:
        return "n/a"
    b, n = num(b), num(n)
    return "—" if b is None or not n else f"{b / 1000 / n:.2f}"
print("| run | accepted/s | delivered/s | accepted ÷ nginx | delivered ÷ nginx "
      "| delivered ÷ relay | p50 ingest | p99 ingest | peak RSS | CPU s | CPU µs/msg "
      "| µs/msg ÷ relay | disk KB/msg | other CPU s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    key, name, acc, dlv, p50, p99, rss, ticks, msgs, other, secs, busy, dbytes, dmsgs = r
    acc, dlv, rss, ticks, other = map(num, (acc, dlv, rss, ticks, other))
    cpu = None if ticks is None else ticks / hz
    per = per_msg(r)
    print(f"| {name} | {f0(acc)} | {f0(dlv)} | {pct(acc, ceiling)} | {pct(dlv, ceiling)} "
          f"| {pct(dlv, relay_dlv)} | {ms(p50)} | {ms(p99)} "
          f"| {'—' if rss is None else f'{rss / 1024:.0f} MiB'} "
          f"| {'—' if cpu is None else f'{cpu:.1f}'} | {f0(per)} | {times(per, relay_per)} "
          f"| {disk(dbytes, dmsgs)} "
          f"| {'—' if other is None else f'{other / hz:.1f} ({busy}% busy, {secs} s)'} |")
EOF
{
    echo "# patchbay bench — $stamp, rev $rev"
    echo
    echo "$(nproc) CPUs ($cpu); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "wrk -t$THREADS -c$CONNS -d${SECS}s --latency, ~1 KB JSON order per POST (mean body"
    echo "$body_mean bytes over the $body_n bodies post.lua built in this run); loopback;"
    echo "build: $build ($("$PB" version 2>/dev/null || echo "version unknown"));"
    echo "work directory: $work ($work_fs)."
    echo
    if [[ -s $rows ]]; then
        cat "$work/table.md"
        echo
        cat "$notes"
        echo "- accepted/s: acknowledged messages (2xx) per second of load. delivered/s: pb_sink's"
        echo "  200s per second of the row's window (for patchbay: load + drain)."
        echo "- CPU s: utime+stime of the server process (children included) over the window;"
        echo "  CPU µs/msg = CPU s / messages delivered (nginx: requests answered). other CPU s:"
        echo "  machine CPU time in the window not used by the server, pb_sink or wrk — other"
        echo "  people's work on this shared machine (noise); busy % is the whole machine."
        echo "- ÷ nginx: ÷ the nginx 202 ceiling's requests/s. ÷ relay: delivered/s ÷ the nginx relay's"
        echo "  delivered/s, and CPU µs/msg ÷ the relay's CPU µs/msg (the relay limit)."
        echo "- disk KB/msg: write_bytes of the server's /proc/PID/io (all threads) over the window"
        echo "  ÷ messages accepted (nginx: answered); 1 KB = 1000 bytes. write_bytes counts a 4 KiB"
        echo "  page each time a clean page is dirtied, not the bytes the application wrote."
        if want patchbay; then
            python3 - "$rows" "$body_mean" "$disk_ok" <<'EOF'
import sys
rows = {r[0]: r for r in (l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip())}
body, disk_ok = float(sys.argv[2]), sys.argv[3] == "1"
n, p = rows.get("nginx"), rows.get("patchbay")
if n and p:
    d, c = float(p[3]), float(n[2])
    print(f"- goal (issue 2): delivered/s ≥ 40% of nginx: {100 * d / c:.0f}% "
          f"({'met' if d >= 0.4 * c else 'NOT met'}); p99 ingest < 25 ms: {p[5]} ms "
          f"({'met' if float(p[5]) < 25 else 'NOT met'}); peak RSS < 64 MB: "
          f"{int(p[6]) * 1024 / 1e6:.0f} MB ({'met' if int(p[6]) * 1024 < 64e6 else 'NOT met'}).")
if p and disk_ok and body > 0 and float(p[13]) > 0:
    per = float(p[12]) / float(p[13])
    print(f"- goal (disk): ≤ 3 KB written per 1 KB message: {per / 1000:.2f} KB per message "
          f"for a mean body of {body / 1000:.2f} KB = {per / body:.1f}× the body "
          f"({'met' if per <= 3 * body else 'NOT met'}).")
EOF
        fi
    fi
    if [[ -s $brows ]]; then
        [[ -s $rows ]] && echo
        echo "## Message brokers"
        echo
        echo "$BROKER_MSGS messages per client row and per consume row; the publish rows of"
        echo "patchbay take wrk's load for ${SECS} s (then the drain). The same ~1 KB order everywhere."
        echo
        broker_table
        echo
        cat "$bnotes"
        echo "- msg/s: messages ÷ seconds. A client row's seconds run from the client's start to"
        echo "  its exit; a consume row of patchbay's from its start until pb_sink answered the"
        echo "  last message; a publish row of patchbay's from wrk's start until the backlog was 0."
        echo "- CPU µs/msg: the client's CPU (the broker's own client, or patchbay: utime+stime from"
        echo "  /proc, all threads) ÷ messages. broker CPU µs/msg: the broker's process and its"
        echo "  children over the same window ÷ messages. ÷ client: patchbay's figure ÷ the"
        echo "  client's in the same direction on the same broker. pb_sink's and wrk's CPU are"
        echo "  in neither; other CPU s is what the rest of the machine used in the window."
    fi
} >"$out"
cp "$out" "$here/results/run-$stamp.md"
echo
cat "$out"
