"""The nats input and output against a real nats-server with JetStream (one
server for the whole module): 10,000 messages from a stream to an HTTP
partner and 10,000 from HTTP to a stream, mapped, each once; a poison
message dead-lettered and acknowledged, never redelivered; SIGTERM leaving
nothing unacknowledged; a consumer killed between commit and ack whose
messages another consumer takes over; and the outbound guard refusing the
broker without outbound.allow."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (Patchbay, Poster, check, check_eq, run, scaled, start_sink,  # noqa: E402
                    test, wait_until)
from srv_nats import Nats  # noqa: E402

NATS = None


def server():
    global NATS
    if NATS is None or not NATS.running():
        NATS = Nats()
    return NATS


IN_CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input:
      nats:
        url: "%(url)s"
        stream: %(stream)s
        consumer: %(consumer)s
        subject: "%(subject)s"
        ack_wait: %(ack_wait)s
        batch: %(batch)d
    process:
      - map: '{n: .n, subject: $meta.subject, seq: $meta.stream_seq,
               delivered: $meta.num_delivered, src: $meta.headers.Src,
               tags: $meta.headers.Tag, input: $meta.input}'
    outputs:
      sink: { http: { url: "%(sink)s/in" } }
"""


def in_conf(stream, subject, sink, consumer="patchbay", ack_wait="30s", batch=256):
    return IN_CONF % {"url": server().url, "stream": stream, "consumer": consumer,
                      "subject": subject, "sink": sink.url, "ack_wait": ack_wait,
                      "batch": batch}


def bodies(sink):
    return [json.loads(r["body"]) for r in sink.records()]


def input_status(pb):
    st, doc = pb.admin("GET", "/api/inputs")
    check_eq(st, 200, "GET /api/inputs")
    return doc["inputs"][0]


def settled(n, stream, consumer):
    """The consumer has nothing left: nothing pending, nothing unacked."""
    ci = n.consumer_info(stream, consumer)
    return ci and ci["num_pending"] == 0 and ci["num_ack_pending"] == 0


@test
def stream_to_http_10000_each_once_and_mapped():
    n = server()
    n.stream_add("IN1", "in1.>")
    sink = start_sink()
    pb = Patchbay(in_conf("IN1", "in1.>", sink))
    # Half carry a Nats-Msg-Id (their key), half not (key <stream>:<seq>).
    n.publish("in1.orders", 5000, msg_id="order-%d", headers=["Src:shop", "Tag:a", "Tag:b"])
    n.publish("in1.returns", 5000, start=5000, headers=["Src:shop"])
    wait_until(lambda: len(sink.records()) >= 10000, 120, "10,000 deliveries at the sink")
    got = bodies(sink)
    check_eq(len(got), 10000, "deliveries (each once, nothing doubled)")
    check_eq(sorted(b["n"] for b in got), list(range(10000)), "every message arrived")
    first = min(got, key=lambda b: b["n"])
    check_eq(first, {"n": 0, "subject": "in1.orders", "seq": 1, "delivered": 1, "src": "shop",
                     "tags": ["a", "b"], "input": "nats"}, "the mapping with $meta")
    last = max(got, key=lambda b: b["n"])
    check_eq((last["subject"], last["seq"], last["tags"]), ("in1.returns", 10000, None),
             "$meta of a message without headers beyond Src")
    wait_until(lambda: settled(n, "IN1", "patchbay"), 30, "nothing pending or unacked")
    ci = n.consumer_info("IN1", "patchbay")
    check_eq(ci["num_redelivered"], 0, "nothing redelivered")
    check_eq(ci["ack_floor_stream_seq"], 10000, "every message acknowledged")
    st = wait_until(lambda: (lambda s: s if s["lag"] == 0 else None)(input_status(pb)), 20,
                    "lag 0")
    check_eq((st["state"], st["position"], st["accepted"]), ("connected", "IN1:10000", 10000),
             "input state, position and count")
    check_eq(pb.metrics().get("patchbay_input_connected", pipeline="orders"), 1.0,
             "patchbay_input_connected")


OUT_CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  publish:
    input: { http_server: { path: /orders } }
    process:
      - map: '{id: .id, region: .region, cents: .total}'
    outputs:
      js:
        nats:
          url: "%(url)s"
          subject: 'out1.{{ .region }}'
          stream: OUT1
          headers: { Source: patchbay, Order: '{{ .id }}' }
"""


@test
def http_to_stream_10000_each_once():
    n = server()
    n.stream_add("OUT1", "out1.>")
    pb = Patchbay(OUT_CONF % {"url": n.url})
    regions = ["eu", "us", "apac"]
    p = Poster(pb.port, "/orders",
               lambda i: {"id": f"o-{i}", "region": regions[i % 3], "total": i * 10},
               concurrency=16, n=10000)
    p.start()
    res = p.join()
    check_eq(sum(1 for _, st, _ in res if st == 202), 10000, "every POST acknowledged")
    wait_until(lambda: n.stream_info("OUT1")["messages"] >= 10000, 120, "10,000 in the stream")
    wait_until(lambda: pb.metrics().get("patchbay_backlog") == 0, 30, "backlog 0")
    msgs = n.dump("OUT1")
    check_eq(len(msgs), 10000, "messages in the stream (each once)")
    ids = {}
    for m in msgs:
        body = json.loads(m["data"])
        ids[body["id"]] = m
        i = int(body["id"][2:])
        check_eq(m["subject"], "out1." + regions[i % 3], "subject from the template")
        check_eq(body, {"id": body["id"], "region": regions[i % 3], "cents": i * 10}, "body mapped")
        check_eq(m["headers"]["Order"], [body["id"]], "header from a template")
        check_eq(m["headers"]["Source"], ["patchbay"], "static header")
    check_eq(len(ids), 10000, "distinct orders")
    keys = {m["headers"]["Nats-Msg-Id"][0] for m in msgs}
    check_eq(len(keys), 10000, "one Nats-Msg-Id per message")
    # The key is the delivery's idempotency key: the stream drops a repeat.
    some = msgs[17]["headers"]["Nats-Msg-Id"][0]
    check(some.endswith(".js"), f"idempotency key of output js: {some}")
    r = n.publish("out1.eu", 1, msg_id=some)
    check_eq(r["duplicates"], 1, "a repeat of the key is dropped by the stream")
    check_eq(n.stream_info("OUT1")["messages"], 10000, "still 10,000")
    st, doc = pb.admin("GET", "/api/pipelines")
    js = [o for o in doc["pipelines"][0]["outputs"] if o["name"] == "js"][0]
    check_eq((js["state"], js["delivered_total"]), ("connected", 10000), "output state and count")


@test
def no_stream_for_the_subject_is_permanent():
    n = server()
    pb = Patchbay(OUT_CONF.replace("          stream: OUT1\n", "")
                  .replace("'out1.{{ .region }}'", "'nowhere.{{ .region }}'") % {"url": n.url})
    st, _, data = pb.post("/orders", {"id": "x-1", "region": "eu", "total": 1})
    check_eq(st, 202, "accepted")
    mid = json.loads(data)["id"]
    pb.wait_states([mid], {"js": "dead"}, timeout=30)
    dl = pb.dead_letters()
    check_eq(len(dl), 1, "one dead letter")
    check("no responders" in json.dumps(dl[0]), f"the reason names it: {dl[0]}")
    check_eq(dl[0]["attempts"], 1, "not retried")


@test
def another_stream_than_the_expected_one_is_permanent():
    n = server()
    n.stream_add("EXP1", "exp1.>")
    conf = OUT_CONF.replace("stream: OUT1", "stream: '{{ .region }}'").replace(
        "'out1.{{ .region }}'", "'exp1.{{ .region }}'") % {"url": n.url}
    pb = Patchbay(conf)
    st, _, right = pb.post("/orders", {"id": "e-1", "region": "EXP1", "total": 1})
    st2, _, wrong = pb.post("/orders", {"id": "e-2", "region": "OTHER", "total": 1})
    check_eq((st, st2), (202, 202), "accepted")
    right, wrong = json.loads(right)["id"], json.loads(wrong)["id"]
    pb.wait_states([right], {"js": "delivered"}, timeout=30)
    pb.wait_states([wrong], {"js": "dead"}, timeout=30)
    dl = pb.dead_letters()
    check_eq([d["message_id"] for d in dl], [wrong], "only the wrong one is dead")
    check("expected stream" in json.dumps(dl[0]), f"the reason: {dl[0]}")
    check_eq(dl[0]["attempts"], 1, "not retried")
    check_eq(n.stream_info("EXP1")["messages"], 1, "the right one stored")
    # Each attempt keeps what the stream answered: its PubAck, or its refusal.
    def log(mid):
        return next(d for d in pb.message(mid)["deliveries"] if d["output"] == "js")["attempt_log"]

    ok = log(right)
    check_eq([a["answer"] for a in ok], ["stream EXP1 seq 1"], "the PubAck as the answer")
    bad = log(wrong)
    check("expected stream" in (bad[0]["answer"] or ""), f"the refusal as the answer: {bad}")


@test
def poison_is_dead_lettered_and_acked_never_redelivered():
    n = server()
    n.stream_add("P1", "p1.>")
    sink = start_sink()
    pb = Patchbay(in_conf("P1", "p1.>", sink, ack_wait="2s"))
    n.publish("p1.x", 1, start=1)
    n.publish("p1.x", 1, body="{not json")
    n.publish("p1.x", 1, start=3)
    wait_until(lambda: len(sink.records()) >= 2, 30, "the two good messages")
    dl = wait_until(lambda: pb.dead_letters(), 20, "a dead letter")
    check_eq(len(dl), 1, "one dead letter")
    check("invalid JSON" in json.dumps(dl[0]), f"its reason: {dl[0]}")
    wait_until(lambda: settled(n, "P1", "patchbay"), 20, "nothing unacked")
    # Past several ack_wait periods nothing comes back.
    deadline = time.monotonic() + scaled(6)
    while time.monotonic() < deadline:
        ci = n.consumer_info("P1", "patchbay")
        check_eq((ci["num_redelivered"], ci["num_ack_pending"]), (0, 0), "never redelivered")
        time.sleep(0.5)
    check_eq(len(pb.dead_letters()), 1, "still one dead letter")
    check_eq(input_status(pb)["dead_on_arrival"], 1, "counted dead on arrival")
    check_eq(sorted(b["n"] for b in bodies(sink)), [1, 3], "the good ones, once")


@test
def sigterm_acks_what_was_taken_and_a_restart_doubles_nothing():
    n = server()
    n.stream_add("S1", "s1.>")
    sink = start_sink(delay_ms=20)
    n.publish("s1.x", 3000)
    pb = Patchbay(in_conf("S1", "s1.>", sink, batch=100))
    wait_until(lambda: len(sink.records()) >= 300, 60, "some deliveries")
    check_eq(pb.term(), 0, "exit code on SIGTERM")
    ci = n.consumer_info("S1", "patchbay")
    check_eq(ci["num_ack_pending"], 0, "nothing left unacknowledged after SIGTERM")
    check(len(sink.records()) < 3000, "stopped with deliveries still to make")
    # More arrive while it is down; the restart takes them and the backlog.
    n.publish("s1.x", 3000, start=3000)
    pb.start()
    wait_until(lambda: settled(n, "S1", "patchbay"), 60, "the rest consumed")
    wait_until(lambda: len(sink.records()) >= 6000, 60, "6,000 deliveries")
    wait_until(lambda: pb.metrics().get("patchbay_backlog") == 0, 60, "backlog 0")
    got = sorted(b["n"] for b in bodies(sink))
    check_eq(got, list(range(6000)), "every message delivered once")


@test
def store_back_pressure_naks_with_a_delay_and_loses_nothing():
    n = server()
    n.stream_add("B1", "b1.>")
    sink = start_sink()
    conf = in_conf("B1", "b1.>", sink, batch=50).replace(
        "outbound: {", "limits: { ingest_queue: 1 }\noutbound: {")
    conf = conf.replace("        batch: 50", "        batch: 50\n        nak_delay: 200ms")
    pb = Patchbay(conf)
    n.publish("b1.x", 3000)
    wait_until(lambda: settled(n, "B1", "patchbay"), 120, "everything taken")
    st = input_status(pb)
    check(st["nacked"] > 0, f"the store pushed back and batches were naked: {st}")
    wait_until(lambda: len(sink.records()) >= 3000, 60, "3,000 deliveries")
    got = bodies(sink)
    check_eq(sorted(b["n"] for b in got), list(range(3000)), "every message once")
    again = [b for b in got if b["delivered"] > 1]
    check(again, "naked messages came back as redeliveries ($meta.num_delivered > 1)")


@test
def another_consumer_takes_over_what_a_dead_one_left_unacked():
    n = server()
    n.stream_add("K1", "k1.>")
    sink = start_sink()
    n.publish("k1.x", 500)
    conf = in_conf("K1", "k1.>", sink, ack_wait="2s", batch=50)
    # The first patchbay dies right after its first commit, before any ack.
    a = Patchbay(conf, env={"PATCHBAY_TEST_CRASH_BEFORE_ACK": "1"}, start=False)
    a.start(wait_ready=False)
    check_eq(a.proc.wait(timeout=scaled(30)), 137, "the first consumer died before its acks")
    ci = n.consumer_info("K1", "patchbay")
    check(ci["num_ack_pending"] >= 50, f"it left messages unacknowledged: {ci}")
    check_eq(len(sink.records()), 0, "it delivered nothing")
    # Another patchbay (its own store) on the same durable consumer.
    b = Patchbay(conf)
    wait_until(lambda: len(sink.records()) >= 500, 60, "all 500 delivered by the second")
    wait_until(lambda: settled(n, "K1", "patchbay"), 30, "nothing unacked")
    got = bodies(sink)
    check_eq(sorted(x["n"] for x in got), list(range(500)), "each message once")
    taken = [x for x in got if x["delivered"] >= 2]
    check(len(taken) >= 50, f"the dead one's messages came as redeliveries: {len(taken)}")
    check_eq(b.term(), 0, "exit code")


GUARD_CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
pipelines:
  in:
    input: { nats: { url: "%(url)s", stream: G1, consumer: guarded, subject: "g1.>" } }
    outputs:
      drop: { drop: {} }
  out:
    input: { http_server: { path: /out } }
    outputs:
      js: { nats: { url: "%(url)s", subject: g1.out } }
"""


@test
def the_outbound_guard_refuses_the_broker_without_allow():
    n = server()
    n.stream_add("G1", "g1.>")
    pb = Patchbay(GUARD_CONF % {"url": n.url}, start=False)
    lint = pb.cli("lint", pb.config_path)
    check("outbound" in lint.stdout + lint.stderr, f"lint warns: {lint.stdout}{lint.stderr}")
    pb.start(wait_ready=False)

    def refused():
        st = input_status(pb)
        return st if st["state"] == "reconnecting" else None

    st = wait_until(refused, 20, "the input refused")
    check("loopback" in (st["detail"] or ""), f"the reason: {st['detail']}")
    code, _, body = pb.get("/ready")
    check_eq(code, 503, f"not ready: {body}")
    code, _, _ = pb.post("/out", {"a": 1})
    check_eq(code, 202, "the message is taken")

    def out_refused():
        _, doc = pb.admin("GET", "/api/pipelines")
        o = [p for p in doc["pipelines"] if p["name"] == "out"][0]["outputs"][0]
        return o if o["state"] == "reconnecting" else None

    o = wait_until(out_refused, 20, "the output refused")
    check("loopback" in o.get("detail", ""), f"the output's reason: {o}")
    check_eq([c for c in n.connection_names() if c.startswith("patchbay")], [],
             "the broker saw no connection from patchbay")
    check_eq(n.consumer_info("G1", "guarded"), None, "no consumer was created")
    check_eq(n.stream_info("G1")["messages"], 0, "nothing was published")
    check_eq(pb.metrics().get("patchbay_backlog"), 1.0, "the delivery waits, not dead-lettered")


if __name__ == "__main__":
    run()
