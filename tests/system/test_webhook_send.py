"""Sending webhooks: the `webhook` output and managed endpoints, end to end.

What patchbay sends is checked by the `standardwebhooks` npm package (the
Standard Webhooks reference client, pinned in tests/system/webhooks/package.json
and installed there with npm on first use) through webhooks/verify.js, and
against docs/webhooks.md (Sending):

- deliveries to a static and to a managed endpoint verify with that client; a
  tampered body or a wrong secret does not; webhook-id is the message id on
  every attempt and every endpoint;
- endpoints created through the API receive exactly the event types they
  subscribed to (exact, prefix.* and *);
- during a rotation every delivery carries one v1 signature per live secret
  and verifies with the old and the new one; after a short overlap only the
  new one signs;
- 410 Gone disables an endpoint, emits endpoint.disabled into the
  events_pipeline, holds later deliveries until enable, then sends them;
- recover (API and CLI) re-sends an endpoint's dead deliveries once;
- without outbound.allow, a private address, a host name resolving to
  127.0.0.1 and an http output to 127.0.0.1 are refused at once with
  "blocked: ..." in the dead letter, and the partner sees nothing."""

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pbtest  # noqa: E402
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

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "webhooks")

# Fast retries for endpoints that fail on purpose: 4 attempts within ~1 s.
FAST_RETRY = "retry: { schedule: [200ms, 200ms, 200ms] }"


# ---- the third-party verifier ----------------------------------------------------------


def ensure_client():
    pbtest.ensure_node_client(NODE_DIR)


def npm_verify(items):
    """Run verify.js over items [{secret, payload, headers}]; a list of
    {"ok": bool, "error"?: str} in the same order."""
    ensure_client()
    r = subprocess.run(["node", os.path.join(NODE_DIR, "verify.js")], input=json.dumps(items),
                       capture_output=True, text=True, timeout=scaled(60))
    check(r.returncode == 0, f"verify.js failed: {r.stderr}")
    out = json.loads(r.stdout)
    check_eq(len(out), len(items), "results from verify.js")
    return out


def item(rec, secret, payload=None):
    """A verify.js request for a sink record (its headers and raw body)."""
    check(rec.get("body") is not None, f"record body is not UTF-8: {rec!r}")
    return {"secret": secret, "payload": rec["body"] if payload is None else payload,
            "headers": rec["headers"]}


def expect_verified(cases, what):
    """cases: [(verify.js item, want_ok, label)]; one node run for them all."""
    res = npm_verify([c[0] for c in cases])
    bad = [f"{label}: want {'valid' if want else 'refused'}, got {r}"
           for (_, want, label), r in zip(cases, res) if r["ok"] != want]
    check(not bad, f"{what}:\n  " + "\n  ".join(bad))


def tampered(body):
    """The body with one character changed (still the same length)."""
    i = len(body) // 2
    return body[:i] + ("0" if body[i] != "0" else "1") + body[i + 1:]


def sig_header(rec):
    return rec["headers"].get("webhook-signature")


def new_secret(n=32):
    return "whsec_" + base64.b64encode(secrets.token_bytes(n)).decode()


def v1_sigs(rec):
    sigs = rec["headers"].get("webhook-signature", "").split(" ")
    return [s for s in sigs if s.startswith("v1,")]


# ---- small helpers ---------------------------------------------------------------------

HEAD = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
shutdown_timeout: 5s
"""
ALLOW = 'outbound: { allow: [127.0.0.0/8, "::1/128"] }\n'


def stays(pred, seconds, what):
    """pred() holds for the whole (scaled) period: nothing extra shows up."""
    end = time.monotonic() + scaled(seconds)
    while time.monotonic() < end:
        check(pred(), what)
        time.sleep(0.05)


def post(pb, body, path="/hooks/orders"):
    st, _, data = pb.post(path, body)
    check_eq(st, 202, f"post {body!r}: {data!r}")
    return json.loads(data)["id"]


def create_endpoint(pb, output, url, events=None, **extra):
    body = dict(output=output, url=url, **extra)
    if events is not None:
        body["events"] = events
    st, doc = pb.admin("POST", "/api/endpoints", body)
    check_eq(st, 201, f"POST /api/endpoints {body}: {doc}")
    check(doc["id"].startswith("ep_") or "id" in extra, f"endpoint id: {doc['id']!r}")
    check(doc.get("secret", "").startswith("whsec_"), f"201 shows the secret: {doc}")
    if events is not None:
        check_eq(doc["events"], events, "events as created")
    return doc


def endpoint(pb, ep_id):
    st, doc = pb.admin("GET", f"/api/endpoints/{ep_id}")
    check_eq(st, 200, f"GET /api/endpoints/{ep_id}: {doc}")
    return doc


def recs(sink, path=None, status=None):
    return [r for r in sink.records()
            if (path is None or r["path"] == path) and (status is None or r["status"] == status)]


def child_deliveries(pb, mid, output):
    """{child output name: state} of a message's fan-out from webhook output."""
    return {d["output"]: d["state"] for d in pb.message(mid)["deliveries"]
            if d["output"].startswith(output + "/")}


def wait_fanned_out(pb, mids, output, timeout=10):
    """Every message's fan-out through output is recorded and none of its
    child deliveries is pending any more."""

    def done():
        for mid in mids:
            ds = pb.message(mid)["deliveries"]
            parent = [d["state"] for d in ds if d["output"] == output]
            kids = [d["state"] for d in ds if d["output"].startswith(output + "/")]
            if not parent or "pending" in parent or "pending" in kids:
                return False
        return True

    wait_until(done, timeout, f"fan-out of {len(list(mids))} message(s) through {output}")


def now_ms():
    return int(time.time() * 1000)


# ---- 1. signatures ---------------------------------------------------------------------

SIGN_CONFIG = HEAD + ALLOW + """
pipelines:
  orders:
    input:
      http_server: { path: /hooks/orders }
    outputs:
      customers:
        webhook:
          event_type: '.type'
          timeout: 5s
          FAST_RETRY
          endpoints:
            - id: crm
              url: "CRM_URL/crm"
              secret: "${CRM_SECRET}"
              events: [order.created]
""".replace("FAST_RETRY", FAST_RETRY)


@test
def signatures_verify_with_the_npm_client_and_webhook_id_is_stable():
    crm_secret = new_secret()
    crm = start_sink(status=503)
    mgd = start_sink(status=503)
    pb = Patchbay(SIGN_CONFIG.replace("CRM_URL", crm.url), env={"CRM_SECRET": crm_secret})

    ep = create_endpoint(pb, "customers", mgd.url + "/managed", ["order.*"])
    mgd_secret = ep["secret"]
    shown = endpoint(pb, ep["id"])
    check("secret" not in shown and mgd_secret not in json.dumps(shown),
          f"GET /api/endpoints/{{id}} shows no secret: {shown}")

    order = {"type": "order.created", "order": {"id": "A-1", "total_cents": 1250}}
    t0 = time.time()
    mid = post(pb, order)
    check(mid.startswith("msg_"), f"message id {mid!r}")

    # Both endpoints fail (503) at least once, then recover.
    wait_until(lambda: crm.requests() >= 1 and mgd.requests() >= 1, 10, "first attempts (503)")
    crm.set_mode(status=200)
    mgd.set_mode(status=200)
    wait_until(lambda: crm.ok_count() == 1 and mgd.ok_count() == 1, 10, "delivered after a 503")
    pb.wait_states([mid], {"customers/crm": "delivered", f"customers/{ep['id']}": "delivered"})
    n_crm, n_mgd = crm.requests(), mgd.requests()
    stays(lambda: (crm.requests(), mgd.requests()) == (n_crm, n_mgd), 0.5,
          "no request after the 200")

    cases = []
    for name, sink, secret, other in (("static", crm, crm_secret, mgd_secret),
                                      ("managed", mgd, mgd_secret, crm_secret)):
        rs = sorted(sink.records(), key=lambda r: r["n"])
        check(len(rs) >= 2, f"{name}: a failed attempt and a retry, got {len(rs)} request(s)")
        check_eq([r["status"] for r in rs], [503] * (len(rs) - 1) + [200], f"{name}: statuses")
        check_eq([r["headers"].get("webhook-id") for r in rs], [mid] * len(rs),
                 f"{name}: webhook-id is the message id on every attempt")
        check_eq([r["headers"].get("x-patchbay-attempt") for r in rs],
                 [str(i) for i in range(1, len(rs) + 1)], f"{name}: X-Patchbay-Attempt")
        for r in rs:
            h = r["headers"]
            check_eq(r["method"], "POST", f"{name}: method")
            check((h.get("content-type") or "").startswith("application/json"),
                  f"{name}: Content-Type {h.get('content-type')!r}")
            ts = int(h.get("webhook-timestamp", "0"))
            check(abs(ts - t0) < 60, f"{name}: webhook-timestamp {ts} is the attempt's unix s")
            check_eq(len(v1_sigs(r)), 1, f"{name}: one v1 signature ({sig_header(r)!r})")
            check_eq(json.loads(r["body"]), order, f"{name}: the payload is the message")
            cases.append((item(r, secret), True, f"{name} attempt {h.get('x-patchbay-attempt')}"))
        last = rs[-1]
        cases += [
            (item(last, secret, payload=tampered(last["body"])), False, f"{name}: tampered body"),
            (item(last, secret, payload=last["body"] + " "), False, f"{name}: a byte appended"),
            (item(last, new_secret()), False, f"{name}: a wrong secret"),
            (item(last, other), False, f"{name}: the other endpoint's secret"),
        ]
    expect_verified(cases, "standardwebhooks verify()")
    n_ok = sum(1 for c in cases if c[1])
    log(f"  verified {n_ok} deliveries, refused {len(cases) - n_ok} forgeries")

    d = {x["output"]: x for x in pb.message(mid)["deliveries"]}
    check_eq(d["customers/crm"]["attempts"], len(crm.records()), "static: attempts recorded")
    check_eq(d[f"customers/{ep['id']}"]["attempts"], len(mgd.records()),
             "managed: attempts recorded")
    check_eq(pb.term(), 0, "exit code")
    text = pb.log() + pb.stdout()
    for s in (crm_secret, mgd_secret):
        check(s[len("whsec_"):] not in text, "the log shows a secret")


# ---- 2. subscriptions ------------------------------------------------------------------

SUBS_CONFIG = HEAD + ALLOW + """
pipelines:
  orders:
    input:
      http_server: { path: /hooks/orders }
    outputs:
      customers:
        webhook: { event_type: '.type', timeout: 5s, FAST_RETRY }
""".replace("FAST_RETRY", FAST_RETRY)


@test
def endpoints_receive_exactly_the_types_they_subscribed_to():
    sink = start_sink()
    pb = Patchbay(SUBS_CONFIG)
    subs = {
        "/created": ["order.created"],
        "/order-star": ["order.*"],
        "/invoice": ["invoice.paid"],
        "/all": ["*"],
    }
    eps = {path: create_endpoint(pb, "customers", sink.url + path, events)
           for path, events in subs.items()}
    st, doc = pb.admin("GET", "/api/endpoints?output=customers")
    check_eq(st, 200, "list endpoints")
    check_eq(sorted(i["id"] for i in doc["items"]), sorted(e["id"] for e in eps.values()),
             "the list shows the four endpoints")
    check(all("secret" not in i for i in doc["items"]), "the list shows no secret")

    types = ["order.created", "order.refund.issued", "order.cancelled", "invoice.paid",
             "invoice.created", "customer.updated", "orders.created", "order"]
    mids = {t: post(pb, {"type": t, "n": i}) for i, t in enumerate(types)}
    want = {
        "/created": {"order.created"},
        "/order-star": {"order.created", "order.refund.issued", "order.cancelled"},
        "/invoice": {"invoice.paid"},
        "/all": set(types),
    }
    total = sum(len(v) for v in want.values())
    wait_until(lambda: sink.ok_count() >= total, 15, f"{total} deliveries")
    wait_fanned_out(pb, mids.values(), "customers")
    stays(lambda: sink.requests() == total, 0.5, f"no delivery beyond the {total} subscribed")

    by_id = {mid: t for t, mid in mids.items()}
    cases = []
    for path, types_want in want.items():
        rs = recs(sink, path)
        got = sorted(json.loads(r["body"])["type"] for r in rs)
        check_eq(got, sorted(types_want), f"{path} {subs[path]}: event types received")
        for r in rs:
            t = json.loads(r["body"])["type"]
            check_eq(r["headers"].get("webhook-id"), mids[t], f"{path}: webhook-id of {t}")
            cases.append((item(r, eps[path]["secret"]), True, f"{path} {t}"))
        other = next(p for p in want if p != path)
        cases.append((item(rs[0], eps[other]["secret"]), False, f"{path} with {other}'s secret"))
    expect_verified(cases, "each endpoint's deliveries with its own secret")

    # The attempt log agrees: one child delivery per subscribed endpoint.
    id_of = {e["id"]: p for p, e in eps.items()}
    for mid, t in by_id.items():
        kids = child_deliveries(pb, mid, "customers")
        got = sorted(id_of[name.split("/", 1)[1]] for name in kids)
        check_eq(got, sorted(p for p, ts in want.items() if t in ts), f"fan-out of {t}")
        check(all(s == "delivered" for s in kids.values()), f"fan-out of {t}: {kids}")


# ---- 3. rotation -----------------------------------------------------------------------

ROTATE_CONFIG = HEAD + ALLOW + """
pipelines:
  orders:
    input:
      http_server: { path: /hooks/orders }
    outputs:
      long:
        webhook: { event_type: '.type', timeout: 5s, FAST_RETRY }
      short:
        webhook: { event_type: '.type', timeout: 5s, rotation_overlap: 1s, FAST_RETRY }
""".replace("FAST_RETRY", FAST_RETRY)


@test
def rotation_signs_with_both_secrets_during_the_overlap_only():
    sink = start_sink()
    pb = Patchbay(ROTATE_CONFIG)
    a = create_endpoint(pb, "long", sink.url + "/long", ["order.*"])
    b = create_endpoint(pb, "short", sink.url + "/short", ["order.*"])
    a0, b0 = a["secret"], b["secret"]

    def delivered(mid):
        def there(p):
            return any(r["headers"].get("webhook-id") == mid for r in recs(sink, p, 200))

        wait_until(lambda: there("/long") and there("/short"), 10, f"{mid} at both endpoints")
        return {p: next(r for r in recs(sink, p, 200) if r["headers"].get("webhook-id") == mid)
                for p in ("/long", "/short")}

    m1 = delivered(post(pb, {"type": "order.created", "n": 1}))
    for p in ("/long", "/short"):
        check_eq(len(v1_sigs(m1[p])), 1, f"{p} before rotation: one signature")

    t_rot = now_ms()
    st, ra = pb.admin("POST", f"/api/endpoints/{a['id']}/rotate")
    check_eq(st, 200, f"rotate A: {ra}")
    a1 = ra.get("secret", "")
    check(a1.startswith("whsec_") and a1 != a0, "rotate A: a new generated secret")
    exp_a = ra.get("previous_expires_at")
    check(isinstance(exp_a, int) and abs(exp_a - (t_rot + 24 * 3600 * 1000)) < 60_000,
          f"rotate A: previous_expires_at {exp_a} is about now + 24h (default rotation_overlap)")
    b1 = new_secret(24)
    t_rot_b = now_ms()
    st, rb = pb.admin("POST", f"/api/endpoints/{b['id']}/rotate", {"secret": b1})
    check_eq(st, 200, f"rotate B: {rb}")
    check_eq(rb.get("secret"), b1, "rotate B: the given secret")
    exp_b = rb.get("previous_expires_at")
    check(isinstance(exp_b, int) and 0 < exp_b - t_rot_b <= 1000 + scaled(2000),
          f"rotate B: previous_expires_at {exp_b} is about now + 1s (rotation_overlap: 1s)")

    st, sec = pb.admin("GET", f"/api/endpoints/{a['id']}/secret")
    check_eq(st, 200, f"GET secret: {sec}")
    check_eq(sec.get("secret"), a1, "current secret")
    check_eq(sorted(s["key"] for s in sec.get("secrets", [])), sorted([a0, a1]),
             "secrets: the new one and the previous one in its overlap")

    m2 = delivered(post(pb, {"type": "order.created", "n": 2}))
    check_eq(len(v1_sigs(m2["/long"])), 2,
             f"during the overlap two v1 signatures: {sig_header(m2['/long'])!r}")
    cases = [
        (item(m1["/long"], a0), True, "msg 1 with A's first secret"),
        (item(m1["/short"], b0), True, "msg 1 with B's first secret"),
        (item(m1["/long"], a1), False, "msg 1 (before rotation) with A's new secret"),
        (item(m2["/long"], a0), True, "msg 2 (overlap) with A's old secret"),
        (item(m2["/long"], a1), True, "msg 2 (overlap) with A's new secret"),
        (item(m2["/long"], new_secret()), False, "msg 2 with a wrong secret"),
        (item(m2["/long"], a0, tampered(m2["/long"]["body"])), False, "msg 2 tampered, old secret"),
        (item(m2["/long"], a1, tampered(m2["/long"]["body"])), False, "msg 2 tampered, new secret"),
        (item(m2["/short"], b1), True, "msg 2 with B's new secret"),
    ]

    # B's overlap (1 s) ends; A's (24 h) does not.
    wait_until(lambda: now_ms() > exp_b + 100, 5, "B's rotation overlap to pass")
    m3 = delivered(post(pb, {"type": "order.created", "n": 3}))
    check_eq(len(v1_sigs(m3["/long"])), 2, "A is still in its overlap: two signatures")
    check_eq(len(v1_sigs(m3["/short"])), 1,
             f"B after its overlap: one signature ({sig_header(m3['/short'])!r})")
    cases += [
        (item(m3["/long"], a0), True, "msg 3 with A's old secret (24h overlap)"),
        (item(m3["/long"], a1), True, "msg 3 with A's new secret"),
        (item(m3["/short"], b1), True, "msg 3 with B's new secret"),
        (item(m3["/short"], b0), False, "msg 3 with B's old secret after the 1s overlap"),
    ]
    expect_verified(cases, "rotation")
    check_eq(sink.requests(), 6, "three messages, two endpoints, no retry")


# ---- 4. 410 Gone -----------------------------------------------------------------------

GONE_CONFIG = HEAD + ALLOW + """
pipelines:
  orders:
    input:
      http_server: { path: /hooks/orders }
    outputs:
      customers:
        webhook:
          event_type: '.type'
          timeout: 5s
          events_pipeline: alerts
          FAST_RETRY
  alerts:
    input:
      http_server: { path: /internal/alerts }
    outputs:
      ops: { http: { url: "ALERTS/ops", timeout: 5s, FAST_RETRY } }
""".replace("FAST_RETRY", FAST_RETRY)


@test
def gone_410_disables_and_enable_sends_what_waited():
    sink = start_sink(status=410)
    alerts = start_sink()
    pb = Patchbay(GONE_CONFIG.replace("ALERTS", alerts.url))
    ep = create_endpoint(pb, "customers", sink.url + "/gone", ["order.*"])
    eid, out = ep["id"], f"customers/{ep['id']}"
    check_eq(endpoint(pb, eid)["disabled"], False, "a new endpoint is enabled")

    m1 = post(pb, {"type": "order.created", "n": 1})
    wait_until(lambda: endpoint(pb, eid)["disabled"], 10, "the endpoint to show disabled: true")
    shown = endpoint(pb, eid)
    reason = shown.get("disabled_reason") or ""
    check("410" in reason, f"disabled_reason names the 410: {shown}")
    check_eq(sink.requests(), 1, "410 is not retried")

    # The delivery that got the 410 is a dead letter.
    wait_until(lambda: pb.dead_letters(output=out), 10, "the 410 delivery in the DLQ")
    (dead,) = pb.dead_letters(output=out)
    check_eq((dead["message_id"], dead["last_status"], dead["attempts"]), (m1, 410, 1),
             "dead letter of the 410")

    # endpoint.disabled went through the alerts pipeline to its http output.
    wait_until(lambda: alerts.ok_count() >= 1, 10, "endpoint.disabled at the alerts sink")
    (ev_rec,) = recs(alerts, "/ops")
    ev = json.loads(ev_rec["body"])
    check_eq(ev.get("type"), "endpoint.disabled", f"event type: {ev}")
    check_eq(ev.get("endpoint"), {"id": eid, "url": sink.url + "/gone", "pipeline": "orders",
                                  "output": "customers"}, "event endpoint")
    check("410" in str(ev.get("reason")), f"event reason: {ev}")
    check(isinstance(ev.get("at"), int) and abs(ev["at"] - now_ms()) < 60_000, f"event at: {ev}")

    # While disabled, nothing is attempted; the deliveries wait, pending.
    sink.set_mode(status=200)
    m2 = post(pb, {"type": "order.created", "n": 2})
    m3 = post(pb, {"type": "order.updated", "n": 3})
    wait_until(lambda: all(child_deliveries(pb, m, "customers").get(out) == "pending"
                           for m in (m2, m3)), 10, "fan-out to the disabled endpoint, pending")
    stays(lambda: sink.requests() == 1, 1.0, "a disabled endpoint gets no request")
    check(all(child_deliveries(pb, m, "customers").get(out) == "pending" for m in (m2, m3)),
          "still pending while disabled")

    st, doc = pb.admin("POST", f"/api/endpoints/{eid}/enable")
    check_eq(st, 200, f"enable: {doc}")
    check_eq(doc.get("disabled"), False, "enable answers disabled: false")
    wait_until(lambda: sink.ok_count() == 2, 10, "the two waiting deliveries after enable")
    pb.wait_states([m2, m3], {out: "delivered"})
    stays(lambda: sink.requests() == 3, 0.5, "nothing else sent (the 410'd one stays dead)")
    ok = recs(sink, "/gone", 200)
    check_eq(sorted(r["headers"].get("webhook-id") for r in ok), sorted([m2, m3]),
             "the waiting messages arrive")
    expect_verified([(item(r, ep["secret"]), True, r["headers"].get("webhook-id")) for r in ok],
                    "deliveries after enable")
    shown = endpoint(pb, eid)
    check(not shown["disabled"] and not shown.get("disabled_reason"), f"enabled: {shown}")
    check_eq(alerts.requests(), 1, "one endpoint.disabled event")


STATIC_GONE_CONFIG = GONE_CONFIG.replace("""          events_pipeline: alerts
""", """          events_pipeline: alerts
          endpoints:
            - { id: shop, url: "SHOP_URL", secret: "SHOP_SECRET" }
""")


@test
def static_endpoint_stays_disabled_across_reload_and_restart():
    sink = start_sink(status=410)
    alerts = start_sink()
    secret = new_secret()
    pb = Patchbay(STATIC_GONE_CONFIG.replace("ALERTS", alerts.url)
                  .replace("SHOP_URL", sink.url + "/gone").replace("SHOP_SECRET", secret))
    out = "customers/shop"
    m1 = post(pb, {"type": "order.created", "n": 1})
    wait_until(lambda: pb.dead_letters(output=out), 10, "the 410 delivery in the DLQ")
    wait_until(lambda: alerts.ok_count() == 1, 10, "endpoint.disabled at the alerts sink")
    sink.set_mode(status=200)

    # A reload (SIGHUP) and a restart keep it disabled: nothing is sent, and
    # no second endpoint.disabled is raised.
    pid = pb.proc.pid
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: pb.log().count(" started ") >= 2, 30, "reloaded in place")
    m2 = post(pb, {"type": "order.created", "n": 2})
    wait_until(lambda: child_deliveries(pb, m2, "customers").get(out) == "pending", 10,
               "fan-out to the disabled endpoint after the reload, pending")
    pb.restart()
    m3 = post(pb, {"type": "order.created", "n": 3})
    wait_until(lambda: child_deliveries(pb, m3, "customers").get(out) == "pending", 10,
               "fan-out to the disabled endpoint after the restart, pending")
    stays(lambda: sink.requests() == 1, 1.0, "a disabled static endpoint gets no request")
    check_eq(alerts.requests(), 1, "one endpoint.disabled event in all")
    check("(saved; enable it through the admin API)" in pb.log(), "the start says it is disabled")
    # The admin API lists and shows it, with its saved state.
    st, doc = pb.admin("GET", "/api/endpoints?output=customers")
    check_eq(st, 200, f"list: {doc}")
    (item,) = doc["items"]
    check_eq((item["id"], item["static"], item["disabled"], item["url"]),
             ("shop", True, True, sink.url + "/gone"), f"listed: {item}")
    check("410" in (item.get("disabled_reason") or ""), f"reason listed: {item}")
    check("secret" not in json.dumps(item), f"no secret listed: {item}")
    st, shown = pb.admin("GET", "/api/endpoints/shop")
    check_eq((st, shown), (200, item), "shown as listed")

    # Enabled through the API (by the id of the configuration), what waited goes.
    st, doc = pb.admin("POST", "/api/endpoints/shop/enable")
    check_eq(st, 200, f"enable: {doc}")
    check_eq((doc.get("static"), doc.get("disabled"), doc.get("output")),
             (True, False, "customers"), f"enable answer: {doc}")
    pb.wait_states([m2, m3], {out: "delivered"})
    ok = recs(sink, "/gone", 200)
    check_eq(sorted(r["headers"].get("webhook-id") for r in ok), sorted([m2, m3]),
             "the waiting messages arrive")
    check_eq(pb.dead_letters(output=out)[0]["message_id"], m1, "the 410'd one stays dead")
    check_eq(endpoint(pb, "shop")["disabled"], False, "shown enabled")
    st, doc = pb.admin("POST", "/api/endpoints/nope/enable")
    check_eq(st, 404, f"unknown id: {doc}")
    st, doc = pb.admin("GET", "/api/endpoints/nope")
    check_eq(st, 404, f"unknown id shown: {doc}")


# ---- 5. recovery -----------------------------------------------------------------------

RECOVER_CONFIG = HEAD + ALLOW + """
pipelines:
  orders:
    input:
      http_server: { path: /hooks/orders }
    outputs:
      customers:
        webhook: { event_type: '.type', timeout: 5s, FAST_RETRY }
"""


@test
def recover_resends_dead_deliveries_once_by_api_and_cli():
    since = now_ms() - 1000
    sink = start_sink(status=400)
    pb = Patchbay(RECOVER_CONFIG.replace("FAST_RETRY", FAST_RETRY))
    e1 = create_endpoint(pb, "customers", sink.url + "/by-api", ["order.created"])
    e2 = create_endpoint(pb, "customers", sink.url + "/by-cli", ["order.created"])
    mids = [post(pb, {"type": "order.created", "n": i}) for i in range(3)]

    for e in (e1, e2):
        out = f"customers/{e['id']}"
        wait_until(lambda: len(pb.dead_letters(output=out)) == 3, 10, f"3 dead letters of {out}")
        dl = pb.dead_letters(output=out)
        check_eq(sorted(d["message_id"] for d in dl), sorted(mids), f"{out}: dead messages")
        check(all(d["last_status"] == 400 and d["attempts"] == 1 for d in dl),
              f"{out}: 400 is permanent, one attempt: {dl}")
    check_eq(sink.requests(), 6, "one attempt per message and endpoint")

    sink.set_mode(status=200)
    stays(lambda: sink.requests() == 6, 0.5, "nothing re-sent on its own")
    st, doc = pb.admin("POST", f"/api/endpoints/{e1['id']}/recover")
    check_eq(st, 400, f"recover without since: {doc}")
    st, doc = pb.admin("POST", f"/api/endpoints/{e1['id']}/recover?since={now_ms() + 1000}")
    check_eq((st, doc), (200, {"replayed": 0}), "recover since a time after the failures")

    st, doc = pb.admin("POST", f"/api/endpoints/{e1['id']}/recover?since={since}")
    check_eq((st, doc), (200, {"replayed": 3}), "recover by API")
    wait_until(lambda: len(recs(sink, "/by-api", 200)) == 3, 10, "3 recovered deliveries (API)")
    stays(lambda: sink.requests() == 9, 0.5, "only the API-recovered endpoint re-sent")

    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since // 1000))
    r = pb.cli("endpoints", "recover", e2["id"], "--since", iso,
               env={"PATCHBAY_URL": pb.url, "PATCHBAY_ADMIN_TOKEN": pb.token})
    check_eq(r.returncode, 0, f"patchbay endpoints recover: {r.stdout!r} {r.stderr!r}")
    check(" 3 " in r.stdout, f"the CLI reports 3 re-sent: {r.stdout!r}")
    wait_until(lambda: len(recs(sink, "/by-cli", 200)) == 3, 10, "3 recovered deliveries (CLI)")

    # Once more: nothing is dead any more, nothing is sent again.
    st, doc = pb.admin("POST", f"/api/endpoints/{e1['id']}/recover?since={since}")
    check_eq((st, doc), (200, {"replayed": 0}), "a second recover finds nothing dead")
    stays(lambda: sink.requests() == 12, 0.7, "each dead delivery sent once more, once")

    cases = []
    for e, path in ((e1, "/by-api"), (e2, "/by-cli")):
        ok = recs(sink, path, 200)
        check_eq(sorted(r["headers"].get("webhook-id") for r in ok), sorted(mids),
                 f"{path}: the dead messages, under their own ids")
        cases += [(item(r, e["secret"]), True, f"{path} {r['headers'].get('webhook-id')}")
                  for r in ok]
    expect_verified(cases, "recovered deliveries")


# ---- 6. outbound guard -----------------------------------------------------------------

GUARD_CONFIG = HEAD + """
pipelines:
  guard:
    input:
      http_server: { path: /hooks/guard }
    outputs:
      hooks:
        webhook:
          event_type: '.type'
          connect_timeout: 20s
          timeout: 30s
          retry: { schedule: [30s] }
          endpoints:
            - { id: private, url: "http://10.255.255.1:9/x", secret: "${S}" }
            - { id: named, url: "http://localhost:NAMED_PORT/x", secret: "${S}" }
      plain:
        http:
          url: "http://127.0.0.1:PLAIN_PORT/"
          connect_timeout: 20s
          timeout: 30s
          retry: { schedule: [30s] }
"""


@test
def outbound_guard_refuses_internal_addresses_at_once():
    s = new_secret()
    named, plain = start_sink(), start_sink()
    cfg = GUARD_CONFIG.replace("NAMED_PORT", str(named.port)).replace("PLAIN_PORT", str(plain.port))
    pb = Patchbay(cfg, env={"S": s})
    with open(pb.config_path) as f:
        check("allow" not in f.read(), "no outbound.allow in this config")

    t0 = time.monotonic()
    mid = post(pb, {"type": "probe"}, "/hooks/guard")
    outs = {"hooks/private": ("10.255.255.1", "private"), "hooks/named": ("127.0.0.1", "loopback"),
            "plain": ("127.0.0.1", "loopback")}
    # A refusal is immediate: well inside connect_timeout (20 s), with no retry.
    wait_until(lambda: all(pb.dead_letters(pipeline="guard", output=o) for o in outs), 5,
               "the three refused deliveries in the DLQ")
    took = time.monotonic() - t0
    for o, (addr, rng) in outs.items():
        (d,) = pb.dead_letters(pipeline="guard", output=o)
        err = d.get("last_error") or ""
        log(f"  {o}: {err}")
        check_eq(d["message_id"], mid, f"{o}: dead message")
        check_eq(d["attempts"], 1, f"{o}: refused on the first attempt, not retried")
        check("blocked" in err, f"{o}: last_error says blocked: {d}")
        check(rng in err and (addr in err or (rng == "loopback" and "::1" in err)),
              f"{o}: last_error names the address and range ({addr} is {rng}): {err!r}")
        spent = d["dead_at"] - d["created_at"]
        check(0 <= spent < scaled(3000),
              f"{o}: dead {spent} ms after creation, not after a connect timeout")
    check(took < scaled(5), f"refusals took {took:.1f}s")
    stays(lambda: named.requests() == 0 and plain.requests() == 0, 1.0,
          "a refused partner receives nothing")
    check_eq(pb.term(), 0, "exit code")

    # Control: the same partners are reachable once allowed, so "nothing
    # received" above is the guard's doing (10.255.255.1 stays refused).
    pb2 = Patchbay(ALLOW + cfg, env={"S": s})
    mid2 = post(pb2, {"type": "probe"}, "/hooks/guard")
    wait_until(lambda: named.ok_count() == 1 and plain.ok_count() == 1, 10,
               "allowed deliveries to arrive")
    (d,) = wait_until(lambda: pb2.dead_letters(pipeline="guard", output="hooks/private"), 5,
                      "10.255.255.1 refused with the allowlist too")
    check("blocked: 10.255.255.1 is private" in (d.get("last_error") or ""), f"private: {d}")
    (rec,) = named.records()
    check_eq(rec["headers"].get("webhook-id"), mid2, "allowed: webhook-id")
    expect_verified([(item(rec, s), True, "delivered through localhost")], "allowed delivery")


run()
