"""Spilled outputs: with limits.in_memory tiny, outputs spill to the store
and page back in all the time. Deliveries made unleased, or released, while
a claim is on its way must not be stranded when that claim comes back short
(a claim ends the spill only when nothing was left in the store since it was
submitted). Posting never stops while patchbay is restarted with SIGTERM
and killed: every acknowledged message still reaches every output, and the
backlog returns to zero."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    Poster,
    check_eq,
    log,
    run,
    start_sink,
    test,
    wait_until,
)

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
limits: { in_memory: 16 }
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop }
    process:
      - map: '. + {routed: true}'
    outputs:
      fast:
        http: { url: "FAST/a", concurrency: 4, retry: { initial: 50ms, max: 200ms } }
      slow:
        http: { url: "SLOW/b", concurrency: 2, retry: { initial: 50ms, max: 200ms } }
"""


def body(i):
    return {"id": i, "total_cents": 100 + i}


def ids(sink):
    return {r["headers"].get("x-patchbay-message-id") for r in sink.records() if r["status"] == 200}


@test
def spilled_outputs_lose_nothing_across_restarts():
    fast = start_sink(record=True)
    slow = start_sink(record=True, delay_ms=2, delay_jitter_ms=6)
    pb = Patchbay(CONFIG.replace("FAST", fast.url).replace("SLOW", slow.url))
    poster = Poster(pb.port, "/hooks/shop", body, concurrency=8).start()
    try:
        for k in range(4):
            wait_until(lambda: poster.count_acked() >= 400 * (k + 1), 120, "acknowledgements")
            if k == 2:
                pb.kill9()
                pb.restart()
            else:
                pb.restart()
        wait_until(lambda: poster.count_acked() >= 2000, 120, "2000 acknowledged")
    finally:
        poster.stop()
    acked = {mid for _, mid in poster.acked()}
    t0 = time.monotonic()
    for name, sink in (("fast", fast), ("slow", slow)):
        wait_until(lambda: acked <= ids(sink), 120, f"every acknowledged message at {name}",
                   interval=0.2)
    wait_until(lambda: pb.metrics().value("patchbay_backlog", pipeline="orders") == 0, 30,
               "backlog back to zero")
    log(f"{len(acked)} acknowledged across 3 restarts and a kill -9, all at both outputs "
        f"{time.monotonic() - t0:.1f}s after posting stopped")
    check_eq(pb.term(), 0, "exit code on SIGTERM")


if __name__ == "__main__":
    run()
