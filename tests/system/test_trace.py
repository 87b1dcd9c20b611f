"""Tracing: the W3C traceparent an HTTP request or a broker message brings is
kept in $meta and sent on every attempt of every delivery (HTTP headers,
broker message headers) with the same trace id and a span id of the
attempt's own; a message without one (or with a malformed one) starts a new
trace, sent the same way."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    check,
    check_eq,
    run,
    start_sink,
    test,
    wait_until,
)
from srv_nats import Nats  # noqa: E402

NATS = None


def nats_server():
    global NATS
    if NATS is None or not NATS.running():
        NATS = Nats()
    return NATS

TP_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input: { http_server: { path: /in } }
    process:
      - map: '. + {trace: $meta.traceparent}'
    outputs:
      a: { http: { url: "SINK/a", retry: { initial: 50ms, max: 100ms } } }
      b: { http: { url: "SINK/b", retry: { initial: 50ms, max: 100ms } } }
"""

INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def parse(tp):
    m = TP_RE.match(tp or "")
    check(m is not None, f"not a traceparent: {tp!r}")
    return m.group(1), m.group(2), m.group(3)


def post(pb, body, headers):
    st, _, data = pb.post("/in", body, headers)
    check_eq(st, 202, f"POST /in: {data!r}")
    import json

    return json.loads(data)["id"]


def by_path(sink, path):
    return [r for r in sink.records() if r["path"] == path]


@test
def traceparent_kept_and_sent_with_a_span_per_attempt():
    sink = start_sink(status=503)
    pb = Patchbay(CONFIG.replace("SINK", sink.url))
    mid = post(pb, {"n": 1}, {"traceparent": INCOMING, "tracestate": "rojo=00f067aa0ba902b7"})
    # Both outputs fail their first attempts, then the partner recovers.
    wait_until(lambda: len(by_path(sink, "/a")) >= 1 and len(by_path(sink, "/b")) >= 1, 20,
               "first attempts")
    sink.set_mode(status=200)
    wait_until(lambda: any(r["status"] == 200 for r in by_path(sink, "/a")) and
               any(r["status"] == 200 for r in by_path(sink, "/b")), 20, "deliveries")
    trace_id, parent, flags = parse(INCOMING)
    spans = set()
    for path in ("/a", "/b"):
        recs = by_path(sink, path)
        check(len(recs) >= 2, f"{path}: a failed attempt and a delivered one, got {len(recs)}")
        for r in recs:
            t, span, f = parse(r["headers"].get("traceparent"))
            check_eq(t, trace_id, f"{path}: trace id")
            check_eq(f, flags, f"{path}: flags")
            check(span != parent, f"{path}: the attempt's span is its own, not the caller's")
            check(span not in spans, f"{path}: span {span} used twice")
            spans.add(span)
            check_eq(r["headers"].get("tracestate"), "rojo=00f067aa0ba902b7", "tracestate")
    # $meta keeps what came in; jq sees it.
    msg = pb.message(mid)
    check_eq(msg["meta"]["traceparent"], INCOMING, "$meta.traceparent")
    check_eq(msg["meta"]["tracestate"], "rojo=00f067aa0ba902b7", "$meta.tracestate")
    import json

    delivered = [json.loads(r["body"]) for r in by_path(sink, "/a") if r["status"] == 200]
    check_eq(delivered[0]["trace"], INCOMING, "$meta.traceparent in a map")


@test
def a_trace_is_started_when_none_or_a_malformed_one_came():
    sink = start_sink()
    pb = Patchbay(CONFIG.replace("SINK", sink.url))
    m1 = post(pb, {"n": 1}, {})
    m2 = post(pb, {"n": 2}, {"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"})
    wait_until(lambda: len(by_path(sink, "/a")) == 2 and len(by_path(sink, "/b")) == 2, 20,
               "deliveries")
    import json

    seen = {}
    for path in ("/a", "/b"):
        for r in by_path(sink, path):
            n = json.loads(r["body"])["n"]
            t, span, f = parse(r["headers"].get("traceparent"))
            check_eq(f, "01", "a started trace is sampled")
            check(r["headers"].get("tracestate") is None, "no tracestate when none came")
            seen.setdefault(n, set()).add(t)
    for n, mid in ((1, m1), (2, m2)):
        check_eq(len(seen[n]), 1, f"message {n}: one trace for both outputs")
        t, _, _ = parse(pb.message(mid)["meta"]["traceparent"])
        check_eq(seen[n], {t}, f"message {n}: the trace kept in $meta")
    check(seen[1] != seen[2], "two messages, two traces")
    check("4bf92f3577b34da6a3ce929d0e0e4736" not in seen[2], "a malformed traceparent is not continued")


NATS_CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  bridge:
    input:
      nats: { url: "URL", stream: TIN, consumer: patchbay, subject: "tin.>" }
    outputs:
      out: { nats: { url: "URL", subject: 'tout.{{ .n }}' } }
      hook: { http: { url: "SINK/hook" } }
"""


@test
def a_broker_message_continues_its_trace_into_broker_headers_and_http():
    n = nats_server()
    n.stream_add("TIN", "tin.>")
    n.stream_add("TOUT", "tout.>")
    sink = start_sink()
    pb = Patchbay(NATS_CONF.replace("URL", n.url).replace("SINK", sink.url))
    n.publish("tin.a", 1, start=1, headers=[f"traceparent:{INCOMING}", "tracestate:k=v"])
    n.publish("tin.b", 1, start=2)
    wait_until(lambda: len(n.dump("TOUT")) == 2 and len(sink.records()) == 2, 30, "both outputs")
    trace_id, parent, _ = parse(INCOMING)
    out = {int(m["subject"].split(".")[1]): m for m in n.dump("TOUT")}
    import json

    hooks = {json.loads(r["body"])["n"]: r for r in sink.records()}
    t1, s1, _ = parse(out[1]["headers"]["traceparent"][0])
    t2, s2, _ = parse(hooks[1]["headers"]["traceparent"])
    check_eq((t1, t2), (trace_id, trace_id), "the NATS header's trace reaches both outputs")
    check(len({s1, s2, parent}) == 3, "each attempt has a span of its own")
    check_eq(out[1]["headers"]["tracestate"], ["k=v"], "tracestate as a NATS header")
    check_eq(hooks[1]["headers"].get("tracestate"), "k=v", "tracestate as an HTTP header")
    # Without one: a new trace, the same for both outputs.
    t3, _, f3 = parse(out[2]["headers"]["traceparent"][0])
    t4, _, _ = parse(hooks[2]["headers"]["traceparent"])
    check(t3 == t4 and t3 != trace_id and f3 == "01", "a started trace, shared by the outputs")


if __name__ == "__main__":
    run()
