#!/usr/bin/env bash
# PostgreSQL rows: patchbay's postgres_cdc input and sql output next to pgbench, on one
# throwaway cluster (bench/broker.py postgres: initdb in the work directory, 127.0.0.1,
# a free port, wal_level=logical, fsync on) in one run. BENCH_PG_ROWS (20000) rows each:
#
#   pgbench-row    pgbench (BENCH_PG_CLIENTS=4 connections) upserting one row per
#                  transaction into erp.orders (INSERT ... ON CONFLICT DO UPDATE, a new id
#                  from a sequence): the database's own rate for an ERP's small writes.
#                  These are the changes the next row reads.
#   cdc            patchbay's postgres_cdc input reading those changes from its slot (made
#                  before pgbench ran, snapshot: never), each committed to patchbay's store
#                  and delivered to a `drop` output: timed from patchbay's start until
#                  patchbay_deliveries_delivered_total reaches the count.
#   pgbench-batch  pgbench upserting the same count into erp.upserts in transactions of
#                  BENCH_PG_BATCH (500) rows (INSERT ... SELECT FROM generate_series ...
#                  ON CONFLICT DO UPDATE): what the database takes in batches.
#   sql-upsert     patchbay run --once: a JSONL file of the same count (file input, each
#                  line a message committed to the store) -> sql output upserting into
#                  erp.upserts2 (upsert.key [id], batch.count BENCH_PG_BATCH, one
#                  transaction per batch): timed from start to exit (all delivered).
#
# Per row: rows/s, CPU-µs per row of the client (pgbench or patchbay: this shell's reaped
# children, or /proc for the running patchbay) and of PostgreSQL (the postmaster's own
# and reaped backends' ticks plus its live backends', over the window), patchbay's peak
# RSS, and how busy the whole machine was (the noise on a shared machine).
#
# Usage: bench/postgres.sh   (build first: ./dev.sh build)
# Env:   BUILD_DIR (build/), BENCH_PG_ROWS (20000, rounded up to a multiple of
#        clients x batch), BENCH_PG_CLIENTS (4), BENCH_PG_BATCH (500), BENCH_PG_LIMIT
#        (300 s: the longest wait for the cdc row), BENCH_WORKDIR (a disk, not tmpfs),
#        BENCH_OUT (a file to copy the table to), KEEP=1 keeps the work directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build=${BUILD_DIR:-$root/build}
[[ $build == /* ]] || build=$root/$build
PB=$build/patchbay
N=${BENCH_PG_ROWS:-20000}
CLIENTS=${BENCH_PG_CLIENTS:-4}
BATCH=${BENCH_PG_BATCH:-500}
LIMIT=${BENCH_PG_LIMIT:-300}
HZ=$(getconf CLK_TCK)
PGBENCH=$(find /usr/lib/postgresql/*/bin -name pgbench 2>/dev/null | sort -V | tail -1)
[[ -x $PB ]] || {
    echo "no $PB: build first (./dev.sh build)" >&2
    exit 2
}
[[ -n $PGBENCH ]] || {
    echo "no pgbench: apt-get install postgresql" >&2
    exit 2
}
# shellcheck disable=SC2017 # rounding up to a multiple, on purpose
N=$(((N + CLIENTS * BATCH - 1) / (CLIENTS * BATCH) * CLIENTS * BATCH))

work=$(mktemp -d "${BENCH_WORKDIR:-${TMPDIR:-/tmp}}/pb-bench-pg-XXXXXX")
chmod 755 "$work"
broker_pid="" pb_pid=""
cleanup() {
    [[ -z $pb_pid ]] || kill "$pb_pid" 2>/dev/null || true
    if [[ -n $broker_pid ]]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    if [[ ${KEEP:-0} == 1 ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
say() { printf '==> %s\n' "$*" >&2; }
now() { date +%s.%N; }
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---- CPU ---------------------------------------------------------------------------------
own_child_ticks() { sed 's/.*) //' "/proc/$$/stat" | awk '{ print $14 + $15 }'; }
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }
proc_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'; }
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

rows=$work/rows.tsv
: >"$rows"
# row NAME WHAT SECONDS CLIENT_TICKS PG_TICKS RSS_KB BUSY_PCT
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$rows"; }
w_start() {
    w_t0=$(now)
    w_m0=$(machine_ticks)
    w_c0=$(own_child_ticks)
    w_g0=$(pg_ticks)
}
w_end() { # sets w_secs w_pg w_child w_busy
    local t1 m1
    t1=$(now)
    m1=$(machine_ticks)
    w_pg=$(($(pg_ticks) - w_g0))
    w_child=$(($(own_child_ticks) - w_c0))
    w_secs=$(awk -v a="$w_t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
    # the machine's busy share: every process's CPU over the window, of all cores
    w_busy=$(awk -v m="$((m1 - w_m0))" -v hz="$HZ" -v n="$(nproc)" -v s="$w_secs" \
        'BEGIN { printf "%.0f", 100 * m / hz / n / s }')
}

# ---- the database ------------------------------------------------------------------------
say "starting PostgreSQL in $work/pg"
PB_SINK=$build/pb_sink python3 "$here/broker.py" postgres "$work/pg" >"$work/pg.log" 2>&1 &
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
PGBIN=$(dirname "$PGBENCH")
psql() { "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres "$@"; }
psql -d postgres -c "CREATE DATABASE erp"
psql -d erp <<'SQL'
CREATE SEQUENCE ids;
CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(12,2),
                     status text, updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE upserts (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(12,2),
                      status text);
CREATE TABLE upserts2 (LIKE upserts INCLUDING ALL);
SQL
dsn="postgres://postgres@127.0.0.1:$pg_port/erp"

pb_port=$(free_port)
cat >"$work/cdc.yaml" <<YAML
server: { listen: "127.0.0.1:$pb_port" }
state: sqlite:$work/cdc-state/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  cdc:
    input:
      postgres_cdc:
        dsn: "$dsn"
        slot: bench
        publication: bench
        tables: [public.orders]
        snapshot: never
        status_interval: 1s
    outputs:
      drop: { drop: {} }
YAML
delivered() {
    curl -fsS "http://127.0.0.1:$pb_port/metrics" 2>/dev/null |
        awk -v name=patchbay_deliveries_delivered_total \
            '($1 == name || index($1, name "{") == 1) { s += $NF } END { printf "%d\n", s }'
}

# The slot first: patchbay makes it (and the publication), then stops.
say "creating the slot"
"$PB" run "$work/cdc.yaml" 2>"$work/cdc-0.log" &
pb_pid=$!
for _ in $(seq 600); do
    [[ $(psql -d erp -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'bench' AND active") == 1 ]] && break
    sleep 0.1
done
kill "$pb_pid"
wait "$pb_pid" || true
pb_pid=""

# ---- pgbench, one row per transaction (the changes) ---------------------------------------
cat >"$work/row.sql" <<'SQL'
INSERT INTO orders (id, customer, total, status) VALUES (nextval('ids'), 'cus-' || :client_id, 12.34, 'paid')
  ON CONFLICT (id) DO UPDATE SET total = EXCLUDED.total, status = EXCLUDED.status, updated_at = now();
SQL
say "pgbench-row: $N upserts, one per transaction, $CLIENTS clients"
w_start
"$PGBENCH" -n -h 127.0.0.1 -p "$pg_port" -U postgres -c "$CLIENTS" -j 2 -t $((N / CLIENTS)) \
    -f "$work/row.sql" erp >"$work/pgbench-row.out" 2>&1
w_end
row pgbench-row "pgbench: upsert, 1 row/transaction" "$w_secs" "$w_child" "$w_pg" - "$w_busy"
got=$(psql -d erp -c "SELECT count(*) FROM orders")
[[ $got == "$N" ]] || {
    echo "pgbench wrote $got rows of $N" >&2
    exit 1
}

# ---- postgres_cdc ----------------------------------------------------------------------------
say "cdc: $N changes from the slot"
w_start
"$PB" run "$work/cdc.yaml" 2>"$work/cdc.log" &
pb_pid=$!
deadline=$((SECONDS + LIMIT))
while (($(delivered) < N)); do
    ((SECONDS < deadline)) || {
        echo "cdc: $(delivered) of $N after $LIMIT s" >&2
        tail "$work/cdc.log" >&2
        exit 1
    }
    kill -0 "$pb_pid" || {
        tail "$work/cdc.log" >&2
        exit 1
    }
    sleep 0.1
done
pb_cpu=$(proc_ticks "$pb_pid")
pb_rss=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pb_pid/status")
w_end
kill "$pb_pid"
wait "$pb_pid" || true
pb_pid=""
row cdc "patchbay postgres_cdc -> store -> drop" "$w_secs" "$pb_cpu" "$w_pg" "$pb_rss" "$w_busy"

# ---- pgbench, batches ----------------------------------------------------------------------------
cat >"$work/batch.sql" <<SQL
INSERT INTO upserts (id, customer, total, status)
  SELECT nextval('ids'), 'cus-' || :client_id, 12.34, 'paid' FROM generate_series(1, $BATCH)
  ON CONFLICT (id) DO UPDATE SET total = EXCLUDED.total, status = EXCLUDED.status;
SQL
say "pgbench-batch: $N upserts, $BATCH per transaction"
w_start
"$PGBENCH" -n -h 127.0.0.1 -p "$pg_port" -U postgres -c "$CLIENTS" -j 2 -t $((N / CLIENTS / BATCH)) \
    -f "$work/batch.sql" erp >"$work/pgbench-batch.out" 2>&1
w_end
row pgbench-batch "pgbench: upsert, $BATCH rows/transaction" "$w_secs" "$w_child" "$w_pg" - "$w_busy"

# ---- sql output ------------------------------------------------------------------------------------
mkdir -p "$work/inbox" "$work/done" "$work/failed"
python3 - "$work/inbox/rows.jsonl" "$N" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(1, int(sys.argv[2]) + 1):
        f.write(json.dumps({"id": i, "customer": f"cus-{i % 500}", "total": "12.34",
                            "status": "paid"}) + "\n")
PY
cat >"$work/sql.yaml" <<YAML
server: { listen: "127.0.0.1:0" }
state: sqlite:$work/sql-state/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  load:
    input:
      file:
        paths: ["$work/inbox/*.jsonl"]
        format: jsonl
        archive_dir: $work/done
        error_dir: $work/failed
        min_age: 0s
    outputs:
      db:
        sql:
          driver: postgres
          dsn: "$dsn"
          table: upserts2
          columns: { id: .id, customer: .customer, total: .total, status: .status }
          upsert: { key: [id] }
          batch: { count: $BATCH, period: 100ms }
YAML
say "sql-upsert: $N rows, file -> sql output, batch $BATCH"
w_start
/usr/bin/time -f '%M' -o "$work/sql.rss" "$PB" run --once "$work/sql.yaml" 2>"$work/sql.log" || {
    tail "$work/sql.log" >&2
    exit 1
}
w_end
got=$(psql -d erp -c "SELECT count(*) FROM upserts2")
[[ $got == "$N" ]] || {
    echo "sql output wrote $got rows of $N" >&2
    exit 1
}
row sql-upsert "patchbay file -> store -> sql upsert, batch $BATCH" "$w_secs" "$w_child" "$w_pg" \
    "$(tail -1 "$work/sql.rss")" "$w_busy"

# ---- the table ------------------------------------------------------------------------------------
{
    echo "PostgreSQL rows: $N rows each, $(nproc) cores, $("$PGBIN/postgres" --version)," \
        "rev $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')," \
        "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| row | what | rows/s | seconds | client CPU-µs/row | PostgreSQL CPU-µs/row | patchbay peak RSS MB | machine busy |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' -v n="$N" -v hz="$HZ" '{
        rss = ($6 == "-") ? "—" : sprintf("%.0f", $6 / 1024)
        printf "| %s | %s | %.0f | %.1f | %.0f | %.0f | %s | %s%% |\n",
            $1, $2, n / $3, $3, $4 / hz * 1e6 / n, $5 / hz * 1e6 / n, rss, $7 }' "$rows"
} | tee "$work/table.md"
[[ -z ${BENCH_OUT:-} ]] || cp "$work/table.md" "$BENCH_OUT"
