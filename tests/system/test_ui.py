"""The dashboard in a real browser: Playwright (tests/ui/dashboard.mjs)
drives Debian's Chromium headless against the real daemon with pb_sink
partners: sign in, watch the overview move while messages flow, find a
message by idempotency key and open its attempt timeline, replay a dead
letter and see it delivered, correct one and replay it, rotate an
endpoint's secret, send a test event, follow the live tail; search with a
jq predicate, purge a dead letter, replay and purge filtered sets, create,
disable, enable and recover an endpoint; then paging with 100,000 dead
letters, timed; and two nodes sharing a PostgreSQL state store, both
listed on the overview with their heartbeats, leases and holds. Any
console error fails. Screenshots of
each page are kept (the path is printed).

Skips (exit 77) only when Chromium cannot start here."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pbtest  # noqa: E402
from pbtest import (  # noqa: E402
    Patchbay,
    SCALE,
    check,
    check_eq,
    log,
    run,
    scaled,
    start_sink,
    test,
    wait_until,
)

UI_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ui")
SHOTS = os.environ.get("PB_ARTIFACTS") or tempfile.mkdtemp(prefix="patchbay-ui-screenshots-")

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 5s
pipelines:
  shop:
    input:
      http_server: { path: /hooks/shop }
    process:
      - map: '{order_id: .id, cents, kind}'
      - switch:
          - { when: '.cents >= 1000', to: [payments, fraud, hooks] }
          - { otherwise: [payments, hooks] }
    outputs:
      payments:
        http: { url: "SINK_OK/pay", timeout: 2s }
      fraud:
        http:
          url: "SINK_FAIL/fraud"
          timeout: 2s
          retry: { max_attempts: 2, initial: 50ms, max: 100ms }
      hooks:
        webhook:
          event_type: '"order." + .kind'
          timeout: 2s
          endpoints:
            - { id: warehouse, url: "SINK_OK/wh", secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }
  ticks:
    input:
      generate: { interval: 300ms }
    outputs:
      sink:
        http: { url: "SINK_OK/ticks", timeout: 2s }
  flaky:
    input:
      generate: { interval: 100ms, count: 6 }
    outputs:
      partner:
        http:
          url: "SINK_FAIL/flaky"
          timeout: 2s
          retry: { max_attempts: 1 }
          circuit_breaker: { min_requests: 3, failure_ratio: 0.5, window: 60s, open_for: 10m }
"""

BULK_N = 5

BULK = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
pipelines:
  bulk:
    input:
      generate:
        interval: 0s
        count: 100000
        batch: 1000
        template: '{seq: $meta.seq, order: ("o-" + ($meta.seq | tostring))}'
    outputs:
      partner:
        drop: { map: 'error("partner rejected order \\(.order): missing tax id")' }
"""


def node(scenario, pb, timeout, **extra):
    env = dict(os.environ)
    env.update({"PB_URL": pb.url, "PB_TOKEN": pb.token, "SHOT_DIR": SHOTS,
                "PB_SCALE": str(SCALE)})
    env.update({k: str(v) for k, v in extra.items()})
    p = subprocess.run(["node", os.path.join(UI_DIR, "dashboard.mjs"), scenario], cwd=UI_DIR,
                       env=env, capture_output=True, text=True, timeout=scaled(timeout))
    for line in p.stdout.splitlines():
        log(f"  [browser] {line}")
    if p.stderr.strip():
        log(f"  [browser stderr] {p.stderr.strip()[-3000:]}")
    check_eq(p.returncode, 0, f"dashboard.mjs {scenario}")
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return None


@test
def walkthrough_with_real_partners():
    ok, fail = start_sink(), start_sink(status=500)
    pb = Patchbay(CONFIG.replace("SINK_OK", ok.url).replace("SINK_FAIL", fail.url))
    # A managed endpoint to rotate, and orders: some go to fraud, which fails.
    st, ep = pb.admin("POST", "/api/endpoints", {"output": "hooks", "url": ok.url + "/managed",
                                                   "id": "billing"})
    check_eq(st, 201, f"create endpoint: {ep}")
    ids = []
    for i in range(6):
        st, _, data = pb.post("/hooks/shop", {"id": i, "cents": 600 * i, "kind": "created"},
                              headers={"Idempotency-Key": f"order-{i}"})
        check_eq(st, 202, "ingest")
        ids.append(json.loads(data)["id"])
    pb.wait_states(ids, {"payments": "delivered"})
    pb.wait_states(ids[2:], {"fraud": "dead"})
    corrected = '{"order_id": 77, "cents": 1.10, "corrected": true}'
    res = node("walkthrough", pb, 240, KEY="order-4", FAIL_SINK=fail.url,
               MANAGED_EP="billing", STATIC_EP="warehouse", CORRECTED=corrected)
    # What the browser did reached the partners.
    # Then, on the same daemon: search by jq, filtered replay and purge, the
    # endpoints' other actions. The failing partner fails with 503 now.
    fail.set_mode(status=503)
    bulk = []
    for i in range(BULK_N):
        st, _, data = pb.post("/hooks/shop?batch=b1", {"id": 100 + i, "cents": 5000, "kind": "bulk"},
                              headers={"Idempotency-Key": f"bulk-{i}"})
        check_eq(st, 202, "ingest")
        bulk.append(json.loads(data)["id"])
    pb.wait_states(bulk, {"fraud": "dead"})
    ops = node("operations", pb, 240, BULK_N=BULK_N, FAIL_SINK=fail.url, OK_SINK=ok.url)
    log(f"operations: {ops}")
    states = [pb.message(i) for i in bulk]
    fraud = [[d["state"] for d in m["deliveries"] if d["output"] == "fraud"] for m in states]
    check_eq(sorted(tuple(sorted(f)) for f in fraud),
             sorted([()] + [("delivered", "replayed")] * (BULK_N - 1)),
             "one purged, the others replayed and delivered")
    st, _ = pb.admin("GET", f"/api/endpoints/{ops['endpoint']}")
    check_eq(st, 200, "the endpoint made in the browser")
    m = pb.message(res["edited"])
    check(m["edit_of"] in ids, "the edited message is linked to an order")
    got = [r["body"] for r in fail.records() if r["status"] == 200]
    check(corrected in got, f"the partner got the corrected body as typed: {got}")
    check(any(r["path"] == "/wh" and json.loads(r["body"]).get("type") == "webhook.test"
              for r in ok.records()), "the test event reached the endpoint")
    log(f"screenshots: {SHOTS}")


@test
def dead_letters_100k_stay_responsive():
    pb = Patchbay(BULK, start=False)
    pb.run_args = ["--log-level", "error"]  # 100,000 dead letters, one warning each otherwise
    pb.start()

    def dead():
        st, doc = pb.admin("GET", "/api/pipelines")
        return doc["pipelines"][0]["outputs"][0]["dead"] == 100000 if st == 200 else False

    wait_until(dead, 200, "100,000 dead letters")
    timings = node("deadletters100k", pb, 180, LOAD_BUDGET_MS=3000)
    log(f"page timings (ms): {timings}")
    log(f"screenshots: {SHOTS}")


CLUSTER = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "STATE"
cluster: { node: NODE, lease: 3s, heartbeat: 500ms }
outbound: { allow: [127.0.0.0/8] }
pipelines:
  ticks:
    input:
      generate: { interval: 200ms }
    outputs:
      sink:
        http: { url: "SINK/ticks" }
  feed:
    input:
      http_poll: { url: "SINK/feed", interval: 1h }
    outputs:
      sink:
        drop: {}
"""


@test
def nodes_of_a_cluster_on_the_overview():
    sink = start_sink()
    state = pbtest.state_postgres().dsn("patchbay") + "?schema=ui_cluster"

    def conf(name):
        return CLUSTER.replace("STATE", state).replace("NODE", name).replace("SINK", sink.url)

    alpha = Patchbay(conf("alpha"))
    beta = Patchbay(conf("beta"))


    def settled():
        st, doc = alpha.admin("GET", "/api/nodes")
        if st != 200 or doc.get("live") != 2:
            return False
        return sorted(h for n in doc["nodes"] for h in n["holds"]) == ["input/feed", "retention"]

    # The singleton input and the retention each held by one of them.
    wait_until(settled, scaled(20), "both nodes live, the holds taken")
    wait_until(lambda: len(sink.records()) >= 3, scaled(20), "ticks delivered")
    res = node("cluster", alpha, 120, NODES="alpha,beta")
    check_eq(res["nodes"], ["alpha", "beta"], "the nodes the browser checked")
    for pb in (alpha, beta):
        pb.term()


def chromium_or_skip():
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            print(f"SKIP: {tool} not found (./dev.sh installs it)", flush=True)
            sys.exit(77)
    pbtest.ensure_node_client(UI_DIR, package="playwright-core")
    p = subprocess.run(["node", os.path.join(UI_DIR, "dashboard.mjs"), "probe"], cwd=UI_DIR,
                       capture_output=True, text=True, timeout=scaled(120))
    if p.returncode != 0:
        why = (p.stdout + p.stderr).strip().splitlines()
        print(f"SKIP: Chromium cannot start: {why[-1] if why else 'no reason given'} "
              "(apt-get install chromium; CHROMIUM= names another binary)", flush=True)
        sys.exit(77)


if __name__ == "__main__":
    if pbtest.PB_BIN and pbtest.PB_SINK:
        chromium_or_skip()
    log(f"screenshots go to {SHOTS}")
    run()
