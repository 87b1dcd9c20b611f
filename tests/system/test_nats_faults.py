"""The nats input and output through faults, against a real nats-server
with JetStream (one for the module): patchbay killed with -9 five times
while it consumes a stream and publishes to another, and the broker
itself killed and restarted mid-stream. Nothing is lost, the stream
patchbay publishes to holds each message once (Nats-Msg-Id), and the
consumer is left with nothing pending or unacknowledged."""

import http.client
import json
import os
import queue
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (Patchbay, TestFailure, check, check_eq, log, run, scaled,  # noqa: E402
                    start_sink, test, wait_until)
from srv_nats import Nats  # noqa: E402

NATS = None


def server():
    global NATS
    if NATS is None:
        NATS = Nats()
    return NATS


CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  consume:
    input:
      nats:
        url: "%(url)s"
        stream: %(instream)s
        consumer: patchbay
        subject: "%(insubj)s.>"
        ack_wait: 3s
        batch: 100
        reconnect_attempts: %(reconnects)d
    process:
      - map: '{n: .n, seq: $meta.stream_seq}'
    outputs:
      sink: { http: { url: "%(sink)s/in" } }
  publish:
    input: { http_server: { path: /orders } }
    outputs:
      js:
        nats:
          url: "%(url)s"
          subject: '%(outsubj)s.{{ .region }}'
          stream: %(outstream)s
          reconnect_attempts: %(reconnects)d
"""


class Sender:
    """Posts orders 0..n-1 to /orders with Idempotency-Key order-<i>, each
    until it is acknowledged (202), as a partner that retries would:
    through kills and restarts, with bounded retries."""

    def __init__(self, port, n, concurrency=8, deadline_s=180):
        self.port, self.n = port, n
        self.todo = queue.Queue()
        for i in range(n):
            self.todo.put(i)
        self.acked = set()
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + scaled(deadline_s)
        self.threads = [threading.Thread(target=self.work, daemon=True)
                        for _ in range(concurrency)]
        self.error = None

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def post(self, conn, i):
        body = json.dumps({"id": f"o-{i}", "region": ["eu", "us"][i % 2]})
        conn.request("POST", "/orders", body=body,
                     headers={"Content-Type": "application/json",
                              "Idempotency-Key": f"order-{i}"})
        r = conn.getresponse()
        r.read()
        return r.status

    def work(self):
        conn = None
        while True:
            try:
                i = self.todo.get_nowait()
            except queue.Empty:
                break
            while True:
                if time.monotonic() > self.deadline:
                    self.error = f"order {i} never acknowledged"
                    return
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    st = self.post(conn, i)
                except (OSError, http.client.HTTPException):
                    st = None
                    if conn is not None:
                        conn.close()
                    conn = None
                if st == 202:
                    with self.lock:
                        self.acked.add(i)
                    break
                time.sleep(0.05)  # down or pushing back: the partner waits, then retries
        if conn is not None:
            conn.close()

    def count(self):
        with self.lock:
            return len(self.acked)

    def join(self):
        for t in self.threads:
            t.join(scaled(300))
        if self.error:
            raise TestFailure(self.error)
        check_eq(self.count(), self.n, "every order acknowledged")


def conf(n, sink, instream, insubj, outstream, outsubj, reconnects=10):
    return CONF % {"url": n.url, "instream": instream, "insubj": insubj, "outstream": outstream,
                   "outsubj": outsubj, "sink": sink.url, "reconnects": reconnects}


def check_outcome(n, pb, sink, instream, outstream, count_in, count_out):
    """Everything arrived; the stream patchbay wrote holds each order once;
    the consumer has nothing pending or unacked."""
    def distinct_at_sink():
        return {json.loads(r["body"])["n"] for r in sink.records()}

    wait_until(lambda: len(distinct_at_sink()) >= count_in, 120,
               f"{count_in} distinct messages at the sink")
    check_eq(sorted(distinct_at_sink()), list(range(count_in)), "nothing lost from the stream")
    # A redelivered message is the same message (its key): one key per n.
    keys = {}
    for r in sink.records():
        keys.setdefault(json.loads(r["body"])["n"], set()).add(r["headers"]["idempotency-key"])
    doubled = [k for k, v in keys.items() if len(v) > 1]
    check_eq(doubled, [], "no message of the stream was taken twice")
    wait_until(lambda: n.stream_info(outstream)["messages"] >= count_out, 120,
               f"{count_out} messages in {outstream}")
    wait_until(lambda: pb.metrics().get("patchbay_backlog") == 0, 120, "backlog 0")
    msgs = n.dump(outstream)
    ids = sorted(int(json.loads(m["data"])["id"][2:]) for m in msgs)
    check_eq(ids, list(range(count_out)), f"each order once in {outstream}")

    def settled():
        ci = n.consumer_info(instream, "patchbay")
        return ci if ci["num_pending"] == 0 and ci["num_ack_pending"] == 0 else None

    wait_until(settled, 60, "nothing pending or unacknowledged at the broker")


class Publisher(threading.Thread):
    """Publishes count messages to subject in chunks, so a stream fills
    while patchbay consumes it."""

    def __init__(self, n, subject, count, chunk=250, pause=0.1):
        super().__init__(daemon=True)
        self.n, self.subject, self.count, self.chunk, self.pause = n, subject, count, chunk, pause
        self.done = 0
        self.error = None

    def run(self):
        try:
            while self.done < self.count:
                k = min(self.chunk, self.count - self.done)
                self.n.publish(self.subject, k, start=self.done)
                self.done += k
                time.sleep(self.pause)
        except Exception as e:  # reported by the test
            self.error = e


@test
def kill9_five_times_during_both_directions():
    n = server()
    n.stream_add("KIN", "kin.>")
    n.stream_add("KOUT", "kout.>")
    sink = start_sink(delay_ms=2, threads=8)
    total = 10000
    pb = Patchbay(conf(n, sink, "KIN", "kin", "KOUT", "kout"))
    pub = Publisher(n, "kin.x", total)
    pub.start()
    sender = Sender(pb.port, total).start()

    def progress():
        return len(sink.records()) + sender.count()

    for k in range(5):
        mark = progress()
        wait_until(lambda: progress() >= mark + 1200, 120, f"progress before kill {k + 1}")
        pb.kill9()
        log(f"kill -9 #{k + 1} at sink={len(sink.records())} acked={sender.count()} "
            f"published={pub.done}")
        pb.start()
    pub.join(scaled(120))
    check(pub.error is None, f"publisher: {pub.error}")
    sender.join()
    check_outcome(n, pb, sink, "KIN", "KOUT", total, total)
    check_eq(pb.term(), 0, "exit code on SIGTERM")


@test
def the_broker_restarted_mid_stream():
    n = server()
    n.stream_add("RIN", "rin.>")
    n.stream_add("ROUT", "rout.>")
    sink = start_sink(delay_ms=1)
    # Two reconnects of the library's own, so the outage also takes the
    # path where the connection is closed for good and opened anew.
    pb = Patchbay(conf(n, sink, "RIN", "rin", "ROUT", "rout", reconnects=2))
    n.publish("rin.x", 2500)
    sender = Sender(pb.port, 4000, concurrency=4).start()
    wait_until(lambda: len(sink.records()) >= 500 and n.stream_info("ROUT")["messages"] >= 500,
               60, "both directions under way")

    def inputs():
        _, doc = pb.admin("GET", "/api/inputs")
        return {i["pipeline"]: i for i in doc["inputs"]}

    n.kill9()
    st = wait_until(lambda: (lambda i: i if i["state"] == "reconnecting" else None)(
        inputs()["consume"]), 30, "the input reconnecting")
    log(f"input while the broker is down: {st['detail']}")
    code, _, _ = pb.get("/ready")
    check_eq(code, 503, "not ready while the input reconnects")
    check_eq(pb.metrics().get("patchbay_input_connected", pipeline="consume"), 0.0,
             "patchbay_input_connected 0")
    # Past the library's reconnects: patchbay opens connections of its own.
    wait_until(lambda: "again in" in (inputs()["consume"]["detail"] or ""), 60,
               "reconnecting with a fresh connection")
    n.start()
    wait_until(lambda: inputs()["consume"]["state"] == "connected", 60, "the input connected")
    n.publish("rin.x", 2500, start=2500)
    sender.join()
    check_outcome(n, pb, sink, "RIN", "ROUT", 5000, 4000)
    _, doc = pb.admin("GET", "/api/pipelines")
    out = [p for p in doc["pipelines"] if p["name"] == "publish"][0]["outputs"][0]
    check_eq(out["state"], "connected", "the output connected again")
    check_eq(pb.term(), 0, "exit code on SIGTERM")


@test
def patchbay_started_before_the_broker_connects_when_it_comes():
    n = server()
    n.stream_add("WIN", "win.>")
    n.stream_add("WOUT", "wout.>")
    n.stop()
    sink = start_sink()
    pb = Patchbay(conf(n, sink, "WIN", "win", "WOUT", "wout"), start=False)
    pb.start(wait_ready=False)

    def states():
        _, i = pb.admin("GET", "/api/inputs")
        _, p = pb.admin("GET", "/api/pipelines")
        inp = [x for x in i["inputs"] if x["pipeline"] == "consume"][0]["state"]
        out = [x for x in p["pipelines"] if x["name"] == "publish"][0]["outputs"][0]["state"]
        return inp, out

    wait_until(lambda: states() == ("reconnecting", "reconnecting"), 30,
               "input and output reconnecting while the broker is down")
    code, _, _ = pb.get("/ready")
    check_eq(code, 503, "not ready")
    st, _, _ = pb.post("/orders", {"id": "o-0", "region": "eu"})
    check_eq(st, 202, "HTTP still takes messages")
    n.start()
    wait_until(lambda: states() == ("connected", "connected"), 60,
               "input and output connected once the broker is up")
    pb.wait_ready()
    n.publish("win.x", 100)
    for i in range(1, 100):
        st, _, _ = pb.post("/orders", {"id": f"o-{i}", "region": "us"})
        check_eq(st, 202, "accepted")
    check_outcome(n, pb, sink, "WIN", "WOUT", 100, 100)


if __name__ == "__main__":
    run()
