"""The amqp input and output against a real RabbitMQ (one server for the
module): 10,000 messages queue -> patchbay -> HTTP sink and HTTP -> patchbay
-> exchange, each mapped and each once; $meta of a delivery (properties and
headers of every kind); TLS with the broker's name verified although the
connection goes to the address the outbound guard allowed; a poison message
into the dead-letter queue, acked at the broker; an unroutable publish
dead-lettered with the broker's reason; back-pressure nacks and pauses
without losing or doubling; a consumer that dies between commit and ack
leaves its deliveries to the next; the outbound guard and the password
never shown; the example pipeline examples/rabbitmq-orders runs as its
README says."""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (Patchbay, check, check_eq, free_port, log, post_many, run,  # noqa: E402
                    start_sink, test, tmpdir, wait_until)
from srv_amqp import RabbitMQ  # noqa: E402

SECRET = "s3cr3t-Pa55-amqp"
_rmq = None


def rmq():
    """The module's broker, with a user whose password the tests look for."""
    global _rmq
    if _rmq is None:
        _rmq = RabbitMQ.module(tls=True)
        _rmq.ctl("add_user", "pb", SECRET)
        _rmq.ctl("set_permissions", "-p", "/", "pb", ".*", ".*", ".*")
    return _rmq


def pb_url():
    return f"amqp://pb:{SECRET}@127.0.0.1:{rmq().port}/%2f"


def api(pb, path):
    st, doc = pb.admin("GET", path)
    check(st == 200, f"GET {path} -> {st} {doc}")
    return doc


def input_state(pb):
    return api(pb, "/api/inputs")["inputs"][0]


def check_no_secret(pb):
    check(SECRET not in pb.log(), "the password appears in the log")
    for path in ("/api/inputs", "/api/pipelines", "/metrics"):
        st, _, data = pb.request("GET", path, headers={"Authorization": f"Bearer {pb.token}"})
        check(SECRET.encode() not in data, f"the password appears in {path}")


def settled(queue):
    """(ready, unacked) of queue at the broker, per rabbitmqctl."""
    return rmq().queues().get(queue, (None, None))


IN_CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.1] }
limits: { ingest_queue: %(ingest_queue)d }
pipelines:
  orders:
    input:
      amqp:
        url: "%(url)s"
        queue: %(queue)s
        prefetch: %(prefetch)d
        declare:
          bindings:
            - { exchange: %(exchange)s, routing_key: "order.#", exchange_type: topic }
    process:
      - map: '{order: .order_id, amount: .cents, n, rk: $meta.routing_key, mid: $meta.message_id,
               ex: $meta.exchange, redelivered: $meta.redelivered}'
    outputs:
      api: { http: { url: "%(sink)s/orders" } }
"""


def in_conf(queue, sink, prefetch=256, ingest_queue=8192):
    return IN_CONF % {"url": pb_url(), "queue": queue, "exchange": queue + "-x",
                      "prefetch": prefetch, "sink": sink.url, "ingest_queue": ingest_queue}


def orders_at(sink):
    return [json.loads(r["body"]) for r in sink.records() if r["path"] == "/orders"]


@test
def queue_to_http_10k_each_once_mapped():
    q, n = "in10k", 10000
    sink = start_sink()
    pb = Patchbay(in_conf(q, sink))
    # The input declared the queue, the exchange and the binding.
    wait_until(lambda: q in rmq().queues(), 30, "the queue declared by the input")
    out = rmq().publish(q + "-x", "order.created", n, id_prefix="m-")
    log(f"  broker: {out}")
    wait_until(lambda: len(sink.records()) >= n, 180, f"{n} orders at the sink")
    got = orders_at(sink)
    check_eq(len(got), n, "deliveries at the sink (each once)")
    check_eq(sorted(o["n"] for o in got), list(range(n)), "every order")
    o = next(x for x in got if x["n"] == 7)
    check_eq(o, {"order": "o-7", "amount": 700, "n": 7, "rk": "order.created", "mid": "m-7",
                 "ex": q + "-x", "redelivered": False}, "the mapped body with $meta")
    wait_until(lambda: settled(q) == (0, 0), 30, "nothing ready or unacked at the broker")
    st = input_state(pb)
    check_eq(st["state"], "connected", "input state")
    check_eq(st["accepted"], n, "accepted")
    check_eq(st["nacked"], 0, "nacked")
    check("delivery_tag=" in (st["position"] or ""), f"position: {st['position']}")
    wait_until(lambda: input_state(pb)["lag"] == 0, 30, "lag 0")
    m = pb.metrics()
    check_eq(m.get("patchbay_input_connected", pipeline="orders"), 1.0, "connected gauge")
    check_no_secret(pb)
    check_eq(pb.term(), 0, "exit code on SIGTERM")


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
          exchange: %(exchange)s
          exchange_type: topic
          routing_key: 'order.{{ .kind }}'
          correlation_id: '{{ .id }}'
          headers: { x-order: '{{ .id }}', x-source: shop }
          map: '{order_id: .id, kind, total: (.cents / 100)}'
      unroutable:
        amqp: { url: "%(url)s", routing_key: 'no-such-queue-{{ .id }}' }
"""


@test
def http_to_exchange_10k_confirmed_each_once():
    q, n = "out10k", 10000
    ex = q + "-x"
    rmq().declare(q, binds=[f"{ex}:order.#:topic"])
    pb = Patchbay(OUT_CONF % {"url": pb_url(), "exchange": ex})
    bodies = [{"id": f"o-{i}", "kind": "created" if i % 2 else "paid", "cents": i * 100}
              for i in range(n)]
    res = post_many(pb.url + "/orders", bodies, concurrency=32)
    mids = [mid for st, mid in res if st == 202]
    check_eq(len(mids), n, "bodies accepted")

    def delivered():
        m = pb.metrics()
        return m.value("patchbay_deliveries_delivered_total", output="mq") >= n

    wait_until(delivered, 180, f"{n} confirmed publishes")
    got = rmq().consume(q, idle=2)
    check_eq(len(got), n, "messages in the queue (each once)")
    check_eq(len({g["message_id"] for g in got}), n, "distinct message ids")
    check_eq({g["message_id"] for g in got}, {f"{m}.mq" for m in mids},
             "message_id = the delivery's idempotency key")
    g = next(x for x in got if json.loads(x["body"])["order_id"] == "o-3")
    check_eq(json.loads(g["body"]), {"order_id": "o-3", "kind": "created", "total": 3},
             "the output's map")
    check_eq(g["routing_key"], "order.created", "routing key template")
    check_eq(g["correlation_id"], "o-3", "correlation_id template")
    hdrs = dict(g["headers"])
    check(re.match(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$", hdrs.pop("traceparent", "")),
          f"the attempt's traceparent in the headers: {g['headers']}")
    check_eq(hdrs, {"x-order": "o-3", "x-source": "shop"}, "headers")
    check_eq(g["delivery_mode"], 2, "persistent")
    check_eq(g["content_type"], "application/json", "content type")
    check_eq(g["app_id"], "patchbay", "app_id")
    # The same messages to the default exchange with no such queue: returned
    # as unroutable (mandatory), dead-lettered with the broker's reason.
    dead = wait_until(lambda: len(pb.dead_letters(output="unroutable")) >= n and
                      pb.dead_letters(output="unroutable"), 180, "unroutable dead letters")
    check_eq(len(dead), n, "every unroutable message dead-lettered once")
    err = dead[0]["last_error"]
    check("unroutable: 312 NO_ROUTE" in err, f"reason: {err}")
    check_eq(dead[0]["attempts"], 1, "a permanent failure is not retried")
    # Each attempt keeps the broker's answer: its confirm, or why it returned it.
    m = pb.message(mids[3])
    answers = {d["output"]: [a["answer"] for a in d["attempt_log"]] for d in m["deliveries"]}
    check_eq(answers.get("mq"), ["basic.ack"], f"the confirm as the answer: {answers}")
    check_eq(answers.get("unroutable"), ["basic.return 312 NO_ROUTE"],
             f"the return as the answer: {answers}")
    check_no_secret(pb)


@test
def meta_carries_properties_and_headers():
    q = "meta"
    sink = start_sink()
    conf = in_conf(q, sink).replace(
        "      - map: '{order: .order_id, amount: .cents, n, rk: $meta.routing_key, "
        "mid: $meta.message_id,\n               ex: $meta.exchange, redelivered: "
        "$meta.redelivered}'",
        "      - map: '{n, meta: $meta}'")
    check("meta: $meta" in conf, "config rewritten")
    Patchbay(conf)
    wait_until(lambda: q in rmq().queues(), 30, "the queue declared by the input")
    rmq().publish(q + "-x", "order.rich", 1, id_prefix="rich-", rich=True)
    wait_until(lambda: sink.records(), 30, "the message at the sink")
    meta = json.loads(sink.records()[0]["body"])["meta"]
    want = {
        "input": "amqp", "pipeline": "orders", "queue": q, "exchange": q + "-x",
        "routing_key": "order.rich", "redelivered": False, "message_id": "rich-0",
        "correlation_id": "c-0", "content_type": "application/json", "type": "order.created",
        "app_id": "shop", "reply_to": "replies", "priority": 3, "delivery_mode": 2,
        "timestamp": 1700000000,
        "headers": {"x-str": 'v"q', "x-int": -42, "x-big": "1152921504606846977",
                    "x-bool": True, "x-float": 2.5, "x-dec": "12.34", "x-tbl": {"a": 1},
                    "x-arr": [1, "two"], "x-raw": {"base64": "/wBB"}, "x-void": None},
    }
    for k, v in want.items():
        check_eq(meta.get(k), v, f"$meta.{k}")
    check(isinstance(meta["delivery_tag"], int) and meta["delivery_tag"] >= 1, "delivery_tag")
    check(meta["consumer_tag"].startswith("amq.ctag-"), f"consumer_tag {meta['consumer_tag']}")


@test
def poison_is_dead_lettered_and_acked():
    q, n = "poison", 50
    sink = start_sink()
    pb = Patchbay(in_conf(q, sink))
    wait_until(lambda: q in rmq().queues(), 30, "the queue declared by the input")
    rmq().publish(q + "-x", "order.created", n, id_prefix="p-", poison=[17])
    wait_until(lambda: len(sink.records()) >= n - 1, 60, "the good messages at the sink")
    dead = wait_until(lambda: pb.dead_letters(), 30, "the poison message in the DLQ")
    check_eq(len(dead), 1, "dead letters")
    check("invalid JSON" in dead[0]["last_error"], f"reason: {dead[0]['last_error']}")
    wait_until(lambda: settled(q) == (0, 0), 30, "the poison message acked at the broker")
    st = input_state(pb)
    check_eq(st["dead_on_arrival"], 1, "dead on arrival")
    check_eq(st["received"], n, "received once each: nothing redelivered")
    # Still nothing redelivered once the broker had time to.
    pb.restart()
    wait_until(lambda: input_state(pb)["state"] == "connected", 30, "connected again")
    check_eq(input_state(pb)["received"], 0, "received after a restart")
    check_eq(len(pb.dead_letters()), 1, "dead letters after a restart")
    check_eq(len(orders_at(sink)), n - 1, "good messages, each once")


@test
def back_pressure_nacks_pauses_and_loses_nothing():
    # An ingest queue of one batch: the next submit is refused for room,
    # its deliveries are nacked back to the queue and the consumer paused
    # until the core resumes it.
    q, n = "pressure", 3000
    sink = start_sink()
    pb = Patchbay(in_conf(q, sink, prefetch=100, ingest_queue=1))
    wait_until(lambda: q in rmq().queues(), 30, "the queue declared by the input")
    rmq().publish(q + "-x", "order.created", n, id_prefix="bp-")
    wait_until(lambda: len(sink.records()) >= n, 120, f"{n} orders at the sink")
    got = orders_at(sink)
    check_eq(sorted(o["n"] for o in got), list(range(n)), "every order, each once")
    st = input_state(pb)
    check(st["nacked"] > 0, f"deliveries nacked for room: {st}")
    check_eq(st["accepted"], n, "accepted")
    wait_until(lambda: settled(q) == (0, 0), 30, "nothing ready or unacked at the broker")


@test
def consumer_dying_before_ack_leaves_its_deliveries_to_the_next():
    q, n = "takeover", 2000
    sink = start_sink()
    # The first consumer ends right after its first commit, before acking:
    # what it held goes back to the queue, redelivered to the next consumer.
    first = Patchbay(in_conf(q, sink), env={"PATCHBAY_TEST_CRASH_BEFORE_ACK": "1"}, start=False)
    first.start(wait_ready=False)
    wait_until(lambda: q in rmq().queues(), 30, "the queue declared by the input")
    rmq().publish(q + "-x", "order.created", n, id_prefix="t-")
    check_eq(first.proc.wait(timeout=60), 137, "the first consumer's exit (test hook)")
    wait_until(lambda: settled(q) == (n, 0), 30, "every delivery back in the queue")
    second = Patchbay(in_conf(q, sink))  # another node: its own state
    wait_until(lambda: len({o["n"] for o in orders_at(sink)}) >= n, 120, "every order")
    got = orders_at(sink)
    check(any(o["redelivered"] for o in got), "some deliveries were redeliveries")
    wait_until(lambda: settled(q) == (0, 0), 30, "nothing ready or unacked at the broker")
    check_eq(input_state(second)["accepted"], n, "the second consumer took every one")


TLS_CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.1] }
pipelines:
  good:
    input:
      amqp: { url: "%(tls)s@localhost:%(port)d/%%2f", queue: tls-good, declare: {},
              tls: { ca_file: "%(ca)s" } }
    outputs:
      api: { http: { url: "%(sink)s/good" } }
  wrong-name:
    input:
      amqp: { url: "%(tls)s@127.0.0.1:%(port)d/%%2f", queue: tls-wrong-name, declare: {},
              tls: { ca_file: "%(ca)s" } }
    outputs:
      api: { http: { url: "%(sink)s/wrong-name" } }
  no-verify:
    input:
      amqp: { url: "%(tls)s@127.0.0.1:%(port)d/%%2f", queue: tls-no-verify, declare: {},
              tls: { ca_file: "%(ca)s", verify: false } }
    outputs:
      api: { http: { url: "%(sink)s/no-verify" } }
  publish:
    input: { http_server: { path: /orders } }
    outputs:
      mq:
        amqp: { url: "%(tls)s@localhost:%(port)d/%%2f", routing_key: tls-good,
                tls: { ca_file: "%(ca)s" } }
"""


@test
def tls_verifies_the_brokers_name():
    sink = start_sink()
    pb = Patchbay(TLS_CONF % {"tls": f"amqps://pb:{SECRET}", "port": rmq().tls_port,
                              "ca": rmq().ca_file, "sink": sink.url}, start=False)
    pb.start(wait_ready=False)
    states = lambda: {i["pipeline"]: i for i in api(pb, "/api/inputs")["inputs"]}  # noqa: E731
    wait_until(lambda: states()["good"]["state"] == "connected", 30, "TLS input connected")
    wait_until(lambda: states()["no-verify"]["state"] == "connected", 30,
               "TLS input without verification connected")
    # The certificate names localhost: a URL naming 127.0.0.1 is refused.
    wrong = wait_until(lambda: states()["wrong-name"]["state"] == "reconnecting" and
                       states()["wrong-name"], 30, "the wrong name refused")
    log(f"  wrong name: {wrong['detail']}")
    check("SSL" in wrong["detail"] or "certificate" in wrong["detail"], wrong["detail"])
    check("tls-wrong-name" not in rmq().queues(), "the refused input declared nothing")
    # Publish over TLS, consume over TLS.
    res = post_many(pb.url + "/orders", [{"i": i} for i in range(20)], concurrency=4)
    check_eq([st for st, _ in res], [202] * 20, "posts")
    rmq().publish("", "tls-no-verify", 5, id_prefix="nv-")
    wait_until(lambda: len(sink.records()) >= 25, 30, "messages through TLS")
    paths = sorted(r["path"] for r in sink.records())
    check_eq(paths, ["/good"] * 20 + ["/no-verify"] * 5, "deliveries")
    check_no_secret(pb)


GUARD_CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
pipelines:
  orders:
    input: { amqp: { url: "%(url)s", queue: %(queue)s } }
    outputs:
      api: { http: { url: "http://192.0.2.1/never" } }
  publish:
    input: { http_server: { path: /orders } }
    outputs:
      mq: { amqp: { url: "%(url)s", routing_key: %(queue)s } }
  allowed:
    input:
      amqp: { url: "%(url)s", queue: %(queue)s-allowed, declare: {},
              outbound: { allow: [127.0.0.1] } }
    outputs:
      api: { http: { url: "http://192.0.2.1/never" } }
"""


@test
def outbound_guard_refuses_the_broker_without_allow():
    q = "guarded"
    rmq().declare(q)
    rmq().publish("", q, 5, id_prefix="g-")
    pb = Patchbay(GUARD_CONF % {"url": pb_url(), "queue": q}, start=False)
    pb.start(wait_ready=False)

    def states():
        return {i["pipeline"]: i for i in api(pb, "/api/inputs")["inputs"]}

    def refused():
        st = states()["orders"]
        return st["state"] == "reconnecting" and "blocked: 127.0.0.1 is loopback" in (
            st["detail"] or "") and st

    wait_until(refused, 30, "the input refused by the outbound guard")
    # An input's own outbound.allow lets it through.
    wait_until(lambda: states()["allowed"]["state"] == "connected", 30,
               "the input allowed by its own outbound.allow")
    st, doc = pb.admin("GET", "/ready")
    check(st == 503, f"/ready while the input is refused: {st} {doc}")
    check_eq(rmq().ready_count(q), 5, "nothing taken from the queue")
    st, _, _ = pb.post("/orders", {"id": 1})
    check_eq(st, 202, "the publish pipeline takes the message")

    def out_refused():
        _, doc = pb.admin("GET", "/api/pipelines")
        o = [p for p in doc["pipelines"] if p["name"] == "publish"][0]["outputs"][0]
        return o if o["state"] == "reconnecting" else None

    # Like every broker output: reconnecting with the reason, the delivery waits.
    o = wait_until(out_refused, 30, "the output refused by the outbound guard")
    check("blocked: 127.0.0.1 is loopback" in (o.get("detail") or ""), f"the reason: {o}")
    check_eq(pb.dead_letters(output="mq"), [], "nothing dead-lettered")
    check_eq(pb.metrics().value("patchbay_backlog", pipeline="publish"), 1.0, "the delivery waits")
    check_eq(rmq().ready_count(q), 5, "nothing published")
    check_no_secret(pb)
    # lint says so too, naming the host only.
    r = pb.cli("lint", pb.config_path)
    check(SECRET not in r.stdout + r.stderr, "the password appears in lint's output")


@test
def bad_password_reconnects_and_never_shows_it():
    q = "badpass"
    rmq().declare(q)
    sink = start_sink()
    conf = in_conf(q, sink).replace(SECRET, "wrong-" + SECRET[::-1])
    pb = Patchbay(conf, start=False)
    pb.start(wait_ready=False)

    def failing():
        st = input_state(pb)
        return st["state"] == "reconnecting" and "login" in (st["detail"] or "") and st

    st = wait_until(failing, 30, "the input failing to log in")
    check(SECRET[::-1] not in json.dumps(st), f"the password appears in the state: {st}")
    check(SECRET[::-1] not in pb.log(), "the password appears in the log")
    check("login to 127.0.0.1" in pb.log(), "the failure is logged")


@test
def example_rabbitmq_orders_runs():
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "..", "examples", "rabbitmq-orders", "patchbay.yaml")
    with open(path) as f:
        conf = f.read()
    erp = start_sink()
    rmq().declare("shop-confirmations", binds=["shop:order.received:topic"])
    port, token = free_port(), "example-token"
    pb = Patchbay(conf, port=port, token=token, env={
        "RABBITMQ_URL": rmq().url, "ERP_URL": erp.url + "/orders",
        "PATCHBAY_LISTEN": f"127.0.0.1:{port}", "PATCHBAY_DATA": tmpdir("data"),
        "PATCHBAY_ADMIN_TOKEN": token})
    rmq().publish("shop", "order.created", 100, id_prefix="shop-")
    wait_until(lambda: len(erp.records()) >= 100, 60, "100 orders at the ERP")
    got = sorted((json.loads(r["body"]) for r in erp.records()),
                 key=lambda b: int(b["reference"][2:]))
    check_eq(got[5], {"reference": "o-5", "amount": {"value": 500, "currency": "EUR"}},
             "an order as the ERP gets it")
    conf_msgs = wait_until(lambda: rmq().consume("shop-confirmations", idle=1), 30,
                           "confirmations")
    for _ in range(20):
        if len(conf_msgs) >= 100:
            break
        conf_msgs += rmq().consume("shop-confirmations", idle=1)
    check_eq(len(conf_msgs), 100, "confirmations")
    c = next(m for m in conf_msgs if m["correlation_id"] == "o-5")
    check_eq(json.loads(c["body"]), {"order_id": "o-5", "status": "received",
                                     "amount_cents": 500}, "a confirmation")
    hdrs = dict(c["headers"])
    check(re.match(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$", hdrs.pop("traceparent", "")),
          f"the attempt's traceparent in the headers: {c['headers']}")
    check_eq(hdrs, {"x-order-id": "o-5"}, "its headers")
    check_eq(c["routing_key"], "order.received", "its routing key")
    wait_until(lambda: settled("erp-orders") == (0, 0), 30, "erp-orders settled")
    check_eq(pb.term(), 0, "exit code on SIGTERM")


run()
