"""amqp under faults, against a real RabbitMQ (one server for the module):
patchbay killed with -9 five times while consuming and while publishing,
stopped with SIGTERM mid-stream, and the broker itself killed and started
again mid-stream. Nothing acknowledged is lost, and nothing is left
unacknowledged at the broker at the end."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (Patchbay, Poster, _procs, _procs_lock, check, check_eq, log,  # noqa: E402
                    run, start_sink, test, wait_until)
from srv_amqp import PB_AMQP, RabbitMQ  # noqa: E402

_rmq = None


def rmq():
    global _rmq
    if _rmq is None:
        _rmq = RabbitMQ.module()
    return _rmq


def settled(queue):
    return rmq().queues().get(queue, (None, None))


def api(pb, path):
    st, doc = pb.admin("GET", path)
    check(st == 200, f"GET {path} -> {st} {doc}")
    return doc


def input_state(pb):
    return api(pb, "/api/inputs")["inputs"][0]


def output_state(pb, name="mq"):
    for p in api(pb, "/api/pipelines")["pipelines"]:
        for o in p["outputs"]:
            if o["name"] == name:
                return o
    raise AssertionError(f"no output {name}")


def publish_bg(exchange, key, count, start, id_prefix):
    """pb_amqp publish in the background (killed with the test if need be)."""
    p = subprocess.Popen([PB_AMQP, "publish", rmq().url, exchange, key, str(count), "--start",
                          str(start), "--id-prefix", id_prefix, "--window", "200"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    with _procs_lock:
        _procs.append(p)
    return p


IN_CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.1] }
pipelines:
  orders:
    input:
      amqp:
        url: "%(url)s"
        queue: %(queue)s
        heartbeat: 2s
        declare:
          bindings: [{ exchange: %(queue)s-x, routing_key: "#", exchange_type: topic }]
    process:
      - map: '{n, order: .order_id}'
    outputs:
      api: { http: { url: "%(sink)s/orders" } }
"""


def ns_at(sink):
    return [json.loads(r["body"])["n"] for r in sink.records()]


@test
def kill9_while_consuming_five_times():
    q, n, rounds = "k9in", 10000, 5
    sink = start_sink()
    pb = Patchbay(IN_CONF % {"url": rmq().url, "queue": q, "sink": sink.url})
    wait_until(lambda: q in rmq().queues(), 30, "the queue declared by the input")
    per = n // rounds
    pubs = []
    for r in range(rounds):
        pubs.append(publish_bg(q + "-x", "order", per, r * per, "k-"))
        wait_until(lambda: input_state(pb)["received"] >= 200, 60, "consuming")
        pb.kill9()
        pb.start()
    for p in pubs:
        out, _ = p.communicate(timeout=120)
        check_eq(p.returncode, 0, f"publisher: {out}")
    wait_until(lambda: len(set(ns_at(sink))) >= n, 180, f"all {n} orders at the sink")
    got = ns_at(sink)
    check_eq(sorted(set(got)), list(range(n)), "every order arrived")
    log(f"  sink: {len(got)} requests for {n} orders ({len(got) - n} repeats after kills)")
    wait_until(lambda: settled(q) == (0, 0), 30, "nothing ready or unacked at the broker")


OUT_CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.1] }
pipelines:
  publish:
    input: { http_server: { path: /orders } }
    outputs:
      mq:
        amqp:
          url: "%(url)s"
          exchange: %(queue)s-x
          routing_key: 'order.{{ .n }}'
          heartbeat: 2s
"""


def published_ids(queue):
    return [g["message_id"] for g in rmq().consume(queue, idle=2)]


def wait_all_delivered(pb, timeout=180):
    def done():
        o = output_state(pb)
        return o["pending"] == 0 and o["inflight"] == 0

    wait_until(done, timeout, "every delivery of the output done")


@test
def kill9_while_publishing_five_times():
    q, n = "k9out", 10000
    rmq().declare(q, binds=[f"{q}-x:order.#:topic"])
    pb = Patchbay(OUT_CONF % {"url": rmq().url, "queue": q})
    poster = Poster(pb.port, "/orders", lambda i: {"n": i}, concurrency=8, n=n).start()
    for _ in range(5):
        before = poster.count_acked()
        wait_until(lambda: poster.count_acked() >= before + 1000, 120, "posts acknowledged")
        pb.kill9()
        pb.start()
    poster.join()
    acked = poster.acked()
    # Posts sent while the daemon was down got no answer (a sender sends
    # them again); the acknowledged ones are the promise.
    check(len(acked) >= n // 2, f"most posts acknowledged: {len(acked)}")
    wait_all_delivered(pb)
    ids = published_ids(q)
    missing = {f"{mid}.mq" for _, mid in acked} - set(ids)
    check_eq(len(missing), 0, f"acknowledged messages missing at the broker: {sorted(missing)[:5]}")
    log(f"  broker: {len(ids)} messages for {len(acked)} acknowledged posts "
        f"({len(ids) - len(set(ids))} repeats, same message_id)")
    check_eq(output_state(pb)["dead"], 0, "dead letters")


@test
def sigterm_acks_what_was_committed():
    q, n = "term", 6000
    sink = start_sink()
    pb = Patchbay(IN_CONF % {"url": rmq().url, "queue": q, "sink": sink.url})
    wait_until(lambda: q in rmq().queues(), 30, "the queue declared by the input")
    pub = publish_bg(q + "-x", "order", n, 0, "t-")
    wait_until(lambda: input_state(pb)["received"] >= 500, 60, "consuming")
    check_eq(pb.term(), 0, "exit code on SIGTERM")
    check("not yet acknowledged" not in pb.log(), "batches left unacknowledged at exit")
    out, _ = pub.communicate(timeout=120)
    check_eq(pub.returncode, 0, f"publisher: {out}")
    pb.start()
    wait_until(lambda: len(set(ns_at(sink))) >= n, 120, f"all {n} orders at the sink")
    check_eq(sorted(set(ns_at(sink))), list(range(n)), "every order arrived")
    # What the first run committed it acked before exiting: nothing came back.
    check_eq(api(pb, "/api/pipelines")["pipelines"][0]["duplicates"], 0,
             "committed deliveries redelivered after SIGTERM")
    wait_until(lambda: settled(q) == (0, 0), 30, "nothing ready or unacked at the broker")


@test
def broker_restart_while_consuming():
    q, n = "brkin", 8000
    sink = start_sink()
    pb = Patchbay(IN_CONF % {"url": rmq().url, "queue": q, "sink": sink.url})
    wait_until(lambda: q in rmq().queues(), 30, "the queue declared by the input")
    rmq().publish(q + "-x", "order", n // 2, 0, id_prefix="b-")
    wait_until(lambda: input_state(pb)["received"] >= 500, 60, "consuming")
    rmq().kill9()
    wait_until(lambda: input_state(pb)["state"] == "reconnecting", 30, "input reconnecting")
    rmq().start()
    wait_until(lambda: input_state(pb)["state"] == "connected", 60, "input connected again")
    rmq().publish(q + "-x", "order", n // 2, n // 2, id_prefix="b-")
    wait_until(lambda: len(set(ns_at(sink))) >= n, 180, f"all {n} orders at the sink")
    check_eq(sorted(set(ns_at(sink))), list(range(n)), "every order arrived")
    wait_until(lambda: settled(q) == (0, 0), 30, "nothing ready or unacked at the broker")


@test
def broker_restart_while_publishing():
    q, n = "brkout", 4000
    rmq().declare(q, binds=[f"{q}-x:order.#:topic"])
    pb = Patchbay(OUT_CONF % {"url": rmq().url, "queue": q})
    poster = Poster(pb.port, "/orders", lambda i: {"n": i}, concurrency=8, n=n).start()
    wait_until(lambda: poster.count_acked() >= 1000, 60, "posts acknowledged")
    rmq().kill9()
    wait_until(lambda: output_state(pb)["state"] == "reconnecting", 60, "output reconnecting")
    rmq().start()
    poster.join()
    acked = poster.acked()
    check_eq(len(acked), n, "every post acknowledged (the broker is not in that path)")
    wait_all_delivered(pb)
    check_eq(output_state(pb)["state"], "connected", "output state")
    ids = published_ids(q)
    missing = {f"{mid}.mq" for _, mid in acked} - set(ids)
    check_eq(len(missing), 0, f"acknowledged messages missing at the broker: {sorted(missing)[:5]}")
    check_eq(output_state(pb)["dead"], 0, "dead letters")


run()
