"""Fault 3 - partner outage: connection refused, then 500s, then timeouts,
then recovery.

Messages arrive in a batch at the start of every phase (300 in all in the
short form, 3,000 in the long form; phases of 5 s short, 30 s long):

  refused    the partner process is stopped: connections are refused;
  500        it runs again but answers 500 to everything;
  timeouts   it answers only after 1.5 s, past the output's 500 ms timeout;
  recovery   it answers 200 at once.

Two outputs share the partner:
  payments   max_attempts 1000, backoff 100 ms .. 1 s: must deliver all;
  crm        max_attempts 4, backoff 50 .. 200 ms: every delivery dead-
             letters with exactly 4 attempts (never more), is visible in
             the dead-letter queue, and is delivered after a replay.

Checks: zero lost (partner records and the admin API agree), no dead
letter for payments, and backoff visible in the attempt log read through
GET /api/messages/{id}: the pause before attempt n+1 is a full-jitter draw
in [0, min(max, initial * 2^(n-1))], so over hundreds of pauses the mean of
pause/ceiling must be near 1/2 or above (queueing only adds), few pauses may
be near zero, the pauses grow with n, and the total attempts made stay
within what the policy allows for the time each delivery spent failing (no
retry storm)."""

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib  # noqa: E402
from faultlib import Deliveries, log  # noqa: E402
from pbtest import (  # noqa: E402
    Patchbay,
    check,
    check_eq,
    post_many,
    start_sink,
    test,
    wait_until,
)

N = 3000 if faultlib.LONG else 300
PHASE_S = 30.0 if faultlib.LONG else 5.0
INITIAL_MS, MAX_MS = 100, 1000
CRM_ATTEMPTS = 4

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop }
    outputs:
      payments:
        http:
          url: "SINK/charges"
          timeout: 500ms
          connect_timeout: 500ms
          retry: { max_attempts: 1000, initial: 100ms, max: 1s, max_age: 1h }
          concurrency: 32
      crm:
        http:
          url: "SINK/crm"
          timeout: 500ms
          retry: { max_attempts: 4, initial: 50ms, max: 200ms, max_age: 1h }
          concurrency: 32
"""


def ceiling(n):
    return min(MAX_MS, INITIAL_MS * 2 ** (n - 1))


def policy_attempts(window_ms, r):
    """Attempts the policy makes within window_ms when every attempt fails
    at once (zero latency): one random draw."""
    t, n = 0.0, 1
    while True:
        t += r.uniform(0, ceiling(n))
        if t > window_ms:
            return n
        n += 1


def kind_of(a):
    if a["status"] == 200:
        return "ok"
    if a["status"] == 500:
        return "500"
    err = (a.get("error") or "").lower()
    if "timed out" in err or "timeout" in err:
        return "timeout"
    if "refused" in err or "couldn't connect" in err:
        return "refused"
    return "other:" + err[:40]


@test
def outage_phases_then_recovery():
    sink = start_sink(status=500)  # the 500 phase restarts it with these options
    port = sink.port
    sink.kill()
    pb = Patchbay(CONFIG.replace("SINK", sink.url))
    dl = Deliveries(sink)
    url = pb.url + "/hooks/shop"
    acked = []
    phases = []
    n_per = N // 4

    def batch(k):
        bodies = [faultlib.order(i) for i in range(k * n_per, (k + 1) * n_per)]
        res = post_many(url, bodies, concurrency=16)
        bad = [st for st, mid in res if st != 202 or not mid]
        check(not bad, f"phase {k + 1}: posts not all acknowledged: {bad[:5]}")
        acked.extend(mid for _, mid in res)

    t_start = time.monotonic()
    for k, name in enumerate(("refused", "500", "timeouts")):
        if name == "500":
            sink.restart()
            check_eq(sink.port, port, "the partner is back on its port")
        elif name == "timeouts":
            sink.set_mode(delay_ms=1500)
        t = time.monotonic()
        batch(k)
        phases.append(name)
        rest = PHASE_S - (time.monotonic() - t)
        log(f"phase {name}: {len(acked)} acknowledged so far; holding {max(rest, 0):.1f}s")
        if rest > 0:
            time.sleep(rest)  # the scenario itself: the partner stays broken this long
        check(pb.running(), f"patchbay still running after phase {name}")
    m = pb.metrics()
    lab = dict(pipeline="orders", output="payments")
    check_eq(m.value("patchbay_deliveries_delivered_total", **lab), 0, "delivered during the outage")
    check_eq(m.value("patchbay_deliveries_dead_total", **lab), 0, "payments dead during the outage")

    # crm gave up on each delivery after exactly max_attempts.
    crm_lab = dict(pipeline="orders", output="crm")
    wait_until(lambda: pb.metrics().value("patchbay_deliveries_dead_total", **crm_lab) == len(acked),
               30 + N / 25, "every crm delivery dead-lettered")
    dead = pb.dead_letters(pipeline="orders", output="crm")
    check_eq(len(dead), len(acked), "crm dead letters listed")
    crm_dead = len(dead)
    for d in dead[:: max(1, len(dead) // 20)]:
        st, one = pb.admin("GET", f"/api/dead-letters/{d['id']}")
        check_eq(st, 200, "GET one dead letter")
        check_eq(one["attempts"], CRM_ATTEMPTS, f"crm dead letter {d['id']} attempts")
        check_eq(len(one["attempt_log"]), CRM_ATTEMPTS, "crm attempt_log length")
    check_eq(pb.dead_letters(pipeline="orders", output="payments"), [], "payments dead letters")

    # Recovery.
    sink.set_mode(status=200, delay_ms=0)
    t_up = time.monotonic()
    batch(3)
    phases.append("recovery")
    st, doc = pb.admin("POST", "/api/dead-letters/replay?pipeline=orders&output=crm")
    check(st in (200, 202), f"replay crm dead letters -> {st} {doc}")
    figures = faultlib.check_ledger(acked, dl, ("payments", "crm"), 120)
    recovery_s = time.monotonic() - t_up
    log(f"all delivered {recovery_s:.1f}s after recovery")
    db = os.path.join(pb.dir, "state.db")
    wait_until(lambda: faultlib.sqlite3_query(
        db, "SELECT count(*) FROM deliveries WHERE state = 0") == "0", 30, "no pending delivery in the store")
    time.sleep(0.2)  # results committed: their callbacks have run
    gauges = {lab.get("output"): v for lab, v in pb.metrics().series("patchbay_backlog")}
    check(all(v == 0 for v in gauges.values()),
          f"backlog gauges {gauges} with nothing pending in the store (replay-all must add "
          f"exactly what it replayed per output)")
    check_eq(pb.dead_letters(), [], "no dead letters left")

    # The attempt log, for every message (short) or a sample of 300 (long).
    ratios, low, by_n, kinds, stale = [], 0, {}, {}, 0
    instant = []  # pause/ceiling between two attempts that failed at once (no queueing)
    actual_failed, policy_expected, max_attempts_seen = 0, 0.0, 0
    r = random.Random(faultlib.SEED)
    sample = acked[:: max(1, len(acked) // 300)]
    for mid in sample:
        msg = pb.message(mid)
        (d,) = [d for d in msg["deliveries"] if d["output"] == "payments"]
        check_eq(d["state"], "delivered", f"{mid} payments state (admin API)")
        alog = d["attempt_log"]
        check_eq(len(alog), d["attempts"], f"{mid} attempt_log length")
        check_eq([a["n"] for a in alog], list(range(1, len(alog) + 1)), f"{mid} attempt numbers")
        check_eq(alog[-1]["status"], 200, f"{mid} last attempt")
        max_attempts_seen = max(max_attempts_seen, len(alog))
        for a in alog:
            k = kind_of(a)
            kinds[k] = kinds.get(k, 0) + 1
            if k == "timeout" and "refused" in (a.get("error") or "").lower():
                stale += 1
        for a, b in zip(alog, alog[1:]):
            pause = b["started_at"] - (a["started_at"] + a["latency_ms"])
            c = ceiling(a["n"])
            check(pause >= -25, f"{mid}: attempt {b['n']} began {-pause} ms before attempt {a['n']} "
                                f"ended: {a} {b}")
            ratios.append(pause / c)
            low += pause < 0.05 * c
            if kind_of(a) in ("refused", "500") and kind_of(b) in ("refused", "500"):
                instant.append(pause / c)
                by_n.setdefault(a["n"], []).append(pause)
        if len(alog) > 1:
            window = alog[-1]["started_at"] - alog[0]["started_at"]
            actual_failed += len(alog) - 1
            policy_expected += sum(policy_attempts(window, r) for _ in range(20)) / 20.0
    check(ratios, "some deliveries were retried")
    mean_ratio = sum(ratios) / len(ratios)
    low_frac = low / len(ratios)
    instant_mean = sum(instant) / len(instant) if instant else None
    growth = {n: round(sum(v) / len(v)) for n, v in sorted(by_n.items()) if n <= 6 and len(v) >= 10}
    log(f"attempt kinds over {len(sample)} messages: {kinds}")
    log(f"pauses: {len(ratios)}, mean pause/ceiling {mean_ratio:.2f} (policy: 0.5, more when "
        f"queued), {low_frac:.1%} under 5% of the ceiling (policy: 5%)")
    log(f"between attempts that failed at once ({len(instant)} pauses): mean pause/ceiling "
        f"{instant_mean:.2f}; mean pause (ms) by attempt number {growth} (policy: half of "
        f"{[ceiling(n) for n in range(1, 7)]})")
    log(f"attempts before success: {actual_failed} made, {policy_expected:.0f} the policy allows "
        f"on average over the same windows; max attempts for one delivery {max_attempts_seen}")
    for k in ("refused", "500", "timeout", "ok"):
        check(kinds.get(k, 0) > 0, f"attempt log shows {k} attempts: {kinds}")
    check(not [k for k in kinds if k.startswith("other")], f"unexpected attempt errors: {kinds}")
    check(mean_ratio >= 0.35, f"pauses shorter than the backoff policy: mean pause/ceiling {mean_ratio:.2f}")
    check(low_frac <= 0.12, f"{low_frac:.1%} of pauses under 5% of their ceiling (policy: 5%)")
    check(len(instant) >= 50, f"enough pauses between instant failures: {len(instant)}")
    # Full jitter gives 0.5; queueing behind other deliveries only adds, so
    # only the lower side is a property of the policy.
    check(instant_mean >= 0.3,
          f"pauses between instant failures shorter than full jitter: mean pause/ceiling {instant_mean:.2f}")
    if 1 in growth and 5 in growth:
        # Queueing adds the same to both; the policy's difference stays.
        check(growth[5] - growth[1] >= 0.25 * (ceiling(5) - ceiling(1)),
              f"pauses grow with the attempt number: {growth}")
    check(actual_failed <= 1.25 * policy_expected + 10,
          f"retry storm: {actual_failed} attempts where the policy allows ~{policy_expected:.0f}")

    first = pb.message(acked[0])
    (d0,) = [d for d in first["deliveries"] if d["output"] == "payments"]
    order_of_kinds = []
    for a in d0["attempt_log"]:
        k = kind_of(a)
        if not order_of_kinds or order_of_kinds[-1] != k:
            order_of_kinds.append(k)
    log(f"first message's attempts, phase by phase: {order_of_kinds}")
    check_eq([k for k in order_of_kinds if k in ("refused", "500", "timeout", "ok")][-1], "ok",
             "first message ends delivered")
    # The partner was running during the timeouts phase: nothing refused a connection.
    check_eq(stale, 0, "timed-out attempts whose error text says '(Connection refused)': an OS "
             "error left over from an earlier transfer on the recycled curl handle")
    check_eq(pb.term(), 0, "exit code on SIGTERM")
    faultlib.result("partner_outage", acknowledged=len(acked), outputs=2, phase_seconds=PHASE_S,
                    recovery_seconds=round(recovery_s, 1), attempt_kinds=kinds,
                    pauses=len(ratios), mean_pause_over_ceiling=round(mean_ratio, 3),
                    pauses_under_5pct=round(low_frac, 3), mean_pause_ms_by_attempt=growth,
                    instant_pauses=len(instant), instant_mean_pause_over_ceiling=round(instant_mean, 3),
                    attempts_made=actual_failed, attempts_policy_expected=round(policy_expected),
                    crm_dead_then_replayed=crm_dead, timeouts_with_stale_refused=stale, **figures)


if __name__ == "__main__":
    faultlib.main()
