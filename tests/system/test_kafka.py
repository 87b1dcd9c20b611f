"""The kafka input and output against librdkafka's mock cluster (one for the
module): 10,000 messages consumed into an HTTP sink with offsets committed to
the end, 10,000 HTTP posts produced once each with their keys and headers, a
poison message dead-lettered and never read again, back-pressure that pauses
fetching without losing or doubling anything, permanent produce errors
dead-lettered, and the outbound guard refusing brokers it was not told to
allow."""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    Poster,
    check,
    check_eq,
    log,
    run,
    run_cli,
    start_sink,
    test,
    tmpdir,
    wait_until,
)
from srv_kafka import Kafka  # noqa: E402

KAFKA = None  # one mock cluster for the module, started before run()


def kafka():
    return KAFKA


def sink_bodies(sink, path=None):
    out = []
    for r in sink.records():
        if r["status"] == 200 and (path is None or r["path"] == path):
            out.append(json.loads(r["body"]))
    return out


def input_state(pb, pipeline):
    st, doc = pb.admin("GET", "/api/inputs")
    check_eq(st, 200, "GET /api/inputs")
    (it,) = [i for i in doc["inputs"] if i["pipeline"] == pipeline]
    return it


@test
def consumes_10000_into_the_sink_and_commits_to_the_end():
    k = kafka()
    n = 10000
    k.produce("in", n, pad=20)
    sink = start_sink()
    pb = Patchbay(f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: sqlite:@DIR@/state.db
outbound: {{ allow: [127.0.0.0/8] }}
pipelines:
  orders:
    input:
      kafka: {{ brokers: {k.brokers_yaml}, topics: [in], group: g-in, session_timeout: 6s }}
    process:
      - map: '{{n: .n, topic: $meta.topic, partition: $meta.partition, offset: $meta.offset,
               key: $meta.key, source: $meta.headers.source, ts: $meta.timestamp,
               input: $meta.input}}'
    outputs:
      sink: {{ http: {{ url: "{sink.url}/orders" }} }}
""")
    wait_until(lambda: len(sink.records()) >= n, 120, f"{n} deliveries")
    bodies = sink_bodies(sink)
    check_eq(sorted(b["n"] for b in bodies), list(range(n)), "every message once")
    b = bodies[0]
    check_eq(b["topic"], "in", "$meta.topic")
    check_eq(b["key"], f"k{b['n']}", "$meta.key")
    check_eq(b["source"], "pb_kafka_mock", "$meta.headers")
    check_eq(b["input"], "kafka", "$meta.input")
    check(isinstance(b["ts"], int) and b["ts"] > 0, f"$meta.timestamp: {b['ts']!r}")
    seen = {(x["partition"], x["offset"]) for x in bodies}
    check_eq(len(seen), n, "distinct partition/offset pairs")
    check_eq({x["partition"] for x in bodies}, {0, 1, 2, 3}, "every partition read")
    # Offsets are committed once patchbay has committed: to the end.
    wait_until(lambda: k.committed_at_end("in", "g-in"), 30, "committed offset = end")
    wait_until(lambda: input_state(pb, "orders")["lag"] == 0, 10, "lag 0")
    it = input_state(pb, "orders")
    check_eq(it["state"], "connected", "input state")
    check_eq(it["accepted"], n, "accepted")
    check_eq(it["duplicates"], 0, "no duplicates")
    for p in k.offsets("in", "g-in")["partitions"]:
        check(f"in/{p['partition']}@{p['high']}" in it["position"],
              f"position {it['position']!r} shows partition {p['partition']} at {p['high']}")
    m = pb.metrics()
    check_eq(m.value("patchbay_input_connected", pipeline="orders", input="kafka"), 1,
             "patchbay_input_connected")
    check_eq(m.value("patchbay_input_lag", pipeline="orders", input="kafka"), 0, "lag metric")
    # A restart reads nothing again: the group's offsets are at the end.
    check_eq(pb.term(), 0, "SIGTERM exit code")
    pb.start()
    k.produce("in", 10, start=n)
    wait_until(lambda: len(sink.records()) >= n + 10, 60, "the 10 new ones")
    wait_until(lambda: k.committed_at_end("in", "g-in"), 30, "committed offset = end again")
    check_eq(sorted(b["n"] for b in sink_bodies(sink)), list(range(n + 10)),
             "nothing read twice after a restart")


@test
def publishes_10000_http_posts_once_each():
    k = kafka()
    n = 10000
    pb = Patchbay(f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: sqlite:@DIR@/state.db
outbound: {{ allow: [127.0.0.0/8] }}
pipelines:
  orders:
    input:
      http_server: {{ path: /orders }}
    outputs:
      events:
        kafka:
          brokers: {k.brokers_yaml}
          topic: 'out-{{{{ .kind }}}}'
          key: '{{{{ .id }}}}'
          headers: {{ origin: patchbay-test }}
          map: '{{id, kind, doubled: (.id * 2)}}'
""")
    poster = Poster(pb.port, "/orders", lambda i: {"id": i, "kind": "a"}, concurrency=16, n=n)
    poster.start()
    res = poster.join()
    acked = [i for i, st, mid in res if mid]
    check_eq(len(acked), n, "every post acknowledged")
    wait_until(lambda: pb.metrics().value("patchbay_deliveries_delivered_total",
                                          pipeline="orders", output="events") >= n,
               120, f"{n} delivery reports")
    msgs = k.consume("out-a")
    check_eq(len(msgs), n, "messages in the topic (each once: no fault, no retry)")
    ids = sorted(json.loads(m["value"])["id"] for m in msgs)
    check_eq(ids, list(range(n)), "every post once")
    one = msgs[0]
    body = json.loads(one["value"])
    check_eq(body["doubled"], body["id"] * 2, "the output's map ran")
    check_eq(one["key"], str(body["id"]), "key template")
    check_eq(one["headers"].get("origin"), "patchbay-test", "static header")
    check(one["headers"].get("patchbay-message-id", "").startswith("msg_"),
          f"patchbay-message-id header: {one['headers']}")
    keys = {m["headers"].get("idempotency-key") for m in msgs}
    check_eq(len(keys), n, "one distinct idempotency-key header per message")
    check_eq(pb.metrics().value("patchbay_deliveries_retried_total", pipeline="orders",
                                output="events"), 0, "no retries")


@test
def poison_message_is_dead_lettered_and_never_read_again():
    k = kafka()
    k.produce("poison", 5, partition=0)
    k.produce("poison", 1, raw='{"n": oops', partition=0)
    k.produce("poison", 5, start=5, partition=0)
    sink = start_sink()
    conf = f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: sqlite:@DIR@/state.db
outbound: {{ allow: [127.0.0.0/8] }}
pipelines:
  p:
    input:
      kafka: {{ brokers: {k.brokers_yaml}, topics: [poison], group: g-poison, session_timeout: 6s }}
    outputs:
      sink: {{ http: {{ url: "{sink.url}/p" }} }}
"""
    pb = Patchbay(conf)
    wait_until(lambda: len(sink.records()) >= 10, 60, "the 10 valid messages")
    wait_until(lambda: pb.dead_letters(), 20, "the dead letter")
    (dl,) = pb.dead_letters()
    check("invalid JSON" in (dl.get("last_error") or ""), f"reason: {dl}")
    msg = pb.message(dl["message_id"])
    meta = msg.get("meta") or {}
    check_eq((meta.get("topic"), meta.get("partition"), meta.get("offset")), ("poison", 0, 5),
             "the dead letter's $meta says where it came from")
    wait_until(lambda: k.committed_at_end("poison", "g-poison"), 30,
               "committed past the poison message")
    check_eq(input_state(pb, "p")["dead_on_arrival"], 1, "dead on arrival")
    # Restarted, nothing is read again: no second dead letter, no redelivery.
    check_eq(pb.term(), 0, "SIGTERM exit code")
    pb.start()
    k.produce("poison", 1, start=10, partition=0)
    wait_until(lambda: len(sink.records()) >= 11, 30, "the message after the restart")
    check_eq(len(pb.dead_letters()), 1, "one dead letter")
    check_eq(sorted(b["n"] for b in sink_bodies(sink)), list(range(11)), "valid ones once each")


@test
def a_header_key_drops_repeats_a_producer_sent_again():
    """A producer that sends a message again (the kafka output after a
    timeout or a restart) gives the copy the same idempotency-key header:
    with idempotency_header the input takes it once."""
    k = kafka()
    for _ in range(2):
        k.produce("dups", 1, raw='{"order": 1}', header=("idempotency-key", "msg_X.out"))
    k.produce("dups", 1, raw='{"order": 2}', header=("idempotency-key", "msg_Y.out"))
    k.produce("dups", 1, raw='{"order": 3}')  # no header: its offset is its key
    sink = start_sink()
    pb = Patchbay(f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: sqlite:@DIR@/state.db
outbound: {{ allow: [127.0.0.0/8] }}
pipelines:
  d:
    input:
      kafka: {{ brokers: {k.brokers_yaml}, topics: [dups], group: g-dups,
               idempotency_header: idempotency-key, session_timeout: 6s }}
    outputs:
      sink: {{ http: {{ url: "{sink.url}/d" }} }}
""")
    wait_until(lambda: k.committed_at_end("dups", "g-dups"), 30, "all four read and committed")
    wait_until(lambda: input_state(pb, "d")["duplicates"] == 1, 10, "one duplicate")
    wait_until(lambda: len(sink.records()) >= 3, 20, "three deliveries")
    check_eq(sorted(b["order"] for b in sink_bodies(sink)), [1, 2, 3], "the repeat dropped")


@test
def back_pressure_pauses_fetching_and_loses_nothing():
    k = kafka()
    n = 3000
    k.produce("slow", n, pad=400)
    sink = start_sink()
    pb = Patchbay(f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: sqlite:@DIR@/state.db
outbound: {{ allow: [127.0.0.0/8] }}
limits: {{ max_inflight_bytes: 16KiB }}
pipelines:
  slow:
    input:
      kafka: {{ brokers: {k.brokers_yaml}, topics: [slow], group: g-slow, batch: 100 }}
    outputs:
      sink: {{ http: {{ url: "{sink.url}/s" }} }}
""")
    wait_until(lambda: len(sink.records()) >= n, 180, f"{n} deliveries")
    check_eq(sorted(b["n"] for b in sink_bodies(sink)), list(range(n)), "every message once")
    check("fetching paused" in pb.log(), "the input paused fetching at the bound")
    wait_until(lambda: k.committed_at_end("slow", "g-slow"), 30, "committed offset = end")
    check_eq(input_state(pb, "slow")["duplicates"], 0, "nothing taken twice")


@test
def permanent_produce_errors_are_dead_lettered():
    k = kafka()
    pb = Patchbay(f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: sqlite:@DIR@/state.db
outbound: {{ allow: [127.0.0.0/8] }}
pipelines:
  unknown:
    input: {{ http_server: {{ path: /unknown }} }}
    outputs:
      k:
        kafka:
          brokers: {k.brokers_yaml}
          topic: nosuch
          timeout: 20s
          properties: {{ topic.metadata.propagation.max.ms: "1000" }}
  large:
    input: {{ http_server: {{ path: /large }} }}
    outputs:
      k:
        kafka:
          brokers: {k.brokers_yaml}
          topic: big
          properties: {{ message.max.bytes: "2000" }}
  badname:
    input: {{ http_server: {{ path: /badname }} }}
    outputs:
      k: {{ kafka: {{ brokers: {k.brokers_yaml}, topic: '{{{{ .t }}}}' }} }}
""")
    st, _, _ = pb.post("/unknown", {"a": 1})
    check_eq(st, 202, "post")
    st, _, _ = pb.post("/large", {"pad": "x" * 5000})
    check_eq(st, 202, "post")
    st, _, small = pb.post("/large", {"small": 1})
    check_eq(st, 202, "post")
    st, _, _ = pb.post("/badname", {"t": "no spaces allowed"})
    check_eq(st, 202, "post")

    def dead(pipeline):
        return [d for d in pb.dead_letters() if d["pipeline"] == pipeline]

    wait_until(lambda: dead("unknown"), 30, "the unknown topic's dead letter")
    wait_until(lambda: dead("large") and dead("badname"), 30, "the other dead letters")
    (u,) = dead("unknown")
    check("UNKNOWN_TOPIC" in u["last_error"], f"unknown topic: {u['last_error']}")
    (lg,) = dead("large")
    check("MSG_SIZE_TOO_LARGE" in lg["last_error"], f"too large: {lg['last_error']}")
    (bn,) = dead("badname")
    check("not a Kafka topic name" in bn["last_error"], f"bad name: {bn['last_error']}")
    for d in (u, lg, bn):
        check_eq(d["attempts"], 1, f"one attempt, no retries: {d}")
    # The small one went through.
    wait_until(lambda: pb.metrics().value("patchbay_deliveries_delivered_total",
                                          pipeline="large", output="k") == 1, 30, "the small one")
    # Its attempt keeps where the broker stored it.
    small = json.loads(small)["id"]
    pb.wait_states([small], {"k": "delivered"})
    answer = pb.message(small)["deliveries"][0]["attempt_log"][0]["answer"] or ""
    check(re.fullmatch(r"topic big partition [0-9]+ offset [0-9]+", answer),
          f"the delivery report as the answer: {answer!r}")


@test
def outbound_guard_refuses_brokers_not_allowed():
    k = kafka()
    k.produce("in", 1, start=90000)
    before = k.offsets("in")["high"]
    pb = Patchbay(f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: sqlite:@DIR@/state.db
pipelines:
  consume:
    input:
      kafka: {{ brokers: {k.brokers_yaml}, topics: [in], group: g-guard }}
    outputs:
      d: {{ drop: {{}} }}
  publish:
    input: {{ http_server: {{ path: /p }} }}
    outputs:
      k: {{ kafka: {{ brokers: {k.brokers_yaml}, topic: in }} }}
""", start=False)
    pb.start(wait_ready=False)

    def refused():
        it = input_state(pb, "consume")
        return it["state"] == "reconnecting" and "blocked" in (it["detail"] or "") and it
    it = wait_until(refused, 30, "the input refused by the guard")
    check("loopback" in it["detail"], f"detail names the range: {it['detail']}")
    st, doc = pb.admin("GET", "/api/pipelines")
    check_eq(st, 200, "GET /api/pipelines")
    text = json.dumps(doc)
    check("blocked" in text and "reconnecting" in text, f"the output is refused too: {text[:2000]}")
    st, _, _ = pb.post("/p", {"x": 1})
    check_eq(st, 202, "the HTTP side still takes posts")
    st, _, _ = pb.get("/ready")
    check_eq(st, 503, "/ready while the input cannot connect")
    offs = k.offsets("in", "g-guard")
    check(all(p["committed"] < 0 for p in offs["partitions"]), f"nothing consumed: {offs}")
    check_eq(offs["high"], before, "nothing produced")
    log("refused with:", it["detail"])


@test
def outbound_guard_checks_every_broker_the_cluster_advertises():
    """The bootstrap broker is allowed by name; the cluster's metadata then
    advertises the other broker by address, which the guard refuses: the
    check runs on every connection librdkafka makes, not only the first."""
    k = kafka()
    first = k.brokers[0].split(":")[1]
    pb = Patchbay(f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: sqlite:@DIR@/state.db
outbound: {{ allow: [localhost] }}
pipelines:
  publish:
    input: {{ http_server: {{ path: /p }} }}
    outputs:
      k:
        kafka: {{ brokers: ["localhost:{first}"], topic: guarded, timeout: 3s,
                  retry: {{ initial: 100ms, max: 500ms }} }}
""")
    st, _, _ = pb.post("/p", {"x": 1})
    check_eq(st, 202, "post")
    wait_until(lambda: pb.metrics().value("patchbay_deliveries_retried_total", pipeline="publish",
                                          output="k") > 0, 30, "the delivery failing and retrying")
    text = pb.log()
    check("refused by the outbound guard" in text and "is loopback" in text,
          "the advertised broker was refused by the guard")
    refused = [ln for ln in text.splitlines() if "refused by the outbound guard" in ln]
    log(refused[0])
    check(all(f"(broker {k.brokers[1]})" in ln for ln in refused),
          "only the advertised broker was refused, not the bootstrap one allowed by name")
    check_eq(pb.metrics().value("patchbay_deliveries_delivered_total", pipeline="publish",
                                output="k"), 0, "nothing delivered through the refused broker")
    check_eq(k.offsets("guarded")["high"], 0, "nothing produced")


LINT_BASE = """
pipelines:
  in:
    input:
      kafka:
        brokers: [kafka-1.example:9092, "[2001:db8::1]:9093", kafka-3.example]
        topics: [orders, '^audit\\..*']
        group: g
        sasl: { mechanism: SCRAM-SHA-512, user: pb, password: "${KAFKA_PW}" }
        tls: { ca_file: /etc/ssl/ca.pem, cert_file: /etc/ssl/c.pem, key_file: /etc/ssl/k.pem,
               key_password: "${KEY_PW}" }
        properties: PROPS
    outputs:
      out:
        kafka:
          brokers: [kafka-1.example:9092]
          topic: 'orders.{{ .region }}'
          key: '{{ .id }}'
          compression: zstd
          sasl: { user: pb, password: "${KAFKA_PW}" }
          tls: { enabled: true }
"""


@test
def lint_checks_kafka_options_without_connecting():
    """TLS and SASL cannot be tried on the mock cluster: their options, and
    the librdkafka properties, are checked by lint (no connection is made)
    and secrets never show in what it prints."""
    env = dict(os.environ, KAFKA_PW="s3cr3t-pw", KEY_PW="k3y-pw")

    def lint(props, start="earliest"):
        path = os.path.join(tmpdir("lint"), "patchbay.yaml")
        with open(path, "w") as f:
            f.write(LINT_BASE.replace("PROPS", props).replace("group: g\n",
                                                                 f"group: g\n        start: {start}\n"))
        r = run_cli("lint", path, env=env)
        out = r.stdout + r.stderr
        check("s3cr3t-pw" not in out and "k3y-pw" not in out, f"a secret printed: {out}")
        return r.returncode, out

    code, out = lint('{ fetch.max.bytes: "52428800", isolation.level: read_uncommitted }')
    check_eq(code, 0, f"a valid configuration: {out}")
    for props, want in [
        ('{ enable.auto.commit: "true" }', "patchbay commits offsets after its own commit"),
        ('{ group.id: other }', "set it with group"),
        ('{ sasl.password: "s3cr3t-pw" }', "is a secret"),
        ('{ fetch.max.bytez: "1" }', "No such configuration property"),
        ('{ isolation.level: sometimes }', "isolation.level"),
    ]:
        code, out = lint(props)
        check(code == 1 and want in out, f"properties {props}: want {want!r}, got: {out}")
    code, out = lint("{}", start="yesterday")
    check(code == 1 and "earliest" in out, f"a bad start: {out}")


if __name__ == "__main__":
    KAFKA = Kafka(topics=["in:4", "out-a:3", "poison:2", "slow:4", "big:1", "guarded:1:2",
                          "dups:1"],
                  topic_errors=["nosuch=3"], brokers=2)
    run()
