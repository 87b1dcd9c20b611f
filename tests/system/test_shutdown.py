"""Graceful shutdown: SIGTERM under load exits 0 within shutdown_timeout,
also when deliveries hang at the partner; after a restart everything that was
acknowledged is delivered."""

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
    scaled,
    start_sink,
    test,
    wait_until,
)

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: TIMEOUT
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop }
    outputs:
      payments:
        http:
          url: "SINK/charges"
          timeout: 30s
          map: '{order: .id}'
          retry: { max_attempts: 1000, initial: 50ms, max: 1s, max_age: 1h }
          concurrency: 16
"""


def body(i):
    return {"id": f"ord-{i}", "total_cents": i}


def delivered_ids(sink):
    return {r["headers"].get("x-patchbay-message-id") for r in sink.records() if r["status"] == 200}


def term_timed(pb, limit):
    t = time.monotonic()
    code = pb.term(timeout=limit + 30)
    dt = time.monotonic() - t
    log(f"SIGTERM -> exit {code} in {dt:.2f}s (limit {limit}s)")
    check_eq(code, 0, "exit code after SIGTERM")
    # shutdown_timeout plus a margin for process teardown (scaled under sanitizers).
    check(dt <= limit + scaled(3), f"exit took {dt:.1f}s, shutdown_timeout is {limit}s")


@test
def sigterm_under_load():
    sink = start_sink(delay_jitter_ms=10, threads=2)
    pb = Patchbay(CONFIG.replace("SINK", sink.url).replace("TIMEOUT", "10s"))
    poster = Poster(pb.port, "/hooks/shop", body, concurrency=16).start()
    try:
        wait_until(lambda: poster.count_acked() >= 1500, 60, "1500 acknowledgements")
        term_timed(pb, 10)
    finally:
        poster.stop()
    acked = {mid for _, mid in poster.acked()}
    log(f"{len(acked)} acknowledged before/while shutting down; {len(delivered_ids(sink))} delivered")

    pb.start()
    wait_until(lambda: acked <= delivered_ids(sink), 60, "every acknowledged message delivered")
    lab = dict(pipeline="orders", output="payments")
    wait_until(lambda: pb.metrics().value("patchbay_backlog", **lab) == 0, 30, "backlog 0")
    term_timed(pb, 10)


@test
def sigterm_with_hanging_and_failing_partner():
    # The partner holds every request for a minute: deliveries are in flight
    # when SIGTERM arrives and cannot finish within shutdown_timeout.
    sink = start_sink(delay_ms=60_000)
    pb = Patchbay(CONFIG.replace("SINK", sink.url).replace("TIMEOUT", "3s"))
    poster = Poster(pb.port, "/hooks/shop", body, concurrency=8, n=100).start()
    poster.join()
    acked = {mid for _, mid in poster.acked()}
    check_eq(len(acked), 100, "all posts acknowledged")
    lab = dict(pipeline="orders", output="payments")
    wait_until(
        lambda: pb.metrics().value("patchbay_deliveries_inflight", **lab) > 0, 20, "deliveries in flight"
    )
    term_timed(pb, 3)
    sink.kill()

    # Then the partner is down altogether (retrying deliveries) at SIGTERM.
    pb.start()
    wait_until(
        lambda: pb.metrics().value("patchbay_deliveries_retried_total", **lab) > 0, 20, "retries"
    )
    term_timed(pb, 3)

    sink.opts = {}
    sink.restart()
    pb.start()
    wait_until(lambda: acked <= delivered_ids(sink), 60, "every acknowledged message delivered")
    check_eq(pb.dead_letters(), [], "no dead letters")
    term_timed(pb, 3)


if __name__ == "__main__":
    run()
