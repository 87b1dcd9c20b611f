"""Bulk delivery: 10,000 orders posted 64-way concurrently all arrive at the
partner exactly as mapped, with the documented headers, and the metrics agree
with what the partner saw."""

import json
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    check,
    check_eq,
    log,
    post_many,
    run,
    run_cli,
    start_sink,
    strict_equal,
    test,
    wait_until,
)

N = 10_000
N_FILTERED = 100
SECRET = "sk_live_delivery_7f3a"

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 10s
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop, max_body: 64KiB, format: json }
    process:
      - map: '{order_id: .id, cents: .total_cents, email: .customer.email, name: .customer.name, items: .items}'
      - filter: '.cents > 0'
    outputs:
      payments:
        http:
          url: "SINK/charges"
          method: POST
          headers: { X-Api-Version: "2" }
          auth: { bearer: "${PAY_SECRET}" }
          timeout: 5s
          map: '{order: .order_id, amount: .cents, currency: "usd", email: .email, buyer: .name, n_items: (.items | length)}'
          retry: { max_attempts: 20, initial: 100ms, max: 2s, max_age: 1h }
          concurrency: 16
      void: { drop: {} }
"""


def make_order(i, rnd):
    cents = 0 if i >= N else rnd.randint(1, 10_000_000)
    return {
        "id": f"ord-{i:05d}",
        "total_cents": cents,
        "customer": {"id": f"cus-{i % 97}", "email": f"buyer{i}@example.com", "name": "Zoë Ünïcode"},
        "items": [{"sku": f"sku-{j}", "qty": j + 1} for j in range(i % 4)],
        "note": "x" * (i % 50),
    }


def expected(order):
    return {
        "order": order["id"],
        "amount": order["total_cents"],
        "currency": "usd",
        "email": order["customer"]["email"],
        "buyer": order["customer"]["name"],
        "n_items": len(order["items"]),
    }


@test
def bulk_delivery_exact_mapping():
    sink = start_sink(threads=2)
    pb = Patchbay(CONFIG.replace("SINK", sink.url), env={"PAY_SECRET": SECRET})
    rnd = random.Random(1234)
    orders = [make_order(i, rnd) for i in range(N + N_FILTERED)]
    results = post_many(pb.url + "/hooks/shop", orders, concurrency=64)

    bad = [(i, st) for i, (st, mid) in enumerate(results) if st != 202 or not mid]
    check(not bad, f"{len(bad)} posts not acknowledged with 202+id, first: {bad[:5]}")
    ids = [mid for _, mid in results]
    check_eq(len(set(ids)), len(ids), "distinct message ids")
    for mid in ids[:50]:
        check(re.fullmatch(r"msg_[0-9A-Za-z]{10,40}", mid), f"message id format: {mid!r}")

    wait_until(lambda: sink.ok_count() >= N, 120, f"{N} deliveries at the sink")

    def settled():
        m = pb.metrics()
        return (
            m.value("patchbay_backlog", pipeline="orders", output="payments") == 0
            and m.value("patchbay_deliveries_inflight", pipeline="orders", output="payments") == 0
            and m.value("patchbay_deliveries_filtered_total", pipeline="orders", output="payments")
            == N_FILTERED
            and m.value("patchbay_deliveries_delivered_total", pipeline="orders", output="void")
            == N
        )

    wait_until(settled, 60, "backlog drained and counters final")

    # Every record: exactly the mapped body, the documented headers.
    version = run_cli("version").stdout.strip()
    vmatch = re.search(r"\d+\.\d+\.\d+\S*", version)
    check(vmatch, f"`patchbay version` prints a version: {version!r}")
    by_order = {}
    recs = sink.records()
    check_eq(len(recs), N, "records at the sink (no duplicates, nothing filtered sent)")
    for r in recs:
        body = json.loads(r["body"])
        oid = body.get("order")
        check(oid is not None and oid not in by_order, f"unexpected/duplicate order {oid}")
        by_order[oid] = (r, body)
    for i in range(N + N_FILTERED):
        order = orders[i]
        if i >= N:
            check(order["id"] not in by_order, f"filtered order {order['id']} was delivered")
            continue
        got = by_order.get(order["id"])
        check(got is not None, f"order {order['id']} not delivered")
        r, body = got
        check(strict_equal(body, expected(order)), f"{order['id']}: got {body}, want {expected(order)}")
        h = r["headers"]
        mid = ids[i]
        check_eq(h.get("idempotency-key"), f"{mid}.payments", f"{order['id']} Idempotency-Key")
        check_eq(h.get("x-patchbay-message-id"), mid, f"{order['id']} X-Patchbay-Message-Id")
        check_eq(h.get("x-patchbay-attempt"), "1", f"{order['id']} X-Patchbay-Attempt")
        check_eq(h.get("x-api-version"), "2", f"{order['id']} X-Api-Version")
        check_eq(h.get("authorization"), f"Bearer {SECRET}", f"{order['id']} Authorization")
        check((h.get("content-type") or "").startswith("application/json"), f"content-type {h}")
        check_eq(h.get("user-agent"), f"patchbay/{vmatch.group(0)}", "User-Agent")
        check_eq(r["method"], "POST", "method")
        check_eq(r["path"], "/charges", "path")

    m = pb.metrics()
    total = N + N_FILTERED
    for name, want in [
        ("patchbay_messages_received_total", total),
        ("patchbay_messages_accepted_total", total),
    ]:
        check_eq(m.value(name, pipeline="orders"), want, name)
    check_eq(m.value("patchbay_messages_rejected_total", pipeline="orders"), 0, "rejected")
    for out, delivered in [("payments", N), ("void", N)]:
        lab = dict(pipeline="orders", output=out)
        check_eq(m.value("patchbay_deliveries_delivered_total", **lab), delivered, f"delivered {out}")
        check_eq(m.value("patchbay_deliveries_dead_total", **lab), 0, f"dead {out}")
        check_eq(m.value("patchbay_deliveries_retried_total", **lab), 0, f"retried {out}")
        check_eq(m.value("patchbay_backlog", **lab), 0, f"backlog {out}")
    check_eq(m.value("patchbay_deliveries_filtered_total", pipeline="orders", output="payments"),
             N_FILTERED, "filtered payments")

    # Histograms: cumulative buckets ending in +Inf == _count.
    for name, lab in [
        ("patchbay_ingest_latency_seconds", dict(pipeline="orders")),
        ("patchbay_delivery_latency_seconds", dict(pipeline="orders", output="payments")),
    ]:
        count = m.get(name + "_count", **lab)
        check(count is not None and count >= N, f"{name}_count = {count}")
        buckets = sorted(
            ((float(lb["le"]), v) for lb, v in m.series(name + "_bucket", **lab)),
            key=lambda x: x[0],
        )
        check(buckets and buckets[-1][0] == float("inf"), f"{name} has a +Inf bucket")
        check_eq(buckets[-1][1], count, f"{name} +Inf bucket == _count")
        check(all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), f"{name} cumulative")
        check(m.get(name + "_sum", **lab) is not None, f"{name}_sum present")

    # The secret never shows in metrics, logs, or the admin API.
    st, doc = pb.admin("GET", "/api/pipelines")
    check_eq(st, 200, "GET /api/pipelines")
    text = json.dumps(doc)
    check("orders" in text and "payments" in text, f"/api/pipelines names things: {text[:300]}")
    pb.wait_states(ids[:3], {"payments": "delivered", "void": "delivered"})
    msg = pb.message(ids[0])
    check_eq(msg["id"], ids[0], "message id")
    check_eq(msg["pipeline"], "orders", "message pipeline")
    states = {d["output"]: d["state"] for d in msg["deliveries"]}
    check_eq(states, {"(route)": "delivered", "payments": "delivered", "void": "delivered"},
             "delivery states (the route stage ran once, then each output)")
    for where in (m.text, text, json.dumps(msg), pb.log(), pb.stdout()):
        check(SECRET not in where, "the bearer secret leaked")
    log(f"delivered {N}, filtered {N_FILTERED}")

    check_eq(pb.term(), 0, "exit code on SIGTERM")


FIDELITY_CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  raw:
    input: { http_server: { path: /raw } }
    outputs:
      same: { http: { url: "SINK/same" } }
      mapped: { http: { url: "SINK/mapped", map: '{n: .big, id: .id}' } }
"""


@test
def fidelity_unmapped_bytes_and_big_integers():
    # Without a map the partner gets the posted bytes, untouched. Through jq an
    # integer beyond 2^53 cannot be carried exactly, and of a key given twice
    # jq keeps only the last value: such a delivery is dead with a reason,
    # never rounded or trimmed.
    sink = start_sink()
    pb = Patchbay(FIDELITY_CONFIG.replace("SINK", sink.url))
    bodies = {
        "exact": b'{"id":"exact","big":9007199254740992}',
        "beyond": b'{"id":"beyond","big":9007199254740993}',
        "negative": b'{"id":"negative","big":-9007199254740993}',
        "huge": b'{"id":"huge","big":123456789012345678901234567890}',
        "dupkey": b'{"id":"dupkey","big":1,"big":2}',
        "spacing": b'{ "id" : "spacing",\n  "big": 1, "f": 1.10, "e": 1E+2,'
        b' "u": "\\u00e9\xc3\xa9\xf0\x9f\x93\xa6", "z": -0.0 }',
    }
    mids = {}
    for name, b in bodies.items():
        st, _, data = pb.post("/raw", b)
        check_eq(st, 202, f"post {name}")
        mids[name] = json.loads(data)["id"]
    pb.wait_states([mids["exact"], mids["spacing"]], {"same": "delivered", "mapped": "delivered"})
    pb.wait_states(
        [mids[k] for k in ("beyond", "negative", "huge", "dupkey")],
        {"same": "delivered", "mapped": "dead"},
    )
    same = {r["headers"]["x-patchbay-message-id"]: r["body"] for r in sink.records() if r["path"] == "/same"}
    for name, b in bodies.items():
        check_eq(same.get(mids[name]), b.decode(), f"{name}: unmapped body byte for byte")
    mapped = {
        r["headers"]["x-patchbay-message-id"]: json.loads(r["body"])
        for r in sink.records()
        if r["path"] == "/mapped"
    }
    check(strict_equal(mapped.get(mids["exact"]), {"n": 9007199254740992, "id": "exact"}),
          f"2^53 itself is exact: {mapped.get(mids['exact'])}")
    check(strict_equal(mapped.get(mids["spacing"]), {"n": 1, "id": "spacing"}), "mapped spacing")
    for name in ("beyond", "negative", "huge", "dupkey"):
        check(mids[name] not in mapped, f"{name}: a rounded value was delivered")
        (d,) = [d for d in pb.message(mids[name])["deliveries"] if d["output"] == "mapped"]
        check(d["last_error"], f"{name}: the dead delivery says why: {d}")
    check_eq(pb.term(), 0, "exit code")


if __name__ == "__main__":
    run()
