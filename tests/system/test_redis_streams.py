"""The redis_streams input and output against a real redis-server (one start
for the module): 10,000 entries from a stream to the HTTP sink and 10,000
requests into a stream, mapped and each once; $meta; a poison entry and an
entry without its body field dead-lettered and acknowledged, never read
again; whole entries as JSON; ACL credentials; the outbound guard; SIGTERM
acknowledging what was committed; lint refusing TLS (hiredis 0.14 has none)
and never printing a password."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    check,
    check_eq,
    log,
    post_many,
    run,
    run_cli,
    start_sink,
    test,
    tmpdir,
    wait_until,
)
from srv_redis_streams import s, start_redis, wait_pel_empty  # noqa: E402

REDIS = start_redis()

IN_CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  consume:
    input:
      redis_streams:
        url: "%(url)s"
        stream: %(stream)s
        group: %(group)s
        batch: %(batch)d
        block: 200ms
%(extra)s
%(process)s
    outputs:
      sink: { http: { url: "%(sink)s/in" } }
"""

OUT_CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
%(allow)s
pipelines:
  publish:
    input:
      http_server: { path: /in }
    outputs:
      redis:
        redis_streams:
          url: "%(url)s"
          stream: '%(stream)s'
%(extra)s
"""


def in_conf(stream, sink, group="pb", batch=200, extra="", process="", url=None):
    return IN_CONF % {"url": url or REDIS.url, "stream": stream, "group": group, "batch": batch,
                      "extra": extra, "process": process, "sink": sink.url}


def out_conf(stream, extra="", allow=True, url=None):
    return OUT_CONF % {"url": url or REDIS.url, "stream": stream, "extra": extra,
                       "allow": "outbound: { allow: [127.0.0.0/8] }" if allow else ""}


def sink_bodies(sink):
    return [json.loads(r["body"]) for r in sink.records()]


def inputs(pb):
    st, doc = pb.admin("GET", "/api/inputs")
    check_eq(st, 200, "GET /api/inputs")
    return doc["inputs"][0]


def output_state(pb, pipeline, output):
    st, doc = pb.admin("GET", "/api/pipelines")
    check_eq(st, 200, "GET /api/pipelines")
    for p in doc["pipelines"]:
        if p["name"] == pipeline:
            for o in p["outputs"]:
                if o["name"] == output:
                    return o
    raise AssertionError(f"no output {pipeline}/{output}")


@test
def stream_to_sink_10000_mapped_once():
    n = 10000
    stream = "orders-in"
    REDIS.add_many(stream, [json.dumps({"n": i, "kind": "order"}) for i in range(n)],
                   extra={"source": "shop", "region": "eu"})
    sink = start_sink(quiet=False, threads=2)
    process = ("    process:\n"
               "      - map: '{n: .n, stream: $meta.stream, id: $meta.id, src: $meta.fields.source,"
               " redeliveries: $meta.redelivery_count, has_body: ($meta.fields | has(\"body\"))}'")
    t0 = time.monotonic()
    pb = Patchbay(in_conf(stream, sink, batch=500, process=process))
    wait_until(lambda: len(sink.records()) >= n, 180, f"{n} deliveries at the sink")
    dt = time.monotonic() - t0
    log(f"  {n} entries stream -> patchbay -> sink in {dt:.1f}s ({n / dt:.0f}/s)")
    bodies = sink_bodies(sink)
    check_eq(sorted(b["n"] for b in bodies), list(range(n)), "every entry once at the sink")
    ids = {eid for eid, _ in REDIS.entries(stream)}
    for b in bodies[:50] + bodies[-50:]:
        check_eq(b["stream"], stream, "$meta.stream")
        check(b["id"] in ids, f"$meta.id {b['id']} is an entry of the stream")
        check_eq(b["src"], "shop", "$meta.fields.source")
        check_eq(b["redeliveries"], 0, "$meta.redelivery_count of a first delivery")
        check_eq(b["has_body"], False, "the body field is not repeated in $meta.fields")
    wait_pel_empty(REDIS, stream, "pb")
    info = REDIS.group_info(stream, "pb")
    check_eq(int(info["lag"]), 0, "group lag at Redis")
    wait_until(lambda: inputs(pb).get("lag") == 0, 20, "/api/inputs lag 0")
    i = inputs(pb)
    check_eq(i["state"], "connected", "input state")
    check(i["position"] and i["position"].startswith(info["last-delivered-id"]),
          f"position {i['position']!r} starts with the last delivered id")
    m = pb.metrics()
    check_eq(m.get("patchbay_input_connected", pipeline="consume"), 1.0, "connected gauge")
    check_eq(m.get("patchbay_input_lag", pipeline="consume"), 0.0, "lag gauge")


@test
def http_to_stream_10000_each_once_with_key():
    n = 10000
    pb = Patchbay(out_conf("events.{{ .kind }}", extra=(
        "          maxlen: 1000000\n"
        "          fields: { kind: '{{ .kind }}', fixed: static }\n"
        "          concurrency: 400\n")))
    t0 = time.monotonic()
    res = post_many(pb.url + "/in", [{"i": i, "kind": "a" if i % 2 else "b"} for i in range(n)],
                    concurrency=32)
    check_eq(sum(1 for st, _ in res if st == 202), n, "202 for every request")
    wait_until(lambda: REDIS.call("XLEN", "events.a") + REDIS.call("XLEN", "events.b") >= n, 180,
               f"{n} entries in the streams")
    dt = time.monotonic() - t0
    log(f"  {n} requests http -> patchbay -> stream in {dt:.1f}s ({n / dt:.0f}/s)")
    want_key = {mid + ".redis": i for i, (st, mid) in enumerate(res)}
    seen = {}
    for name, kind in (("events.a", "a"), ("events.b", "b")):
        for _, f in REDIS.entries(name):
            body = json.loads(f["body"])
            check_eq(s(f["kind"]), kind, "the templated field")
            check_eq(s(f["fixed"]), "static", "a fixed field")
            check_eq(body["kind"], kind, "routed by the stream template")
            key = s(f["idempotency_key"])
            check(key in want_key, f"key {key} is <message id>.<output>")
            check_eq(want_key[key], body["i"], "the key belongs to its own message")
            seen[key] = seen.get(key, 0) + 1
    check_eq(len(seen), n, "every delivery in the stream")
    check_eq(max(seen.values()), 1, "each once (no retries happened)")
    o = output_state(pb, "publish", "redis")
    check_eq(o["state"], "connected", "output state")
    check_eq(o["delivered_total"], n, "delivered counter")


@test
def poison_and_missing_field_dead_lettered_acked_never_again():
    stream = "poison"
    sink = start_sink()
    REDIS.add_many(stream, ["{\"ok\": 1}", "not json {", "{\"ok\": 2}"])
    REDIS.call("XADD", stream, "*", "other", "x", "more", "y")
    REDIS.call("XADD", stream, "*", "body", json.dumps({"big": "x" * 2000}))
    pb = Patchbay(in_conf(stream, sink, extra="        max_body: 1KiB"))
    wait_until(lambda: len(sink.records()) >= 2, 30, "the good entries")
    dls = wait_until(lambda: (lambda d: d if len(d) >= 3 else None)(pb.dead_letters()), 30,
                     "three dead letters")
    reasons = sorted(d["last_error"] for d in dls)
    check(any(r.startswith("invalid JSON") for r in reasons), f"invalid JSON reason: {reasons}")
    check(any('no field "body"' in r for r in reasons), f"missing field reason: {reasons}")
    check(any("larger than max_body" in r for r in reasons), f"max_body reason: {reasons}")
    missing = [d for d in dls if 'no field "body"' in d["last_error"]][0]
    msg = pb.message(missing["message_id"])
    body = msg["body"] if isinstance(msg["body"], (dict, list)) else json.loads(msg["body"])
    check_eq(body, {"other": "x", "more": "y"}, "the dead letter keeps the whole entry")
    check_eq(msg["meta"]["stream"], stream, "its $meta names the stream")
    wait_pel_empty(REDIS, stream, "pb")
    check_eq(int(REDIS.group_info(stream, "pb")["lag"]), 0, "nothing left undelivered")
    # A restart reads its own pending entries first: there are none, so
    # nothing comes again.
    code = pb.term()
    check_eq(code, 0, "SIGTERM exit code")
    pb.start()
    REDIS.add_many(stream, ["{\"ok\": 3}"])
    wait_until(lambda: len(sink.records()) >= 3, 30, "the entry added after the restart")
    check_eq(len(pb.dead_letters()), 3, "the dead letters are not made again")
    check_eq(sorted(b["ok"] for b in sink_bodies(sink)), [1, 2, 3], "each good entry once")


@test
def whole_entry_as_json_and_raw_bodies():
    sink = start_sink()
    REDIS.call("XADD", "whole", "*", "sku", "A-1", "qty", "3")
    REDIS.call("XADD", "whole", "*", "sku", "A-1", "sku", "twice")
    pb = Patchbay(in_conf("whole", sink, extra="        field: \"*\""))
    wait_until(lambda: len(sink.records()) >= 1, 30, "the whole entry")
    check_eq(sink_bodies(sink), [{"sku": "A-1", "qty": "3"}], "fields as a JSON object")
    dls = wait_until(lambda: pb.dead_letters(), 30, "the entry with a field twice")
    check("appears twice" in dls[0]["last_error"], f"reason: {dls[0]['last_error']}")
    pb.term()
    # format: raw passes any bytes.
    sink2 = start_sink()
    REDIS.call("XADD", "raw", "*", "body", b"\x00\xffnot json")
    pb2 = Patchbay(in_conf("raw", sink2, extra="        format: raw"))
    wait_until(lambda: len(sink2.records()) >= 1, 30, "the raw entry")
    st = sink2.stats()
    check_eq(st["requests"], 1, "one request")
    wait_pel_empty(REDIS, "raw", "pb")
    pb2.term()


@test
def acl_user_and_password_never_logged():
    REDIS.call("ACL", "SETUSER", "pbuser", "on", ">Pw-s3cret-42", "~*", "+@all")
    sink = start_sink()
    url = f"redis://pbuser:Pw-s3cret-42@127.0.0.1:{REDIS.port}"
    REDIS.add_many("acl", ["{\"a\": 1}"])
    pb = Patchbay(in_conf("acl", sink, url=url))
    wait_until(lambda: len(sink.records()) >= 1, 30, "the entry read as pbuser")
    pb.term()
    bad = f"redis://pbuser:Wrong-pw-77@127.0.0.1:{REDIS.port}"
    pb2 = Patchbay(in_conf("acl", sink, url=bad), start=False)
    pb2.start(wait_ready=False)
    i = wait_until(lambda: (lambda x: x if x["state"] == "reconnecting" else None)(inputs(pb2)),
                   30, "the input to report the refused login")
    check("WRONGPASS" in (i.get("detail") or ""), f"detail names the refusal: {i}")
    pb2.term()
    for p in (pb, pb2):
        check("Pw-s3cret-42" not in p.log() and "Wrong-pw-77" not in p.log(),
              "no password in the log")


@test
def outbound_guard_refuses_redis_without_allow():
    sink = start_sink()
    conf = in_conf("guarded", sink).replace("outbound: { allow: [127.0.0.0/8] }\n", "")
    pb = Patchbay(conf, start=False)
    pb.start(wait_ready=False)
    i = wait_until(lambda: (lambda x: x if x["state"] == "reconnecting" else None)(inputs(pb)),
                   30, "the input refused by the guard")
    check("blocked" in i["detail"] and "loopback" in i["detail"], f"detail: {i['detail']}")
    st, _, _ = pb.get("/ready")
    check_eq(st, 503, "/ready while the input cannot connect")
    check_eq(REDIS.call("EXISTS", "guarded"), 0, "no group (nor stream) was made")
    pb.term()
    pb2 = Patchbay(out_conf("guarded-out", allow=False))
    st, _, _ = pb2.post("/in", {"a": 1})
    check_eq(st, 202, "the request is taken")
    o = wait_until(lambda: (lambda x: x if x["state"] == "reconnecting" else None)(
        output_state(pb2, "publish", "redis")), 30, "the output refused by the guard")
    check("blocked" in o.get("detail", ""), f"detail: {o}")
    check_eq(REDIS.call("EXISTS", "guarded-out"), 0, "nothing written")
    pb2.term()


@test
def sigterm_acks_what_was_committed():
    stream = "drain"
    n = 3000
    REDIS.add_many(stream, [json.dumps({"n": i}) for i in range(n)])
    sink = start_sink(quiet=False)
    pb = Patchbay(in_conf(stream, sink, batch=50))
    wait_until(lambda: len(sink.records()) > 300, 60, "some deliveries")
    check_eq(pb.term(), 0, "SIGTERM exit code")
    # Whatever was read was committed and acknowledged before the exit.
    check_eq(REDIS.pending(stream, "pb"), 0, "nothing pending after SIGTERM")
    pb.start()
    wait_until(lambda: len({b["n"] for b in sink_bodies(sink)}) >= n, 120, "the rest")
    wait_pel_empty(REDIS, stream, "pb")


@test
def lint_refuses_tls_and_hides_the_password():
    d = tmpdir("lint")
    base = in_conf("x", type("S", (), {"url": "http://127.0.0.1:9"})())
    cases = [
        (base.replace("        block: 200ms\n",
                      "        block: 200ms\n        tls: { ca_file: /etc/ssl/ca.pem }\n"),
         "tls is not available"),
        (base.replace(REDIS.url, f"rediss://:Pw-hidden-9@127.0.0.1:{REDIS.port}"),
         "rediss:// (TLS) is not available"),
        (base.replace(REDIS.url, f"redis://:Pw-hidden-9@127.0.0.1:{REDIS.port}")
         .replace("block: 200ms", "block: 30s"), "block must be between"),
        (base.replace("stream: x", "stream: x\n        start: later"), "start must be"),
    ]
    for text, want in cases:
        path = os.path.join(d, "patchbay.yaml")
        with open(path, "w") as f:
            f.write(text.replace("@LISTEN@", "127.0.0.1:1").replace("@TOKEN@", "t")
                    .replace("@DIR@", d))
        r = run_cli("lint", path)
        out = r.stdout + r.stderr
        check_eq(r.returncode, 1, f"lint exit code for {want!r}: {out}")
        check(want in out, f"lint says {want!r}: {out}")
        check("Pw-hidden-9" not in out, f"no password in lint output: {out}")


@test
def back_pressure_pauses_reading_and_loses_nothing():
    stream = "bp"
    n = 3000
    REDIS.add_many(stream, [json.dumps({"n": i, "pad": "x" * 100}) for i in range(n)])
    sink = start_sink(quiet=False)
    # Two batches of 50 entries are more than the bound: the second one is
    # refused (PB_EFULL), reading pauses, and the entries are read again from
    # the pending list once there is room.
    conf = in_conf(stream, sink, batch=50).replace(
        "outbound:", "limits: { max_inflight_bytes: 8KiB }\noutbound:")
    pb = Patchbay(conf)
    wait_until(lambda: len(sink.records()) >= n, 120, f"{n} deliveries")
    check_eq(sorted(b["n"] for b in sink_bodies(sink)), list(range(n)), "every entry once")
    wait_pel_empty(REDIS, stream, "pb")
    i = inputs(pb)
    check(i["received"] > n, f"entries were read again after a refusal: received {i['received']}")
    check_eq(i["accepted"], n, "accepted once each")
    check_eq(i["duplicates"], 0, "nothing submitted twice")


@test
def missing_group_waits_until_it_exists():
    stream = "nogroup"
    sink = start_sink()
    REDIS.add_many(stream, ["{\"a\": 1}"])
    pb = Patchbay(in_conf(stream, sink, extra="        create_group: false"), start=False)
    pb.start(wait_ready=False)
    i = wait_until(lambda: (lambda x: x if x["state"] == "reconnecting" else None)(inputs(pb)),
                   30, "the input to report the missing group")
    check("NOGROUP" in i["detail"], f"detail: {i['detail']}")
    check_eq(len(sink.records()), 0, "nothing read without the group")
    REDIS.call("XGROUP", "CREATE", stream, "pb", "0")
    wait_until(lambda: len(sink.records()) >= 1, 60, "the entry once the group exists")
    wait_until(lambda: inputs(pb)["state"] == "connected", 30, "connected again")
    # With create_group (the default) a stream deleted under a running
    # input is made again, group and all.
    sink2 = start_sink()
    pb2 = Patchbay(in_conf("recreated", sink2))
    REDIS.add_many("recreated", ["{\"a\": 1}"])
    wait_until(lambda: len(sink2.records()) >= 1, 30, "the first entry")
    REDIS.call("DEL", "recreated")
    wait_until(lambda: REDIS.call("EXISTS", "recreated") == 1, 30, "the stream made again")
    REDIS.add_many("recreated", ["{\"a\": 2}"])
    wait_until(lambda: len(sink2.records()) >= 2, 30, "an entry of the new stream")
    wait_pel_empty(REDIS, "recreated", "pb")
    pb2.term()


@test
def output_errors_redis_refuses_are_permanent():
    REDIS.call("SET", "not-a-stream", "x")
    pb = Patchbay(out_conf("{{ .to }}"))
    mids = {}
    for to in ("not-a-stream", "", "fine"):
        st, _, data = pb.post("/in", {"to": to})
        check_eq(st, 202, "taken")
        mids[to] = json.loads(data)["id"]
    wait_until(lambda: REDIS.call("XLEN", "fine") == 1, 30, "the good one in its stream")
    # Each attempt keeps Redis's reply: the entry's id, or its refusal.
    pb.wait_states([mids["fine"]], {"redis": "delivered"})
    entry_id = REDIS.entries("fine")[0][0]
    att = pb.message(mids["fine"])["deliveries"][0]["attempt_log"]
    check_eq([a["answer"] for a in att], [entry_id], "the entry id XADD answered")
    pb.wait_states([mids["not-a-stream"]], {"redis": "dead"})
    att = pb.message(mids["not-a-stream"])["deliveries"][0]["attempt_log"]
    check((att[0]["answer"] or "").startswith("WRONGTYPE"), f"the refusal as the answer: {att}")
    dls = wait_until(lambda: (lambda d: d if len(d) >= 2 else None)(pb.dead_letters()), 30,
                     "two dead letters")
    errors = sorted(d["last_error"] for d in dls)
    check(any(e.startswith("WRONGTYPE") for e in errors), f"WRONGTYPE: {errors}")
    check(any("empty name" in e for e in errors), f"empty stream name: {errors}")
    for d in dls:
        check_eq(d.get("attempts"), 1, f"dead after one attempt: {d}")


run()
