"""The enrich and validate processors against the real binary.

enrich looks each message up on a partner of the test's own (a small HTTP
server that can be slow, fail, or answer 404): answers are merged in with
`into`, cached (the hit ratio and the entry bound are counted at the
server), failed lookups retry the message with backoff instead of losing or
dead-lettering it, not-found follows on_missing, and a slow lookup does not
stall another pipeline's deliveries (lookups are parked, not blocking the
dispatcher). validate dead-letters an invalid message once, with the JSON
pointer and the keyword that failed."""

import http.server
import json
import os
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (Patchbay, check, check_eq, post_many, run, start_sink, test,  # noqa: E402
                    tmpdir, wait_until)


class Lookup:
    """GET /customers/<id> -> {"data": {"id", "tier"}}; ids starting with
    "missing" answer 404; fail[id] = n answers 503 n times first; slow[id]
    = seconds to wait before answering."""

    def __init__(self):
        self.lock = threading.Lock()
        self.hits = {}
        self.fail = {}
        self.slow = {}
        owner = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                req = json.loads(self.rfile.read(n) or b"{}")
                cid = (req.get("variables") or {}).get("id", "")
                with owner.lock:
                    owner.hits["gql:" + cid] = owner.hits.get("gql:" + cid, 0) + 1
                if "customer(id: $id)" not in req.get("query", ""):
                    return self._send(400, {"errors": [{"message": "no query"}]})
                if cid == "bad":
                    return self._send(200, {"data": None, "errors": [
                        {"message": "Customer id is malformed",
                         "extensions": {"code": "BAD_USER_INPUT"}}]})
                if cid.startswith("missing"):
                    return self._send(200, {"data": {"customer": None}})
                self._send(200, {"data": {"customer": {"id": cid, "tier": "platinum"}}})

            def do_GET(self):
                cid = urllib.parse.unquote(self.path.rsplit("/", 1)[-1])
                with owner.lock:
                    owner.hits[cid] = owner.hits.get(cid, 0) + 1
                    failing = owner.fail.get(cid, 0)
                    if failing:
                        owner.fail[cid] = failing - 1
                    delay = owner.slow.get(cid, 0)
                if delay:
                    time.sleep(delay)
                if failing:
                    return self._send(503, {"error": "busy"})
                if cid.startswith("missing"):
                    return self._send(404, {"error": "no such customer"})
                self._send(200, {"data": {"id": cid, "tier": "gold" if cid.endswith("7") else
                                          "silver"}})

            def _send(self, status, doc):
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def total(self):
        with self.lock:
            return sum(self.hits.values())

    def count(self, cid):
        with self.lock:
            return self.hits.get(cid, 0)


LOOKUP = Lookup()

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["id", "customer_id", "lines"],
    "properties": {
        "id": {"type": "string"},
        "customer_id": {"type": "string"},
        "lines": {"type": "array", "minItems": 1,
                  "items": {"$ref": "#/$defs/line"}},
    },
    "$defs": {"line": {"type": "object", "required": ["sku", "qty"],
                       "properties": {"sku": {"type": "string"},
                                      "qty": {"type": "integer", "minimum": 1}}}},
}

CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input: { http_server: { path: /orders } }
    process:
      - validate: { schema: "@SCHEMA@" }
      - enrich:
          url: 'http://127.0.0.1:%(lport)d/customers/{{ .customer_id }}'
          key: .customer_id
          answer: .data
          into: '.customer = $answer'
          cache: { ttl: %(ttl)s, max_entries: %(max_entries)d }
          on_missing: %(on_missing)s
          concurrency: 8
    outputs:
      sink: { http: { url: "%(sink)s/orders" } }
  gql:
    input: { http_server: { path: /gql } }
    process:
      - enrich:
          url: 'http://127.0.0.1:%(lport)d/graphql'
          graphql:
            query: 'query($id: ID!) { customer(id: $id) { id tier } }'
            variables: '{id: .customer_id}'
          answer: .data.customer
          into: '.customer = $answer'
    outputs:
      sink: { http: { url: "%(sink)s/gql" } }
  other:
    input: { http_server: { path: /other } }
    outputs:
      sink: { http: { url: "%(sink)s/other" } }
"""


def start(sink, ttl="5m", max_entries=10000, on_missing="dead_letter"):
    d = tmpdir("schema")
    path = os.path.join(d, "order.json")
    with open(path, "w") as f:
        json.dump(SCHEMA, f)
    conf = CONF % {"lport": LOOKUP.port, "sink": sink.url, "ttl": ttl,
                   "max_entries": max_entries, "on_missing": on_missing}
    return Patchbay(conf.replace("@SCHEMA@", path))


def order(i, cid):
    return {"id": f"o{i}", "customer_id": cid, "lines": [{"sku": "X", "qty": 1}]}


def bodies(sink, path):
    return [json.loads(r["body"]) for r in sink.records() if r.get("path") == path]


@test
def answers_are_merged_and_cached():
    sink = start_sink()
    pb = start(sink)
    base = LOOKUP.total()
    ids = [f"c{i % 20}7" if i % 2 else f"c{i % 20}" for i in range(300)]
    for i, cid in enumerate(ids):
        st, _, _ = pb.post("/orders", order(i, cid))
        check_eq(st, 202, "accepted")
    wait_until(lambda: len(bodies(sink, "/orders")) >= 300, 60, "300 enriched orders")
    got = {b["id"]: b for b in bodies(sink, "/orders")}
    check_eq(len(got), 300, "every order once")
    for i, cid in enumerate(ids):
        b = got[f"o{i}"]
        check_eq(b["customer"]["id"], cid, "the answer for its own customer")
        check_eq(b["customer"]["tier"], "gold" if cid.endswith("7") else "silver", "tier")
    requests = LOOKUP.total() - base
    distinct = len(set(ids))
    # Concurrent messages of one key share a request, later ones hit the cache.
    check(requests <= distinct, f"{requests} lookups for {distinct} customers")
    hit_ratio = 1 - requests / len(ids)
    check(hit_ratio >= 0.85, f"cache hit ratio {hit_ratio:.2f}")
    check_eq(pb.term(), 0, "clean exit")
    log_line = [l for l in pb.log().splitlines() if "enrich cache" in l]
    check(log_line and "hits=" in log_line[-1], "the cache's counts are logged at exit")


@test
def the_cache_holds_its_bound():
    sink = start_sink()
    pb = start(sink, max_entries=5)
    keys = [f"b{i}" for i in range(40)]
    for rnd in range(2):
        for i, k in enumerate(keys):
            pb.post("/orders", order(rnd * 100 + i, k))
        wait_until(lambda: len(bodies(sink, "/orders")) >= 40 * (rnd + 1), 60,
                   f"round {rnd + 1} delivered")
    # 40 keys through 5 entries, least recently used first: the second round
    # finds none of them cached, so each key was looked up twice.
    for k in keys:
        check_eq(LOOKUP.count(k), 2, f"lookups of {k}")
    # within the bound, repeats are hits
    for i in range(20):
        pb.post("/orders", order(500 + i, "hot"))
    wait_until(lambda: len(bodies(sink, "/orders")) >= 100, 60, "hot orders delivered")
    check_eq(LOOKUP.count("hot"), 1, "one lookup for 20 orders of one customer")


@test
def failed_lookups_retry_the_message_and_404s_follow_on_missing():
    sink = start_sink()
    pb = start(sink)
    with LOOKUP.lock:
        LOOKUP.fail["flaky"] = 2
    st, _, data = pb.post("/orders", order(1, "flaky"))
    flaky_id = json.loads(data)["id"]
    st, _, data = pb.post("/orders", order(2, "missing-1"))
    missing_id = json.loads(data)["id"]
    wait_until(lambda: any(b["id"] == "o1" for b in bodies(sink, "/orders")), 30,
               "the flaky lookup's order delivered after its retries")
    check_eq(LOOKUP.count("flaky"), 3, "two failures, then the answer")
    msg = pb.message(flaky_id)
    route = [d for d in msg["deliveries"] if d["output"] == "(route)"][0]
    check_eq(route["state"], "delivered", "routed in the end")
    check(route["attempts"] >= 3, f"each failed lookup recorded as an attempt: {route}")
    dead = wait_until(lambda: pb.dead_letters(pipeline="orders"), 20, "the 404 dead-lettered")
    check_eq(len(dead), 1, "only the not-found order")
    check_eq(dead[0]["message_id"], missing_id, "the not-found order")
    check("nothing found" in dead[0]["last_error"] and "404" in dead[0]["last_error"],
          f"reason: {dead[0]['last_error']}")
    check(all(b["id"] != "o2" for b in bodies(sink, "/orders")), "not delivered")
    pb.term()

    for mode, want in (("keep", True), ("drop", False)):
        sink2 = start_sink()
        pb2 = start(sink2, on_missing=mode)
        pb2.post("/orders", order(3, "missing-2"))
        pb2.post("/orders", order(4, "c1"))
        wait_until(lambda: any(b["id"] == "o4" for b in bodies(sink2, "/orders")), 30,
                   f"{mode}: the found order")
        if want:
            wait_until(lambda: any(b["id"] == "o3" for b in bodies(sink2, "/orders")), 30,
                       "keep: the not-found order passes unchanged")
            o3 = [b for b in bodies(sink2, "/orders") if b["id"] == "o3"][0]
            check("customer" not in o3, "unchanged")
        else:
            time.sleep(0.5)  # nothing may arrive: give a wrong delivery its chance
            check(all(b["id"] != "o3" for b in bodies(sink2, "/orders")), "drop: filtered")
        check_eq(pb2.dead_letters(pipeline="orders"), [], f"{mode}: no dead letter")
        pb2.term()


@test
def a_slow_lookup_stalls_no_other_delivery():
    sink = start_sink()
    pb = start(sink)
    with LOOKUP.lock:
        for i in range(8):
            LOOKUP.slow[f"slow{i}"] = 3.0
    for i in range(8):
        pb.post("/orders", order(i, f"slow{i}"))
    t0 = time.monotonic()
    post_many(pb.url + "/other", [{"n": i} for i in range(100)], concurrency=8)
    wait_until(lambda: len(bodies(sink, "/other")) >= 100, 10, "the other pipeline's 100")
    took = time.monotonic() - t0
    check(len(bodies(sink, "/orders")) == 0 or took < 3.0,
          f"other deliveries waited for the slow lookups ({took:.1f}s)")
    wait_until(lambda: len(bodies(sink, "/orders")) >= 8, 30, "the slow ones too")


@test
def invalid_messages_are_dead_lettered_once_with_the_pointer():
    sink = start_sink()
    pb = start(sink)
    bad = order(1, "c1")
    bad["lines"].append({"sku": "Y", "qty": 0})
    st, _, data = pb.post("/orders", bad)
    bad_id = json.loads(data)["id"]
    pb.post("/orders", order(2, "c1"))
    wait_until(lambda: any(b["id"] == "o2" for b in bodies(sink, "/orders")), 30, "valid order")
    dead = wait_until(lambda: pb.dead_letters(pipeline="orders"), 20, "the invalid one")
    check_eq(len(dead), 1, "one dead letter")
    check_eq(dead[0]["message_id"], bad_id, "the invalid order")
    err = dead[0]["last_error"]
    check('"/lines/1/qty"' in err and "minimum" in err and "process step 1 (validate)" in err,
          f"reason names the pointer and keyword: {err}")
    msg = pb.message(bad_id)
    route = [d for d in msg["deliveries"] if d["output"] == "(route)"]
    check_eq(len(route), 1, "one route delivery")
    check_eq(route[0]["state"], "dead", "dead, not retried")
    check(all(b["id"] != "o1" for b in bodies(sink, "/orders")), "never delivered")


@test
def kill9_while_lookups_are_parked_loses_nothing():
    sink = start_sink()
    pb = start(sink)
    with LOOKUP.lock:
        for i in range(20):
            LOOKUP.slow[f"k9-{i}"] = 1.0
    for i in range(20):
        st, _, _ = pb.post("/orders", order(900 + i, f"k9-{i}"))
        check_eq(st, 202, "accepted")
    wait_until(lambda: LOOKUP.count("k9-0") >= 1, 10, "lookups under way")
    pb.kill9()
    with LOOKUP.lock:
        for i in range(20):
            LOOKUP.slow.pop(f"k9-{i}", None)
    pb.start()
    wait_until(lambda: len({b["id"] for b in bodies(sink, "/orders")}) >= 20, 30,
               "every parked order routed after the restart")
    got = {b["id"]: b for b in bodies(sink, "/orders")}
    for i in range(20):
        check_eq(got[f"o{900 + i}"]["customer"]["id"], f"k9-{i}", "enriched")
    check_eq(pb.dead_letters(pipeline="orders"), [], "no dead letter")


@test
def sigterm_while_lookups_are_parked_exits_cleanly_and_resumes():
    sink = start_sink()
    pb = start(sink)
    with LOOKUP.lock:
        for i in range(10):
            LOOKUP.slow[f"term-{i}"] = 30.0
    for i in range(10):
        pb.post("/orders", order(700 + i, f"term-{i}"))
    wait_until(lambda: LOOKUP.count("term-0") >= 1, 10, "lookups under way")
    check_eq(pb.term(timeout=60), 0, "exit code with lookups parked")
    with LOOKUP.lock:
        for i in range(10):
            LOOKUP.slow.pop(f"term-{i}", None)
    pb.start()
    wait_until(lambda: len({b["id"] for b in bodies(sink, "/orders")}) >= 10, 30,
               "every order routed after the restart")
    check_eq(pb.dead_letters(pipeline="orders"), [], "no dead letter")


@test
def graphql_lookups_and_their_errors():
    sink = start_sink()
    pb = start(sink)
    for i, cid in enumerate(["g1", "g1", "g2", "missing-g", "bad"]):
        pb.post("/gql", order(800 + i, cid))
    wait_until(lambda: len(bodies(sink, "/gql")) >= 3, 30, "the found customers' orders")
    got = {b["id"]: b for b in bodies(sink, "/gql")}
    check_eq(got["o800"]["customer"], {"id": "g1", "tier": "platinum"}, "the GraphQL answer")
    check_eq(LOOKUP.count("gql:g1"), 1, "one request for two orders of g1")
    dead = wait_until(lambda: len(pb.dead_letters(pipeline="gql")) >= 2 and
                      pb.dead_letters(pipeline="gql"), 30, "the missing and the bad one")
    reasons = sorted(d["last_error"] for d in dead)
    check(any("GraphQL error: Customer id is malformed" in r for r in reasons), f"{reasons}")
    check(any("nothing found" in r for r in reasons), f"{reasons}")
    check_eq(LOOKUP.count("gql:bad"), 1, "a GraphQL error is not retried")


if __name__ == "__main__":
    run()
