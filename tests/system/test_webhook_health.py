"""Endpoint health: an endpoint that keeps failing without a success for
disable_after is disabled, emits endpoint.disabled into events_pipeline, and
keeps later deliveries pending until it is enabled again; a success in
between resets the clock."""

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
    run,
    start_sink,
    test,
    wait_until,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop }
    outputs:
      customers:
        webhook:
          event_type: '.type'
          disable_after: DISABLE_AFTER
          events_pipeline: alerts
          retry: { schedule: [100ms, 100ms, 100ms, 100ms, 100ms, 100ms, 100ms, 100ms, 100ms, 100ms] }
  alerts:
    input:
      http_server: { path: /internal/alerts }
    outputs:
      ops:
        http: { url: "OPS/alerts" }
"""


def make(disable_after):
    partner = start_sink(record=True, status=503)
    ops = start_sink(record=True)
    cfg = CONFIG.replace("DISABLE_AFTER", disable_after).replace("OPS", ops.url)
    pb = Patchbay(cfg)
    st, doc = pb.admin(
        "POST", "/api/endpoints", {"output": "customers", "url": partner.url + "/wh", "secret": SECRET}
    )
    check_eq(st, 201, f"endpoint created: {doc}")
    return pb, partner, ops, doc["id"]


@test
def failing_endpoint_is_disabled_after_disable_after():
    pb, partner, ops, ep = make("1s")
    t0 = time.monotonic()
    for i in range(3):
        st, _, _ = pb.post("/hooks/shop", {"type": "order.created", "id": i})
        check_eq(st, 202, "accepted")

    def disabled():
        st, doc = pb.admin("GET", f"/api/endpoints/{ep}")
        return st == 200 and doc["disabled"]

    wait_until(disabled, 30, "endpoint disabled by continuous failure")
    waited = time.monotonic() - t0
    check(waited >= 1.0, f"disabled only after disable_after (took {waited:.2f}s)")
    st, doc = pb.admin("GET", f"/api/endpoints/{ep}")
    reason = doc["disabled_reason"]
    check("disable_after" in reason, f"reason names the rule: {reason}")
    wait_until(lambda: len(ops.records()) >= 1, 20, "endpoint.disabled event delivered")
    ev = json.loads(ops.records()[0]["body"])
    check_eq((ev["type"], ev["endpoint"]["id"]), ("endpoint.disabled", ep), "event")

    # Disabled: nothing more is attempted, later messages wait.
    seen = partner.requests()
    st, _, _ = pb.post("/hooks/shop", {"type": "order.created", "id": 99})
    check_eq(st, 202, "accepted while disabled")
    time.sleep(0.5)
    check_eq(partner.requests(), seen, "no attempts while disabled")

    # Fixed and enabled: what waited is delivered.
    partner.set_mode(status=200)
    st, _ = pb.admin("POST", f"/api/endpoints/{ep}/enable")
    check_eq(st, 200, "enabled")
    wait_until(
        lambda: any(json.loads(r["body"]).get("id") == 99 for r in partner.records() if r["status"] == 200),
        30,
        "the message that waited is delivered after enable",
    )
    st, doc = pb.admin("GET", f"/api/endpoints/{ep}")
    check_eq(doc["disabled"], False, "enabled state")
    log(f"disabled after {waited:.2f}s of failures; event routed; resumed after enable")


@test
def a_success_resets_the_failure_clock():
    pb, partner, ops, ep = make("2s")
    # Fail, then succeed within the window, then fail again: never 2s of
    # failure without a success, so the endpoint stays enabled.
    partner.set_mode(fail_every=2, fail_status=503, status=200)
    deadline = time.monotonic() + 3.5
    i = 0
    while time.monotonic() < deadline:
        pb.post("/hooks/shop", {"type": "order.created", "id": i})
        i += 1
        time.sleep(0.1)
    time.sleep(0.5)
    st, doc = pb.admin("GET", f"/api/endpoints/{ep}")
    check_eq(doc["disabled"], False, "still enabled: successes in between")
    check_eq(ops.records(), [], "no endpoint.disabled event")


if __name__ == "__main__":
    run()
