"""The mqtt input and output against a real mosquitto (one broker for the
module, with persistence; every case has topics and client ids of its own).

- 10,000 messages broker -> patchbay -> HTTP sink, mapped with $meta, each
  once, nothing left unacknowledged in the session;
- 10,000 messages HTTP -> patchbay -> broker (MQTT 5: each carries its
  Idempotency-Key and content type);
- kill -9 of patchbay five times while both directions run: nothing lost,
  nothing left unacknowledged;
- the broker restarted mid-stream: patchbay reconnects, nothing lost;
- a consumer killed between a commit and its PUBACK: another patchbay with
  the same client id takes over what the first left unacknowledged;
- a poison message is dead-lettered with the reason and acknowledged, and
  so is one larger than max_message (the connection stays up);
- the outbound guard refuses the broker without outbound.allow;
- subscriptions live in the session: a restart does not resend retained
  messages, a topic removed from the configuration is unsubscribed;
- `key:` drops a message published twice; MQTT 5 user properties reach
  $meta.headers;
- under tiny ingest bounds the input holds what the core refuses and stops
  reading, then goes on: nothing lost or doubled.

MQTT has no deduplication of its own: where a test counts repeats it
reports them, and only what the protocol lets us promise is checked."""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (Patchbay, Poster, check, check_eq, log, post_many, run, scaled,  # noqa: E402
                    start_sink, test, wait_until)
from srv_mqtt import Client, Mosquitto, leftover  # noqa: E402

HEAD = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 10s
pipelines:
"""

# $meta as the input fills it, copied into the body so the sink shows it.
META_MAP = ("'. + {topic: $meta.topic, qos: $meta.qos, retain: $meta.retain, dup: $meta.dup, "
            "pid: $meta.packet_id, input: $meta.input}'")


def broker():
    # mosquitto's default window of 20 unacknowledged messages per client
    # makes a QoS 1 consumer wait a commit per 20 messages; the tests take
    # more at a time (docs/configuration.md says why users should too).
    return Mosquitto.module(max_inflight=100)


def mqtt_in(name, topics, sink, client_id=None, extra=""):
    b = broker()
    cid = client_id or name
    return f"""
  {name}:
    input:
      mqtt: {{ url: "{b.url}", topics: {json.dumps(topics)}, client_id: "{cid}" {extra} }}
    process:
      - map: {META_MAP}
    outputs:
      sink: {{ http: {{ url: "{sink.url}/{name}" }} }}
"""


def http_to_mqtt(name, topic, extra=""):
    b = broker()
    return f"""
  {name}:
    input: {{ http_server: {{ path: /{name} }} }}
    outputs:
      broker:
        mqtt:
          url: "{b.url}"
          topic: '{topic}'
          retry: {{ max_attempts: 1000, initial: 50ms, max: 1s }}
          {extra}
"""


def bodies(sink, path=None):
    out = []
    for r in sink.records():
        if path is None or r["path"] == path:
            out.append(json.loads(r["body"]))
    return out


def publish_all(topic, payloads, client_id, **kw):
    c = Client(broker().port, client_id, **kw)
    c.publish_many(topic, payloads)
    c.close()


def input_state(pb, pipeline):
    st, doc = pb.admin("GET", "/api/inputs")
    check_eq(st, 200, "GET /api/inputs")
    for i in doc["inputs"]:
        if i["pipeline"] == pipeline:
            return i
    raise AssertionError(f"no input of {pipeline}")


def output_state(pb, pipeline, output):
    st, doc = pb.admin("GET", "/api/pipelines")
    check_eq(st, 200, "GET /api/pipelines")
    for p in doc["pipelines"]:
        if p["name"] == pipeline:
            for o in p["outputs"]:
                if o["name"] == output:
                    return o
    raise AssertionError(f"no output {pipeline}.{output}")


@test
def broker_to_sink_10000():
    n = 10000
    sink = start_sink()
    pb = Patchbay(HEAD + mqtt_in("t1", ["t1/in/#"], sink))
    check_eq(pb.metrics().get("patchbay_input_connected", pipeline="t1"), 1.0, "connected gauge")
    payloads = [json.dumps({"i": i, "name": f"n{i}"}) for i in range(n)]
    t0 = time.monotonic()
    publish_all(lambda i: f"t1/in/{i % 7}", payloads, "t1-pub")
    wait_until(lambda: len(sink.records()) >= n, 180, f"{n} messages at the sink")
    dt = time.monotonic() - t0
    log(f"broker -> patchbay -> sink: {n} messages in {dt:.1f}s ({n / dt:.0f}/s)")
    got = bodies(sink)
    check_eq(sorted(b["i"] for b in got), list(range(n)), "every message once")
    for b in got[:200]:
        check_eq(b["topic"], f"t1/in/{b['i'] % 7}", "$meta.topic")
        check_eq(b["name"], f"n{b['i']}", "the body")
        check(b["qos"] == 1 and b["retain"] is False and b["dup"] is False, f"$meta: {b}")
        check(isinstance(b["pid"], int) and 1 <= b["pid"] <= 65535, f"$meta.packet_id: {b}")
        check_eq(b["input"], "mqtt", "$meta.input")
    ins = input_state(pb, "t1")
    check_eq(ins["state"], "connected", "input state")
    check_eq(ins["received"], n, "received counter")
    check_eq(pb.term(), 0, "exit code on SIGTERM")
    check_eq(leftover(broker().port, "t1", "t1/in/x"), [], "nothing left in the session")


@test
def http_to_broker_10000():
    n = 10000
    sub = Client(broker().port, "t2-sub", version=5)
    sub.subscribe(["t2/out/#"])
    pb = Patchbay(HEAD + http_to_mqtt("t2", "t2/out/{{ .kind }}", 'protocol: "5"'))
    t0 = time.monotonic()
    res = post_many(f"{pb.url}/t2", [{"i": i, "kind": f"k{i % 3}"} for i in range(n)], 32)
    check(all(st == 202 for st, _ in res), "every POST acknowledged")
    msgs = []
    wait_until(lambda: msgs.extend(sub.receive(n - len(msgs), 5)) or len(msgs) >= n, 180,
               f"{n} messages at the subscriber")
    dt = time.monotonic() - t0
    log(f"HTTP -> patchbay -> broker: {n} messages in {dt:.1f}s ({n / dt:.0f}/s)")
    seen = {}
    keys = set()
    for m in msgs:
        b = json.loads(m.payload)
        check_eq(m.topic, f"t2/out/k{b['i'] % 3}", "topic rendered from the template")
        seen[b["i"]] = seen.get(b["i"], 0) + 1
        props = parse_props(m.props)
        check_eq(props.get("content_type"), "application/json", "content type property")
        key = props["user"].get("Idempotency-Key")
        check(key, f"Idempotency-Key user property: {props}")
        keys.add(key)
    check_eq(sorted(seen), list(range(n)), "every message arrived")
    check_eq(sum(seen.values()), n, "each once")
    check_eq(len(keys), n, "an idempotency key of its own per message")
    out = output_state(pb, "t2", "broker")
    check_eq(out["state"], "connected", "output state")
    check_eq(out["delivered_total"], n, "delivered counter")
    sub.close()


def user_prop(name, value):
    n, v = name.encode(), value.encode()
    return b"\x26" + len(n).to_bytes(2, "big") + n + len(v).to_bytes(2, "big") + v


def parse_props(raw):
    """MQTT 5 properties of a PUBLISH: content type and user properties."""
    out = {"user": {}}
    i = 0

    def s(at):
        ln = int.from_bytes(raw[at:at + 2], "big")
        return raw[at + 2:at + 2 + ln].decode(), at + 2 + ln

    while i < len(raw):
        pid = raw[i]
        i += 1
        if pid == 0x03:
            out["content_type"], i = s(i)
        elif pid == 0x26:
            k, i = s(i)
            v, i = s(i)
            out["user"][k] = v
        elif pid == 0x01:
            i += 1
        elif pid == 0x02:
            i += 4
        elif pid in (0x08, 0x09):
            _, i = s(i)
        else:
            raise AssertionError(f"unexpected property {pid:#x}")
    return out


class Publisher(threading.Thread):
    """Publishes {"i": 0}, {"i": 1}, ... to the broker in chunks until
    stop(), reconnecting when the broker goes away; .done counts what the
    broker acknowledged (those are 0 .. done-1)."""

    def __init__(self, topic, client_id, chunk=50, pause=0.05):
        super().__init__(daemon=True)
        self.topic, self.client_id = topic, client_id
        self.chunk, self.pause = chunk, pause
        self.done = 0
        self._halt = threading.Event()

    def run(self):
        c = None
        while not self._halt.is_set():
            try:
                if c is None:
                    c = Client(broker().port, self.client_id)
                part = [json.dumps({"i": i}) for i in range(self.done, self.done + self.chunk)]
                c.publish_many(self.topic, part)
                self.done += len(part)
            except (OSError, ConnectionError, AssertionError):  # the broker restarting
                c = None
            self._halt.wait(self.pause)
        if c:
            c.close()

    def stop(self):
        self._halt.set()
        self.join(scaled(60))
        check(not self.is_alive(), "publisher stopped")
        return self.done


@test
def kill9_five_times_both_directions():
    sink = start_sink()
    sub = Client(broker().port, "t3-sub", clean=False)
    sub.subscribe(["t3/out/#"])
    pb = Patchbay(HEAD + mqtt_in("t3", ["t3/in/#"], sink) + http_to_mqtt("t3h", "t3/out/x"))
    pub = Publisher("t3/in/a", "t3-pub")
    pub.start()
    poster = Poster(pb.port, "/t3h", lambda i: {"j": i}, concurrency=8).start()
    for k in range(5):
        base_in, base_out = len(sink.records()), poster.count_acked()
        wait_until(lambda: len(sink.records()) > base_in + 150 and
                   poster.count_acked() > base_out + 150, 60, f"progress before kill {k + 1}")
        pb.kill9()
        pb.start()
    poster.stop()
    n_in = pub.stop()
    wait_until(lambda: {b["i"] for b in bodies(sink)} >= set(range(n_in)), 120,
               "every published message at the sink")
    got_in = [b["i"] for b in bodies(sink)]
    acked = {i for i, _ in poster.acked()}
    got_out = []

    def all_out():
        got_out.extend(json.loads(m.payload)["j"] for m in sub.receive(len(acked), 2))
        return acked <= set(got_out)

    wait_until(all_out, 120, f"{len(acked)} acknowledged POSTs at the subscriber")
    log(f"kill -9 x5: in {len(got_in)} deliveries of {n_in} ({len(got_in) - n_in} repeats), "
        f"out {len(got_out)} of {len(acked)} acknowledged")
    check_eq(pb.term(), 0, "exit code on SIGTERM")
    sub.close()
    check_eq(leftover(broker().port, "t3", "t3/in/x"), [], "nothing left unacknowledged")
    check_eq(leftover(broker().port, "t3-sub", "t3/out/x"), [],
             "the subscriber got everything (its session is empty)")


@test
def broker_restarted_mid_stream():
    b = broker()
    sink = start_sink()
    sub = Client(b.port, "t4-sub", clean=False)
    sub.subscribe(["t4/out/#"])
    pb = Patchbay(HEAD + mqtt_in("t4", ["t4/in/#"], sink) + http_to_mqtt("t4h", "t4/out/x"))
    publish_all("t4/in/a", [json.dumps({"i": i}) for i in range(2000)], "t4-pub")
    poster = Poster(pb.port, "/t4h", lambda i: {"j": i}, concurrency=4, n=2000).start()
    wait_until(lambda: len(sink.records()) >= 200 and poster.count_acked() >= 200, 60,
               "traffic in both directions")
    b.restart()
    wait_until(lambda: input_state(pb, "t4")["state"] == "reconnecting" or
               "input connected again" in pb.log(), 30, "the input noticed")
    wait_until(lambda: "input connected again pipeline=t4" in pb.log(), 60,
               "the input reconnected")
    wait_until(lambda: "output connected again pipeline=t4h" in pb.log(), 60,
               "the output reconnected")
    publish_all("t4/in/a", [json.dumps({"i": i}) for i in range(2000, 3000)], "t4-pub")
    poster.join()
    wait_until(lambda: {x["i"] for x in bodies(sink)} >= set(range(3000)), 120,
               "every published message at the sink")
    acked = {i for i, _ in poster.acked()}
    check(len(acked) > 1000, f"most POSTs acknowledged ({len(acked)})")
    sub2 = Client(b.port, "t4-sub", clean=False)
    got_out = []

    def all_out():
        got_out.extend(json.loads(m.payload)["j"] for m in sub2.receive(len(acked), 2))
        return acked <= set(got_out)

    wait_until(all_out, 120, f"{len(acked)} acknowledged POSTs at the subscriber")
    got_in = [x["i"] for x in bodies(sink)]
    log(f"broker restart: in {len(got_in)} deliveries of 3000 ({len(got_in) - 3000} repeats), "
        f"out {len(got_out)} of {len(acked)}")
    check_eq(input_state(pb, "t4")["state"], "connected", "input connected")
    check_eq(output_state(pb, "t4h", "broker")["state"], "connected", "output connected")
    check_eq(pb.term(), 0, "exit code on SIGTERM")
    sub2.close()
    check_eq(leftover(b.port, "t4", "t4/in/x"), [], "nothing left unacknowledged")


@test
def killed_consumer_taken_over_by_another():
    n = 600
    sink = start_sink()
    conf = HEAD + mqtt_in("t5", ["t5/in/#"], sink)
    # The first consumer dies right after its 4th commit, before acknowledging it.
    first = Patchbay(conf, env={"PATCHBAY_TEST_CRASH_BEFORE_ACK": "4"})
    publish_all("t5/in/a", [json.dumps({"i": i}) for i in range(n)], "t5-pub")
    first.proc.wait(timeout=scaled(60))
    check_eq(first.proc.returncode, 137, "the first consumer died between commit and PUBACK")
    # Another patchbay (a state of its own), same client id: the session's.
    second = Patchbay(conf)
    publish_all("t5/in/a", [json.dumps({"i": n})], "t5-pub")  # after all the others
    wait_until(lambda: n in {x["i"] for x in bodies(sink)}, 60, "the last message")
    wait_until(lambda: second.metrics().get("patchbay_backlog") == 0, 60,
               "the second consumer delivered what it took")
    resent = [x for x in bodies(sink) if x["dup"]]
    check(resent, "messages the first left unacknowledged came again, marked dup")
    check_eq(second.term(), 0, "second exits on SIGTERM")
    # The first one's committed messages are delivered when it runs again.
    first.env.pop("PATCHBAY_TEST_CRASH_BEFORE_ACK")
    first.start()
    wait_until(lambda: {x["i"] for x in bodies(sink)} >= set(range(n + 1)), 60,
               "every message delivered by one or the other")
    check_eq(first.term(), 0, "first exits on SIGTERM")
    log(f"takeover: {len(resent)} resent messages taken by the second consumer, "
        f"{len(bodies(sink)) - n - 1} repeats in all")
    check_eq(leftover(broker().port, "t5", "t5/in/x"), [], "nothing left unacknowledged")


@test
def poison_message_dead_lettered_and_acknowledged():
    sink = start_sink()
    pb = Patchbay(HEAD + mqtt_in("t6", ["t6/in/#"], sink))
    c = Client(broker().port, "t6-pub")
    c.publish("t6/in/ok", b'{"i": 1}')
    c.publish("t6/in/bad", b'{"i": 2, oops}')
    c.publish("t6/in/ok", b'{"i": 3}')
    c.close()
    wait_until(lambda: len(sink.records()) >= 2, 30, "the two good messages")
    dead = []
    wait_until(lambda: dead.extend(pb.dead_letters(pipeline="t6")) or dead, 30, "a dead letter")
    check_eq(len(dead), 1, "one dead letter")
    check("invalid JSON" in (dead[0]["last_error"] or ""), f"with the reason: {dead[0]}")
    msg = pb.message(dead[0]["message_id"])
    check_eq(msg["meta"]["topic"], "t6/in/bad", "its $meta")
    check_eq(input_state(pb, "t6")["dead_on_arrival"], 1, "counted dead on arrival")
    check_eq(pb.term(), 0, "exit code")
    check_eq(leftover(broker().port, "t6", "t6/in/x"), [], "the poison was acknowledged")
    pb.start()
    publish_all("t6/in/ok", [b'{"i": 4}'], "t6-pub")
    wait_until(lambda: len(sink.records()) >= 3, 30, "a message after the restart")
    check_eq(sorted(x["i"] for x in bodies(sink)), [1, 3, 4], "the poison never came back")
    check_eq(len(pb.dead_letters(pipeline="t6")), 1, "still one dead letter")


@test
def back_pressure_holds_messages_without_losing_or_doubling():
    n = 3000
    sink = start_sink(delay_ms=2, threads=4)
    conf = (HEAD + mqtt_in("t11", ["t11/in/#"], sink)).replace(
        "shutdown_timeout: 10s", "shutdown_timeout: 10s\nlimits: { ingest_queue: 8, "
        "max_inflight_bytes: 2KiB }")
    pb = Patchbay(conf, start=False)
    pb.run_args = ["--log-level", "debug"]
    pb.start()
    publish_all("t11/in/a", [json.dumps({"i": i, "pad": "p" * 200}) for i in range(n)], "t11-pub")
    wait_until(lambda: len(sink.records()) >= n, 180, f"{n} messages at the sink")
    wait_until(lambda: pb.metrics().get("patchbay_backlog") == 0, 60, "nothing pending")
    check_eq(sorted(x["i"] for x in bodies(sink)), list(range(n)), "each once, in spite of the bounds")
    check_eq(input_state(pb, "t11")["nacked"], 0, "nothing handed back")
    check("holding messages and reading no more" in pb.log(), "the bounds were hit")
    check_eq(pb.term(), 0, "exit code")
    check_eq(leftover(broker().port, "t11", "t11/in/x"), [], "nothing left unacknowledged")


@test
def oversize_message_dead_lettered_and_acknowledged():
    sink = start_sink()
    pb = Patchbay(HEAD + mqtt_in("t10", ["t10/in/#"], sink, extra=", max_message: 2KiB"))
    c = Client(broker().port, "t10-pub")
    c.publish("t10/in/a", b'{"i": 1}')
    c.publish("t10/in/big", json.dumps({"i": 2, "pad": "x" * 100000}))
    c.publish("t10/in/a", b'{"i": 3}')
    c.close()
    wait_until(lambda: len(sink.records()) >= 2, 30, "the messages around it")
    dead = []
    wait_until(lambda: dead.extend(pb.dead_letters(pipeline="t10")) or dead, 30, "a dead letter")
    check("larger than max_message" in (dead[0]["last_error"] or ""), f"the reason: {dead[0]}")
    check_eq(pb.message(dead[0]["message_id"])["meta"]["topic"], "t10/in/big", "its topic")
    check_eq(sorted(x["i"] for x in bodies(sink)), [1, 3], "the others delivered")
    check("connection lost" not in pb.log(), "the connection stayed up")
    check_eq(pb.term(), 0, "exit code")
    check_eq(leftover(broker().port, "t10", "t10/in/x"), [], "acknowledged at the broker")


@test
def outbound_guard_refuses_the_broker():
    sink = start_sink()
    conf = (HEAD + mqtt_in("t7", ["t7/in/#"], sink) + http_to_mqtt("t7h", "t7/out")).replace(
        "outbound: { allow: [127.0.0.0/8] }", "")
    pb = Patchbay(conf, start=False)
    pb.start(wait_ready=False)
    wait_until(lambda: "blocked" in (input_state(pb, "t7").get("detail") or ""), 30,
               "the input refused by the guard")
    detail = input_state(pb, "t7")["detail"]
    check("127.0.0.1 is loopback" in detail, f"names the address and range: {detail}")
    st, _, body = pb.get("/ready")
    check_eq(st, 503, f"not ready: {body!r}")
    wait_until(lambda: "blocked" in (output_state(pb, "t7h", "broker").get("detail") or ""), 30,
               "the output refused by the guard")
    check("mqtt: connected" not in pb.log(), "never connected")


@test
def subscriptions_live_in_the_session():
    b = broker()
    sink = start_sink()
    c = Client(b.port, "t8-pub")
    c.publish("t8/a/r", b'{"i": 0}', retain=True)
    pb = Patchbay(HEAD + mqtt_in("t8", ["t8/a/#", "t8/b/#"], sink))
    wait_until(lambda: len(sink.records()) >= 1, 30, "the retained message")
    check_eq(bodies(sink)[0]["retain"], True, "$meta.retain")
    pb.restart()
    c.publish("t8/a/x", b'{"i": 1}')
    wait_until(lambda: len(sink.records()) >= 2, 30, "a message after the restart")
    check_eq([x["i"] for x in bodies(sink)], [0, 1],
             "the retained message was not sent again (no new SUBSCRIBE)")
    # t8/b/# leaves the configuration: the session must forget it.
    pb.term()
    pb._template = HEAD + mqtt_in("t8", ["t8/a/#"], sink)
    pb._write_config()
    pb.start()
    wait_until(lambda: "unsubscribing" in pb.log(), 30, "the unsubscribe")
    c.publish("t8/b/x", b'{"i": 2}')
    c.publish("t8/a/y", b'{"i": 3}')
    wait_until(lambda: len(sink.records()) >= 3, 30, "the next message")
    check_eq([x["i"] for x in bodies(sink)], [0, 1, 3], "t8/b is no longer subscribed")
    c.publish("t8/a/r", b"", retain=True)  # clear the retained message
    c.close()


@test
def key_drops_a_message_published_twice_and_v5_headers_reach_meta():
    sink = start_sink()
    pb = Patchbay(HEAD + mqtt_in("t9", ["t9/in/#"], sink,
                                 extra=', key: ".id", protocol: "5"'))
    c = Client(broker().port, "t9-pub", version=5)
    props = user_prop("tenant", "acme") + user_prop("trace", "1") + user_prop("trace", "2")
    c.publish("t9/in/a", b'{"id": "e1", "v": 1}', props=props)
    c.publish("t9/in/a", b'{"id": "e1", "v": 1}')
    c.publish("t9/in/a", b'{"id": "e2", "v": 2}')
    c.close()
    wait_until(lambda: len(sink.records()) >= 2, 30, "two messages")
    wait_until(lambda: input_state(pb, "t9")["duplicates"] >= 1, 30, "the repeat counted")
    check_eq(sorted(x["id"] for x in bodies(sink)), ["e1", "e2"], "the repeat was dropped")
    metas = [pb.message(r["headers"]["x-patchbay-message-id"])["meta"] for r in sink.records()]
    with_headers = [m for m in metas if "headers" in m]
    check_eq(len(with_headers), 1, f"one message has user properties: {metas}")
    check_eq(with_headers[0]["headers"], {"tenant": "acme", "trace": ["1", "2"]},
             "$meta.headers, a repeated name as an array")
    check_eq(pb.term(), 0, "exit code")
    check_eq(leftover(broker().port, "t9", "t9/in/x"), [], "the repeat was acknowledged too")


if __name__ == "__main__":
    run()
