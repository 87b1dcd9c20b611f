# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # run.sh's variables (work, build, sink_port, w_*...)
# bench/brokers.sh - the broker rows of bench/run.sh (sourced by it; uses its helpers:
# window_start/window_end, cpu_ticks, thread_ticks, start_sink, run_wrk, metric_sum...).
#
# For each broker selected (BENCH_SCENARIOS: nats-in nats-out amqp-in amqp-out redis-in
# redis-out mqtt-in mqtt-out kafka-in kafka-out, or "brokers" for all ten), the broker is
# started by bench/broker.py the way the system tests start it (tests/system/srv_*.py:
# 127.0.0.1, free ports, a directory of its own under the work directory) and stopped
# after its rows. Every message is the same ~1 KB JSON order as bench/post.lua's.
#
#   X-in   the broker's own client consuming BENCH_BROKER_MESSAGES (30000) messages
#          (reading and acknowledging each), then patchbay consuming the same number:
#          broker -> input (commit, then ack) -> jq map -> output jq map -> HTTP delivery
#          to pb_sink --quiet (concurrency 64), timed from patchbay's start until pb_sink
#          has answered all of them. Both read a copy of the same messages, published
#          beforehand (not measured).
#   X-out  the broker's own client publishing BENCH_BROKER_MESSAGES messages, each
#          confirmed by the broker, then wrk posting for BENCH_SECONDS to patchbay:
#          http_server (commit) -> jq map -> output jq map -> publish, confirmed by the
#          broker; delivered/s = messages at the broker / (load + drain).
#
# The broker's own client: redis-benchmark (XADD; reading with XREADGROUP and XACK in one
# EVAL), mosquitto_pub / mosquitto_sub (mosquitto-clients), and the project's own small
# clients for the others: pb_nats, pb_amqp, pb_kafka_mock (tests/tools). Kafka is
# librdkafka's mock cluster (pb_kafka_mock serve), in memory: Debian ships no Kafka.
#
# CPU: patchbay's from /proc as in the other rows; the client's from this shell's reaped
# children (it runs in the foreground); the broker's from /proc, its process and its
# children, over the same window. Method: docs/performance.md.

# A multiple of 400: redis-benchmark sends whole pipelines of 16, and its reader takes 100.
BROKER_MSGS=$(((${BENCH_BROKER_MESSAGES:-30000} + 399) / 400 * 400))
BROKER_LIMIT=${BENCH_BROKER_LIMIT:-180}
BROKER_SCENARIOS="nats-in nats-out amqp-in amqp-out redis-in redis-out mqtt-in mqtt-out kafka-in kafka-out"
NATS_TOOL=$build/pb_nats
AMQP_TOOL=$build/pb_amqp
KAFKA_TOOL=$build/pb_kafka_mock

brows=$work/broker-rows.tsv
bnotes=$work/broker-notes.md
: >"$brows"
: >"$bnotes"
bnote() { printf -- '- %s\n' "$*" >>"$bnotes"; }

# brow KEY BROKER DIRECTION RUN MESSAGES SECONDS MSG_PER_S CLIENT_TICKS BROKER_TICKS RSS_KB
#      OTHER_TICKS BUSY_PCT KIND(tool|patchbay): the CPU figures are divided by MESSAGES.
brow() {
    (($# == 13)) || {
        echo "brow: $# fields, want 13" >&2
        exit 1
    }
    local IFS=$'\t'
    echo "$*" >>"$brows"
}

# The order every broker row carries: post.lua's shape and size (~1 KB), the number in it
# three times (id, total, customer) as %d, which the clients fill in per message.
order_fmt() {
    local head='{"id":"ord-%d","created_at":"2024-05-01T10:00:00Z","status":"paid","currency":"eur","total_cents":%d,"customer":{"id":"cus-%d","name":"Ada Lovelace","email":"ada@example.com"},"shipping_address":{"line1":"10 Main Street","city":"Berlin","postal_code":"10115","country":"DE"},"items":[{"sku":"mug-blue","name":"Blue mug","qty":2,"unit_cents":1450},{"sku":"tee-l","name":"T-shirt L","qty":1,"unit_cents":2200}],"note":"'
    local sample=${head//%d/100000} pad
    pad=$((1024 - ${#sample} - 2))
    printf '%s%s"}' "$head" "$(head -c "$pad" /dev/zero | tr '\0' x)"
}
ORDER_FMT=$(order_fmt)

# order_lines N FILE: N orders, one per line (numbers 0..N-1), for mosquitto_pub -l.
order_lines() {
    awk -v n="$1" -v fmt="$ORDER_FMT" 'BEGIN { for (i = 0; i < n; i++) { s = fmt; gsub(/%d/, i, s); print s } }' >"$2"
}

# ---- the brokers -------------------------------------------------------------------------

# start_broker KIND [broker.py options]: sets broker_url, broker_port, broker_pid.
start_broker() {
    local kind=$1 dir=$work/broker-$1
    shift
    say "$kind: starting the broker (bench/broker.py)"
    PB_SINK=$SINK python3 "$here/broker.py" "$kind" "$dir" "$@" >"$work/broker-$kind.log" 2>&1 &
    broker_helper=$!
    pids+=("$broker_helper")
    local deadline=$((SECONDS + 240))
    until [[ -s $dir/broker.env ]]; do
        if ! kill -0 "$broker_helper" 2>/dev/null || ((SECONDS >= deadline)); then
            echo "the $kind broker did not start; $work/broker-$kind.log:" >&2
            tail -n 30 "$work/broker-$kind.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    local url port pid
    # shellcheck disable=SC1090,SC1091
    . "$dir/broker.env"
    broker_url=$url broker_port=$port broker_pid=$pid
}

stop_broker() {
    kill -TERM "$broker_helper" 2>/dev/null || true
    wait "$broker_helper" 2>/dev/null || true
}

# ---- patchbay with a broker at one end ---------------------------------------------------

PB_MAP="'{order_id: .id, cents: .total_cents, email: .customer.email, items: [.items[] | {sku, qty}]}'"
OUT_MAP="'{order: .order_id, amount: .cents, currency: \"eur\", lines: (.items | length)}'"
RETRY="{ max_attempts: 10, initial: 100ms, max: 2s, max_age: 1h }"

# pb_broker_start NAME INPUT OUTPUT: a fresh store and config (INPUT and OUTPUT are YAML
# flow maps: the plugin and its options); sets pb_pid, pb_port, pb_t0 (just before exec).
pb_broker_start() {
    local name=$1 input=$2 output=$3
    pb_port=$(free_port)
    mkdir -p "$work/$name"
    cat >"$work/$name/patchbay.yaml" <<EOF
server: { listen: 127.0.0.1:$pb_port, admin_token: bench-token }
state: sqlite:$work/$name/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input: $input
    process:
      - map: $PB_MAP
    outputs:
      out: $output
EOF
    pb_t0=$(now)
    "$PB" run "$work/$name/patchbay.yaml" >"$work/$name/patchbay.out" 2>"$work/$name/patchbay.log" &
    pb_pid=$!
    pids+=("$pb_pid")
}

# http_out OUTPUT_PLUGIN_YAML: an output with the map and retry of the HTTP rows.
http_out_yaml() {
    echo "{ http: { url: http://127.0.0.1:$1/orders, timeout: 5s, map: $OUT_MAP, retry: $RETRY, concurrency: $CONCURRENCY } }"
}
broker_out_yaml() { # PLUGIN OPTIONS
    echo "{ $1: { $2, map: $OUT_MAP, retry: $RETRY } }"
}

# ---- the broker's own client -------------------------------------------------------------

# tool_row KEY BROKER DIRECTION LABEL MESSAGES CMD...: runs CMD in the foreground (its
# output in $work/tool-KEY.out/.err), timed and measured; adds the row. The message count
# is what CMD was asked for: it must exit 0 only when it did all of them.
tool_row() {
    local key=$1 broker=$2 dir=$3 label=$4 msgs=$5 t0 t1 c0 c1
    shift 5
    partner_start "$broker_pid"
    window_start
    t0=$(now)
    c0=$(own_child_ticks)
    if ! "$@" >"$work/tool-$key.out" 2>"$work/tool-$key.err"; then
        echo "$key: $label failed:" >&2
        tail -n 20 "$work/tool-$key.out" "$work/tool-$key.err" >&2
        exit 1
    fi
    c1=$(own_child_ticks)
    t1=$(now)
    W_END=$t1 window_end "" "$broker_pid"
    tool_ticks=$((c1 - c0))
    tool_secs=$(calc %.2f "$t1 - $t0")
    brow "$key" "$broker" "$dir" "$label" "$msgs" "$tool_secs" "$(calc %.0f "$msgs / $tool_secs")" \
        "$tool_ticks" "$w_partner_ticks" "-" "$w_other_ticks" "$w_busy_pct" tool
    say "$key: $label: $msgs in $tool_secs s"
}

# fill LABEL MESSAGES CMD...: publish what the consume rows read (not a row; its rate goes
# in the notes).
fill() {
    local label=$1 msgs=$2 t0 t1
    shift 2
    t0=$(now)
    if ! "$@" >"$work/fill.out" 2>"$work/fill.err"; then
        echo "filling the broker failed ($label):" >&2
        tail -n 20 "$work/fill.out" "$work/fill.err" >&2
        exit 1
    fi
    t1=$(now)
    fill_note="$msgs orders published beforehand with $label in $(calc %.1f "$t1 - $t0") s"
}

# ---- patchbay consuming: broker -> map -> pb_sink -------------------------------------------

# pb_in_row KEY BROKER INPUT_YAML: patchbay started, measured from its exec until pb_sink
# has answered BROKER_MSGS; then SIGTERM (it acknowledges what it committed). The rate
# leaves out the start (connecting, creating a consumer, joining a group): it is the
# deliveries after the input received its first messages, per second from then on. The
# CPU covers the whole run. Sets in_extra (notes).
pb_in_row() {
    local key=$1 broker=$2 input=$3 t_first='' s_first=0 t_end delivered b0 b1 n deadline
    start_sink 0
    partner_start "$broker_pid" "$sink_pid"
    b0=$(cpu_ticks "$broker_pid")
    pb_broker_start "$key" "$input" "$(http_out_yaml "$sink_port")"
    window_start "$pb_pid"
    w_t0=$pb_t0 w_p0=0 w_io0=0 w_iox0=0 # from exec
    deadline=$((SECONDS + BROKER_LIMIT))
    in_done=yes
    while :; do
        if [[ -z $t_first ]] &&
            (($(metric_sum "$pb_port" patchbay_messages_received_total 2>/dev/null || echo 0) > 0)); then
            t_first=$(now)
            s_first=$(sink_200 "$sink_port")
        fi
        n=$(sink_200 "$sink_port" 2>/dev/null || echo 0)
        t_end=$(now)
        ((n >= BROKER_MSGS)) && break
        if ! kill -0 "$pb_pid" 2>/dev/null; then
            echo "$key: patchbay exited; $work/$key/patchbay.log:" >&2
            tail -n 30 "$work/$key/patchbay.log" >&2
            exit 1
        fi
        if (($(metric_sum "$pb_port" patchbay_messages_dead_on_arrival_total 2>/dev/null || echo 0) > 0)); then
            echo "$key: patchbay dead-lettered messages on arrival (a bench bug); see" \
                "$work/$key and GET /api/dead-letters" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            in_done="no ($n of $BROKER_MSGS after $BROKER_LIMIT s)"
            [[ -n $t_first ]] || {
                echo "$key: nothing received in $BROKER_LIMIT s; $work/$key/patchbay.log:" >&2
                tail -n 30 "$work/$key/patchbay.log" >&2
                exit 1
            }
            break
        fi
        sleep 0.05
    done
    b1=$(cpu_ticks "$broker_pid")
    W_END=$t_end window_end "$pb_pid" "$broker_pid" "$sink_pid"
    thread_ticks "$pb_pid" >"$work/$key/threads.1"
    awk '{ print $1, 0 }' "$work/$key/threads.1" >"$work/$key/threads.0" # from exec
    delivered=$(sink_200 "$sink_port")
    local dups nacked rss secs rate
    dups=$(metric_sum "$pb_port" patchbay_messages_duplicate_total)
    nacked=$(metric_sum "$pb_port" patchbay_messages_nacked_total)
    rss=$(hwm_kb "$pb_pid")
    stop "$pb_pid"
    stop "$sink_pid"
    read -r secs rate < <(calc "%.2f %.0f" "$t_end - $t_first" "($n - $s_first) / ($t_end - $t_first)")
    brow "$key" "$broker" "consume → map → HTTP" "patchbay → jq → pb_sink" "$delivered" "$secs" \
        "$rate" "$w_cpu_ticks" "$((b1 - b0))" "$rss" "$w_other_ticks" "$w_busy_pct" patchbay
    in_extra="patchbay: its input received the first messages $(calc %.2f "$t_first - $pb_t0") s"
    in_extra+=" after its start; from then on $((n - s_first)) reached pb_sink in $secs s, $delivered in"
    in_extra+=" all (all there: $in_done); $dups repeats dropped, $nacked nacked; CPU from its start"
    in_extra+=" ($w_secs s); pb_sink used $(ticks_s "$((w_partner_ticks - b1 + b0))") CPU s;"
    in_extra+=" patchbay's threads: $(thread_split "$work/$key/threads.0" "$work/$key/threads.1" "$w_secs")"
    say "$key: patchbay consumed $delivered, $rate/s"
}

# ---- patchbay publishing: wrk -> patchbay -> broker ----------------------------------------

# pb_out_row KEY BROKER OUTPUT_YAML COUNT_FN: wrk for BENCH_SECONDS, then until the backlog
# is 0; delivered = COUNT_FN's messages at the broker. Sets out_extra (notes).
pb_out_row() {
    local key=$1 broker=$2 output=$3 count_fn=$4 b0 b1 t_load accepted delivered
    pb_broker_start "$key" "{ http_server: { path: /hooks/shop, max_body: 64KiB, format: json } }" \
        "$output"
    wait_for "patchbay /ready" 60 curl -fsS "http://127.0.0.1:$pb_port/ready"
    partner_start "$broker_pid"
    thread_ticks "$pb_pid" >"$work/$key/threads.0"
    b0=$(cpu_ticks "$broker_pid")
    window_start "$pb_pid"
    run_wrk "http://127.0.0.1:$pb_port/hooks/shop" "$work/wrk-$key.txt"
    t_load=$(now)
    wait_drained "$pb_port" "$BROKER_LIMIT"
    b1=$(cpu_ticks "$broker_pid")
    W_END=$t_drain window_end "$pb_pid" "$broker_pid"
    thread_ticks "$pb_pid" >"$work/$key/threads.1"
    accepted=$(metric_sum "$pb_port" patchbay_messages_accepted_total)
    local dead rss attempts
    dead=$(metric_sum "$pb_port" patchbay_deliveries_dead_total)
    attempts=$(metric_sum "$pb_port" patchbay_delivery_attempts_total)
    rss=$(hwm_kb "$pb_pid")
    stop "$pb_pid"
    delivered=$($count_fn "$accepted")
    local p50 p99 non2xx secs err
    IFS=$'\t' read -r _ p50 p99 _ non2xx secs err < <(wrk_fields "$work/wrk-$key.txt")
    brow "$key" "$broker" "HTTP → map → publish" "wrk → patchbay → $broker" "$delivered" "$w_secs" \
        "$(calc %.0f "$delivered / $w_secs")" "$w_cpu_ticks" "$((b1 - b0))" "$rss" "$w_other_ticks" \
        "$w_busy_pct" patchbay
    out_extra="patchbay: $accepted accepted in $secs s ($(calc %.0f "$accepted / $secs")/s;"
    out_extra+=" p50 $p50 ms, p99 $p99 ms; $non2xx non-2xx; socket errors: $err), drained"
    out_extra+=" $(calc %.1f "$t_drain - $t_load") s after the load ($drained); $attempts attempts,"
    out_extra+=" $dead dead-lettered; $delivered messages at the broker; patchbay's threads:"
    out_extra+=" $(thread_split "$work/$key/threads.0" "$work/$key/threads.1" "$w_secs")"
    say "$key: patchbay published $delivered in $w_secs s"
}

# ---- NATS JetStream ---------------------------------------------------------------------------

nats_count() { "$NATS_TOOL" "$broker_url" stream-info BOUT | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"])'; }

bench_nats() {
    start_broker nats
    local v
    v=$(nats-server --version 2>/dev/null || echo nats-server)
    if want nats-in; then
        "$NATS_TOOL" "$broker_url" stream-add BIN "bin.>" >/dev/null
        fill "pb_nats publish" "$BROKER_MSGS" "$NATS_TOOL" "$broker_url" publish bin.orders \
            "$BROKER_MSGS" --body "$ORDER_FMT"
        tool_row nats-in "NATS JetStream" "consume" "pb_nats consume (pull, batch 256)" \
            "$BROKER_MSGS" "$NATS_TOOL" "$broker_url" consume BIN tool "$BROKER_MSGS" --batch 256
        pb_in_row nats-in "NATS JetStream" "{ nats: { url: \"$broker_url\", stream: BIN, consumer: patchbay, batch: 256 } }"
        local ci
        ci=$("$NATS_TOOL" "$broker_url" consumer-info BIN patchbay)
        bnote "nats-in ($v, file storage): $fill_note. The client: a durable pull consumer" \
            "fetching 256 at a time and acking each message (\`natsMsg_Ack\`). $in_extra." \
            "At the end the consumer has $(echo "$ci" | python3 -c 'import json,sys; c=json.load(sys.stdin); print(c["num_pending"], "pending,", c["num_ack_pending"], "unacknowledged")')."
    fi
    if want nats-out; then
        "$NATS_TOOL" "$broker_url" stream-add BOUT "bout.>" >/dev/null
        "$NATS_TOOL" "$broker_url" stream-add BTOOL "btool.>" >/dev/null
        tool_row nats-out "NATS JetStream" "publish" "pb_nats publish (4,096 awaiting PubAck)" \
            "$BROKER_MSGS" "$NATS_TOOL" "$broker_url" publish btool.orders "$BROKER_MSGS" \
            --body "$ORDER_FMT"
        pb_out_row nats-out "NATS JetStream" \
            "$(broker_out_yaml nats "url: \"$broker_url\", subject: bout.orders, stream: BOUT")" nats_count
        bnote "nats-out: the client publishes without a Nats-Msg-Id; patchbay's output sets" \
            "one per delivery (the stream's duplicate window checks it). The client's stream" \
            "holds $("$NATS_TOOL" "$broker_url" stream-info BTOOL | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"])')" \
            "messages. $out_extra."
    fi
    stop_broker
}

# ---- RabbitMQ ----------------------------------------------------------------------------------

amqp_ready() { "$AMQP_TOOL" count "$broker_url" "$1" | awk '{ print $1 }'; }
amqp_count() { amqp_ready bench-out; }

bench_amqp() {
    start_broker amqp
    local v
    v=$(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo "?")
    if want amqp-in; then
        # One fanout exchange, two durable queues: the client reads one, patchbay the other.
        "$AMQP_TOOL" declare "$broker_url" bench-in-tool --bind bench-in:orders:fanout
        "$AMQP_TOOL" declare "$broker_url" bench-in-pb --bind bench-in:orders:fanout
        fill "pb_amqp publish (persistent, confirms)" "$BROKER_MSGS" "$AMQP_TOOL" publish \
            "$broker_url" bench-in orders "$BROKER_MSGS" --body "$ORDER_FMT"
        tool_row amqp-in RabbitMQ "consume" "pb_amqp consume (prefetch 1000)" "$BROKER_MSGS" \
            "$AMQP_TOOL" consume "$broker_url" bench-in-tool --count "$BROKER_MSGS" --discard \
            --idle 30
        local got
        got=$(awk '/^consumed/ { print $2 }' "$work/tool-amqp-in.err")
        [[ $got == "$BROKER_MSGS" ]] || {
            echo "amqp-in: pb_amqp consumed ${got:-nothing} of $BROKER_MSGS" >&2
            exit 1
        }
        pb_in_row amqp-in RabbitMQ "{ amqp: { url: \"$broker_url\", queue: bench-in-pb, prefetch: 256 } }"
        bnote "amqp-in (RabbitMQ $v, classic durable queues, persistent messages): $fill_note" \
            "(both queues). The client: basic.consume with prefetch 1000, an ack (multiple) every" \
            "200. $in_extra. After patchbay's SIGTERM the queue holds $(amqp_ready bench-in-pb)" \
            "ready messages (an unacknowledged one would be ready again)."
    fi
    if want amqp-out; then
        "$AMQP_TOOL" declare "$broker_url" bench-out --bind bench-out:orders:direct
        "$AMQP_TOOL" declare "$broker_url" bench-tool
        tool_row amqp-out RabbitMQ "publish" "pb_amqp publish (confirms, window 1000)" \
            "$BROKER_MSGS" "$AMQP_TOOL" publish "$broker_url" "" bench-tool "$BROKER_MSGS" \
            --body "$ORDER_FMT"
        pb_out_row amqp-out RabbitMQ \
            "$(broker_out_yaml amqp "url: \"$broker_url\", exchange: bench-out, routing_key: orders")" \
            amqp_count
        bnote "amqp-out: both publish persistent messages to a durable queue with publisher" \
            "confirms (patchbay: mandatory too); the client's queue holds" \
            "$(amqp_ready bench-tool) messages. $out_extra."
    fi
    stop_broker
}

# ---- Redis Streams -----------------------------------------------------------------------------

redis_count() { redis-cli -p "$broker_port" XLEN bench-out; }
# redis_group STREAM GROUP FIELD: one field of XINFO GROUPS (entries-read, lag, pending...).
redis_group() {
    redis-cli -p "$broker_port" XINFO GROUPS "$1" |
        awk -v g="$2" -v f="$3" 'NR % 2 == 1 { k = $0; next }
            k == "name" { cur = $0 } cur == g && k == f { print; exit }'
}

bench_redis() {
    start_broker redis
    local v order_r
    v=$(redis-server --version | awk '{ print $3 }')
    # redis-benchmark's __rand_int__ has leading zeros: only inside strings.
    order_r=${ORDER_FMT/\"total_cents\":%d/\"total_cents\":4900}
    order_r=${order_r//%d/__rand_int__}
    if want redis-in; then
        fill "redis-benchmark XADD" "$BROKER_MSGS" redis-benchmark -p "$broker_port" -n \
            "$BROKER_MSGS" -c 64 -P 16 -r 1000000000 XADD bench-in '*' body "$order_r"
        redis-cli -p "$broker_port" XGROUP CREATE bench-in tool 0 >/dev/null
        # One EVAL reads 100 entries for the group and acknowledges them.
        local script="local r = redis.call('XREADGROUP', 'GROUP', 'tool', 'c', 'COUNT', 100, 'STREAMS', KEYS[1], '>') if not r then return 0 end local ids = {} for i, e in ipairs(r[1][2]) do ids[i] = e[1] end redis.call('XACK', KEYS[1], 'tool', unpack(ids)) return #ids"
        tool_row redis-in "Redis Streams" "consume" "redis-benchmark EVAL (XREADGROUP 100 + XACK)" \
            "$BROKER_MSGS" redis-benchmark -p "$broker_port" -n "$(((BROKER_MSGS + 99) / 100))" \
            -c 4 --csv EVAL "$script" 1 bench-in
        local tool_read tool_left
        tool_read=$(redis_group bench-in tool entries-read)
        tool_left=$(redis_group bench-in tool pending)
        pb_in_row redis-in "Redis Streams" "{ redis_streams: { url: \"$broker_url\", stream: bench-in, group: patchbay, consumer: bench, batch: 100 } }"
        bnote "redis-in (Redis $v, appendfsync always): $fill_note. The client: redis-benchmark" \
            "-c 4 running an EVAL that reads 100 entries (XREADGROUP) and acknowledges them" \
            "(XACK), $(((BROKER_MSGS + 99) / 100)) calls; its group read $tool_read entries and" \
            "has $tool_left pending. $in_extra. patchbay's group after its SIGTERM: read" \
            "$(redis_group bench-in patchbay entries-read), $(redis_group bench-in patchbay pending) pending."
    fi
    if want redis-out; then
        tool_row redis-out "Redis Streams" "publish" "redis-benchmark XADD (-c 64 -P 16)" \
            "$BROKER_MSGS" redis-benchmark -p "$broker_port" -n "$BROKER_MSGS" -c 64 -P 16 \
            -r 1000000000 --csv XADD bench-tool '*' body "$order_r"
        pb_out_row redis-out "Redis Streams" \
            "$(broker_out_yaml redis_streams "url: \"$broker_url\", stream: bench-out")" redis_count
        bnote "redis-out: XADD of the order as field body (patchbay adds idempotency_key)," \
            "appendfsync always; the client's stream holds" \
            "$(redis-cli -p "$broker_port" XLEN bench-tool) entries. $out_extra."
    fi
    stop_broker
}

# ---- MQTT (mosquitto) --------------------------------------------------------------------------

mqtt_sub() { mosquitto_sub -h 127.0.0.1 -p "$broker_port" -q 1 "$@"; }
mqtt_sub_discard() { mqtt_sub "$@" >/dev/null; }
# What a persistent session holds: read until COUNT arrive or 30 s pass.
mqtt_count() { mqtt_sub -c -i bench-count-pb -t bench/out -C "$1" -W 60 2>/dev/null | wc -l || true; }

bench_mqtt() {
    if ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto_sub >/dev/null; then
        say "mqtt skipped: mosquitto_pub/mosquitto_sub not found (apt-get install mosquitto-clients)"
        bnote "MQTT skipped: mosquitto-clients is not installed (./dev.sh bench installs it)."
        return 0
    fi
    start_broker mqtt --max-inflight 1000
    local v lines=$work/orders.lines
    v=$(mosquitto -h 2>/dev/null | awk 'NR == 1 { print $3 }' || true)
    order_lines "$BROKER_MSGS" "$lines"
    if want mqtt-in; then
        # Two persistent sessions subscribed before the messages are published: the
        # client's and patchbay's (its client_id); the broker queues a copy for each.
        mqtt_sub -c -i bench-tool -t bench/in -E
        mqtt_sub -c -i bench-pb -t bench/in -E
        fill "mosquitto_pub -q 1 -M 1000 -l" "$BROKER_MSGS" \
            mosquitto_pub -h 127.0.0.1 -p "$broker_port" -q 1 -M 1000 -t bench/in -l <"$lines"
        tool_row mqtt-in "MQTT (mosquitto)" "consume" "mosquitto_sub -q 1 (persistent session)" \
            "$BROKER_MSGS" mqtt_sub_discard -c -i bench-tool -t bench/in -C "$BROKER_MSGS" \
            -W "$BROKER_LIMIT"
        pb_in_row mqtt-in "MQTT (mosquitto)" "{ mqtt: { url: \"$broker_url\", topics: [bench/in], client_id: bench-pb } }"
        local left
        left=$(mqtt_sub -c -i bench-pb -t bench/in -C 1 -W 3 2>/dev/null | wc -l || true)
        bnote "mqtt-in (mosquitto $v, persistence on, max_inflight_messages 1000, QoS 1," \
            "MQTT 3.1.1): $fill_note. The client: mosquitto_sub on its persistent session." \
            "$in_extra. Messages left in patchbay's session after its SIGTERM: $left."
    fi
    if want mqtt-out; then
        mqtt_sub -c -i bench-count-tool -t bench/tool -E
        mqtt_sub -c -i bench-count-pb -t bench/out -E
        tool_row mqtt-out "MQTT (mosquitto)" "publish" "mosquitto_pub -q 1 -M 1000 -l" \
            "$BROKER_MSGS" mosquitto_pub -h 127.0.0.1 -p "$broker_port" -q 1 -M 1000 \
            -t bench/tool -l <"$lines"
        pb_out_row mqtt-out "MQTT (mosquitto)" \
            "$(broker_out_yaml mqtt "url: \"$broker_url\", topic: bench/out")" mqtt_count
        local held
        held=$(mqtt_sub -c -i bench-count-tool -t bench/tool -C "$BROKER_MSGS" -W 60 2>/dev/null |
            wc -l || true)
        bnote "mqtt-out: QoS 1, delivered on PUBACK; a persistent session subscribed to each" \
            "topic keeps what was published, read back afterwards: $held of the client's." \
            "$out_extra."
    fi
    stop_broker
}

# ---- Kafka (librdkafka's mock cluster) ---------------------------------------------------------

kafka_high() {
    "$KAFKA_TOOL" offsets --bootstrap "$broker_url" --topic "$1" ${2:+--group "$2"} |
        python3 -c 'import json,sys; o=json.load(sys.stdin); print(o["high"], o["committed"])'
}
kafka_count() { kafka_high bench-out | awk '{ print $1 }'; }

bench_kafka() {
    # The mock keeps about 5 MB per partition and drops older messages: 16 partitions hold
    # the consume rows' messages.
    start_broker kafka --topic bench-in:16 --topic bench-out:16 --topic bench-tool:16
    local brokers="[${broker_url//,/, }]" v
    v=$(dpkg-query -W -f '${Version}' librdkafka1 2>/dev/null || echo "?")
    if want kafka-in; then
        fill "pb_kafka_mock produce" "$BROKER_MSGS" "$KAFKA_TOOL" produce --bootstrap \
            "$broker_url" --topic bench-in --count "$BROKER_MSGS" --body "$ORDER_FMT"
        local low
        low=$("$KAFKA_TOOL" offsets --bootstrap "$broker_url" --topic bench-in |
            python3 -c 'import json,sys; print(sum(p["low"] for p in json.load(sys.stdin)["partitions"]))')
        ((low == 0)) || {
            echo "kafka-in: the mock cluster dropped $low of the messages (its size limit per" \
                "partition); use fewer BENCH_BROKER_MESSAGES" >&2
            exit 1
        }
        tool_row kafka-in "Kafka (mock)" "consume" "pb_kafka_mock consume (no commits)" \
            "$BROKER_MSGS" "$KAFKA_TOOL" consume --bootstrap "$broker_url" --topic bench-in \
            --expect "$BROKER_MSGS" --timeout "$BROKER_LIMIT" --quiet
        pb_in_row kafka-in "Kafka (mock)" "{ kafka: { brokers: $brokers, topics: [bench-in], group: bench-pb } }"
        local hc
        hc=$(kafka_high bench-in bench-pb)
        bnote "kafka-in (librdkafka $v mock cluster, 1 broker, 16 partitions, in memory): $fill_note." \
            "The client: a plain consumer assigned every partition, reading to the end without" \
            "a group or commits. $in_extra. The group's committed offsets after patchbay's" \
            "SIGTERM: ${hc#* } of ${hc% *}."
    fi
    if want kafka-out; then
        tool_row kafka-out "Kafka (mock)" "publish" "pb_kafka_mock produce (idempotent, acks=all)" \
            "$BROKER_MSGS" "$KAFKA_TOOL" produce --bootstrap "$broker_url" --topic bench-tool \
            --count "$BROKER_MSGS" --body "$ORDER_FMT"
        pb_out_row kafka-out "Kafka (mock)" \
            "$(broker_out_yaml kafka "brokers: $brokers, topic: bench-out")" kafka_count
        bnote "kafka-out: both produce with the idempotent producer, acks=all, linger 5 ms," \
            "to 16 partitions; the client's topic holds $(kafka_high bench-tool | awk '{ print $1 }')" \
            "messages. $out_extra."
    fi
    stop_broker
}

run_brokers() {
    local any=0 s
    for s in $BROKER_SCENARIOS; do want "$s" && any=1; done
    ((any)) || return 0
    for bin in "$NATS_TOOL" "$AMQP_TOOL" "$KAFKA_TOOL"; do
        [[ -x $bin ]] || {
            echo "missing $bin: build the tests/tools (ninja -C $build)" >&2
            exit 1
        }
    done
    if want nats-in || want nats-out; then bench_nats; fi
    if want amqp-in || want amqp-out; then bench_amqp; fi
    if want redis-in || want redis-out; then bench_redis; fi
    if want mqtt-in || want mqtt-out; then bench_mqtt; fi
    if want kafka-in || want kafka-out; then bench_kafka; fi
}

# broker_table: the rows as markdown (each patchbay row divided by its client's row).
broker_table() {
    [[ -s $brows ]] || return 0
    python3 - "$brows" "$HZ" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
hz = float(sys.argv[2])
tool = {r[0]: r for r in rows if r[12] == "tool"}
def rate(r):
    return float(r[6])
def us(r, i):
    n = float(r[4])
    return float(r[i]) / hz * 1e6 / n if n else None
def f0(v):
    return "—" if v is None else f"{v:,.0f}"
def times(v, ref):
    return "—" if v is None or not ref else f"{v / ref:.2f}×"
print("| broker | direction | run | messages | seconds | msg/s | msg/s ÷ client | CPU µs/msg "
      "| µs/msg ÷ client | broker CPU µs/msg | peak RSS | other CPU s |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    key, broker, direction, run, msgs, secs, _, cticks, bticks, rss, other, busy, kind = r
    ref = tool.get(key) if kind == "patchbay" else None
    print(f"| {broker} | {direction} | {run} | {int(msgs):,} | {secs} | {f0(rate(r))} "
          f"| {times(rate(r), rate(ref)) if ref else ''} | {f0(us(r, 7))} "
          f"| {times(us(r, 7), us(ref, 7)) if ref else ''} | {f0(us(r, 8))} "
          f"| {'—' if rss == '-' else f'{int(rss) / 1024:.0f} MiB'} "
          f"| {float(other) / hz:.1f} ({busy}% busy) |")
EOF
}
