#!/usr/bin/env bash
# The order-fulfillment demo: a shop posts ~20 orders to patchbay, which
# delivers each one, mapped four different ways, to four partners. The
# shipping partner fails every third request, so you can watch retries; the
# mail service refuses everything at first (422), so the emails land in the
# dead-letter queue, and once it is fixed they are replayed and delivered.
#
# Usage: examples/order-fulfillment/run.sh   (or ./dev.sh demo, which builds first)
# Env:   BUILD_DIR (default build/), KEEP=1 keeps the work directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${BUILD_DIR:-$root/build}
PB=$build/patchbay
SINK=$build/pb_sink
for bin in "$PB" "$SINK"; do
    [[ -x $bin ]] || {
        echo "missing $bin: run ./dev.sh demo (it builds first)" >&2
        exit 1
    }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/patchbay-demo.XXXXXX")
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
        echo "kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bold() { printf '\033[1m%s\033[0m\n' "$*"; }

# wait_for DESCRIPTION SECONDS COMMAND...: poll until COMMAND succeeds.
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

# start_partner NAME [pb_sink options...]: prints nothing, sets NAME_PORT.
start_partner() {
    local name=$1
    shift
    "$SINK" --listen 127.0.0.1:0 --port-file "$work/$name.port" \
        --record "$work/$name.jsonl" "$@" 2>"$work/$name.log" &
    pids+=($!)
    wait_for "partner $name" 10 test -s "$work/$name.port"
    printf -v "${name}_port" '%s' "$(cat "$work/$name.port")"
}

bold "Starting four partners (pb_sink) on free ports"
start_partner payments
start_partner inventory
start_partner shipping --fail-every 3 --fail-status 503
start_partner email --status 422
# shellcheck disable=SC2154 # set by start_partner through printf -v
{
    export PAYMENTS_URL="http://127.0.0.1:$payments_port/v1/charges"
    export INVENTORY_URL="http://127.0.0.1:$inventory_port/reservations"
    export SHIPPING_URL="http://127.0.0.1:$shipping_port/shipments"
    export EMAIL_URL="http://127.0.0.1:$email_port/send"
}
printf '  %-10s %s\n' payments "$PAYMENTS_URL" inventory "$INVENTORY_URL" \
    shipping "$SHIPPING_URL  (fails every 3rd request with 503)" \
    email "$EMAIL_URL  (refuses everything with 422 until it is fixed)"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export PATCHBAY_LISTEN="127.0.0.1:$port"
export PATCHBAY_ADMIN_TOKEN="demo-admin-$RANDOM$RANDOM"
export PATCHBAY_DATA="$work/data"
mkdir -p "$PATCHBAY_DATA"
url="http://$PATCHBAY_LISTEN"

bold "Checking the configuration"
"$PB" lint "$here/patchbay.yaml"

bold "Starting patchbay on $url (state: $PATCHBAY_DATA/state.db)"
"$PB" run "$here/patchbay.yaml" >"$work/patchbay.out" 2>"$work/patchbay.log" &
pids+=($!)
pb_pid=$!
ready() {
    kill -0 "$pb_pid" || {
        cat "$work/patchbay.log" >&2
        exit 1
    }
    curl -fsS -o /dev/null "$url/ready"
}
wait_for "patchbay /ready" 30 ready

bold "Posting the shop's orders"
# One order per line: "<id> <json>".
python3 -c 'import json, sys
for o in json.load(open(sys.argv[1])):
    print(o["id"], json.dumps(o, ensure_ascii=False))' "$here/orders.json" >"$work/orders.txt"
first_id=
n=0
while read -r oid json; do
    answer=$(curl -sS -X POST "$url/hooks/shop" -H 'Content-Type: application/json' \
        -H "Idempotency-Key: $oid" --data-binary "$json")
    printf '  %-9s -> %s\n' "$oid" "$answer"
    n=$((n + 1))
    if [[ -z $first_id ]]; then
        first_id=$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' <<<"$answer")
        first_order=$oid
        first_json=$json
    fi
done <"$work/orders.txt"
echo "  $n orders posted"
echo "  ...and $first_order once more with the same Idempotency-Key:"
curl -sS -i -X POST "$url/hooks/shop" -H 'Content-Type: application/json' \
    -H "Idempotency-Key: $first_order" --data-binary "$first_json" |
    grep -iE '^(HTTP/|idempotent-replayed|\{)' | sed 's/^/    /'

# sum_metric NAME [LABEL-FILTER]: sum of every series of NAME in /metrics.
metrics() { curl -fsS "$url/metrics"; }
sum_metric() {
    metrics | awk -v name="$1" -v filt="${2:-}" '
        ($1 == name || index($1, name "{") == 1) && index($1, filt) { s += $NF }
        END { printf "%d\n", s }'
}
settled() {
    local accepted settled_n backlog
    accepted=$(sum_metric patchbay_messages_accepted_total)
    settled_n=$(($(sum_metric patchbay_deliveries_delivered_total) +
        $(sum_metric patchbay_deliveries_filtered_total) +
        $(sum_metric patchbay_deliveries_dead_total)))
    backlog=$(sum_metric patchbay_backlog)
    ((accepted > 0 && settled_n >= accepted * 4 && backlog == 0))
}
bold "Waiting until every delivery has settled (polling /metrics)"
wait_for "deliveries to settle" 90 settled

bold "What each partner received"
python3 - "$work" <<'EOF'
import json, os, sys
work = sys.argv[1]
for name in ("payments", "inventory", "shipping", "email"):
    recs = [json.loads(l) for l in open(os.path.join(work, name + ".jsonl")) if l.strip()]
    ok = [r for r in recs if r["status"] == 200]
    failed = len(recs) - len(ok)
    print(f"\n  {name}: {len(ok)} delivered, {failed} failed attempts answered {sorted({r['status'] for r in recs if r['status'] != 200}) or '-'}")
    if ok:
        r = ok[0]
        h = r["headers"]
        print(f"    {r['method']} {r['path']}  Idempotency-Key: {h.get('idempotency-key')}  attempt {h.get('x-patchbay-attempt')}")
        auth = h.get("authorization") or (("X-Api-Key: " + h["x-api-key"]) if "x-api-key" in h else None)
        if auth:
            print(f"    auth: {auth}")
        print(f"    {r['body']}")
    retried = [r for r in ok if int(r["headers"].get("x-patchbay-attempt", "1")) > 1]
    if retried:
        print(f"    {len(retried)} of them arrived on a retry, e.g. {retried[0]['headers'].get('idempotency-key')} "
              f"on attempt {retried[0]['headers'].get('x-patchbay-attempt')}")
        with open(os.path.join(work, "retried.id"), "w") as f:
            f.write(retried[0]["headers"]["x-patchbay-message-id"])
EOF
# Show a message whose shipping needed retries, if there is one.
show_id=$first_id
if [[ -s $work/retried.id ]]; then
    show_id=$(cat "$work/retried.id")
fi

echo
bold "Counters"
metrics | grep -E '^patchbay_(messages_(accepted|received)_total|deliveries_(delivered|retried|filtered|dead)_total)' |
    sed 's/^/  /' || true

bold "Where to look"
cat <<EOF
  metrics:       curl $url/metrics
  dead letters:  PATCHBAY_URL=$url PATCHBAY_ADMIN_TOKEN=$PATCHBAY_ADMIN_TOKEN $PB dlq list
  one message:   curl -H 'Authorization: Bearer $PATCHBAY_ADMIN_TOKEN' $url/api/messages/$show_id
EOF
echo
echo "  $show_id as patchbay recorded it (every attempt of every delivery):"
if curl -fsS -H "Authorization: Bearer $PATCHBAY_ADMIN_TOKEN" "$url/api/messages/$show_id" \
    -o "$work/message.json"; then
    python3 - "$work/message.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
for d in m.get("deliveries", []):
    tries = ", ".join(
        "#%s %s %sms" % (a.get("n"), a.get("status") or a.get("error"), a.get("latency_ms"))
        for a in d.get("attempt_log", [])
    )
    print("    %-10s %-10s %s" % (d.get("output"), d.get("state"), tries))
EOF
fi
echo
echo "  dead letters now:"
PATCHBAY_URL=$url "$PB" dlq list | sed 's/^/    /' || true

bold "A partner's mistake, fixed: replaying the dead letters"
echo "  The mail service refused each email with 422, a permanent answer, so each went"
echo "  to the dead-letter queue at once, with the partner's answer kept. Its side is"
echo "  fixed now (it answers 200); replaying sends each email again, with the same"
echo "  Idempotency-Key, so a mail service that had half-taken one can drop the repeat."
curl -fsS -o /dev/null -X POST "http://127.0.0.1:$email_port/_sink/mode" -d '{"status":200}'
echo "  \$ patchbay dlq show <first id>"
first_dead=$(PATCHBAY_URL=$url "$PB" dlq list --json |
    python3 -c 'import json,sys; i=json.load(sys.stdin)["items"]; print(i[0]["id"] if i else "")')
if [[ -n $first_dead ]]; then
    PATCHBAY_URL=$url "$PB" dlq show "$first_dead" | python3 -c 'import json, sys
d = json.load(sys.stdin)
print("    output %s, %s attempt(s), last answer %s: %s" % (d["output"], d["attempts"], d["last_status"], d["last_error"]))'
fi
echo "  \$ patchbay dlq replay --all --output email"
PATCHBAY_URL=$url "$PB" dlq replay --all --output email | sed 's/^/    /'
dlq_empty() {
    PATCHBAY_URL=$url "$PB" dlq list --json | python3 -c 'import json,sys; sys.exit(1 if json.load(sys.stdin)["items"] else 0)' &&
        (($(sum_metric patchbay_backlog) == 0))
}
wait_for "the replayed emails to be delivered" 60 dlq_empty
echo "  dead letters after the replay:"
PATCHBAY_URL=$url "$PB" dlq list | sed 's/^/    /' || true
echo "  emails delivered: $(sum_metric patchbay_deliveries_delivered_total 'output="email"')"

if [[ -t 0 ]]; then
    echo
    read -r -p "patchbay and the partners keep running; press Enter to stop them. " _
fi
