"""Dead letters: a permanent 4xx ends in the DLQ after one attempt; the
admin API and `patchbay dlq` show, page, replay (one and all) and purge them;
everything under /api needs the admin token."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    TestFailure,
    check,
    check_eq,
    log,
    run,
    scaled,
    start_sink,
    test,
    wait_until,
)

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 10s
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop }
    outputs:
      payments:
        http:
          url: "SINK/charges"
          timeout: 2s
          map: '{order: .id}'
          retry: { max_attempts: 5, initial: 100ms, max: 1s, max_age: 1h }
      audit:
        http:
          url: "SINK/audit"
          timeout: 2s
          retry: { max_attempts: 5, initial: 100ms, max: 1s, max_age: 1h }
"""

LAB = dict(pipeline="orders", output="payments")


def post_order(pb, oid):
    st, _, data = pb.post("/hooks/shop", {"id": oid})
    check_eq(st, 202, f"post {oid}")
    return json.loads(data)["id"]


def ok_records(sink, mid, path="/charges"):
    return [
        r
        for r in sink.records()
        if r["status"] == 200
        and r["path"] == path
        and r["headers"].get("x-patchbay-message-id") == mid
    ]


def dlq(pb, *args):
    """`patchbay dlq ARGS` against pb via flags."""
    return pb.cli("dlq", *args, "--url", pb.url, "--token", pb.token)


def dead_count(pb):
    return pb.metrics().value("patchbay_deliveries_dead_total", **LAB)


def wait_dead(pb, mids, total):
    """Wait until the dead-letter API lists every message in mids for payments
    and the dead counter reached total. (Counters may run a moment ahead of the
    store, so tests that go on to use the API wait on the API.)"""

    def done():
        listed = {
            it["message_id"]
            for it in pb.dead_letters(pipeline="orders", output="payments")
            if it.get("state", "dead") == "dead"
        }
        return set(mids) <= listed and dead_count(pb) == total

    wait_until(done, 20, f"{len(mids)} dead letters listed, {total} counted")


def stays(pred, seconds, what):
    """pred() holds for the whole period (polling); used to show that nothing
    more happens, e.g. no second delivery."""
    end = time.monotonic() + scaled(seconds)
    while time.monotonic() < end:
        if not pred():
            raise TestFailure(what)
        time.sleep(0.05)


def make():
    # Two sinks: payments answers what the test says, audit always 200.
    sink = start_sink(status=400)
    audit = start_sink()
    cfg = CONFIG.replace("SINK/charges", sink.url + "/charges").replace(
        "SINK/audit", audit.url + "/audit"
    )
    return sink, audit, Patchbay(cfg)


@test
def permanent_failure_goes_to_dlq_and_replays_once():
    sink, audit, pb = make()
    mid = post_order(pb, "ord-1")
    wait_dead(pb, [mid], 1)
    check_eq(sink.requests(), 1, "exactly one attempt for a 400")
    # The other output is independent and delivered.
    wait_until(lambda: len(ok_records(audit, mid, "/audit")) == 1, 20, "audit delivered")

    items = pb.dead_letters()
    check_eq(len(items), 1, "one dead letter")
    dl = items[0]
    check_eq(dl["message_id"], mid, "dead letter message_id")
    check_eq(dl["pipeline"], "orders", "pipeline")
    check_eq(dl["output"], "payments", "output")
    check_eq(dl["attempts"], 1, "attempts")
    check_eq(dl["last_status"], 400, "last_status")
    dl_id = str(dl["id"])

    st, one = pb.admin("GET", f"/api/dead-letters/{dl_id}")
    check_eq(st, 200, "GET /api/dead-letters/{id}")
    check_eq(one["message_id"], mid, "single dead letter message_id")

    pb.wait_states([mid], {"payments": "dead", "audit": "delivered"})
    msg = pb.message(mid)
    d = {d["output"]: d for d in msg["deliveries"]}
    check_eq(d["payments"]["state"], "dead", "payments state")
    check_eq(d["payments"]["attempts"], 1, "payments attempts")
    check_eq(d["payments"]["last_status"], 400, "payments last_status")
    check_eq(len(d["payments"]["attempt_log"]), 1, "one attempt logged")
    check_eq(d["payments"]["attempt_log"][0]["status"], 400, "attempt status")
    check_eq(d["audit"]["state"], "delivered", "audit state")

    r = dlq(pb, "list")
    check_eq(r.returncode, 0, f"dlq list exit ({r.stderr})")
    check(dl_id in r.stdout and mid in r.stdout, f"dlq list shows the entry: {r.stdout!r}")
    r = dlq(pb, "show", dl_id)
    check_eq(r.returncode, 0, f"dlq show exit ({r.stderr})")
    check(mid in r.stdout and "400" in r.stdout, f"dlq show: {r.stdout!r}")

    sink.set_mode(status=200)
    r = dlq(pb, "replay", dl_id)
    check_eq(r.returncode, 0, f"dlq replay exit ({r.stderr})")
    wait_until(lambda: len(ok_records(sink, mid)) == 1, 20, "the replayed delivery")
    stays(lambda: len(ok_records(sink, mid)) == 1, 1.0, "replayed delivery arrived more than once")
    rec = ok_records(sink, mid)[0]
    check_eq(rec["headers"].get("idempotency-key"), f"{mid}.payments", "same idempotency key")
    check_eq(len(ok_records(audit, mid, "/audit")), 1, "replay did not touch the other output")

    pb.wait_states([mid], {"payments": "delivered"})
    msg = pb.message(mid)
    states = sorted(d["state"] for d in msg["deliveries"] if d["output"] == "payments")
    check("delivered" in states and "dead" not in states, f"payments states after replay {states}")
    for it in pb.dead_letters():
        check(str(it["id"]) != dl_id or it.get("state") == "replayed", f"still dead: {it}")
    wait_until(lambda: pb.metrics().value("patchbay_backlog", **LAB) == 0, 10, "backlog 0")
    check_eq(pb.term(), 0, "exit code")


@test
def replay_all_paging_and_purge():
    sink, audit, pb = make()
    mids = [post_order(pb, f"ord-{i}") for i in range(5)]
    wait_dead(pb, mids, 5)

    # Paging: limit 2 -> 3 pages, next_after null at the end.
    st, page = pb.admin("GET", "/api/dead-letters?pipeline=orders&output=payments&limit=2")
    check_eq(st, 200, "list")
    check_eq(len(page["items"]), 2, "page size")
    check(page["next_after"] is not None, "next_after on a full page")
    seen = [it["id"] for it in page["items"]]
    after = page["next_after"]
    for _ in range(5):
        st, page = pb.admin(
            "GET", f"/api/dead-letters?pipeline=orders&output=payments&limit=2&after={after}"
        )
        check_eq(st, 200, "list page")
        seen += [it["id"] for it in page["items"]]
        after = page["next_after"]
        if after is None:
            break
    check_eq(len(seen), 5, f"paged through all dead letters: {seen}")
    check_eq(len(set(map(str, seen))), 5, "no dead letter twice")
    check_eq(sorted(it["message_id"] for it in pb.dead_letters()), sorted(mids), "dlq messages")
    st, empty = pb.admin("GET", "/api/dead-letters?pipeline=orders&output=audit")
    check_eq((st, empty["items"]), (200, []), "filter by output")
    st, empty = pb.admin("GET", "/api/dead-letters?pipeline=nope")
    check(st in (200, 404), f"unknown pipeline filter -> {st}")

    # Replay all through the API.
    sink.set_mode(status=200)
    st, doc = pb.admin("POST", "/api/dead-letters/replay?pipeline=orders&output=payments")
    check_eq(st, 200, f"replay all ({doc})")
    check_eq(doc["replayed"], 5, "replayed count")
    wait_until(lambda: all(len(ok_records(sink, m)) == 1 for m in mids), 20, "5 replays delivered")
    check_eq([it for it in pb.dead_letters() if it.get("state", "dead") == "dead"], [], "dlq empty")

    # Replay all through the CLI, environment for url and token.
    sink.set_mode(status=422)
    more = [post_order(pb, f"ord-b{i}") for i in range(3)]
    wait_dead(pb, more, 8)
    sink.set_mode(status=200)
    r = pb.cli(
        "dlq", "replay", "--all", "--pipeline", "orders", "--output", "payments",
        env={"PATCHBAY_URL": pb.url, "PATCHBAY_ADMIN_TOKEN": pb.token},
    )
    check_eq(r.returncode, 0, f"dlq replay --all exit ({r.stderr})")
    check("3" in r.stdout, f"dlq replay --all says how many: {r.stdout!r}")
    wait_until(lambda: all(len(ok_records(sink, m)) == 1 for m in more), 20, "3 replays delivered")

    # One replay through the API answers the new delivery id.
    sink.set_mode(status=400)
    one = post_order(pb, "ord-c")
    wait_dead(pb, [one], 9)
    (dl,) = [it for it in pb.dead_letters() if it["message_id"] == one]
    sink.set_mode(status=200)
    st, doc = pb.admin("POST", f"/api/dead-letters/{dl['id']}/replay")
    check_eq(st, 200, f"replay one ({doc})")
    check_eq(doc["replayed"], 1, "replayed")
    check(isinstance(doc.get("delivery_id"), int), f"delivery_id: {doc}")
    wait_until(lambda: len(ok_records(sink, one)) == 1, 20, "replay delivered")
    st, doc = pb.admin("POST", "/api/dead-letters/999999999/replay")
    check_eq(st, 404, "replay of an unknown dead letter")

    # Purge: API and CLI.
    sink.set_mode(status=400)
    p1, p2 = post_order(pb, "ord-p1"), post_order(pb, "ord-p2")
    wait_dead(pb, [p1, p2], 11)
    ids = {it["message_id"]: str(it["id"]) for it in pb.dead_letters()}
    st, _ = pb.admin("DELETE", f"/api/dead-letters/{ids[p1]}")
    check_eq(st, 204, "DELETE dead letter")
    st, _ = pb.admin("GET", f"/api/dead-letters/{ids[p1]}")
    check_eq(st, 404, "purged dead letter is gone")
    st, _ = pb.admin("DELETE", f"/api/dead-letters/{ids[p1]}")
    check_eq(st, 404, "second DELETE")
    r = dlq(pb, "purge", ids[p2])
    check_eq(r.returncode, 0, f"dlq purge exit ({r.stderr})")
    st, _ = pb.admin("GET", f"/api/dead-letters/{ids[p2]}")
    check_eq(st, 404, "purged by CLI")
    remaining = {it["message_id"] for it in pb.dead_letters()}
    check(p1 not in remaining and p2 not in remaining, "purged entries not listed")
    log(f"replayed 9, purged 2; sink saw {sink.requests()} requests")
    check_eq(pb.term(), 0, "exit code")


GIVE_UP_CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop }
    outputs:
      attempts:
        http:
          url: "SINK/attempts"
          retry: { max_attempts: 3, initial: 50ms, max: 100ms, max_age: 1h }
      age:
        http:
          url: "SINK/age"
          retry: { max_attempts: 1000, initial: 50ms, max: 200ms, max_age: 1s }
"""


@test
def temporary_failures_end_in_dlq_after_max_attempts_or_max_age():
    sink = start_sink(status=503)
    pb = Patchbay(GIVE_UP_CONFIG.replace("SINK", sink.url))
    mid = post_order(pb, "ord-give-up")
    pb.wait_states([mid], {"attempts": "dead", "age": "dead"}, timeout=30)
    d = {d["output"]: d for d in pb.message(mid)["deliveries"]}
    check_eq(d["attempts"]["attempts"], 3, "max_attempts: attempts made")
    check_eq([a["status"] for a in d["attempts"]["attempt_log"]], [503] * 3, "attempt statuses")
    check_eq(d["attempts"]["last_status"], 503, "last_status")
    check(d["age"]["attempts"] >= 3, f"max_age: retried until the age ran out: {d['age']['attempts']}")
    log_ = d["age"]["attempt_log"]
    # Attempt times are unix ms; the last one starts no later than max_age after the first.
    span = log_[-1]["started_at"] - log_[0]["started_at"]
    check(span <= 1000 * scaled(1.5), f"attempts of a 1s max_age span {span} ms")
    check("max_age" in d["age"]["last_error"], f"reason names max_age: {d['age']['last_error']}")
    check("max_attempts" in d["attempts"]["last_error"], f"reason: {d['attempts']['last_error']}")
    recs = [r for r in sink.records() if r["path"] == "/attempts"]
    check_eq(len(recs), 3, "requests seen for the max_attempts output")
    check_eq([r["headers"].get("x-patchbay-attempt") for r in recs], ["1", "2", "3"], "attempt header")
    check_eq(len({r["headers"].get("idempotency-key") for r in recs}), 1, "one idempotency key")
    outs = sorted(it["output"] for it in pb.dead_letters())
    check_eq(outs, ["age", "attempts"], "both outputs in the DLQ")
    check_eq(pb.term(), 0, "exit code")


@test
def admin_needs_the_token():
    sink, audit, pb = make()
    for method, path in [
        ("GET", "/api/pipelines"),
        ("GET", "/api/dead-letters"),
        ("GET", "/api/dead-letters/1"),
        ("POST", "/api/dead-letters/1/replay"),
        ("POST", "/api/dead-letters/replay"),
        ("DELETE", "/api/dead-letters/1"),
        ("GET", "/api/messages/msg_x"),
    ]:
        for tok in (None, "wrong-token", pb.token + "x", pb.token[:-1]):
            st, _ = pb.admin(method, path, token=tok)
            check_eq(st, 401, f"{method} {path} with token {tok!r}")
    st, _, _ = pb.request("GET", "/api/pipelines", headers={"Authorization": pb.token})
    check_eq(st, 401, "token without the Bearer scheme")
    st, _ = pb.admin("GET", "/api/pipelines")
    check_eq(st, 200, "with the token")
    r = pb.cli("dlq", "list", "--url", pb.url, "--token", "wrong-token")
    check(r.returncode != 0, "dlq list with a wrong token fails")
    check(pb.token not in r.stdout + r.stderr, "CLI does not echo the token")
    r = pb.cli("dlq", "list", "--url", pb.url, env={"PATCHBAY_ADMIN_TOKEN": pb.token})
    check_eq(r.returncode, 0, f"dlq list with the token from the environment ({r.stderr})")
    check(pb.token not in pb.log(), "the admin token is not logged")
    check_eq(pb.term(), 0, "exit code")


if __name__ == "__main__":
    run()
