"""What the nodes of a cluster share (state on PostgreSQL), with two or
three real `patchbay run` nodes on one throwaway PostgreSQL this module
starts: metrics carry the node's name; a webhook endpoint created,
disabled, rotated, enabled or deleted through one node's admin API takes
effect on another node's deliveries; an OAuth2 token one node fetched is
used by the others (the authorization server counts the requests)."""

import json
import os
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
    return Patchbay((HEAD + conf) % dict(state=state, node=name, **kw))


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


if __name__ == "__main__":
    run()
