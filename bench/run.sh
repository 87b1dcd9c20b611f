#!/usr/bin/env bash
# Ingest and delivery throughput, against a ceiling, on loopback.
#
#   (a) nginx, one worker, answering every POST with a fixed 202: the most an
#       HTTP server on this machine can take with this load generator.
#   (b) patchbay (release build, default durability) ingesting the same load,
#       mapping each order with jq and delivering it to pb_sink --quiet.
#
# wrk posts a ~1 KB JSON order (bench/post.lua) over 64 connections from 2
# threads for BENCH_SECONDS (default 15). Afterwards patchbay drains its
# backlog; delivered/s counts the sink's 200s over the time from the start of
# the load to the drained backlog. Prints a table and writes it to
# bench/results/latest.md.
#
# Usage: bench/run.sh   (or ./dev.sh bench, which installs wrk/nginx-light and builds)
# Env:   BUILD_DIR (default build/), BENCH_SECONDS, BENCH_CONNECTIONS, BENCH_THREADS
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=${BUILD_DIR:-$root/build}
PB=$build/patchbay
SINK=$build/pb_sink
SECS=${BENCH_SECONDS:-15}
CONNS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
DRAIN_LIMIT=${BENCH_DRAIN_LIMIT:-60}

for bin in "$PB" "$SINK"; do
    [[ -x $bin ]] || {
        echo "missing $bin: run ./dev.sh bench (it builds first)" >&2
        exit 1
    }
done
for tool in wrk nginx curl python3; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || {
        echo "missing $tool: run ./dev.sh bench (it installs it)" >&2
        exit 1
    }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

work=$(mktemp -d "${TMPDIR:-/tmp}/patchbay-bench.XXXXXX")
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

# run_wrk URL OUT: the load, with latency percentiles.
run_wrk() {
    wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency -s "$here/post.lua" "$1" >"$2"
}

# wrk_field FILE: requests/s, p50, p99 (in ms), non-2xx count.
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
total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", t)
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
errors = re.search(r"Socket errors:.*", t)
print(rps, f"{p50:.2f}", f"{p99:.2f}", total.group(1), non2xx.group(1) if non2xx else 0,
      "'" + (errors.group(0) if errors else "") + "'")
EOF
}

metric_sum() { # metric_sum NAME: sum over every series of NAME
    curl -fsS "http://127.0.0.1:$pb_port/metrics" |
        awk -v name="$1" '($1 == name || index($1, name "{") == 1) { s += $NF }
                          END { printf "%d\n", s }'
}

# ---- (a) nginx ceiling -----------------------------------------------------------------
say "nginx ceiling: worker_processes 1, return 202"
nginx_port=$(free_port)
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    client_body_buffer_size 16k;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$nginx_port;
        location / { return 202 '{"id":"x"}'; }
    }
}
EOF
"$NGINX" -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" &
nginx_pid=$!
pids+=("$nginx_pid")
wait_for nginx 10 curl -fsS -X POST -d '{}' "http://127.0.0.1:$nginx_port/"
run_wrk "http://127.0.0.1:$nginx_port/hooks/shop" "$work/wrk-nginx.txt"
read -r n_rps n_p50 n_p99 _ _ _ < <(wrk_fields "$work/wrk-nginx.txt")
kill "$nginx_pid"
wait "$nginx_pid" 2>/dev/null || true
say "nginx: $n_rps req/s, p50 ${n_p50}ms, p99 ${n_p99}ms"

# ---- (b) patchbay ----------------------------------------------------------------------
say "patchbay: ingest -> SQLite -> jq map -> HTTP delivery to pb_sink --quiet"
"$SINK" --listen 127.0.0.1:0 --port-file "$work/sink.port" --threads 2 --quiet &
pids+=($!)
wait_for pb_sink 10 test -s "$work/sink.port"
sink_port=$(cat "$work/sink.port")
pb_port=$(free_port)
mkdir -p "$work/data"
cat >"$work/patchbay.yaml" <<EOF
server: { listen: 127.0.0.1:$pb_port, admin_token: bench-token }
state: sqlite:$work/data/state.db
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
          concurrency: 64
EOF
"$PB" run "$work/patchbay.yaml" >"$work/patchbay.out" 2>"$work/patchbay.log" &
pb_pid=$!
pids+=("$pb_pid")
wait_for "patchbay /ready" 30 curl -fsS "http://127.0.0.1:$pb_port/ready"

t0=$(now)
run_wrk "http://127.0.0.1:$pb_port/hooks/shop" "$work/wrk-patchbay.txt"
t_load=$(now)
read -r p_rps p_p50 p_p99 p_total p_non2xx p_errors < <(wrk_fields "$work/wrk-patchbay.txt")
accepted=$(metric_sum patchbay_messages_accepted_total)
say "load done: $accepted accepted ($p_non2xx non-2xx); waiting for the backlog to drain"

drained=yes
drain_deadline=$((SECONDS + DRAIN_LIMIT))
while :; do
    backlog=$(metric_sum patchbay_backlog)
    ((backlog == 0)) && break
    if ((SECONDS >= drain_deadline)); then
        drained="no (backlog $backlog after ${DRAIN_LIMIT}s)"
        break
    fi
    sleep 0.1
done
t_drain=$(now)
delivered=$(curl -fsS "http://127.0.0.1:$sink_port/_sink/stats" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["by_status"].get("200", 0))')
rss_kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pb_pid/status")
kill -TERM "$pb_pid"
wait "$pb_pid" 2>/dev/null || true

# ---- report ----------------------------------------------------------------------------
read -r load_s drain_s accepted_rps delivered_rps ratio < <(python3 - "$t0" "$t_load" "$t_drain" \
    "$accepted" "$delivered" "$n_rps" <<'EOF'
import sys
t0, tl, td = map(float, sys.argv[1:4])
acc, dlv, ceiling = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
load, total = tl - t0, td - t0
acc_rps = acc / load
print(f"{load:.1f} {total:.1f} {acc_rps:.0f} {dlv / total:.0f} {100 * acc_rps / ceiling:.0f}%")
EOF
)
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
mkdir -p "$here/results"
{
    echo "# patchbay bench — $(date -u +%Y-%m-%dT%H:%MZ), rev $rev"
    echo
    echo "$(nproc) CPUs ($cpu); wrk -t$THREADS -c$CONNS -d${SECS}s, ~1 KB JSON order per POST; loopback."
    echo
    echo "| | requests/s | accepted/s | delivered/s | p50 ingest | p99 ingest | peak RSS | vs nginx |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    printf '| nginx 202 (1 worker) | %.0f | — | — | %s ms | %s ms | — | 100%% |\n' \
        "$n_rps" "$n_p50" "$n_p99"
    printf '| patchbay → jq → pb_sink | %.0f | %s | %s | %s ms | %s ms | %s MiB | %s |\n' \
        "$p_rps" "$accepted_rps" "$delivered_rps" "$p_p50" "$p_p99" "$((rss_kb / 1024))" "$ratio"
    echo
    errors=${p_errors//\'/}
    echo "- patchbay: $accepted accepted in ${load_s}s; wrk counted $p_total completed requests," \
        "$p_non2xx of them non-2xx (503 = back-pressure)${errors:+; $errors}"
    echo "- delivered: $delivered to pb_sink in ${drain_s}s from the start of the load;" \
        "backlog drained: $drained"
    echo "- accepted/s = accepted messages / load time; delivered/s = sink 200s / (load + drain)."
} >"$here/results/latest.md"
echo
cat "$here/results/latest.md"
