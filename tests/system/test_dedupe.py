"""The dedupe processor against the real daemon and its store: a repeated
key goes out once, also across a kill -9 and when many repeats race; a key
is free again once its window has passed; repeats among a split message's
items; a message without a key dead-lettered when so configured. Also run
on a PostgreSQL store (ctest label postgres)."""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (Patchbay, check, check_eq, post_many, run, scaled,  # noqa: E402
                    start_sink, test, wait_until)

CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input: { http_server: { path: /in } }
    process:
      - map: '{id: .order.id, v: .v}'
      - dedupe: { key: .id, window: %(window)s }
    outputs:
      sink: { http: { url: "%(sink)s/orders", retry: { initial: 50ms } } }
  items:
    input: { http_server: { path: /items } }
    process:
      - split: '.items[]'
      - dedupe: { key: .sku, on_missing: dead_letter }
    outputs:
      sink: { http: { url: "%(sink)s/items", retry: { initial: 50ms } } }
"""


def bodies(sink, path):
    return [json.loads(r["body"]) for r in sink.records()
            if r["path"] == path and r["status"] == 200]


def post(pb, path, body):
    st, _, data = pb.post(path, body)
    check_eq(st, 202, f"POST {path} {body}: {data!r}")
    return json.loads(data)["id"]


@test
def a_repeated_key_goes_out_once_across_a_kill9():
    sink = start_sink()
    pb = Patchbay(CONF % {"sink": sink.url, "window": "1h"})
    first = post(pb, "/in", {"order": {"id": 1}, "v": "a"})
    second = post(pb, "/in", {"order": {"id": 2}, "v": "a"})
    third = post(pb, "/in", {"order": {"id": 1}, "v": "b"})
    pb.wait_states([third], {"sink": "filtered"}, timeout=scaled(20))
    pb.wait_states([first, second], {"sink": "delivered"}, timeout=scaled(20))
    check_eq(sorted((b["id"], b["v"]) for b in bodies(sink, "/orders")),
             [(1, "a"), (2, "a")], "what went out")
    pb.kill9()
    pb.start()
    # The keys are in the store: still repeats after the restart.
    post(pb, "/in", {"order": {"id": 1}, "v": "c"})
    post(pb, "/in", {"order": {"id": 3}, "v": "c"})
    wait_until(lambda: any(b["id"] == 3 for b in bodies(sink, "/orders")), scaled(20),
               "a new key delivered after the restart")
    check_eq([b["id"] for b in bodies(sink, "/orders")].count(1), 1, "key 1 went out once")
    pb.term()


@test
def repeats_racing_pass_once():
    sink = start_sink()
    pb = Patchbay(CONF % {"sink": sink.url, "window": "1h"})
    res = post_many(pb.url + "/in", [{"order": {"id": 7}, "v": i} for i in range(40)],
                    concurrency=8)
    mids = [mid for st, mid in res if st == 202]
    check_eq(len(mids), 40, "all acknowledged")
    def settled():
        states = [d["state"] for mid in mids for d in pb.message(mid)["deliveries"]
                  if d["output"] == "sink"]
        return len(states) == 40 and "pending" not in states and states

    wait_until(settled, scaled(30), "every message routed")
    states = settled()
    check_eq(states.count("delivered"), 1, f"delivered once, the rest filtered: {states}")
    check_eq(states.count("filtered"), 39, "the repeats filtered")
    check_eq(len(bodies(sink, "/orders")), 1, "one request to the partner")
    pb.term()


@test
def a_key_is_free_again_after_its_window():
    sink = start_sink()
    pb = Patchbay(CONF % {"sink": sink.url, "window": "1s"})
    post(pb, "/in", {"order": {"id": 9}, "v": "a"})
    wait_until(lambda: len(bodies(sink, "/orders")) == 1, scaled(20), "the first delivered")
    second = post(pb, "/in", {"order": {"id": 9}, "v": "b"})
    pb.wait_states([second], {"sink": "filtered"}, timeout=scaled(20))
    time.sleep(1.2)  # the window is the point of this case
    post(pb, "/in", {"order": {"id": 9}, "v": "c"})
    wait_until(lambda: len(bodies(sink, "/orders")) == 2, scaled(20), "the key free again")
    check_eq([b["v"] for b in bodies(sink, "/orders")], ["a", "c"], "what went out")
    pb.term()


@test
def split_items_are_deduplicated_and_a_missing_key_dead_letters():
    sink = start_sink()
    pb = Patchbay(CONF % {"sink": sink.url, "window": "1h"})
    post(pb, "/items", {"items": [{"sku": "a", "n": 1}, {"sku": "b", "n": 2},
                                  {"sku": "a", "n": 3}]})
    # Messages are routed concurrently: the second goes in once the first
    # has gone out, so "first" is well defined here.
    wait_until(lambda: len(bodies(sink, "/items")) == 2, scaled(20), "the first message's items")
    post(pb, "/items", {"items": [{"sku": "b", "n": 4}, {"sku": "c", "n": 5}]})
    wait_until(lambda: len(bodies(sink, "/items")) == 3, scaled(20), "three items delivered")
    check_eq(sorted(b["n"] for b in bodies(sink, "/items")), [1, 2, 5], "first of each sku")
    bad = post(pb, "/items", {"items": [{"name": "no sku"}]})
    wait_until(lambda: any(d["message_id"] == bad for d in pb.dead_letters()), scaled(20),
               "the message without a key dead-lettered")
    dl = [d for d in pb.dead_letters() if d["message_id"] == bad][0]
    check("has no key" in json.dumps(dl), f"the reason: {dl}")
    pb.term()


@test
def lint_checks_the_window():
    pb = Patchbay(CONF % {"sink": "http://127.0.0.1:9", "window": "10ms"}, start=False)
    r = pb.cli("lint", pb.config_path)
    check_eq(r.returncode, 1, f"lint: {r.stdout} {r.stderr}")
    check("window must be between 1s and 365d" in r.stderr, r.stderr)


if __name__ == "__main__":
    run()
