"""Per-key ordering: with `ordering.key`, a partner that answers after random
small delays and fails every third request still receives each key's
messages in acceptance order, one at a time (a retry holds back the key)."""

import json
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    check,
    check_eq,
    log,
    run,
    start_sink,
    test,
    wait_until,
)

KEYS = 20
PER_KEY = 25

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 10s
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop }
    ordering: { key: '.customer.id' }
    process:
      - map: '{customer: .customer.id, seq: .seq}'
    outputs:
      partner:
        http:
          url: "SINK/ordered"
          timeout: 5s
          retry: { max_attempts: 100, initial: 20ms, max: 200ms, max_age: 1h }
          concurrency: 16
  loose:
    input:
      http_server: { path: /hooks/loose }
    process:
      - map: '{customer: .customer.id, seq: .seq}'
    outputs:
      partner:
        http:
          url: "SINK/loose"
          timeout: 5s
          retry: { max_attempts: 100, initial: 20ms, max: 200ms, max_age: 1h }
          concurrency: 16
"""


def post_keys(pb, path):
    """One thread per key posting its messages one after another, so the
    acceptance order of a key is its seq order. Returns {key: [msg ids]}."""
    out, errors = {}, []

    def worker(k):
        ids = []
        for seq in range(PER_KEY):
            st, _, data = pb.post(path, {"customer": {"id": f"cus-{k}"}, "seq": seq})
            if st != 202:
                errors.append((k, seq, st))
                return
            ids.append(json.loads(data)["id"])
        out[f"cus-{k}"] = ids

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(KEYS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(not errors, f"posts refused: {errors[:5]}")
    return out


def violations(records, path):
    """Walk each key's requests in arrival order. A request for seq s is fine
    when s is the next undelivered seq of its key; anything else was sent
    before its predecessor had been delivered (or after it had been)."""
    by_key = {}
    for r in sorted((r for r in records if r["path"] == path), key=lambda r: r["n"]):
        b = json.loads(r["body"])
        by_key.setdefault(b["customer"], []).append((b["seq"], r["status"]))
    bad, retried = [], 0
    for key, reqs in by_key.items():
        nxt = 0
        for seq, status in reqs:
            if seq != nxt:
                bad.append((key, seq, nxt))
                continue
            if status == 200:
                nxt += 1
            else:
                retried += 1
        if nxt != PER_KEY:
            bad.append((key, "delivered", nxt))
    return bad, retried, by_key


@test
def per_key_order_survives_delays_and_retries():
    sink = start_sink(delay_jitter_ms=15, fail_every=3, fail_status=503, threads=2)
    pb = Patchbay(CONFIG.replace("SINK", sink.url))
    ordered = post_keys(pb, "/hooks/shop")
    loose = post_keys(pb, "/hooks/loose")
    total = 2 * KEYS * PER_KEY
    wait_until(lambda: sink.ok_count() >= total, 120, f"{total} deliveries")

    recs = sink.records()
    bad, retried, by_key = violations(recs, "/ordered")
    check_eq(len(by_key), KEYS, "keys seen")
    check(retried > 0, "the partner's failures caused retries")
    check(not bad, f"{len(bad)} ordering violations, first: {bad[:10]}")

    # Each delivery carries the id acknowledged for that (key, seq).
    for r in recs:
        if r["path"] != "/ordered" or r["status"] != 200:
            continue
        b = json.loads(r["body"])
        check_eq(r["headers"].get("x-patchbay-message-id"), ordered[b["customer"]][b["seq"]],
                 f"message id of {b}")

    # Without a key patchbay may deliver concurrently; only reported.
    lbad, lretried, _ = violations(recs, "/loose")
    log(f"ordered: {retried} retries, 0 violations; unordered pipeline: {len(lbad)} "
        f"out-of-order requests, {lretried} retries (informational)")
    check(len(loose) == KEYS, "loose pipeline accepted everything")
    check_eq(pb.term(), 0, "exit code")


if __name__ == "__main__":
    run()
