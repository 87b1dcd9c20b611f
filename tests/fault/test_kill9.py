"""Fault 1 - kill -9 at random moments under load.

A client posts without pause (16 connections) while the daemon is killed
with SIGKILL at random moments and restarted on the same state: 10 cycles
in the short form, 50 in the long form. The moments vary: a random number
of acknowledgements after the restart plus a random pause, and in one
cycle out of four while the restarted daemon is still starting (opening
the store, paging pending deliveries back in) - before it is ready.

The pipeline has two outputs on one partner: `payments` (mapped by jq)
and `audit` (the body passed through byte for byte), so each output's own
delivery state is checked. At the end every acknowledged message must have
reached both outputs (lost = 0), with the right body; duplicates are
counted and reported (at-least-once); the store passes integrity_check.

The second scenario takes its messages from a broker instead: a NATS
JetStream stream (nats-server started by the test) fed without pause by a
publisher, consumed by patchbay's nats input while patchbay is killed the
same way: 10 cycles in the short form, 50 in the long one. An acknowledged
message is one the broker confirmed (PubAck). At the end every one reached
both outputs, each was stored once (its Nats-Msg-Id made a redelivery after
a kill a repeat), and the consumer has nothing pending or unacknowledged."""

import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib  # noqa: E402
from faultlib import Deliveries, log, rng  # noqa: E402
from pbtest import (Patchbay, Poster, TestFailure, check, check_eq, start_sink, test,  # noqa: E402
                    wait_until)
from srv_nats import Nats  # noqa: E402

CYCLES = 50 if faultlib.LONG else 10
OUTPUTS = ("payments", "audit")

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 5s
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop, max_body: 64KiB }
    outputs:
      payments:
        http:
          url: "SINK/charges"
          timeout: 5s
          map: '{order: .id, cents: .total_cents}'
          retry: { max_attempts: 1000, initial: 50ms, max: 1s, max_age: 1h }
          concurrency: 16
      audit:
        http:
          url: "SINK/audit"
          timeout: 5s
          retry: { max_attempts: 1000, initial: 50ms, max: 1s, max_age: 1h }
          concurrency: 8
"""


def body(i):
    # Distinct bytes per message, and a key order and spacing jq would not
    # reproduce: the pass-through output must deliver exactly these bytes.
    return ('{"total_cents": %d,  "id": "ord-%d", "customer": {"id": "c%d"}}'
            % (i * 7 + 1, i, i % 97))


@test
def kill9_at_random_moments():
    sink = start_sink(delay_jitter_ms=15, threads=2)
    pb = Patchbay(CONFIG.replace("SINK", sink.url))
    dl = Deliveries(sink)
    poster = Poster(pb.port, "/hooks/shop", body, concurrency=16).start()
    kills_at_start = 0
    t0 = time.monotonic()
    try:
        for cycle in range(CYCLES):
            while_starting = cycle % 4 == 3
            if while_starting:
                # Killed within 150 ms of exec: opening the store, paging in.
                time.sleep(rng.uniform(0.0, 0.15))
                kills_at_start += 1
            else:
                target = poster.count_acked() + rng.randint(0, 400)
                wait_until(lambda: poster.count_acked() >= target, 60,
                           f"cycle {cycle + 1}: {target} acknowledgements")
                time.sleep(rng.uniform(0.0, 0.6))
            pb.kill9()
            dl.refresh()
            log(f"cycle {cycle + 1}/{CYCLES}: SIGKILL {'while starting' if while_starting else 'under load'}"
                f" after {poster.count_acked()} acks, {len(dl.ids('payments'))} delivered to payments")
            pb.start(wait_ready=not (cycle % 4 == 2))  # the next cycle kills it while starting
        pb.wait_ready(60)
        target = poster.count_acked() + 200
        wait_until(lambda: poster.count_acked() >= target, 60, "acknowledgements after the last restart")
    finally:
        poster.stop()
    load_s = time.monotonic() - t0

    acked = [mid for _, mid in poster.acked()]
    check_eq(len(set(acked)), len(acked), "acknowledged ids are distinct")
    unanswered = sum(1 for _, st, _ in poster.results if st is None)
    refused = sum(1 for _, st, mid in poster.results if st is not None and mid is None)
    log(f"{len(acked)} acknowledged, {unanswered} without answer (daemon down), {refused} refused")

    figures = faultlib.check_ledger(acked, dl, OUTPUTS, 180)
    faultlib.wait_backlog_zero(pb, 60)

    # Bodies: the mapped output carries the mapping, the other the exact bytes.
    by_index = {mid: i for i, mid in poster.acked()}
    for r in sink.records():
        mid = r["headers"].get("x-patchbay-message-id")
        if mid not in by_index or r["status"] != 200:
            continue
        i = by_index[mid]
        if r["path"] == "/charges":
            check_eq(json.loads(r["body"]), {"order": f"ord-{i}", "cents": i * 7 + 1}, f"{mid} mapped")
        else:
            check_eq(r["body"], body(i), f"{mid} passed through byte for byte")
    check_eq(pb.dead_letters(), [], "dead letters")
    for mid in acked[:: max(1, len(acked) // 40)]:
        states = sorted((d["output"], d["state"]) for d in pb.message(mid)["deliveries"])
        check_eq(states, [("audit", "delivered"), ("payments", "delivered")], f"{mid} states")
    check_eq(pb.term(), 0, "exit code on SIGTERM after the last cycle")
    faultlib.integrity_ok(os.path.join(pb.dir, "state.db"))

    log(f"duplicates: {figures['duplicate_messages']} (output, message) pairs delivered more than "
        f"once, {figures['duplicate_deliveries']} extra deliveries")
    faultlib.result("kill9", cycles=CYCLES, kills_at_start=kills_at_start,
                    acknowledged=len(acked), outputs=len(OUTPUTS), unanswered=unanswered,
                    refused=refused, load_seconds=round(load_s, 1), **figures)


# ---- the same with a broker input ----------------------------------------------------------

BROKER_CYCLES = 50 if faultlib.LONG else 10

BROKER_CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 5s
pipelines:
  orders:
    input:
      nats:
        url: "NATS_URL"
        stream: ORDERS
        consumer: patchbay
        subject: "orders.>"
        ack_wait: 2s
        fetch_wait: 200ms
        batch: 100
    outputs:
      payments:
        http:
          url: "SINK/charges"
          timeout: 5s
          map: '{order: .id, cents: .total_cents, subject: $meta.subject, delivery: $meta.num_delivered}'
          retry: { max_attempts: 1000, initial: 50ms, max: 1s, max_age: 1h }
          concurrency: 16
      audit:
        http:
          url: "SINK/audit"
          timeout: 5s
          retry: { max_attempts: 1000, initial: 50ms, max: 1s, max_age: 1h }
          concurrency: 8
"""

# pb_nats replaces every %d with the message's number; spacing jq would not keep.
BROKER_BODY = '{"total_cents": %d,  "id": "ord-%d", "customer": {"id": "c1"}}'


def broker_body(i):
    return BROKER_BODY.replace("%d", str(i))


class JsPublisher(threading.Thread):
    """Publishes to the stream without pause, in chunks of 50 (pb_nats,
    pipelined, each message with Nats-Msg-Id ord-<n>); a message counts as
    acknowledged once JetStream confirmed it."""

    def __init__(self, nats, subject, seed):
        super().__init__(daemon=True)
        self.nats, self.subject = nats, subject
        self.rand = random.Random(seed)
        self.acked = []
        self.error = None
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self):
        n = 0
        try:
            while not self._halt.is_set():
                chunk = 50
                r = self.nats.tool("publish", self.subject, chunk, "--start", n, "--body",
                                   BROKER_BODY, "--msg-id", "ord-%d")
                doc = json.loads(r.stdout)
                if doc["published"] != chunk or doc["errors"]:
                    raise TestFailure(f"pb_nats publish: {doc}")
                with self._lock:
                    self.acked.extend(range(n, n + chunk))
                n += chunk
                self._halt.wait(self.rand.uniform(0.05, 0.15))
        except Exception as e:  # reported by stop()
            self.error = e

    def count(self):
        with self._lock:
            return len(self.acked)

    def stop(self):
        self._halt.set()
        self.join(60)
        if self.error:
            raise TestFailure(f"the publisher failed: {self.error}")
        return list(self.acked)


def order_of(record):
    """The order id a sink record carries: "order" in the mapped body, "id" in
    the passed-through one."""
    try:
        b = json.loads(record["body"])
        return b.get("order") or b.get("id")
    except (ValueError, AttributeError):
        return None


@test
def kill9_consuming_a_broker():
    nats = Nats()
    nats.stream_add("ORDERS", "orders.>")
    sink = start_sink(delay_jitter_ms=15, threads=2)
    pb = Patchbay(BROKER_CONFIG.replace("SINK", sink.url).replace("NATS_URL", nats.url))
    dl = Deliveries(sink, id_of=order_of)
    pub = JsPublisher(nats, "orders.new", faultlib.SEED + 1)
    pub.start()
    kills_at_start = 0
    t0 = time.monotonic()

    def delivered():
        return len(dl.refresh().count)

    try:
        for cycle in range(BROKER_CYCLES):
            while_starting = cycle % 4 == 3
            if while_starting:
                time.sleep(rng.uniform(0.0, 0.15))
                kills_at_start += 1
            else:
                target = delivered() + rng.randint(0, 400)
                wait_until(lambda: delivered() >= target, 60,
                           f"cycle {cycle + 1}: {target} deliveries")
                time.sleep(rng.uniform(0.0, 0.6))
            pb.kill9()
            log(f"cycle {cycle + 1}/{BROKER_CYCLES}: SIGKILL "
                f"{'while starting' if while_starting else 'while consuming'} after "
                f"{pub.count()} published, {len(dl.ids('payments'))} delivered to payments")
            pb.start(wait_ready=not (cycle % 4 == 2))
        pb.wait_ready(60)
        target = delivered() + 200
        wait_until(lambda: delivered() >= target, 60, "deliveries after the last restart")
    finally:
        acked_n = pub.stop()
    load_s = time.monotonic() - t0

    acked = [f"ord-{i}" for i in acked_n]
    check_eq(nats.stream_info("ORDERS")["messages"], len(acked), "messages in the stream")
    log(f"{len(acked)} published and confirmed by JetStream")
    figures = faultlib.check_ledger(acked, dl, OUTPUTS, 180)

    # The broker: nothing left to deliver or unacknowledged.
    def settled():
        ci = nats.consumer_info("ORDERS", "patchbay")
        return ci if ci["num_pending"] == 0 and ci["num_ack_pending"] == 0 else None

    try:
        ci = wait_until(settled, 60, "the consumer with nothing pending or unacknowledged")
    except TestFailure:
        log(f"consumer: {nats.consumer_info('ORDERS', 'patchbay')}")
        raise
    check_eq(ci["ack_floor_stream_seq"], len(acked), "the consumer's ack floor")
    faultlib.wait_backlog_zero(pb, 60)

    # Each order stored once: a redelivery after a kill carried the same key.
    twice = {o: ids for o, ids in dl.pb_ids.items() if len(ids) > 1}
    check(not twice, f"{len(twice)} orders stored under more than one message id, e.g. "
                     f"{sorted(twice.items())[:3]}")
    redelivered = set()  # orders stored from a broker redelivery (after a kill)
    for r in sink.records():
        if r["status"] != 200:
            continue
        o = order_of(r)
        i = int(o[len("ord-"):])
        if r["path"] == "/charges":
            b = json.loads(r["body"])
            if b.get("delivery", 0) > 1:
                redelivered.add(o)
            b.pop("delivery", None)
            check_eq(b, {"order": o, "cents": i, "subject": "orders.new"}, f"{o} mapped")
        else:
            check_eq(r["body"], broker_body(i), f"{o} passed through byte for byte")
    check_eq(pb.dead_letters(), [], "dead letters")
    check_eq(pb.term(), 0, "exit code on SIGTERM after the last cycle")
    faultlib.integrity_ok(os.path.join(pb.dir, "state.db"))

    log(f"duplicates: {figures['duplicate_messages']} (output, message) pairs delivered more than "
        f"once, {figures['duplicate_deliveries']} extra deliveries")
    faultlib.result("kill9-nats", cycles=BROKER_CYCLES, kills_at_start=kills_at_start,
                    acknowledged=len(acked), outputs=len(OUTPUTS), stored_twice=len(twice),
                    stored_from_redelivery=len(redelivered), load_seconds=round(load_s, 1),
                    unacked_at_broker=ci["num_ack_pending"], **figures)


if __name__ == "__main__":
    faultlib.main()
