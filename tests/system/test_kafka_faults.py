"""The kafka input and output under faults, against librdkafka's mock cluster
(one for the module): patchbay killed -9 five times while it consumes and
produces, the brokers going away mid-stream and coming back, and a consumer
killed whose partitions another takes over, then a rebalance between two
live ones. Nothing acknowledged is lost, repeats carry the idempotency key of
the first copy, and the group's committed offsets end at the end."""

import errno
import json
import os
import subprocess
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
    tmpdir,
    wait_until,
)
from srv_kafka import Kafka  # noqa: E402

KAFKA = None  # one mock cluster for the module, started before run()


def both_ways(k, sink, topic_in, group, topic_out):
    return f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: sqlite:@DIR@/state.db
outbound: {{ allow: [127.0.0.0/8] }}
pipelines:
  consume:
    input:
      kafka: {{ brokers: {k.brokers_yaml}, topics: [{topic_in}], group: {group},
               session_timeout: 6s, batch: 100 }}
    outputs:
      sink:
        http: {{ url: "{sink.url}/in", retry: {{ initial: 100ms, max: 1s }} }}
  publish:
    input: {{ http_server: {{ path: /p }} }}
    outputs:
      kafka:
        kafka: {{ brokers: {k.brokers_yaml}, topic: {topic_out}, key: '{{{{ .id }}}}',
                 timeout: 5s, retry: {{ initial: 200ms, max: 2s }} }}
"""


def sink_ns(sink):
    """n -> set of Idempotency-Key headers it arrived with."""
    out = {}
    for r in sink.records():
        if r["status"] == 200:
            n = json.loads(r["body"])["n"]
            out.setdefault(n, set()).add(r["headers"].get("idempotency-key"))
    return out


def state(pb, pipeline):
    st, doc = pb.admin("GET", "/api/inputs")
    check_eq(st, 200, "GET /api/inputs")
    (it,) = [i for i in doc["inputs"] if i["pipeline"] == pipeline]
    return it


def output_state(pb, pipeline, output):
    st, doc = pb.admin("GET", "/api/pipelines")
    check_eq(st, 200, "GET /api/pipelines")
    for p in doc.get("pipelines", []):
        if p.get("name") == pipeline:
            for o in p.get("outputs", []):
                if o.get("name") == output:
                    return o
    return {}


def check_published(k, topic, acked_ids):
    """Every acknowledged post is in the topic; copies of one post carry the
    same idempotency-key header (a consumer drops the repeats by it)."""
    msgs = k.consume(topic)
    keys = {}
    for m in msgs:
        keys.setdefault(json.loads(m["value"])["id"], set()).add(m["headers"].get("idempotency-key"))
    missing = sorted(set(acked_ids) - set(keys))
    check(not missing, f"acknowledged posts missing from {topic}: {missing[:20]} "
                       f"({len(missing)} of {len(acked_ids)})")
    check(all(len(v) == 1 and None not in v for v in keys.values()),
          "one idempotency-key per post across its copies")
    return len(msgs) - len(keys)


@test
def kill9_five_times_while_consuming_and_producing():
    k = KAFKA
    n = 6000
    k.produce("kin", n, pad=100)
    sink = start_sink()
    pb = Patchbay(both_ways(k, sink, "kin", "g-kill", "kout"))
    posts = 6000
    poster = Poster(pb.port, "/p", lambda i: {"id": i}, concurrency=4, n=posts)
    poster.start()
    for i in range(5):
        got = len(sink.records())
        posted = poster.count_acked()
        # Progress, or the end of a direction: on a busy machine one direction
        # may finish first (all n consumed, or every post answered).
        wait_until(lambda: (len(sink.records()) >= got + n // 8 or len(sink_ns(sink)) >= n) and
                   (poster.count_acked() >= posted + 100 or len(poster.results) >= posts),
                   120, f"progress in both directions before kill {i + 1}")
        pb.kill9()
        pb.start()
    poster.join()
    acked = [i for i, _ in poster.acked()]
    wait_until(lambda: len(sink_ns(sink)) >= n, 180, f"all {n} consumed messages delivered")
    got = sink_ns(sink)
    check_eq(sorted(got), list(range(n)), "every message arrived")
    check(all(len(v) == 1 for v in got.values()),
          "repeats at the sink carry the idempotency key of the first copy")
    wait_until(lambda: k.committed_at_end("kin", "g-kill"), 60, "committed offset = end")
    wait_until(lambda: pb.metrics().value("patchbay_backlog", pipeline="publish", output="kafka")
               == 0, 120, "every post produced")
    repeats = check_published(k, "kout", acked)
    log(f"{len(acked)} posts acknowledged; {repeats} produced again after a kill; "
        f"{len(sink.records()) - n} consumed messages delivered again")


@test
def brokers_down_and_up_mid_stream():
    k = KAFKA
    n = 2000
    k.produce("bin", n, pad=100)
    sink = start_sink()
    pb = Patchbay(both_ways(k, sink, "bin", "g-down", "bout"))
    wait_until(lambda: len(sink.records()) >= 500, 60, "consumption under way")
    poster = Poster(pb.port, "/p", lambda i: {"id": i}, concurrency=4)
    poster.start()
    wait_until(lambda: poster.count_acked() >= 100, 30, "posts under way")
    k.down()
    try:
        wait_until(lambda: state(pb, "consume")["state"] == "reconnecting", 60,
                   "the input reports reconnecting")
        wait_until(lambda: output_state(pb, "publish", "kafka").get("state") == "reconnecting",
                   60, "the output reports reconnecting")
        during = poster.count_acked()
        wait_until(lambda: poster.count_acked() >= during + 50, 30,
                   "posts still taken while the brokers are away")
        # Longer than the output's timeout: unconfirmed messages fail and retry.
        wait_until(lambda: pb.metrics().value("patchbay_deliveries_retried_total",
                                              pipeline="publish", output="kafka") > 0, 30,
                   "produce attempts timing out and retrying")
        # Stopped while the brokers are away: it exits cleanly, in bounded time.
        t0 = time.monotonic()
        check_eq(pb.term(timeout=40), 0, "exit code of SIGTERM with the brokers away")
        log(f"stopped in {time.monotonic() - t0:.1f}s with the brokers away")
    finally:
        k.up()
    pb.start()
    wait_until(lambda: state(pb, "consume")["state"] == "connected", 60, "the input reconnects")
    k.produce("bin", n, start=n, pad=100)
    poster.stop()
    acked = [i for i, _ in poster.acked()]
    wait_until(lambda: len(sink_ns(sink)) >= 2 * n, 120, f"all {2 * n} consumed messages delivered")
    check_eq(sorted(sink_ns(sink)), list(range(2 * n)), "every message arrived")
    wait_until(lambda: k.committed_at_end("bin", "g-down"), 60, "committed offset = end")
    wait_until(lambda: pb.metrics().value("patchbay_backlog", pipeline="publish", output="kafka")
               == 0, 120, "every post produced")
    check_published(k, "bout", acked)
    check_eq(pb.metrics().value("patchbay_deliveries_dead_total", pipeline="publish",
                                output="kafka"), 0, "nothing dead-lettered by the outage")


@test
def killed_consumer_is_taken_over_then_rebalanced():
    k = KAFKA
    n = 4000
    k.produce("tin", n, pad=100)
    sink = start_sink()
    conf = both_ways(k, sink, "tin", "g-take", "tout")
    a = Patchbay(conf)
    wait_until(lambda: len(sink.records()) >= 800, 60, "the first consumer under way")
    a.kill9()
    taken = len(sink_ns(sink))
    check(taken < n, "killed mid-stream")
    # Another node (its own state store) joins the group: once the dead
    # member's session times out it gets every partition, from the offsets
    # the dead one committed.
    b = Patchbay(conf)

    def b_has_all():
        pos = state(b, "consume")["position"] or ""
        return all(f"tin/{p}@" in pos for p in range(4))
    wait_until(b_has_all, 60, "the second consumer holding every partition")
    wait_until(lambda: state(b, "consume")["accepted"] > 0, 60, "the second consumer taking over")
    # The first comes back: a rebalance between two live members.
    a.start()

    def split():
        pa, pb_ = state(a, "consume")["position"] or "", state(b, "consume")["position"] or ""
        return pa and pb_ and sum(f"tin/{p}@" in pa for p in range(4)) + \
            sum(f"tin/{p}@" in pb_ for p in range(4)) == 4
    wait_until(split, 60, "the partitions split between the two members")
    k.produce("tin", 1000, start=n)
    wait_until(lambda: len(sink_ns(sink)) >= n + 1000, 120, "every message delivered")
    check_eq(sorted(sink_ns(sink)), list(range(n + 1000)), "every message arrived")
    wait_until(lambda: k.committed_at_end("tin", "g-take"), 60, "committed offset = end")
    both = state(a, "consume")["accepted"] > 0 and state(b, "consume")["accepted"] > 0
    check(both, "both members consumed after the rebalance")
    log(f"{len(sink.records()) - (n + 1000)} messages delivered twice (taken by the killed "
        f"member or in flight across the rebalance, then read again by the other)")


def fill(path):
    """Write to path until the filesystem refuses; bytes written."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1 << 9):
            buf = b"\0" * chunk
            while True:
                try:
                    f.write(buf)
                    n += chunk
                except OSError as e:
                    check(e.errno in (errno.ENOSPC, errno.EDQUOT), f"filler write: {e}")
                    break
    return n


@test
def failed_commits_read_again_and_lose_nothing():
    """The state store runs out of space mid-stream (a small tmpfs, filled):
    batches fail to commit, their partitions are read again from the first
    offset not committed, and once there is space again every message
    arrives and the group's offsets reach the end."""
    k = KAFKA
    mnt = tmpdir("store-fs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", mnt],
                       capture_output=True, text=True)
    if r.returncode != 0:
        log(f"SKIPPED: cannot mount a tmpfs for the store ({r.stderr.strip()}); run as root")
        return
    pb = None
    try:
        n = 3000
        k.produce("fin", n, pad=1000)
        sink = start_sink()
        pb = Patchbay(f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: sqlite:{mnt}/state.db
outbound: {{ allow: [127.0.0.0/8] }}
pipelines:
  full:
    input:
      kafka: {{ brokers: {k.brokers_yaml}, topics: [fin], group: g-full, batch: 50,
               session_timeout: 6s }}
    outputs:
      sink:
        http: {{ url: "{sink.url}/f", retry: {{ max_attempts: 1000, initial: 50ms, max: 1s }} }}
""")
        wait_until(lambda: len(sink.records()) >= 300, 60, "consumption under way")
        filler = os.path.join(mnt, "filler")
        size = fill(filler)
        log(f"filled the store's filesystem with {size >> 10} KiB")
        wait_until(lambda: state(pb, "full")["nacked"] > 0, 60, "a batch failing to commit")
        os.unlink(filler)
        wait_until(lambda: len(sink_ns(sink)) >= n, 180, f"all {n} messages delivered")
        check_eq(sorted(sink_ns(sink)), list(range(n)), "every message arrived")
        wait_until(lambda: k.committed_at_end("fin", "g-full"), 60, "committed offset = end")
        check("reading again after a failed commit" in pb.log(),
              "the partitions were read again from the first offset not committed")
        it = state(pb, "full")
        log(f"nacked {it['nacked']}, duplicates {it['duplicates']}, "
            f"{len(sink.records()) - n} delivered again")
    finally:
        if pb is not None:
            pb.kill9()
        for args in (["umount", mnt], ["umount", "-l", mnt]):
            if subprocess.run(args, capture_output=True).returncode == 0:
                break


if __name__ == "__main__":
    KAFKA = Kafka(topics=["kin:4", "kout:3", "bin:4", "bout:3", "tin:4", "tout:3", "fin:2"])
    run()
