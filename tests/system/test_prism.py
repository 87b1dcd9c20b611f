"""Prism, mocking the OpenAPI petstore example (tests/system/prism), as a
partner that checks what patchbay sends against a published spec: the http
output's requests must be valid to be taken (201), an order that does not
fit the spec is refused (422) and dead-lettered, not retried; http_poll
reads the spec's list of pets as records. Prism killed and restarted: the
deliveries wait and go through."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import Patchbay, check, check_eq, run, start_sink, test, wait_until  # noqa: E402
from srv_prism import Prism  # noqa: E402

PRISM = Prism()

CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  new-pets:
    input: { http_server: { path: /pets } }
    outputs:
      petstore:
        http:
          url: "%(prism)s/pets"
          retry: { initial: 200ms, max: 2s, max_attempts: 200 }
  pets:
    input:
      http_poll:
        url: "%(prism)s/pets?limit=10"
        interval: 1h
        items: .[]
        dedupe_key: .id
    outputs:
      sink: { http: { url: "%(sink)s/pets" } }
"""


@test
def the_http_output_speaks_the_spec_and_http_poll_reads_it():
    sink = start_sink()
    pb = Patchbay(CONF % {"prism": PRISM.url, "sink": sink.url})
    wait_until(lambda: len(sink.records()) >= 3, 30, "the petstore's pets polled")
    pets = sorted((json.loads(r["body"]) for r in sink.records()), key=lambda p: p["id"])
    check_eq([p["name"] for p in pets], ["Rex", "Tom", "Polly"], "the spec's example pets")
    check_eq(pets[0]["tag"], "dog", "fields as the spec gives them")

    ok = [pb.post("/pets", {"id": 10 + i, "name": f"pet{i}", "tag": "fish"}) for i in range(5)]
    bad = pb.post("/pets", {"id": 99})  # no name: the spec requires one
    good_ids = [json.loads(d)["id"] for st, _, d in ok]
    bad_id = json.loads(bad[2])["id"]
    pb.wait_states(good_ids, {"petstore": "delivered"})
    dead = wait_until(lambda: pb.dead_letters(pipeline="new-pets"), 30, "the invalid pet")
    check_eq(len(dead), 1, "one dead letter")
    check_eq(dead[0]["message_id"], bad_id, "the pet without a name")
    check("HTTP 422" in dead[0]["last_error"], f"Prism's answer: {dead[0]['last_error']}")
    check("required property 'name'" in PRISM.tail(200), "Prism says why")
    msg = pb.message(bad_id)
    check_eq(msg["deliveries"][0]["attempts"], 1, "a 422 is not retried")


@test
def prism_killed_and_restarted():
    sink = start_sink()
    pb = Patchbay(CONF % {"prism": PRISM.url, "sink": sink.url})
    PRISM.kill9()
    ids = [json.loads(pb.post("/pets", {"id": 100 + i, "name": f"p{i}"})[2])["id"]
           for i in range(10)]
    wait_until(lambda: all(pb.message(i)["deliveries"][0]["attempts"] >= 1 for i in ids), 20,
               "attempts against the dead partner")
    PRISM.start()
    pb.wait_states(ids, {"petstore": "delivered"}, timeout=60)
    check_eq(pb.dead_letters(pipeline="new-pets"), [], "nothing dead-lettered")


if __name__ == "__main__":
    run()
