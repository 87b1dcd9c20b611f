"""The mqtt input and output against a scripted broker (srv_mqtt.FakeBroker),
for what a real broker does not do on demand:

- the PUBACK comes only after the commit: a process killed between the
  commit and the acknowledgement sent none, and the broker's resend after
  the restart is acknowledged (and, with `key:`, not stored twice);
- a message committed while its connection broke is not stored again when
  the broker resends it (DUP, same packet id) on the same session; a resend
  of something never committed is stored;
- the output ends a delivery by the PUBACK's reason code (MQTT 5): not
  authorized is dead-lettered at once, quota exceeded is retried; a
  connection lost before the PUBACK is retried on the next one."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import Patchbay, check, check_eq, run, start_sink, test, wait_until  # noqa: E402
from srv_mqtt import FakeBroker  # noqa: E402

IN_CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  p:
    input:
      mqtt: { url: "%(url)s", topics: ["t/#"], client_id: "fake-in", keepalive: 0s %(extra)s }
    process:
      - map: '. + {dup: $meta.dup, pid: $meta.packet_id}'
    outputs:
      sink: { http: { url: "%(sink)s/in" } }
"""

OUT_CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  p:
    input: { http_server: { path: /in } }
    outputs:
      broker:
        mqtt:
          url: "%(url)s"
          topic: "out/{{ .n }}"
          protocol: "5"
          keepalive: 0s
          retry: { max_attempts: 5, initial: 50ms, max: 200ms }
"""


def sink_ns(sink):
    return [json.loads(r["body"])["n"] for r in sink.records()]


def no_puback_before_close(conn):
    """Every packet until the connection closes; none may be a PUBACK."""
    while True:
        p = conn.read(30)
        if p is None:
            return
        check(p[0] != 4, "no PUBACK was sent before the process died")


@test
def puback_only_after_the_commit():
    fb = FakeBroker()
    sink = start_sink()
    conf = IN_CONF % {"url": fb.url, "sink": sink.url, "extra": ', key: ".n"'}
    # The 2nd submit (the 1st is the subscription set) ends the process
    # right after its commit, before its callback could acknowledge.
    pb = Patchbay(conf, env={"PATCHBAY_TEST_CRASH_BEFORE_ACK": "2"}, start=False)
    pb.start(wait_ready=False)
    c = fb.accept()
    check_eq(c.handshake()["clean"], False, "a persistent session (clean session 0)")
    c.suback()
    c.publish("t/a", b'{"n": 1}', pid=7)
    no_puback_before_close(c)
    pb.proc.wait(timeout=30)
    check_eq(pb.proc.returncode, 137, "died between commit and acknowledgement")
    pb.env.pop("PATCHBAY_TEST_CRASH_BEFORE_ACK")
    pb.start(wait_ready=False)
    c = fb.accept()
    c.handshake(session_present=True)
    c.publish("t/a", b'{"n": 1}', pid=7, dup=True)  # the broker's resend
    _, _, body = c.expect(4)
    check_eq(body[:2], b"\x00\x07", "the resend acknowledged")
    wait_until(lambda: len(sink.records()) >= 1, 30, "the message at the sink")
    wait_until(lambda: pb.metrics().get("patchbay_backlog") == 0, 30, "nothing pending")
    st, doc = pb.admin("GET", "/api/inputs")
    check_eq(doc["inputs"][0]["duplicates"], 1, "the resend was a duplicate of its key")
    check_eq(sink_ns(sink), [1], "stored and delivered once")
    c.close()
    fb.close()


@test
def resend_of_a_message_committed_while_the_connection_broke():
    fb = FakeBroker()
    sink = start_sink()
    pb = Patchbay(IN_CONF % {"url": fb.url, "sink": sink.url, "extra": ""}, start=False)
    pb.start(wait_ready=False)
    c = fb.accept()
    c.handshake()
    c.suback()
    c.publish("t/a", b'{"n": 1}', pid=9)
    _, _, body = c.expect(4)
    check_eq(body[:2], b"\x00\x09", "acknowledged after its commit")
    # Taken, then the connection breaks before the PUBACK can go out.
    c.publish_then_break("t/a", b'{"n": 2}', pid=10)
    check(c.read(30) is None, "patchbay dropped the connection")
    c.close()
    c = fb.accept()
    c.handshake(session_present=True)
    c.publish("t/a", b'{"n": 2}', pid=10, dup=True)  # the resend: same id, same message
    _, _, body = c.expect(4)
    check_eq(body[:2], b"\x00\x0a", "the resend acknowledged")
    c.publish("t/a", b'{"n": 3}', pid=11, dup=True)  # sent before, never taken: new
    _, _, body = c.expect(4)
    check_eq(body[:2], b"\x00\x0b", "acknowledged after its commit")
    wait_until(lambda: len(sink.records()) >= 3, 30, "three messages")
    wait_until(lambda: pb.metrics().get("patchbay_backlog") == 0, 30, "nothing pending")
    check_eq(sorted(sink_ns(sink)), [1, 2, 3], "the resend was not stored again")
    dups = {json.loads(r["body"])["n"]: json.loads(r["body"])["dup"] for r in sink.records()}
    check_eq(dups, {1: False, 2: False, 3: True}, "$meta.dup as the broker sent it")
    check_eq(pb.term(), 0, "exit code")
    c.close()
    fb.close()


@test
def ready_only_once_the_input_is_subscribed():
    fb = FakeBroker()
    sink = start_sink()
    pb = Patchbay(IN_CONF % {"url": fb.url, "sink": sink.url, "extra": ""}, start=False)
    pb.start(wait_ready=False)
    c = fb.accept()
    c.expect(1)  # CONNECT, not answered yet: the input is starting

    def ready_status():
        st, _, body = pb.get("/ready")
        return st, body

    # The engine itself says "starting" until its start is over; then the
    # input, still waiting for its CONNACK, is the reason.
    st, body = wait_until(
        lambda: (lambda r: r if b"input of pipeline" in r[1] else None)(ready_status()),
        30,
        "/ready naming the input",
    )
    check_eq(st, 503, f"not ready while the input is starting: {body!r}")
    check(b"is starting" in body, f"says why: {body!r}")
    c.send(0x20, b"\x00\x00")  # CONNACK
    st, body = ready_status()
    check_eq(st, 503, f"not ready before the SUBACK either: {body!r}")
    c.suback()
    wait_until(lambda: ready_status()[0] == 200, 30, "/ready once subscribed")
    check_eq(pb.term(), 0, "exit code")
    c.close()
    fb.close()


def out_conn(fb):
    c = fb.accept()
    info = c.handshake()
    check_eq(info["version"], 5, "MQTT 5")
    check_eq(info["clean"], True, "the output needs no session")
    return c


def read_publish(c):
    _, flags, body = c.expect(3)
    tl = int.from_bytes(body[:2], "big")
    topic = body[2:2 + tl].decode()
    pid = body[2 + tl:4 + tl]
    return topic, pid, flags


@test
def output_outcomes_by_puback_reason():
    fb = FakeBroker()
    pb = Patchbay(OUT_CONF % {"url": fb.url}, start=False)
    pb.start(wait_ready=False)
    c = out_conn(fb)
    pb.wait_ready()
    # Not authorized: never going to work.
    st, _, body = pb.post("/in", {"n": 1})
    check_eq(st, 202, "accepted")
    mid1 = json.loads(body)["id"]
    topic, pid, _ = read_publish(c)
    check_eq(topic, "out/1", "the rendered topic")
    c.send(0x40, pid + b"\x87")
    pb.wait_states([mid1], {"broker": "dead"})
    d = pb.message(mid1)["deliveries"][0]
    check("not authorized" in (d.get("last_error") or ""), f"the reason: {d}")
    # Quota exceeded: tried again, then delivered.
    st, _, body = pb.post("/in", {"n": 2})
    mid2 = json.loads(body)["id"]
    _, pid, _ = read_publish(c)
    c.send(0x40, pid + b"\x97")
    _, pid2, flags = read_publish(c)
    c.send(0x40, pid2)
    pb.wait_states([mid2], {"broker": "delivered"})
    # The connection lost before the PUBACK: tried again on the next one.
    st, _, body = pb.post("/in", {"n": 3})
    mid3 = json.loads(body)["id"]
    read_publish(c)
    c.close()
    c = out_conn(fb)
    topic, pid, _ = read_publish(c)
    check_eq(topic, "out/3", "sent again after the reconnect")
    c.send(0x40, pid)
    pb.wait_states([mid3], {"broker": "delivered"})
    check_eq(pb.term(), 0, "exit code")
    fb.close()


if __name__ == "__main__":
    run()
