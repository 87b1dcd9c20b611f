"""The admin API the dashboard uses, against the real daemon and pb_sink
partners: message search (filters, jq predicate, pages), bodies byte for
byte, the metric history, the live tail (server-sent events, held until
events come, answered at shutdown), dead letters by filter (list, replay
and purge of a set), edit-and-replay, one endpoint's dead letter replayed,
an endpoint's test event, and /ui itself (CSP, ETag, server.ui: false)."""

import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
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
shutdown_timeout: 5s
pipelines:
  shop:
    input:
      http_server: { path: /hooks/shop }
    process:
      - map: '{order_id: .id, cents, kind, note}'
      - switch:
          - { when: '.cents >= 1000', to: [payments, fraud] }
          - { otherwise: [payments] }
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
          retry: { max_attempts: 1 }
          endpoints:
            - { id: partner_a, url: "SINK_FAIL/wh", secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }
"""


def daemon(ok, fail, extra=""):
    cfg = CONFIG.replace("SINK_OK", ok.url).replace("SINK_FAIL", fail.url) + extra
    return Patchbay(cfg)


def post(pb, body, key=None):
    h = {"Idempotency-Key": key} if key else {}
    st, _, data = pb.post("/hooks/shop", body, headers=h)
    check_eq(st, 202, f"ingest {body}")
    return json.loads(data)["id"]


def api(pb, path, method="GET", body=None, want=200):
    st, doc = pb.admin(method, path, body)
    check_eq(st, want, f"{method} {path}: {doc}")
    return doc


def search(pb, **q):
    return api(pb, "/api/messages?" + urllib.parse.urlencode(q))


def raw(pb, method, path, body=None, headers=None):
    h = {"Authorization": f"Bearer {pb.token}"}
    h.update(headers or {})
    return pb.request(method, path, body, h)


@test
def search_filters_predicate_and_pages():
    ok, fail = start_sink(), start_sink(status=500)
    pb = daemon(ok, fail)
    ids = []
    for i in range(12):
        ids.append(post(pb, {"id": i, "cents": i * 200, "kind": "created",
                             "note": "vip" if i % 4 == 0 else "std"}, key=f"order-{i}"))
    pb.wait_states(ids, {"payments": "delivered"})
    # By idempotency key, exactly one.
    doc = search(pb, key="order-7")
    check_eq([m["id"] for m in doc["items"]], [ids[7]], "search by key")
    check_eq(doc["items"][0]["idempotency_key"], "order-7", "key shown")
    check_eq(doc["next_before"], None, "one page")
    # A jq predicate over the body as received.
    doc = search(pb, where=".note == \"vip\" and .cents >= 800")
    check_eq(sorted(m["id"] for m in doc["items"]), sorted([ids[4], ids[8]]), "predicate")
    # ... and over $meta.
    doc = search(pb, where="$meta.path == \"/hooks/shop\"", limit=50)
    check_eq(len(doc["items"]), 12, "predicate on $meta")
    # Newest first, in pages that end.
    seen, before = [], None
    for _ in range(10):
        q = {"limit": 5}
        if before:
            q["before"] = before
        doc = search(pb, **q)
        seen += [m["id"] for m in doc["items"]]
        before = doc["next_before"]
        if not before:
            break
    check_eq(seen, list(reversed(ids)), "pages, newest first, each message once")
    # The scan is bounded: a predicate nothing matches stops at `scan` and says where to go on.
    doc = search(pb, where=".cents < 0", scan=5)
    check_eq((doc["items"], doc["scanned"]), ([], 5), "bounded scan")
    check(doc["next_before"], "a bounded scan says where to go on")
    # State and output: fraud dead-letters those >= 1000 cents.
    wait_until(lambda: len(search(pb, status="dead", output="fraud")["items"]) == 7, 20,
               "dead fraud deliveries")
    # A predicate failing on some messages counts them.
    doc = search(pb, where=".note.x == 1")
    check_eq((doc["items"], doc.get("predicate_errors")), ([], 12), f"predicate errors counted: {doc}")
    check(doc.get("predicate_error"), "the first failure's text")
    # Bad requests are 400 with a reason.
    for q in ({"where": ".a =="}, {"status": "lost"}, {"limit": "0"}, {"before": "x"},
              {"since": "yesterday"}):
        st, d = pb.admin("GET", "/api/messages?" + urllib.parse.urlencode(q))
        check_eq(st, 400, f"search {q}: {d}")
    # A body byte for byte, routed or as received.
    body = b'{"id": 99, "cents": 1.10, "kind": "created"}'
    st, _, data = pb.post("/hooks/shop", body)
    check_eq(st, 202, "post exact body")
    mid = json.loads(data)["id"]
    st, h, got = raw(pb, "GET", f"/api/messages/{mid}/body")
    check_eq((st, got, h.get("content-type")), (200, body, "application/json"), "raw body")
    # Routed once the route stage has run (until then it is the body as received).
    wait_until(lambda: b'"order_id":99' in raw(pb, "GET", f"/api/messages/{mid}/body?routed=true")[2],
               scaled(20), "the message routed")
    st, _, got = raw(pb, "GET", f"/api/messages/{mid}/body?routed=true")
    check_eq(st, 200, "routed body")
    check(b'"order_id":99' in got and b'"note":null' in got, f"routed body: {got!r}")
    st, _, _ = raw(pb, "GET", "/api/messages/msg_nope/body")
    check_eq(st, 404, "no such message body")


@test
def metric_history_rates_and_gauges():
    ok, fail = start_sink(), start_sink(status=500)
    pb = daemon(ok, fail)
    doc = api(pb, "/api/metrics/history")
    check(len(doc["times"]) >= 1, "a sample at start")
    check_eq(doc["interval_ms"], 5000, "interval")
    names = {(s["pipeline"], s["output"], s["metric"]): s for s in doc["series"]}
    for key in (("shop", None, "accepted"), ("shop", "payments", "delivered"),
                ("shop", "fraud", "failed"), ("shop", "payments", "backlog")):
        check(key in names, f"series {key}")
    check_eq(names[("shop", "payments", "backlog")]["kind"], "gauge", "backlog is a gauge")
    check_eq(names[("shop", "payments", "delivered")]["kind"], "rate", "delivered is a rate")
    ids = [post(pb, {"id": i, "cents": 2000, "kind": "x"}) for i in range(20)]
    pb.wait_states(ids, {"payments": "delivered", "fraud": "dead"})
    last = doc["times"][-1]

    def moved():
        d = api(pb, f"/api/metrics/history?since={last}")
        s = {(x["pipeline"], x["output"], x["metric"]): x["values"] for x in d["series"]}
        return d if d["times"] and sum(v for v in s[("shop", "payments", "delivered")] if v) > 0 else None

    d = wait_until(moved, 20, "a sample showing deliveries")
    check(all(t > last for t in d["times"]), "since returns only newer samples")
    s = {(x["pipeline"], x["output"], x["metric"]): x["values"] for x in d["series"]}
    check(max(v for v in s[("shop", "fraud", "failed")] if v is not None) > 0, "failures have a rate")
    check_eq(len(s[("shop", None, "accepted")]), len(d["times"]), "values align with times")


def tail_get(pb, query, timeout=40, headers=None):
    """GET /api/tail; (status, content-type, [events], seconds taken)."""
    conn = http.client.HTTPConnection("127.0.0.1", pb.port, timeout=scaled(timeout))
    h = {"Authorization": f"Bearer {pb.token}"}
    h.update(headers or {})
    t0 = time.monotonic()
    try:
        conn.request("GET", "/api/tail?" + urllib.parse.urlencode(query), headers=h)
        r = conn.getresponse()
        text = r.read().decode()
        ct = r.getheader("Content-Type")
    finally:
        conn.close()
    events = []
    for block in text.split("\n\n"):
        ev = {"event": "message"}
        for line in block.split("\n"):
            if line.startswith("event: "):
                ev["event"] = line[7:]
            elif line.startswith("id: "):
                ev["id"] = line[4:]
            elif line.startswith("data: "):
                ev["data"] = json.loads(line[6:])
        if "data" in ev:
            events.append(ev)
    return r.status, ct, events, time.monotonic() - t0


@test
def live_tail_server_sent_events():
    ok, fail = start_sink(), start_sink(status=500)
    pb = daemon(ok, fail)
    st, ct, evs, _ = tail_get(pb, {})
    check_eq((st, ct), (200, "text/event-stream; charset=utf-8"), "tail answers SSE")
    check_eq(evs[-1]["event"], "cursor", "ends with the cursor")
    cursor = evs[-1]["data"]["next"]
    # Held until something happens, then answered soon after.
    result = {}

    def wait_for_events():
        result["r"] = tail_get(pb, {"after": cursor, "wait": 20000, "kind": "received,delivered"})

    t = threading.Thread(target=wait_for_events)
    t.start()
    time.sleep(0.3)
    check(t.is_alive(), "the request is held while nothing happens")
    mid = post(pb, {"id": 1, "cents": 10, "kind": "x", "note": "tail-me"})
    t.join(scaled(20))
    st, _, evs, took = result["r"]
    check_eq(st, 200, "tail status")
    check(took < scaled(10), f"answered when events came ({took:.1f}s), not at the deadline")
    got = [e for e in evs if e["event"] == "received"]
    check(got and got[0]["data"]["msg_id"] == mid, f"received event: {evs}")
    check("tail-me" in got[0]["data"]["excerpt"], "body excerpt")
    # The delivery's end follows (in that answer already, or a later one);
    # Last-Event-ID works as the cursor, and kind filters.
    seen = [x for x in evs if x["event"] == "delivered" and x["data"]["msg_id"] == mid]
    state = {"cursor": evs[-1]["data"]["next"]}

    def delivered():
        _, _, e, _ = tail_get(pb, {"wait": 2000, "kind": "delivered"},
                              headers={"Last-Event-ID": str(state["cursor"])})
        check(all(x["event"] in ("delivered", "cursor") for x in e), f"kind filter: {e}")
        state["cursor"] = e[-1]["data"]["next"]
        seen.extend(x for x in e if x["event"] == "delivered" and x["data"]["msg_id"] == mid)
        return seen

    d = wait_until(delivered, 20, "delivered event")
    check_eq((d[0]["data"]["output"], d[0]["data"]["status"]), ("payments", 200), "delivery event")
    # Nothing to say: answered at the deadline, with the cursor only.
    _, _, evs, took = tail_get(pb, {"after": 10**9, "wait": 300, "pipeline": "shop"})
    check_eq([e["event"] for e in evs], ["cursor"], "empty window")
    check(took < scaled(5), "short wait honoured")
    for q in ({"pipeline": "nope"}, {"kind": "boom"}, {"wait": "99999"}, {"max": "0"}):
        st, _, _, _ = tail_get(pb, q)
        check_eq(st, 400, f"tail {q}")
    # A held request is answered when the daemon stops; the stop is not held up.
    result.clear()
    cursor = tail_get(pb, {"after": 10**9, "wait": 0})[2][-1]["data"]["next"]
    t = threading.Thread(target=lambda: result.setdefault(
        "r", tail_get(pb, {"after": cursor, "wait": 25000, "pipeline": "shop", "kind": "dead"})))
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    code = pb.term(timeout=20)
    t.join(scaled(10))
    check_eq(code, 0, "exit code")
    check(time.monotonic() - t0 < scaled(8), "stopping is not held up by a waiting tail")
    check_eq(result["r"][0], 200, "the held request was answered")


@test
def dead_letters_filters_sets_and_edits():
    ok, fail = start_sink(), start_sink(status=500)
    pb = daemon(ok, fail)
    ids = [post(pb, {"id": i, "cents": 1000 + i, "kind": "x", "note": 1.10 if i == 0 else i})
           for i in range(6)]
    pb.wait_states(ids, {"fraud": "dead"})
    # The open counts: pending and dead from the store, nothing finished counted.
    pls = api(pb, "/api/pipelines?counts=open")["pipelines"][0]
    outs = {o["name"]: o for o in pls["outputs"]}
    check_eq((outs["fraud"]["dead"], outs["fraud"]["pending"]), (6, 0), "open counts")
    check("delivered" not in outs["payments"], "finished states are not counted")
    check_eq(outs["payments"]["delivered_total"], 6, "the counters since start remain")
    full = {o["name"]: o for o in api(pb, "/api/pipelines")["pipelines"][0]["outputs"]}
    check_eq((full["payments"]["delivered"], full["fraud"]["dead"]), (6, 6), "full counts")
    check_eq(pb.admin("GET", "/api/pipelines?counts=all")[0], 400, "counts=open or nothing")
    dl = api(pb, "/api/dead-letters?output=fraud&order=newest&limit=2")
    check_eq(len(dl["items"]), 2, "a page")
    check(dl["items"][0]["id"] > dl["items"][1]["id"], "newest first")
    nxt = api(pb, f"/api/dead-letters?output=fraud&order=newest&limit=10&before={dl['next_before']}")
    check_eq(len(nxt["items"]), 4, "the next page")
    check_eq(api(pb, "/api/dead-letters?error=INTERNAL%20nothing")["items"], [], "error filter")
    check_eq(len(api(pb, "/api/dead-letters?error=MAX_ATTEMPTS&status=500")["items"]), 6,
             "error text is case-blind, status filter")
    for q in ("order=up", "status=x", "since=soon", "limit=5000"):
        st, _ = pb.admin("GET", "/api/dead-letters?" + q)
        check_eq(st, 400, f"dead letters {q}")

    # Edit-and-replay: refused when the body is not JSON, else a new message
    # linked to the old one, delivered byte for byte.
    first = min(d["id"] for d in dl["items"] + nxt["items"])
    d0 = api(pb, f"/api/dead-letters/{first}")
    st, _, data = raw(pb, "POST", f"/api/dead-letters/{first}/edit-and-replay", b'{"cents": 1.',
                      {"Content-Type": "application/json"})
    check_eq(st, 400, f"invalid JSON refused: {data!r}")
    st, _, data = raw(pb, "POST", f"/api/dead-letters/{first}/edit-and-replay",
                      b'{"order_id": 0, "cents": 1.10, "big": 9007199254740993}',
                      {"Content-Type": "application/json"})
    check(st == 400 and b"exactly" in data, f"a number jq cannot carry is refused: {st} {data!r}")
    fail.set_mode(status=200)
    corrected = b'{"order_id": 0, "cents": 1.10, "fixed": true}'
    st, _, data = raw(pb, "POST", f"/api/dead-letters/{first}/edit-and-replay", corrected,
                      {"Content-Type": "application/json"})
    check_eq(st, 200, f"edit-and-replay: {data!r}")
    res = json.loads(data)
    new_id = res["message_id"]
    check_eq(res["replay_of"], first, "replay_of")
    pb.wait_states([new_id], {"fraud": "delivered"})
    got = [r for r in fail.records() if r["path"] == "/fraud" and r["status"] == 200]
    check_eq([r["body"].encode() for r in got], [corrected], "the partner got the corrected body as typed")
    m = pb.message(new_id)
    check_eq((m["edit_of"], m["pipeline"]), (d0["message_id"], "shop"), "linked to the old message")
    check_eq(m["deliveries"][0]["replay_of"], first, "its delivery records the replay")
    old = pb.message(d0["message_id"])
    check_eq(old["edits"], [new_id], "the old message names the new one")
    check_eq({d["output"]: d["state"] for d in old["deliveries"]}["fraud"], "replayed", "old: replayed")
    st, _ = pb.admin("POST", f"/api/dead-letters/{first}/edit-and-replay", {"x": 1})
    check_eq(st, 404, "edit of a dead letter replayed already")

    # A set by filter: replay those whose error says 500 and id > first.
    st, doc = pb.admin("POST", "/api/dead-letters/replay?output=fraud&error=HTTP%20500&status=500")
    check_eq((st, doc), (200, {"replayed": 5, "refused": 0}), "replay a filtered set")
    wait_until(lambda: len([r for r in fail.records() if r["status"] == 200]) == 6, 20,
               "the set delivered")
    check_eq(pb.dead_letters(output="fraud"), [], "no dead letter left")
    # Purge a set: a filter or all=true.
    fail.set_mode(status=500)
    ids = [post(pb, {"id": 100 + i, "cents": 5000, "kind": "x"}) for i in range(3)]
    pb.wait_states(ids, {"fraud": "dead"})
    st, _ = pb.admin("POST", "/api/dead-letters/purge")
    check_eq(st, 400, "purge without a filter needs all=true")
    st, doc = pb.admin("POST", "/api/dead-letters/purge?pipeline=shop&output=fraud")
    check_eq((st, doc), (200, {"purged": 3}), "purge a set")
    check_eq(pb.dead_letters(), [], "purged")


@test
def endpoint_dead_letter_replay_and_test_event():
    ok, fail = start_sink(), start_sink(status=500)
    pb = daemon(ok, fail)
    mid = post(pb, {"id": 1, "cents": 5, "kind": "created"})
    # hooks is routed away by the switch: send straight to the endpoint with a test event.
    st, doc = pb.admin("POST", "/api/endpoints/partner_a/test", {"event_type": "ping.test"})
    check_eq(st, 202, f"test event: {doc}")
    tid = doc["message_id"]
    check_eq(doc["output"], "hooks/partner_a", "test event output")
    pb.wait_states([tid], {"hooks/partner_a": "dead"})
    m = pb.message(tid)
    check_eq(m["meta"]["test_of"], {"output": "hooks", "endpoint": "partner_a"}, "test $meta")
    check_eq([d["output"] for d in m["deliveries"]], ["hooks/partner_a"], "only that endpoint")
    sent = [r for r in fail.records() if r["path"] == "/wh"]
    check_eq(len(sent), 1, "one attempt")
    body = json.loads(sent[0]["body"])
    check_eq((body["type"], body["data"]["endpoint"]), ("ping.test", "partner_a"), "test body")
    check(sent[0]["headers"].get("webhook-signature", "").startswith("v1,"), "signed")
    # Replaying that endpoint's dead letter reaches the endpoint (no restart).
    fail.set_mode(status=200)
    dead = pb.dead_letters(output="hooks/partner_a")
    check_eq(len(dead), 1, "the endpoint's dead letter")
    st, _ = pb.admin("POST", f"/api/dead-letters/{dead[0]['id']}/replay")
    check_eq(st, 200, "replay one")
    pb.wait_states([tid], {"hooks/partner_a": "delivered"})
    st, _ = pb.admin("POST", "/api/endpoints/partner_a/test", {"event_type": 5})
    check_eq(st, 400, "bad event_type")
    st, _ = pb.admin("POST", "/api/endpoints/nope/test", {})
    check_eq(st, 404, "no such endpoint")
    # A disabled endpoint gets no test event.
    api(pb, "/api/endpoints/partner_a/disable", "POST")
    st, doc = pb.admin("POST", "/api/endpoints/partner_a/test", {})
    check_eq(st, 409, f"test to a disabled endpoint: {doc}")
    away = [d["output"] for d in pb.message(mid)["deliveries"] if d["state"] == "routed_away"]
    check("hooks" in away, f"an ordinary message went elsewhere: {away}")


@test
def ui_files_and_headers():
    ok, fail = start_sink(), start_sink(status=500)
    pb = daemon(ok, fail)
    st, h, body = pb.get("/ui/")
    check_eq(st, 200, "/ui/")
    check(b'<script type="module" src="/ui/js/app.js">' in body, "the page loads its module")
    csp = h.get("content-security-policy", "")
    for part in ("default-src 'none'", "script-src 'self'", "connect-src 'self'",
                 "frame-ancestors 'none'"):
        check(part in csp, f"CSP has {part}: {csp}")
    check_eq(h.get("x-content-type-options"), "nosniff", "nosniff")
    st, h2, js = pb.get("/ui/js/app.js")
    check_eq((st, h2.get("content-type")), (200, "text/javascript; charset=utf-8"), "a module")
    st, _, _ = pb.get("/ui/js/app.js", headers={"If-None-Match": h2["etag"]})
    check_eq(st, 304, "ETag revalidation")
    st, h3, _ = pb.get("/ui")
    check_eq((st, h3.get("location")), (308, "/ui/"), "/ui redirects")
    st, _, _ = pb.get("/ui/nope.js")
    check_eq(st, 404, "unknown file")
    st, _, _ = pb.request("POST", "/ui/", b"x", {})
    check_eq(st, 405, "files are GET only")
    # The files carry no data: the API still wants the token.
    st, _ = pb.admin("GET", "/api/messages", token=None)
    check_eq(st, 401, "API without a token")
    pb.term()
    off = Patchbay(CONFIG.replace("SINK_OK", ok.url).replace("SINK_FAIL", fail.url)
                   .replace('admin_token: "@TOKEN@"', 'admin_token: "@TOKEN@", ui: false'))
    st, _, _ = off.get("/ui/")
    check_eq(st, 404, "server.ui: false")
    log("ok")


if __name__ == "__main__":
    run()
