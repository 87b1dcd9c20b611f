"""The route stage: process steps run once per message and decide which
outputs get it. A GitHub pipeline routes on $meta.headers["x-github-event"]
(switch), an order is split into its lines, outputs a switch did not choose
are recorded as routed away, a filtered message reaches no output, a failing
step dead-letters the message at (route) and its replay routes it again, and
routed messages survive kill -9 with nothing lost or doubled."""

import json
import os
import sys

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

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  github:
    input:
      http_server: { path: /hooks/github, headers: [X-GitHub-Event, X-Multi] }
    process:
      - filter: '$meta.headers["x-github-event"] != "ping"'
      - switch:
          - { when: '$meta.headers["x-github-event"] == "push"', to: [ci] }
          - { when: '$meta.headers["x-github-event"] == "issues"', to: [tracker, audit] }
          - { otherwise: [audit] }
    outputs:
      ci:
        http:
          url: "SINK/ci"
          map: '{ref, event: $meta.headers["x-github-event"], multi: $meta.headers["x-multi"], path: $meta.path, q: $meta.query.q}'
      tracker: { http: { url: "SINK/tracker" } }
      audit: { http: { url: "SINK/audit" } }
  orders:
    input:
      http_server: { path: /hooks/orders }
    process:
      - split: '.lines[] as $l | {order: .id, sku: $l.sku, qty: $l.qty}'
      - map: 'if .qty < 0 then error("negative quantity") else . end'
    outputs:
      warehouse: { http: { url: "SINK/lines" } }
"""


def bodies(sink, path):
    return [json.loads(r["body"]) for r in sink.records() if r["path"] == path]


@test
def routes_on_meta_switch_split_and_survives_crashes():
    sink = start_sink(record=True)
    pb = Patchbay(CONFIG.replace("SINK", sink.url))

    # GitHub events: routed by header, once each.
    st, _, d = pb.post("/hooks/github?q=x", {"ref": "main"},
                       {"X-GitHub-Event": "push", "X-Multi": "a"})
    check_eq(st, 202, "push accepted")
    push_id = json.loads(d)["id"]
    st, _, d = pb.post("/hooks/github", {"title": "bug"}, {"X-GitHub-Event": "issues"})
    issue_id = json.loads(d)["id"]
    st, _, d = pb.post("/hooks/github", {"zen": "x"}, {"X-GitHub-Event": "ping"})
    ping_id = json.loads(d)["id"]
    st, _, d = pb.post("/hooks/github", {"star": 1}, {"X-GitHub-Event": "star"})
    star_id = json.loads(d)["id"]

    pb.wait_states([push_id], {"ci": "delivered", "tracker": "routed_away", "audit": "routed_away"})
    pb.wait_states([issue_id], {"tracker": "delivered", "audit": "delivered", "ci": "routed_away"})
    pb.wait_states([ping_id], {"ci": "filtered", "tracker": "filtered", "audit": "filtered"})
    pb.wait_states([star_id], {"audit": "delivered", "ci": "routed_away"})

    ci = bodies(sink, "/ci")
    check_eq(ci, [{"ref": "main", "event": "push", "multi": "a", "path": "/hooks/github",
                   "q": "x"}], "the ci partner got the push, mapped with $meta")
    check_eq(len(bodies(sink, "/tracker")), 1, "tracker got the issue only")
    check_eq(sorted(json.dumps(b) for b in bodies(sink, "/audit")),
             sorted([json.dumps({"title": "bug"}), json.dumps({"star": 1})]),
             "audit got the issue and the star, unchanged")

    msg = pb.message(push_id)
    check_eq(msg["meta"]["headers"], {"x-github-event": "push", "x-multi": "a"},
             "only the configured headers are kept, lower-cased")
    check_eq(msg["meta"]["method"], "POST", "$meta.method")
    check("routed" not in msg, "a switch leaves the body as received")
    route = [x for x in msg["deliveries"] if x["output"] == "(route)"]
    check_eq(len(route), 1, "one route delivery")
    check_eq(route[0]["attempts"], 1, "the steps ran once")
    ping = pb.message(ping_id)
    errs = {x["output"]: x["last_error"] for x in ping["deliveries"]}
    check("filtered by process step 1 (filter)" in errs["ci"], f"filtered reason: {errs}")

    m = pb.metrics()
    check_eq(m.value("patchbay_deliveries_routed_away_total", pipeline="github", output="ci"), 2,
             "routed-away counter")

    # Orders split into lines; a bad line dead-letters the whole order at (route).
    ids = []
    for i in range(40):
        st, _, d = pb.post("/hooks/orders",
                           {"id": f"o{i}", "lines": [{"sku": f"s{j}", "qty": j} for j in range(3)]})
        check_eq(st, 202, "order accepted")
        ids.append(json.loads(d)["id"])
        if i == 10:
            pb.kill9()
            pb.start()
    st, _, d = pb.post("/hooks/orders", {"id": "bad", "lines": [{"sku": "x", "qty": -1}]})
    bad_id = json.loads(d)["id"]

    def lines():
        # (order, sku) -> the Idempotency-Keys it arrived with
        got = {}
        for r in sink.records():
            if r["path"] == "/lines":
                b = json.loads(r["body"])
                got.setdefault((b["order"], b["sku"]), set()).add(r["headers"]["idempotency-key"])
        return got
    wait_until(lambda: len(lines()) >= 120, 30, "120 order lines delivered")
    got = lines()
    check_eq(len(got), 120, "every line of every order")
    # kill -9 may repeat an attempt whose result was not committed (at least
    # once); a repeat carries the same key, and no two lines share one.
    check(all(len(k) == 1 for k in got.values()), "a line repeated keeps its Idempotency-Key")
    keys = [next(iter(k)) for k in got.values()]
    check_eq(len(set(keys)), 120, "each line has a key of its own")

    msg = pb.message(ids[0])
    check_eq(len(msg["children"]), 3, "three children")
    child = pb.message(msg["children"][1])
    check_eq(child["parent"], ids[0], "a child names its parent")
    check_eq(child["id"], ids[0] + "-2", "a child's id is its parent's and its position")
    check_eq(child["body"], {"order": "o0", "sku": "s1", "qty": 1}, "a child's body")

    dead = pb.dead_letters(pipeline="orders")
    check_eq(len(dead), 1, "one dead letter")
    check_eq(dead[0]["output"], "(route)", "it died in the route stage")
    check_eq(dead[0]["message_id"], bad_id, "the bad order")
    check("negative quantity" in (dead[0]["last_error"] or ""),
          f"with the step's reason: {dead[0]['last_error']}")
    check("process step 2 (map)" in (dead[0]["last_error"] or ""), "naming the step")
    log("routing, split, crash: ok")
    check_eq(pb.term(), 0, "exit code on SIGTERM")


if __name__ == "__main__":
    run()
