"""Crash safety: kill -9 the daemon under load, five times, restarting it on
the same state each time. Every acknowledged message must be delivered at
least once, with its own body; duplicates are allowed (at-least-once) and
reported."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    Poster,
    check,
    check_eq,
    log,
    run,
    start_sink,
    test,
    wait_until,
)

CYCLES = 5
PER_CYCLE = 400  # acknowledgements to wait for before each kill

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 10s
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop, max_body: 64KiB }
    process:
      - map: '{order: .id, cents: .total_cents}'
    outputs:
      payments:
        http:
          url: "SINK/charges"
          timeout: 5s
          retry: { max_attempts: 1000, initial: 50ms, max: 1s, max_age: 1h }
          concurrency: 16
"""


def body(i):
    return {"id": f"ord-{i}", "total_cents": i * 7 + 1, "customer": {"id": f"c{i % 13}"}}


@test
def kill9_under_load_loses_nothing():
    # Small random delays keep deliveries in flight when the kill lands.
    sink = start_sink(delay_jitter_ms=20, threads=2)
    pb = Patchbay(CONFIG.replace("SINK", sink.url))
    poster = Poster(pb.port, "/hooks/shop", body, concurrency=16).start()
    try:
        for cycle in range(CYCLES):
            target = (cycle + 1) * PER_CYCLE
            wait_until(lambda: poster.count_acked() >= target, 60, f"{target} acknowledgements")
            delivered_before = sink.ok_count()
            pb.kill9()
            log(f"cycle {cycle + 1}: killed after {poster.count_acked()} acks, "
                f"{delivered_before} delivered")
            pb.start()
        target = (CYCLES + 1) * PER_CYCLE
        wait_until(lambda: poster.count_acked() >= target, 60, "acknowledgements after the last restart")
    finally:
        poster.stop()

    acked = poster.acked()
    unanswered = sum(1 for _, st, _ in poster.results if st is None)
    other = sum(1 for _, st, mid in poster.results if st is not None and mid is None)
    log(f"{len(acked)} acknowledged, {unanswered} without answer, {other} refused")
    check(len({mid for _, mid in acked}) == len(acked), "acknowledged ids are distinct")

    want = {mid: i for i, mid in acked}

    def delivered_ids():
        return {r["headers"].get("x-patchbay-message-id") for r in sink.records() if r["status"] == 200}

    def all_delivered():
        return set(want) <= delivered_ids()

    try:
        wait_until(all_delivered, 120, "every acknowledged message delivered")
    except Exception:
        missing = set(want) - delivered_ids()
        log(f"missing {len(missing)} of {len(want)}, e.g. {sorted(missing)[:5]}")
        raise
    lab = dict(pipeline="orders", output="payments")
    wait_until(lambda: pb.metrics().value("patchbay_backlog", **lab) == 0, 60, "backlog 0")

    per_id = {}
    for r in sink.records():
        if r["status"] != 200:
            continue
        mid = r["headers"].get("x-patchbay-message-id")
        per_id[mid] = per_id.get(mid, 0) + 1
        if mid in want:
            i = want[mid]
            got = json.loads(r["body"])
            check_eq(got, {"order": f"ord-{i}", "cents": i * 7 + 1}, f"body of {mid}")
            check_eq(r["headers"].get("idempotency-key"), f"{mid}.payments", "idempotency key")
    dups = {m: n for m, n in per_id.items() if n > 1}
    extra = set(per_id) - set(want)
    log(f"duplicates: {len(dups)} messages delivered more than once "
        f"({sum(dups.values()) - len(dups)} extra deliveries); "
        f"{len(extra)} delivered messages were never acknowledged to the poster")

    # The store still knows every acknowledged message after five crashes.
    sample = list(want)[:: max(1, len(want) // 25)]
    pb.wait_states(sample, {"payments": "delivered"})
    for mid in sample:
        msg = pb.message(mid)
        states = {d["output"]: d["state"] for d in msg["deliveries"]}
        check_eq(states, {"(route)": "delivered", "payments": "delivered"},
                 f"{mid} delivery states")
    dl = pb.dead_letters()
    check_eq(dl, [], "no dead letters")
    t = time.monotonic()
    check_eq(pb.term(), 0, "exit code on SIGTERM")
    log(f"clean shutdown in {time.monotonic() - t:.1f}s")


if __name__ == "__main__":
    run()
