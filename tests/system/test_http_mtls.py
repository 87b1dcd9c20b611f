"""Mutual TLS on the http output against Debian's nginx requiring client
certificates, all made by the test with openssl (srv_nginx.py):

- a client certificate signed by the partner's CA gets through, the CA of
  tls.ca_file checks the partner, server_name names it (its certificate is
  for partner.test, reached at 127.0.0.1), nginx sees the client's subject;
- no client certificate, another CA's, no server_name, or min_version 1.3
  against a TLS 1.2 partner: refused, into the dead-letter queue with why;
- insecure_skip_verify: delivered, warned at start, shown in /api/pipelines;
- nginx killed and restarted: what was pending goes through once it is back.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    check,
    check_eq,
    free_port,
    run,
    start_sink,
    test,
    wait_until,
)
from srv_nginx import Nginx  # noqa: E402

UPSTREAM = free_port()
NGINX = None


def servers():
    """nginx once for the module; a sink (what nginx proxies to) per test."""
    global NGINX
    sink = start_sink(port=UPSTREAM)
    if NGINX is None:
        NGINX = Nginx(UPSTREAM)
    return sink, NGINX


def config(n, outputs):
    blocks = []
    for name, url, tls, extra in outputs:
        blocks.append(f"""
      {name}:
        http:
          url: "{url}"
          tls: {tls}
          retry: {{ max_attempts: {extra.get("attempts", 1)}, initial: 200ms, max: 1s }}""")
    return f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: "sqlite:@DIR@/state.db"
outbound: {{ allow: [127.0.0.0/8] }}
pipelines:
  orders:
    input: {{ http_server: {{ path: /in }} }}
    outputs:{"".join(blocks)}
"""


def post(pb, body):
    st, _, data = pb.post("/in", body)
    check_eq(st, 202, "ingest")
    return json.loads(data)["id"]


def delivery(pb, mid, output):
    for d in pb.message(mid)["deliveries"]:
        if d["output"] == output:
            return d
    raise AssertionError(f"no delivery to {output}")


@test
def client_certificates_ca_and_server_name():
    sink, n = servers()
    ca, crt, key = n.path("ca.crt"), n.path("client.crt"), n.path("client.key")
    url = f"https://127.0.0.1:{n.port}/in"
    good = f'{{ ca_file: "{ca}", cert_file: "{crt}", key_file: "{key}", server_name: partner.test }}'
    pb = Patchbay(config(n, [
        ("good", url, good, {}),
        ("nocert", url, f'{{ ca_file: "{ca}", server_name: partner.test }}', {}),
        ("rogue", url, f'{{ ca_file: "{ca}", cert_file: "{n.path("rogue.crt")}", '
                       f'key_file: "{n.path("rogue.key")}", server_name: partner.test }}', {}),
        ("noname", url, f'{{ ca_file: "{ca}", cert_file: "{crt}", key_file: "{key}" }}', {}),
        ("systemca", url, f'{{ cert_file: "{crt}", key_file: "{key}", server_name: partner.test }}',
         {}),
        ("tls13", f"https://127.0.0.1:{n.port12}/in",
         f'{{ ca_file: "{ca}", cert_file: "{crt}", key_file: "{key}", server_name: partner.test, '
         f'min_version: "1.3" }}', {}),
        ("tls12", f"https://127.0.0.1:{n.port12}/in", good, {}),
    ]))
    sink.reset()
    mid = post(pb, {"order": 1})
    pb.wait_states([mid], {"good": "delivered", "tls12": "delivered", "nocert": "dead",
                           "rogue": "dead", "noname": "dead", "systemca": "dead",
                           "tls13": "dead"})
    recs = [r for r in sink.records() if json.loads(r["body"]).get("order") == 1]
    check_eq(len(recs), 2, "requests that reached the partner")
    for r in recs:
        check("CN=patchbay-client" in r["headers"].get("x-client-dn", ""), f"client DN: {r}")
    protocols = sorted(r["headers"].get("x-tls-protocol") for r in recs)
    check_eq(protocols, ["TLSv1.2", "TLSv1.3"], "TLS versions")
    # nginx refuses a request without an accepted client certificate (400).
    for out in ("nocert", "rogue"):
        d = delivery(pb, mid, out)
        check_eq(d["last_status"], 400, f"{out} status")
    # The partner's certificate does not name 127.0.0.1, nor chain to the
    # system's CAs; a TLS 1.2 partner cannot meet min_version 1.3.
    check("certificate" in (delivery(pb, mid, "noname")["last_error"] or ""),
          f"noname: {delivery(pb, mid, 'noname')['last_error']}")
    check("certificate" in (delivery(pb, mid, "systemca")["last_error"] or ""),
          f"systemca: {delivery(pb, mid, 'systemca')['last_error']}")
    err13 = delivery(pb, mid, "tls13")["last_error"] or ""
    check("SSL" in err13 or "TLS" in err13 or "version" in err13, f"tls13: {err13}")
    pb.term()


@test
def insecure_skip_verify_warns_and_shows():
    sink, n = servers()
    crt, key = n.path("client.crt"), n.path("client.key")
    pb = Patchbay(config(n, [
        ("lax", f"https://127.0.0.1:{n.port}/in",
         f'{{ cert_file: "{crt}", key_file: "{key}", insecure_skip_verify: true }}', {}),
    ]))
    check("tls.insecure_skip_verify is set pipeline=orders output=lax" in pb.log(),
          "no warning at start")
    mid = post(pb, {"order": 2})
    pb.wait_states([mid], {"lax": "delivered"})
    st, doc = pb.admin("GET", "/api/pipelines")
    out = doc["pipelines"][0]["outputs"][0]
    check_eq(out.get("tls"), {"insecure_skip_verify": True}, "tls in /api/pipelines")
    pb.term()


@test
def nginx_killed_and_restarted():
    sink, n = servers()
    ca, crt, key = n.path("ca.crt"), n.path("client.crt"), n.path("client.key")
    good = f'{{ ca_file: "{ca}", cert_file: "{crt}", key_file: "{key}", server_name: partner.test }}'
    pb = Patchbay(config(n, [("good", f"https://127.0.0.1:{n.port}/in", good,
                              {"attempts": 50})]))
    n.kill9()
    ids = [post(pb, {"order": 100 + i}) for i in range(20)]
    wait_until(lambda: delivery(pb, ids[0], "good")["attempts"] >= 1, 10, "a failed attempt")
    n.start()
    pb.wait_states(ids, {"good": "delivered"}, timeout=30)
    got = {json.loads(r["body"])["order"] for r in sink.records()}
    check(all(100 + i in got for i in range(20)), "not every order reached the partner")
    pb.term()


if __name__ == "__main__":
    run()
