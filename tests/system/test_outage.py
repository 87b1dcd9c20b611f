"""Partner outage: while the sink is down for 30 s every post is still
acknowledged; when it comes back on the same port everything is delivered,
and the attempt log shows the failed attempts before the success."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    check,
    check_eq,
    log,
    post_many,
    run,
    start_sink,
    test,
    wait_until,
)

N = 200
DOWN_SECONDS = 30

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 10s
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop, max_body: 64KiB }
    outputs:
      payments:
        http:
          url: "SINK/charges"
          timeout: 2s
          map: '{order: .id}'
          retry: { max_attempts: 1000, initial: 100ms, max: 2s, max_age: 1h }
          concurrency: 8
"""


@test
def outage_then_recovery():
    sink = start_sink()
    port = sink.port
    pb = Patchbay(CONFIG.replace("SINK", sink.url))
    sink.kill()
    t_down = time.monotonic()

    orders = [{"id": f"ord-{i}", "total_cents": i + 1} for i in range(N)]
    results = post_many(pb.url + "/hooks/shop", orders, concurrency=16)
    bad = [st for st, mid in results if st != 202 or not mid]
    check(not bad, f"posts during the outage not all acknowledged: {bad[:5]}")
    ids = [mid for _, mid in results]

    lab = dict(pipeline="orders", output="payments")
    wait_until(
        lambda: pb.metrics().value("patchbay_deliveries_retried_total", **lab) > 0,
        20,
        "retries to be counted while the partner is down",
    )
    m = pb.metrics()
    check_eq(m.value("patchbay_deliveries_delivered_total", **lab), 0, "delivered while down")
    check_eq(m.value("patchbay_deliveries_dead_total", **lab), 0, "dead while down")
    check_eq(m.value("patchbay_backlog", **lab), N, "backlog while down")

    # The scenario itself: the partner stays down for 30 s.
    remaining = DOWN_SECONDS - (time.monotonic() - t_down)
    if remaining > 0:
        time.sleep(remaining)
    check(pb.running(), "patchbay still running after the outage")
    sink.restart()
    check_eq(sink.port, port, "sink back on the same port")
    t_up = time.monotonic()

    def all_delivered():
        got = {r["headers"].get("x-patchbay-message-id") for r in sink.records() if r["status"] == 200}
        return got >= set(ids)

    wait_until(all_delivered, 30, f"all {N} messages delivered after recovery")
    log(f"all delivered {time.monotonic() - t_up:.1f}s after the partner came back")
    wait_until(lambda: pb.metrics().value("patchbay_backlog", **lab) == 0, 10, "backlog 0")

    m = pb.metrics()
    check_eq(m.value("patchbay_deliveries_delivered_total", **lab), N, "delivered")
    check_eq(m.value("patchbay_deliveries_dead_total", **lab), 0, "dead")
    check(m.value("patchbay_deliveries_retried_total", **lab) >= N, "every delivery was retried")

    recs = sink.records()
    by_id = {}
    for r in recs:
        by_id.setdefault(r["headers"].get("x-patchbay-message-id"), []).append(r)
    for i, mid in enumerate(ids):
        rs = by_id.get(mid, [])
        check(rs, f"{mid} never reached the sink")
        for r in rs:
            check_eq(r["headers"].get("idempotency-key"), f"{mid}.payments", "stable idempotency key")
            check_eq(json.loads(r["body"]), {"order": f"ord-{i}"}, "body")
        check(int(rs[0]["headers"].get("x-patchbay-attempt", "0")) > 1, f"{mid}: attempt header > 1")

    multi = 0
    sample = ids[:: max(1, N // 20)]  # a sample of 20 through the admin API
    pb.wait_states(sample, {"payments": "delivered"})
    for mid in sample:
        msg = pb.message(mid)
        (d,) = [d for d in msg["deliveries"] if d["output"] == "payments"]
        check_eq(d["state"], "delivered", f"{mid} state")
        check_eq(d["last_status"], 200, f"{mid} last_status")
        log_ = d["attempt_log"]
        check_eq(len(log_), d["attempts"], f"{mid} attempt_log length == attempts")
        check_eq([a["n"] for a in log_], list(range(1, len(log_) + 1)), f"{mid} attempt numbers")
        check_eq(log_[-1]["status"], 200, f"{mid} last attempt status")
        for a in log_[:-1]:
            check(a["status"] in (None, 0), f"{mid}: failed attempt has no HTTP status: {a}")
            check(a.get("error"), f"{mid}: failed attempt records an error: {a}")
            check(a.get("started_at") is not None and a.get("latency_ms") is not None,
                  f"{mid}: attempt has time and latency: {a}")
        if d["attempts"] > 1:
            multi += 1
    check(multi > 0, "some deliveries needed more than one attempt")
    log(f"{multi}/20 sampled deliveries took more than one attempt")
    check_eq(pb.term(), 0, "exit code on SIGTERM")


@test
def retry_after_and_429_are_retried_not_dead():
    # 429 and 503 with Retry-After are temporary: delivered once the partner recovers.
    sink = start_sink(status=429, retry_after=1)
    pb = Patchbay(CONFIG.replace("SINK", sink.url))
    st, _, data = pb.post("/hooks/shop", {"id": "ord-429"})
    check_eq(st, 202, "post")
    mid = json.loads(data)["id"]
    wait_until(lambda: sink.requests() >= 2, 20, "a second attempt after 429")
    recs = sink.records()
    check(len(recs) >= 2, "two attempts recorded")
    gap = (recs[1]["ts"] - recs[0]["ts"]) / 1000.0
    check(gap >= 0.9, f"Retry-After: 1 honoured (second attempt {gap:.2f}s after the first)")
    sink.set_mode(status=503, retry_after=-1)
    wait_until(lambda: sink.stats()["by_status"].get("503", 0) >= 1, 20, "an attempt answered 503")
    sink.set_mode(status=200)
    wait_until(lambda: sink.ok_count() == 1, 20, "delivery after recovery")
    pb.wait_states([mid], {"payments": "delivered"})
    d = [d for d in pb.message(mid)["deliveries"] if d["output"] == "payments"][0]
    check_eq(d["state"], "delivered", "state")
    statuses = [a["status"] for a in d["attempt_log"]]
    check(429 in statuses and 503 in statuses and statuses[-1] == 200, f"attempt statuses {statuses}")
    check_eq(pb.dead_letters(), [], "no dead letters")
    # Each failed attempt is logged at the default level, with its cause.
    lines = [ln for ln in pb.log().splitlines() if "attempt failed, will retry" in ln]
    check(any("status=429" in ln and "error=\"HTTP 429" in ln for ln in lines),
          f"a 429 attempt logged with its cause: {lines[:3]}")
    check(any("status=503" in ln for ln in lines), "a 503 attempt logged")


if __name__ == "__main__":
    run()
