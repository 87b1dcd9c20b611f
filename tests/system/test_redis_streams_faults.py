"""redis_streams under faults, against a real redis-server (one start for the
module; the append-only file is fsynced on every write, so Redis itself
loses nothing it answered):

- kill -9 of patchbay five times while it consumes a stream to the HTTP sink
  and publishes HTTP requests to a stream: every entry reaches the sink,
  every acknowledged request is in the stream, and the group's pending
  entries list is empty at the end;
- Redis restarted (gracefully, then with kill -9) mid-stream: patchbay
  reconnects on its own and loses nothing;
- a consumer dies with entries pending and another one, with another
  consumer name, takes them over after claim_idle (XAUTOCLAIM)."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    Poster,
    check,
    check_eq,
    log,
    run,
    start_sink,
    test,
    wait_until,
)
from srv_redis_streams import s, start_redis, wait_pel_empty  # noqa: E402

REDIS = start_redis()

BOTH = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 10s
pipelines:
  consume:
    input:
      redis_streams:
        url: "%(url)s"
        stream: %(src)s
        group: pb
        batch: 100
        block: 200ms
        connect_timeout: 1s
        timeout: 2s
    process:
      - map: '{n: .n, id: $meta.id}'
    outputs:
      sink:
        http:
          url: "%(sink)s/in"
          retry: { max_attempts: 1000, initial: 50ms, max: 1s, max_age: 1h }
  publish:
    input:
      http_server: { path: /in }
    outputs:
      redis:
        redis_streams:
          url: "%(url)s"
          stream: %(dst)s
          connect_timeout: 1s
          timeout: 2s
          retry: { max_attempts: 1000, initial: 50ms, max: 1s, max_age: 1h }
"""


def both_conf(src, dst, sink):
    return BOTH % {"url": REDIS.url, "src": src, "dst": dst, "sink": sink.url}


def unique_n(sink):
    out = set()
    for r in sink.records():
        out.add(json.loads(r["body"])["n"])
    return out


def keys_in(stream):
    seen = {}
    for _, f in REDIS.entries(stream):
        k = s(f["idempotency_key"])
        seen[k] = seen.get(k, 0) + 1
    return seen


def check_both_directions(pb, sink, poster, src, dst, n):
    wait_until(lambda: len(unique_n(sink)) >= n, 180, f"all {n} entries at the sink")
    check_eq(sorted(unique_n(sink)), list(range(n)), "every entry of the stream at the sink")
    wait_pel_empty(REDIS, src, "pb")
    acked = poster.acked()
    want = {mid + ".redis" for _, mid in acked}
    wait_until(lambda: want <= set(keys_in(dst)), 180,
               f"the {len(want)} acknowledged requests in the stream")
    got = keys_in(dst)
    dups = sum(c - 1 for c in got.values())
    reads = len(sink.records()) - n
    log(f"  sink: {n} entries, {reads} repeats; stream: {len(want)} acknowledged, "
        f"{len(got)} keys, {dups} repeated appends (same key)")
    bodies = {}
    for _, f in REDIS.entries(dst):
        bodies[s(f["idempotency_key"])] = json.loads(f["body"])
    for i, mid in acked:
        check_eq(bodies[mid + ".redis"]["i"], i, "each key carries its own request")


def kill_while_pending(pb, stream, timeout=5):
    """kill -9 pb as soon as the group has entries pending (read, not yet
    acknowledged), or after timeout; returns what was pending after it."""
    c = REDIS.client()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and c.call("XPENDING", stream, "pb")[0] == 0:
            pass
        pb.kill9()
        return c.call("XPENDING", stream, "pb")[0]
    finally:
        c.close()


@test
def kill9_five_times_in_both_directions():
    n = 10000
    src, dst = "kill-in", "kill-out"
    chunk = n // 6
    sink = start_sink(quiet=False, threads=2, delay_jitter_ms=5)
    pb = Patchbay(both_conf(src, dst, sink))
    poster = Poster(pb.port, "/in", lambda i: {"i": i}, concurrency=16, n=n).start()
    left = []
    try:
        for cycle in range(5):
            target = (cycle + 1) * n // 7
            wait_until(lambda: len(unique_n(sink)) >= cycle * chunk // 2 and
                       poster.count_acked() >= target, 120, f"progress before kill {cycle + 1}")
            # New entries, so the kill lands while they are being read.
            REDIS.add_many(src, [json.dumps({"n": i})
                                 for i in range(cycle * chunk, (cycle + 1) * chunk)])
            left.append(kill_while_pending(pb, src))
            log(f"  kill {cycle + 1}: {left[-1]} entries left pending at Redis")
            pb.start()
        REDIS.add_many(src, [json.dumps({"n": i}) for i in range(5 * chunk, n)])
        poster.join()
    finally:
        poster.stop()
    check(sum(left) > 0, f"some kill left entries pending, read again after the restart: {left}")
    check_both_directions(pb, sink, poster, src, dst, n)
    check_eq(poster.count_acked() > n // 2, True, "most requests were acknowledged")


@test
def redis_restarted_mid_stream_nothing_lost():
    n = 6000
    src, dst = "restart-in", "restart-out"
    REDIS.add_many(src, [json.dumps({"n": i}) for i in range(n)])
    sink = start_sink(quiet=False, threads=2, delay_ms=1)
    pb = Patchbay(both_conf(src, dst, sink))
    poster = Poster(pb.port, "/in", lambda i: {"i": i}, concurrency=8, n=n).start()
    try:
        wait_until(lambda: len(unique_n(sink)) >= n // 4, 60, "progress before the restart")
        REDIS.restart()
        wait_until(lambda: len(unique_n(sink)) >= n // 2, 60, "progress after the restart")

        def input_state():
            st, doc = pb.admin("GET", "/api/inputs")
            return [i["state"] for i in doc["inputs"] if i["pipeline"] == "consume"][0]

        REDIS.kill9()
        wait_until(lambda: input_state() == "reconnecting", 30, "the input to see Redis gone")
        st, _, _ = pb.get("/ready")
        check_eq(st, 503, "/ready while Redis is down")
        REDIS.start()
        wait_until(lambda: input_state() == "connected", 30, "the input connected again")
        poster.join()
    finally:
        poster.stop()
    check_both_directions(pb, sink, poster, src, dst, n)
    check("input connected again" in pb.log(), "the reconnection is logged")


TAKE = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  take:
    input:
      redis_streams:
        url: "%(url)s"
        stream: take
        group: pb
        consumer: CONSUMER_NAME
        batch: 50
        block: 100ms
        claim_idle: %(idle)s
    process:
      - map: '{n: .n, id: $meta.id, consumer: $meta.consumer,
               redeliveries: $meta.redelivery_count}'
    outputs:
      sink: { http: { url: "%(sink)s/in" } }
"""


@test
def another_consumer_takes_over_a_dead_ones_entries():
    n = 400
    idle_s = 3
    REDIS.add_many("take", [json.dumps({"n": i}) for i in range(n)])
    sink = start_sink(quiet=False)
    conf = TAKE % {"url": REDIS.url, "sink": sink.url, "idle": f"{idle_s}s"}
    # A commits its first batch and dies before its XACK, as a kill -9 in
    # that window would leave it: what it read stays pending, owned by A.
    a = Patchbay(conf.replace("CONSUMER_NAME", "A"),
                 env={"PATCHBAY_TEST_CRASH_BEFORE_ACK": "1"}, start=False)
    a.start(wait_ready=False)
    check_eq(a.proc.wait(timeout=60), 137, "A died between commit and acknowledgement")
    died = time.monotonic()
    owned = REDIS.pending_by_consumer("take", "pb")
    log(f"  pending after A died: {owned}")
    check(owned.get("A", 0) > 0, f"A left entries pending: {owned}")
    a_count = owned["A"]
    b = Patchbay(conf.replace("CONSUMER_NAME", "B"))
    # Not before claim_idle: right after B is up, A still owns them.
    if time.monotonic() - died < idle_s - 1:
        check_eq(REDIS.pending_by_consumer("take", "pb").get("A"), a_count,
                 "B does not take A's entries before claim_idle")
    wait_until(lambda: len(unique_n(sink)) >= n, 60, "every entry at the sink")
    check(time.monotonic() - died >= idle_s - 0.5, "A's entries came only after claim_idle")
    check_eq(sorted(unique_n(sink)), list(range(n)), "every entry once")
    wait_pel_empty(REDIS, "take", "pb")
    check_eq(REDIS.pending_by_consumer("take", "pb"), {}, "no consumer has entries pending")
    bodies = [json.loads(r["body"]) for r in sink.records()]
    claimed = [x for x in bodies if x["redeliveries"] >= 1]
    check_eq(len(claimed), a_count, "A's entries arrive as redeliveries")
    check(all(x["consumer"] == "B" for x in bodies), "B delivered everything")
    check("claimed idle entries" in b.log(), "the takeover is logged")
    b.term()


run()
