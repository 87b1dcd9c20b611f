"""Fault 1 - kill -9 at random moments under load.

A client posts without pause (16 connections) while the daemon is killed
with SIGKILL at random moments and restarted on the same state: 10 cycles
in the short form, 50 in the long form. The moments vary: a random number
of acknowledgements after the restart plus a random pause, and in one
cycle out of four while the restarted daemon is still starting (opening
the store, paging pending deliveries back in) - before it is ready.

The pipeline has two outputs on one partner: `payments` (mapped by jq)
and `audit` (the body passed through byte for byte), so each output's own
delivery state is checked. At the end every acknowledged message must have
reached both outputs (lost = 0), with the right body; duplicates are
counted and reported (at-least-once); the store passes integrity_check."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib  # noqa: E402
from faultlib import Deliveries, log, rng  # noqa: E402
from pbtest import Patchbay, Poster, check_eq, start_sink, test, wait_until  # noqa: E402

CYCLES = 50 if faultlib.LONG else 10
OUTPUTS = ("payments", "audit")

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 5s
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop, max_body: 64KiB }
    outputs:
      payments:
        http:
          url: "SINK/charges"
          timeout: 5s
          map: '{order: .id, cents: .total_cents}'
          retry: { max_attempts: 1000, initial: 50ms, max: 1s, max_age: 1h }
          concurrency: 16
      audit:
        http:
          url: "SINK/audit"
          timeout: 5s
          retry: { max_attempts: 1000, initial: 50ms, max: 1s, max_age: 1h }
          concurrency: 8
"""


def body(i):
    # Distinct bytes per message, and a key order and spacing jq would not
    # reproduce: the pass-through output must deliver exactly these bytes.
    return ('{"total_cents": %d,  "id": "ord-%d", "customer": {"id": "c%d"}}'
            % (i * 7 + 1, i, i % 97))


@test
def kill9_at_random_moments():
    sink = start_sink(delay_jitter_ms=15, threads=2)
    pb = Patchbay(CONFIG.replace("SINK", sink.url))
    dl = Deliveries(sink)
    poster = Poster(pb.port, "/hooks/shop", body, concurrency=16).start()
    kills_at_start = 0
    t0 = time.monotonic()
    try:
        for cycle in range(CYCLES):
            while_starting = cycle % 4 == 3
            if while_starting:
                # Killed within 150 ms of exec: opening the store, paging in.
                time.sleep(rng.uniform(0.0, 0.15))
                kills_at_start += 1
            else:
                target = poster.count_acked() + rng.randint(0, 400)
                wait_until(lambda: poster.count_acked() >= target, 60,
                           f"cycle {cycle + 1}: {target} acknowledgements")
                time.sleep(rng.uniform(0.0, 0.6))
            pb.kill9()
            dl.refresh()
            log(f"cycle {cycle + 1}/{CYCLES}: SIGKILL {'while starting' if while_starting else 'under load'}"
                f" after {poster.count_acked()} acks, {len(dl.ids('payments'))} delivered to payments")
            pb.start(wait_ready=not (cycle % 4 == 2))  # the next cycle kills it while starting
        pb.wait_ready(60)
        target = poster.count_acked() + 200
        wait_until(lambda: poster.count_acked() >= target, 60, "acknowledgements after the last restart")
    finally:
        poster.stop()
    load_s = time.monotonic() - t0

    acked = [mid for _, mid in poster.acked()]
    check_eq(len(set(acked)), len(acked), "acknowledged ids are distinct")
    unanswered = sum(1 for _, st, _ in poster.results if st is None)
    refused = sum(1 for _, st, mid in poster.results if st is not None and mid is None)
    log(f"{len(acked)} acknowledged, {unanswered} without answer (daemon down), {refused} refused")

    figures = faultlib.check_ledger(acked, dl, OUTPUTS, 180)
    faultlib.wait_backlog_zero(pb, 60)

    # Bodies: the mapped output carries the mapping, the other the exact bytes.
    by_index = {mid: i for i, mid in poster.acked()}
    for r in sink.records():
        mid = r["headers"].get("x-patchbay-message-id")
        if mid not in by_index or r["status"] != 200:
            continue
        i = by_index[mid]
        if r["path"] == "/charges":
            check_eq(json.loads(r["body"]), {"order": f"ord-{i}", "cents": i * 7 + 1}, f"{mid} mapped")
        else:
            check_eq(r["body"], body(i), f"{mid} passed through byte for byte")
    check_eq(pb.dead_letters(), [], "dead letters")
    for mid in acked[:: max(1, len(acked) // 40)]:
        states = sorted((d["output"], d["state"]) for d in pb.message(mid)["deliveries"])
        check_eq(states, [("audit", "delivered"), ("payments", "delivered")], f"{mid} states")
    check_eq(pb.term(), 0, "exit code on SIGTERM after the last cycle")
    faultlib.integrity_ok(os.path.join(pb.dir, "state.db"))

    log(f"duplicates: {figures['duplicate_messages']} (output, message) pairs delivered more than "
        f"once, {figures['duplicate_deliveries']} extra deliveries")
    faultlib.result("kill9", cycles=CYCLES, kills_at_start=kills_at_start,
                    acknowledged=len(acked), outputs=len(OUTPUTS), unanswered=unanswered,
                    refused=refused, load_seconds=round(load_s, 1), **figures)


if __name__ == "__main__":
    faultlib.main()
