"""What the nodes of a cluster share (state on PostgreSQL), with two or
three real `patchbay run` nodes on one throwaway PostgreSQL this module
starts: metrics carry the node's name; a webhook endpoint created,
disabled, rotated, enabled or deleted through one node's admin API takes
effect on another node's deliveries; an OAuth2 token one node fetched is
used by the others (the authorization server counts the requests); a
circuit breaker one node opens holds the others, and one probe closes
them all; a partner's Retry-After told to one node holds the others; a
rate limit holds for the cluster, not per node."""

import base64
import hashlib
import hmac
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (Patchbay, check, check_eq, log, run, scaled, start_sink, test,  # noqa: E402
                    wait_until)
from srv_postgres import Postgres  # noqa: E402

_pg = None


def pg():
    global _pg
    if _pg is None:
        _pg = Postgres()
        _pg.create_db("pbshared")
    return _pg


def state_url(schema):
    return pg().dsn("pbshared") + "?schema=" + schema


HEAD = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "%(state)s"
cluster: { node: %(node)s, lease: 1500ms, heartbeat: 250ms }
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 5s
"""


def node(conf, name, state, **kw):
    return Patchbay((HEAD + conf) % dict(state=state, node=name, **kw), env={"NODE": name})


def live(pb):
    st, doc = pb.admin("GET", "/api/nodes")
    check_eq(st, 200, f"GET /api/nodes: {doc}")
    return doc["live"]


def post(pb, body, path="/in"):
    st, _, data = pb.post(path, body)
    check_eq(st, 202, f"post {body!r}: {data!r}")
    return json.loads(data)["id"]


def stays(pred, seconds, what):
    """pred() holds for the whole (scaled) period."""
    end = time.monotonic() + scaled(seconds)
    while time.monotonic() < end:
        check(pred(), what)
        time.sleep(0.05)


# ---- metrics -------------------------------------------------------------------------------

SINK_CONF = """
pipelines:
  orders:
    input: { http_server: { path: /in } }
    outputs:
      sink: { http: { url: "%(sink)s/orders" } }
"""


@test
def metrics_carry_the_node_label_in_a_cluster_only():
    sink = start_sink()
    state = state_url("metrics")
    alpha = node(SINK_CONF, "alpha", state, sink=sink.url)
    beta = node(SINK_CONF, "beta", state, sink=sink.url)
    wait_until(lambda: live(alpha) == 2, scaled(10), "both nodes live")
    post(alpha, {"n": 1})
    wait_until(lambda: len(sink.records()) >= 1, scaled(10), "the delivery")
    for pb, name in ((alpha, "alpha"), (beta, "beta")):
        m = pb.metrics()
        check(m.samples, "samples")
        others = [(n, lab) for n, lab, _ in m.samples if lab.get("node") != name]
        check(not others, f"{name}: samples without node=\"{name}\": {others[:5]}")
        check_eq(m.get("patchbay_up", node=name), 1.0, f"{name}: patchbay_up")
        check(m.get("patchbay_messages_received_total", node=name, pipeline="orders") is not None,
              f"{name}: a labelled series keeps its other labels")
    check_eq(alpha.metrics().get("patchbay_messages_accepted_total", pipeline="orders"), 1.0,
             "alpha counts what it took")
    # Histograms too: the node label comes first, le stays last.
    text = alpha.metrics().text
    check('patchbay_delivery_latency_seconds_bucket{node="alpha",pipeline="orders",'
          'output="sink",le="+Inf"}' in text, "histogram buckets carry the node")
    alpha.term()
    beta.term()
    # One process on SQLite: no node label.
    solo = Patchbay("""
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
""" + SINK_CONF % {"sink": sink.url})
    m = solo.metrics()
    check(not [lab for _, lab, _ in m.samples if "node" in lab], "no node label on SQLite")
    solo.term()


# ---- webhook endpoints ----------------------------------------------------------------------

HOOKS_CONF = """
pipelines:
  orders:
    input: { http_server: { path: /in } }
    outputs:
      hooks:
        webhook:
          event_type: '.type'
          timeout: 5s
          rotation_overlap: 1h
          retry: { schedule: [200ms, 200ms, 200ms] }
"""


def sign(secret, rec):
    key = base64.b64decode(secret[len("whsec_"):])
    h = rec["headers"]
    msg = f"{h['webhook-id']}.{h['webhook-timestamp']}.{rec['body']}".encode()
    return "v1," + base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode()


def signed_with(secret, rec):
    return sign(secret, rec) in rec["headers"].get("webhook-signature", "").split(" ")


def delivered(sink, mid, path="/ep"):
    got = [r for r in sink.records()
           if r["path"] == path and r["status"] == 200 and r["headers"].get("webhook-id") == mid]
    return got[0] if got else None


def ep_on(pb, eid):
    st, doc = pb.admin("GET", f"/api/endpoints/{eid}")
    return doc if st == 200 else None


@test
def endpoint_changes_on_one_node_take_effect_on_another():
    sink = start_sink()
    state = state_url("hooks")
    alpha = node(HOOKS_CONF, "alpha", state)
    beta = node(HOOKS_CONF, "beta", state)
    wait_until(lambda: live(alpha) == 2, scaled(10), "both nodes live")

    # Created on alpha: beta lists it and delivers to it, signed with its secret.
    st, ep = alpha.admin("POST", "/api/endpoints",
                         {"output": "hooks", "url": sink.url + "/ep", "events": ["order.*"]})
    check_eq(st, 201, f"create on alpha: {ep}")
    eid, s0 = ep["id"], ep["secret"]
    t0 = time.monotonic()
    wait_until(lambda: ep_on(beta, eid), scaled(5), "beta knows the endpoint alpha created")
    log(f"endpoint known on beta after {time.monotonic() - t0:.3f}s")
    m1 = post(beta, {"type": "order.created", "n": 1})
    wait_until(lambda: delivered(sink, m1), scaled(10), "beta delivers to the new endpoint")
    check(signed_with(s0, delivered(sink, m1)), "beta signs with the endpoint's secret")

    # Disabled on alpha: beta's deliveries to it wait.
    st, doc = alpha.admin("POST", f"/api/endpoints/{eid}/disable")
    check_eq(st, 200, f"disable on alpha: {doc}")
    wait_until(lambda: ep_on(beta, eid)["disabled"], scaled(5), "beta sees it disabled")
    m2 = post(beta, {"type": "order.created", "n": 2})

    def pending_on_beta():
        ds = beta.message(m2)["deliveries"]
        return [d for d in ds if d["output"] == f"hooks/{eid}" and d["state"] == "pending"]

    wait_until(pending_on_beta, scaled(10), "m2 fanned out to the endpoint, pending")
    stays(lambda: delivered(sink, m2) is None and pending_on_beta(), 1.5,
          "nothing sent to the endpoint disabled on the other node")

    # Rotated on alpha (a given secret): beta signs with it once enabled.
    s1 = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    st, doc = alpha.admin("POST", f"/api/endpoints/{eid}/rotate", {"secret": s1})
    check_eq(st, 200, f"rotate on alpha: {doc}")

    def beta_secret():
        st, doc = beta.admin("GET", f"/api/endpoints/{eid}/secret")
        return doc.get("secret") if st == 200 else None

    wait_until(lambda: beta_secret() == s1, scaled(5), "beta has the rotated secret")
    st, doc = alpha.admin("POST", f"/api/endpoints/{eid}/enable")
    check_eq(st, 200, f"enable on alpha: {doc}")
    wait_until(lambda: delivered(sink, m2), scaled(10),
               "beta sends what waited once alpha enabled the endpoint")
    r2 = delivered(sink, m2)
    check(signed_with(s1, r2), f"beta signs with the new secret: {r2['headers']}")
    check(signed_with(s0, r2), "and with the old one during the overlap")

    # A change made on beta reaches alpha the same way.
    st, doc = beta.admin("PATCH", f"/api/endpoints/{eid}", {"description": "from beta"})
    check_eq(st, 200, f"patch on beta: {doc}")
    wait_until(lambda: (ep_on(alpha, eid) or {}).get("description") == "from beta", scaled(5),
               "alpha sees beta's change")

    # Deleted on alpha: gone from beta; a new event reaches no endpoint.
    st, doc = alpha.admin("DELETE", f"/api/endpoints/{eid}")
    check(st in (200, 204), f"delete on alpha: {st} {doc}")
    wait_until(lambda: ep_on(beta, eid) is None, scaled(5), "beta forgets the deleted endpoint")
    n = len(sink.records())
    m3 = post(beta, {"type": "order.created", "n": 3})
    wait_until(lambda: all(d["state"] != "pending" for d in beta.message(m3)["deliveries"]),
               scaled(10), "m3 done")
    check_eq(len(sink.records()), n, "nothing sent to the deleted endpoint")
    check("endpoint created on another node" in beta.log(), "beta logs the change")
    alpha.term()
    beta.term()


@test
def a_change_notified_while_a_node_was_not_listening_is_read_when_it_is_again():
    """beta's connections are cut while it is frozen, and alpha creates an
    endpoint meanwhile: the notification is lost with beta's listening
    connection, so beta reads the shared state again once it listens again."""
    sink = start_sink()
    state = state_url("relisten")
    alpha = node(HOOKS_CONF, "alpha", state)
    beta = node(HOOKS_CONF, "beta", state)
    wait_until(lambda: live(alpha) == 2, scaled(10), "both nodes live")
    st, doc = beta.admin("GET", "/api/nodes")
    epoch = [n for n in doc["nodes"] if n["name"] == "beta"][0]["epoch"]
    beta.proc.send_signal(signal.SIGSTOP)
    try:
        cut = pg().value("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                         f" WHERE application_name = 'patchbay/{epoch}@relisten'",
                         dbname="pbshared")
        check(int(cut) >= 1, f"beta's connections cut: {cut}")
        st, ep = alpha.admin("POST", "/api/endpoints",
                             {"output": "hooks", "url": sink.url + "/ep", "events": ["order.*"]})
        check_eq(st, 201, f"create on alpha: {ep}")
    finally:
        beta.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: ep_on(beta, ep["id"]), scaled(10),
               "beta knows the endpoint created while it was not listening")
    check("notifications may have been lost" in beta.log(), "beta says why it read again")
    alpha.term()
    beta.term()


@test
def every_change_reaches_the_other_node_however_it_falls():
    """A notification that arrives while the other node's thread runs its
    heartbeat's statements is read with their results, not from the socket:
    it must still be taken. A hundred changes in a row on alpha, with beta
    ticking every 100 ms: beta follows each one. (Without the fix about one
    run in two catches a notification stuck that way.)"""
    sink = start_sink()
    state = state_url("everychange")
    fast = HOOKS_CONF
    alpha = node(fast, "alpha", state)
    beta = Patchbay((HEAD.replace("heartbeat: 250ms", "heartbeat: 100ms") + fast)
                    % dict(state=state, node="beta"), env={"NODE": "beta"})
    wait_until(lambda: live(alpha) == 2, scaled(10), "both nodes live")
    st, ep = alpha.admin("POST", "/api/endpoints",
                         {"output": "hooks", "url": sink.url + "/ep", "events": ["order.*"]})
    check_eq(st, 201, f"create on alpha: {ep}")
    eid = ep["id"]
    for i in range(100):
        st, doc = alpha.admin("PATCH", f"/api/endpoints/{eid}", {"description": f"v{i}"})
        check_eq(st, 200, f"patch {i} on alpha: {doc}")
        wait_until(lambda: (ep_on(beta, eid) or {}).get("description") == f"v{i}", scaled(5),
                   f"beta follows change {i}")
    alpha.term()
    beta.term()


# ---- OAuth2 tokens --------------------------------------------------------------------------

SECRET = "s3cr3t-shop-client"

OAUTH_CONF = """
pipelines:
  orders:
    input: { http_server: { path: /in } }
    outputs:
      api:
        http:
          url: "%(sink)s/api"
          auth: { oauth2: { token_url: "%(token_url)s", client_id: shop,
                            client_secret: "%(secret)s", scopes: [orders.write] } }
          retry: { max_attempts: 5, initial: 100ms }
"""


@test
def an_oauth2_token_fetched_by_one_node_serves_them_all():
    from srv_oauth2 import OAuth2
    auth = OAuth2(ttl=4, clients={"shop": SECRET})
    sink = start_sink()
    state = state_url("oauth")
    kw = dict(sink=sink.url, token_url=auth.token_url, secret=SECRET)
    alpha = node(OAUTH_CONF, "alpha", state, **kw)
    beta = node(OAUTH_CONF, "beta", state, **kw)
    wait_until(lambda: live(alpha) == 2, scaled(10), "both nodes live")

    def tokens():
        return auth.stats()["by_client"].get("shop", 0)

    def ok():
        return [r for r in sink.records() if r["status"] == 200]

    post(alpha, {"n": 0})
    wait_until(lambda: len(ok()) == 1, scaled(10), "alpha's first delivery")
    check_eq(tokens(), 1, "alpha fetched one token")
    # beta (running) and gamma (started now) use the token alpha fetched.
    gamma = node(OAUTH_CONF, "gamma", state, **kw)
    for i in range(1, 7):
        post((beta, gamma)[i % 2], {"n": i})
    wait_until(lambda: len(ok()) == 7, scaled(10), "beta's and gamma's deliveries")
    check_eq(tokens(), 1, "beta and gamma asked for no token of their own")
    bearer = {r["headers"].get("authorization") for r in ok()}
    check_eq(len(bearer), 1, f"one token for every node: {len(bearer)}")

    # Renewals over several 4 s lifetimes with all three nodes sending:
    # about one request per lifetime for the cluster, not one per node.
    nodes = (alpha, beta, gamma)
    t0, before, sent = time.monotonic(), tokens(), 7
    while time.monotonic() - t0 < scaled(12):
        post(nodes[sent % 3], {"n": sent})
        sent += 1
        time.sleep(0.05)
    span = time.monotonic() - t0
    wait_until(lambda: len(ok()) == sent, scaled(15), f"{sent} deliveries")
    renewals = tokens() - before
    log(f"{sent} messages over {span:.1f}s on 3 nodes: {renewals} token requests "
        f"(4 s tokens)")
    lifetimes = span / 4.0
    check(renewals <= lifetimes + 2,
          f"{renewals} token requests for {lifetimes:.1f} lifetimes on three nodes")
    check_eq(auth.stats().get("refused", 0), 0, "token requests refused")
    check(all(r["status"] == 200 for r in sink.records()), "no delivery refused")
    for pb in nodes:
        check(SECRET not in pb.log(), "client secret in a log")
        pb.term()
    c = pg().connect("pbshared")
    check(SECRET not in c.value("SELECT string_agg(convert_from(value, 'UTF8'), ',') FROM "
                                "oauth.kv") or "", "the client secret is not stored")
    c.close()
    auth.stop()


# ---- breakers, holds, rate limits -----------------------------------------------------------

FLOW_CONF = """
pipelines:
  orders:
    input: { http_server: { path: /in } }
    outputs:
      api:
        http:
          url: "%(sink)s/${NODE}"
          concurrency: 2
          retry: { max_attempts: 1000, initial: 100ms, max: 200ms }
          circuit_breaker: { window: 10s, min_requests: 4, failure_ratio: 0.5, open_for: 3s }
"""


def breaker(pb, name):
    return pb.metrics().get("patchbay_output_breaker_state", node=name, output="api")


def by_node(sink, name, status=None):
    return [r for r in sink.records()
            if r["path"] == "/" + name and (status is None or r["status"] == status)]


@test
def a_breaker_opened_on_one_node_holds_the_others_and_one_probe_closes_it():
    sink = start_sink()
    state = state_url("breaker")
    alpha = node(FLOW_CONF, "alpha", state, sink=sink.url)
    beta = node(FLOW_CONF, "beta", state, sink=sink.url)
    wait_until(lambda: live(alpha) == 2 and live(beta) == 2, scaled(10), "both nodes live")
    sink.set_mode(status=503)
    for i in range(6):
        post(alpha, {"n": i})
    wait_until(lambda: breaker(alpha, "alpha") == 1, scaled(10), "alpha's breaker opens")
    t_open = time.monotonic()
    wait_until(lambda: breaker(beta, "beta") == 1, scaled(3), "beta's breaker follows")
    log(f"beta's breaker open {time.monotonic() - t_open:.3f}s after alpha's")
    check_eq(by_node(sink, "beta"), [], "beta sent nothing to learn it")
    n_open = max(r["n"] for r in sink.records())
    # What beta takes meanwhile waits, without an attempt.
    for i in range(6, 9):
        post(beta, {"n": i})
    stays(lambda: not by_node(sink, "beta"), 1.0, "beta sends nothing while open")
    sink.set_mode(status=200)
    # alpha probes after open_for and closes; beta follows before its own
    # (later) probe time: the partner sees one probe for the cluster.
    wait_until(lambda: breaker(beta, "beta") == 0 and breaker(alpha, "alpha") == 0, scaled(10),
               "both breakers closed")
    probe = min(r["n"] for r in by_node(sink, "alpha", 200))
    beta_first = min((r["n"] for r in by_node(sink, "beta")), default=None)
    check(beta_first is None or beta_first > probe,
          f"beta sent (request #{beta_first}) before alpha's probe (#{probe}) went through")
    # While open nothing went (but an attempt in flight when it opened).
    between = [r for r in sink.records() if n_open < r["n"] < probe]
    check(len(between) <= 1, f"requests while the breaker was open: {between}")

    def delivered():
        return {json.loads(r["body"])["n"] for r in sink.records() if r["status"] == 200}

    wait_until(lambda: delivered() == set(range(9)), scaled(15), "every message delivered")
    m = beta.metrics()
    check_eq(m.get("patchbay_output_breaker_opened_total", node="beta", output="api"), 1.0,
             "beta counts the opening it followed")
    check("circuit breaker opened on another node" in beta.log(), "beta logs it")
    alpha.term()
    beta.term()


HOLD_CONF = """
pipelines:
  orders:
    input: { http_server: { path: /in } }
    outputs:
      api:
        http:
          url: "%(sink)s/${NODE}"
          retry: { max_attempts: 1000, initial: 100ms, max: 10s }
"""


@test
def a_partners_retry_after_told_to_one_node_holds_the_others():
    sink = start_sink()
    state = state_url("hold")
    alpha = node(HOLD_CONF, "alpha", state, sink=sink.url)
    beta = node(HOLD_CONF, "beta", state, sink=sink.url)
    wait_until(lambda: live(alpha) == 2 and live(beta) == 2, scaled(10), "both nodes live")
    sink.set_mode(status=429, retry_after=3)
    post(alpha, {"n": 0})
    wait_until(lambda: by_node(sink, "alpha", 429), scaled(10), "alpha refused with 429")
    t429 = by_node(sink, "alpha", 429)[0]["ts"]
    wait_until(lambda: beta.metrics().value("patchbay_output_held_seconds", node="beta",
                                            output="api") > 0, scaled(3), "beta held too")
    sink.set_mode(status=200, retry_after=-1)
    post(beta, {"n": 1})
    wait_until(lambda: by_node(sink, "beta", 200) and by_node(sink, "alpha", 200), scaled(15),
               "both deliver once the hold is over")
    beta_first = by_node(sink, "beta")[0]["ts"]
    log(f"beta's first request {beta_first - t429} ms after alpha's 429 (Retry-After: 3)")
    check(beta_first - t429 >= 2500, f"beta waited out the hold ({beta_first - t429} ms)")
    alpha.term()
    beta.term()


RATE_CONF = """
pipelines:
  orders:
    input: { http_server: { path: /in } }
    outputs:
      api:
        http:
          url: "%(sink)s/${NODE}"
          rate_limit: 10/s
          concurrency: 8
"""


@test
def a_rate_limit_holds_for_the_cluster_not_per_node():
    sink = start_sink()
    state = state_url("rate")
    alpha = node(RATE_CONF, "alpha", state, sink=sink.url)
    beta = node(RATE_CONF, "beta", state, sink=sink.url)
    # /api/nodes' live is the count each node splits its rate by.
    wait_until(lambda: live(alpha) == 2 and live(beta) == 2, scaled(10), "both nodes live")
    for i in range(40):
        post(alpha, {"n": i})
        post(beta, {"n": 100 + i})
    wait_until(lambda: len(sink.records()) >= 80, scaled(30), "80 deliveries")
    ts = sorted(r["ts"] for r in sink.records())
    span = (ts[-1] - ts[0]) / 1000.0
    per_node = {n: len(by_node(sink, n)) for n in ("alpha", "beta")}
    log(f"80 deliveries over {span:.2f}s with rate_limit 10/s on two nodes: {per_node}")
    # Two buckets of 5 (a burst of 10), then 10/s together: about 7 s.
    # Per node (10/s each) it would take about 3 s.
    check(span >= 5.5, f"80 deliveries in {span:.2f}s: faster than 10/s for the cluster")
    # In any second no more than the rate plus the burst.
    worst = max(sum(1 for t in ts if s <= t < s + 1000) for s in ts)
    check(worst <= 10 + 10, f"{worst} deliveries within one second")
    alpha.term()
    beta.term()


if __name__ == "__main__":
    run()
