"""Nothing pending is ever invisible. A configuration that drops an output
with pending deliveries is refused at start and at reload, with the count;
`run --force` moves them to the dead-letter queue ("output removed"), where
they show; replaying a dead letter whose output or webhook endpoint is gone
answers 409 instead of creating a delivery nobody will ever make."""

import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    TestFailure,
    check,
    check_eq,
    run,
    start_sink,
    test,
    wait_until,
)

BOTH = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  shop:
    input: { http_server: { path: /in } }
    outputs:
      payments:
        http: { url: "SINK/pay", retry: { max_attempts: 1000, initial: 10s, max: 1m } }
      audit: { drop: {} }
"""
AUDIT_ONLY = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
pipelines:
  shop:
    input: { http_server: { path: /in } }
    outputs:
      audit: { drop: {} }
"""


def set_config(pb, text):
    pb._template = text
    pb._write_config()


@test
def removed_output_is_refused_then_forced_into_the_dlq():
    sink = start_sink(status=503)
    pb = Patchbay(BOTH.replace("SINK", sink.url))
    ids = []
    for i in range(5):
        st, _, d = pb.post("/in", {"n": i})
        check_eq(st, 202, "accepted")
        ids.append(json.loads(d)["id"])
    pb.wait_states(ids, {"audit": "delivered"})
    wait_until(lambda: sink.requests() >= 5, 10, "a first (failing) attempt each")

    # A reload that would orphan them is refused; the daemon goes on.
    set_config(pb, AUDIT_ONLY)
    pb.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in pb.log(), 10, "the reload refused")
    check("5 pending deliveries" in pb.log(), "with the count")
    check(pb.running(), "still running the previous configuration")
    check_eq(pb.post("/in", {"n": 99})[0], 202, "still taking requests")
    ids.append(ids[-1])  # (one more pending now: six)
    check_eq(pb.term(), 0, "stops cleanly")

    # Starting without the output is refused too, with the count.
    try:
        pb.start()
        check(False, "start without the output should be refused")
    except TestFailure:
        pass
    log = pb.log()
    check("6 pending deliveries" in log and "output payments" in log,
          f"the refusal names the count and the output: {log[-400:]}")

    # --force moves them to the dead-letter queue, where they show.
    pb.run_args = ["--force"]
    pb.start()
    dead = pb.dead_letters()
    check_eq(len(dead), 6, "six dead letters")
    check(all(d["output"] == "payments" and d["last_error"] == "output removed" for d in dead),
          f"each says why: {dead[:2]}")
    # and replaying one answers 409: its output is gone
    st, doc = pb.admin("POST", f"/api/dead-letters/{dead[0]['id']}/replay")
    check_eq(st, 409, f"replay to a removed output: {doc}")
    check("no longer in the configuration" in doc.get("error", ""), f"reason: {doc}")
    check_eq(len(pb.dead_letters()), 6, "the dead letter stays where it is")
    check_eq(pb.term(), 0, "stops cleanly")


WEBHOOK = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  events:
    input: { http_server: { path: /ev } }
    outputs:
      hooks:
        webhook: { event_type: '.type', managed: true, retry: { max_attempts: 1 } }
"""


@test
def replay_to_a_deleted_endpoint_is_refused():
    sink = start_sink(status=400)
    pb = Patchbay(WEBHOOK)
    st, ep = pb.admin("POST", "/api/endpoints", {"output": "hooks", "url": sink.url + "/h"})
    check_eq(st, 201, f"endpoint created: {ep}")
    time.sleep(0.5)
    st, _, _ = pb.post("/ev", {"type": "order.created"})
    check_eq(st, 202, "event accepted")
    wait_until(lambda: len(pb.dead_letters()) == 1, 15, "the refused delivery dead-lettered")
    dead = pb.dead_letters()[0]
    st, _ = pb.admin("DELETE", f"/api/endpoints/{ep['id']}")
    check(st in (200, 204), f"endpoint deleted ({st})")
    st, doc = pb.admin("POST", f"/api/dead-letters/{dead['id']}/replay")
    check_eq(st, 409, f"replay to a deleted endpoint: {doc}")
    check("webhook endpoint) was deleted" in doc.get("error", ""), f"reason: {doc}")
    check_eq(pb.term(), 0, "stops cleanly")


if __name__ == "__main__":
    run()
