"""The generate input and what every input gets from the core: messages made
on a timer with $meta, a checkpoint committed with them (a restart goes on
from it, kill -9 included), `run --once` exiting when everything is
delivered, and the ack contract: a process that dies between the commit and
the acknowledgement loses nothing and doubles nothing, because the resent
item's idempotency key drops the repeat."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (Patchbay, check, check_eq, run, scaled, start_sink, test,  # noqa: E402
                    wait_until)

CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  gen:
    input:
      generate:
        interval: %(interval)s
        count: %(count)d
        batch: %(batch)d
        template: '{seq: $meta.seq, kind: "tick"}'
    process:
      - map: '. + {input: $meta.input, pipeline: $meta.pipeline}'
    outputs:
      sink: { http: { url: "%(sink)s/in" } }
"""


def seqs(sink):
    out = []
    for r in sink.records():
        out.append(json.loads(r["body"])["seq"])
    return out


@test
def once_delivers_everything_then_exits():
    sink = start_sink()
    pb = Patchbay(CONF % {"interval": "5ms", "count": 20, "batch": 5, "sink": sink.url},
                  start=False)
    pb.run_args = ["--once"]
    pb.start(wait_ready=False)
    code = pb.proc.wait(timeout=scaled(60))
    check_eq(code, 0, f"exit code of run --once: {pb.log()[-2000:]}")
    got = seqs(sink)
    check_eq(sorted(got), list(range(1, 21)), "every sequence number once")
    body = json.loads(sink.records()[0]["body"])
    check_eq(body["input"], "generate", "$meta.input")
    check_eq(body["pipeline"], "gen", "$meta.pipeline")
    check_eq(body["kind"], "tick", "the template's output")
    # The checkpoint was committed: a second run has nothing left to make.
    pb.start(wait_ready=False)
    check_eq(pb.proc.wait(timeout=scaled(60)), 0, "second run --once")
    check_eq(len(sink.records()), 20, "nothing generated twice after the checkpoint")


@test
def kill9_resumes_from_the_checkpoint():
    sink = start_sink()
    n = 3000
    pb = Patchbay(CONF % {"interval": "1ms", "count": n, "batch": 50, "sink": sink.url})
    for _ in range(3):
        wait_until(lambda: len(sink.records()) > 200, 30, "some deliveries")
        pb.kill9()
        pb.start()
    pb.kill9()
    pb.run_args = ["--once"]
    pb.start(wait_ready=False)
    check_eq(pb.proc.wait(timeout=scaled(120)), 0, "run --once after the kills")
    got = seqs(sink)
    check_eq(sorted(set(got)), list(range(1, n + 1)), "every sequence number arrived")
    # Repeats at the sink are deliveries sent again after a kill (at least
    # once); each carries the same Idempotency-Key, so the partner can drop it.
    keys = {}
    for r in sink.records():
        seq = json.loads(r["body"])["seq"]
        keys.setdefault(seq, set()).add(r["headers"].get("idempotency-key"))
    check(all(len(k) == 1 for k in keys.values()), "one message (one key) per sequence number")


@test
def crash_between_commit_and_ack_neither_loses_nor_doubles():
    sink = start_sink()
    conf = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  in:
    input: { http_server: { path: /in } }
    outputs:
      sink: { http: { url: "%s/in" } }
""" % sink.url
    pb = Patchbay(conf, env={"PATCHBAY_TEST_CRASH_BEFORE_ACK": "1"})
    try:
        st, _, _ = pb.post("/in", {"order": 7}, headers={"Idempotency-Key": "order-7"})
    except OSError:
        st = None
    check(st is None, f"no answer: the process died before acknowledging (got {st})")
    pb.proc.wait(timeout=scaled(10))
    check_eq(pb.proc.returncode, 137, "the test hook ended the process")
    pb.env.pop("PATCHBAY_TEST_CRASH_BEFORE_ACK")
    pb.start()
    # The sender saw no answer and sends again, with the same key.
    st, headers, data = pb.post("/in", {"order": 7}, headers={"Idempotency-Key": "order-7"})
    check_eq(st, 202, "the resent request is acknowledged")
    check_eq(headers.get("idempotent-replayed"), "true", "as the repeat of the committed one")
    wait_until(lambda: len(sink.records()) >= 1, 20, "the delivery")
    wait_until(lambda: pb.metrics().get("patchbay_backlog") == 0, 20, "backlog 0")
    check_eq(len(sink.records()), 1, "delivered once: nothing lost, nothing doubled")


if __name__ == "__main__":
    run()
