"""The `auth` and `tls` blocks every HTTP plugin shares, on the http_poll
input and the enrich processor, against real partners on 127.0.0.1:

- bearer, basic and api_key (their documented spellings) reach a partner
  that refuses anything else;
- OAuth2 client credentials from a real authorization server
  (oauth2-mock-server behind tests/system/oauth2/server.js) and a paginated
  API of the test's own that takes only unexpired, unrevoked tokens: the
  first page waits for the token, one token serves every page and run, a
  revoked token is refused once (401), a new one is fetched once and the
  same page asked again: nothing lost, no run error;
- the token endpoint down: the run stops with the endpoint's reason in
  /api/inputs, /ready says not ready and lists the endpoint, the partner is
  never asked without a token, and polling goes on once it answers;
- mutual TLS through nginx (client certificate, private CA, server_name):
  records arrive with the client's certificate subject; without a client
  certificate the run fails with nginx's refusal; insecure_skip_verify is
  warned by lint and at start;
- the refresh_token grant on a poller, with a server that rotates strictly
  (each refresh token works once): kill -9 once the store holds the
  current one, and the restarted poller goes on with it, the chain unbroken;
- enrich: lookups with an OAuth2 token (one for all, a revoked one refreshed
  once, no dead letter), basic auth and mTLS; a failing token endpoint
  routes the messages again later (nothing is dead-lettered, /ready lists
  the endpoint) and they go once it answers.
"""

import base64
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from partner import Partner  # noqa: E402
from pbtest import (  # noqa: E402
    Patchbay,
    check,
    check_eq,
    log,
    run,
    scaled,
    start_sink,
    test,
    tmpdir,
    wait_until,
)
from srv_nginx import Nginx  # noqa: E402
from srv_oauth2 import OAuth2  # noqa: E402

SECRET = "cs_poll_7c41aa"
BASIC = "Basic " + base64.b64encode(b"shop:pa:ss-9").decode()
AUTH = None
NGINX = None


def auth_server():
    global AUTH
    if AUTH is None:
        AUTH = OAuth2(ttl=3600, clients={"poller": SECRET, "down": SECRET, "enricher": SECRET})
    return AUTH


def claims(token):
    """The JWT's claims (the partner trusts the server's signature: the
    http output's test checks signatures; here it is about when and how
    often tokens are used)."""
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


class Api:
    """/static/{bearer,basic,key}: fixed credentials; /orders?page=N: an
    OAuth2-protected, paginated list (pages of 5); /mtls: what nginx let
    through, with the client certificate's subject."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rows = [{"id": f"o{i:03d}"} for i in range(12)]
        self.revoked_before = 0.0
        self.unauthorized = []  # (path, why)
        self.refused_at = 0  # len(orders) when the last 401 went out
        self.orders = []  # (page, client_id) of every page served
        self.dns = []
        self.lookups = []  # customer ids looked up with a valid token
        self.partner = Partner(self.handle)

    def handle(self, req):
        u = urllib.parse.urlsplit(req.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        h = req.headers
        if u.path.startswith("/static/"):
            kind = u.path.split("/")[2]
            want = {"bearer": ("authorization", "Bearer st-tok-1"),
                    "basic": ("authorization", BASIC),
                    "key": ("x-shop-key", "k-123")}[kind]
            if h.get(want[0]) != want[1]:
                return self.refuse(u.path, f"{kind}: got {h.get(want[0])!r}")
            return 200, {}, {"items": [{"id": f"{kind}-{i}", "via": kind} for i in range(3)]}
        if u.path == "/orders":
            a = h.get("authorization", "")
            if not a.startswith("Bearer "):
                return self.refuse(u.path, "no bearer token")
            try:
                c = claims(a[7:])
            except Exception as e:  # noqa: BLE001 - any bad token is a 401
                return self.refuse(u.path, f"bad token: {e}")
            if c.get("exp", 0) <= time.time():
                return self.refuse(u.path, "expired")
            if c.get("iat", 0) < self.revoked_before:
                return self.refuse(u.path, "revoked")
            page = int(q.get("page", 1))
            with self.lock:
                self.orders.append((page, c.get("client_id")))
                rows = self.rows[(page - 1) * 5:page * 5]
            return 200, {}, {"items": rows}
        if u.path.startswith("/lookup/"):
            cid = u.path.split("/")[2]
            a = h.get("authorization", "")
            c = {}
            try:
                c = claims(a[7:]) if a.startswith("Bearer ") else {}
            except Exception:  # noqa: BLE001 - any bad token is a 401
                pass
            if not c or c.get("exp", 0) <= time.time():
                return self.refuse(u.path, "no valid token")
            if c.get("iat", 0) < self.revoked_before:
                return self.refuse(u.path, "revoked")
            with self.lock:
                self.lookups.append(cid)
            return 200, {}, {"name": f"C-{cid}"}
        if u.path.startswith("/lookupb/"):
            if h.get("authorization") != BASIC:
                return self.refuse(u.path, "basic")
            return 200, {}, {"name": "B-" + u.path.split("/")[2]}
        if u.path.startswith("/lookupm/"):
            return 200, {}, {"dn": h.get("x-client-dn", "")}
        if u.path == "/mtls":
            dn = h.get("x-client-dn", "")
            with self.lock:
                self.dns.append(dn)
            return 200, {}, {"items": [{"id": f"m{i}", "dn": dn} for i in range(4)]}
        return 404, {}, {"error": "no such path"}

    def refuse(self, path, why):
        with self.lock:
            self.unauthorized.append((path, why))
            self.refused_at = len(self.orders)
        return 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}, {"error": why}


API = Api()

HEAD = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
"""


def ids_at(sink):
    return sorted(json.loads(r["body"])["id"] for r in sink.records())


def input_doc(pb, pipeline):
    st, doc = pb.admin("GET", "/api/inputs")
    check(st == 200, f"/api/inputs -> {st}")
    for i in doc if isinstance(doc, list) else doc.get("inputs", []):
        if i["pipeline"] == pipeline:
            return i
    raise AssertionError(f"no input of {pipeline}: {doc}")


@test
def bearer_basic_and_api_key_keep_their_spellings():
    sink = start_sink()
    pipes = ""
    for name, auth in (("bearer", 'bearer: "${ST_TOKEN}"'),
                       ("basic", 'basic: { user: shop, password: "pa:ss-9" }'),
                       ("key", "api_key: { header: X-Shop-Key, value: k-123 }")):
        pipes += f"""
  {name}:
    input:
      http_poll:
        url: "{API.partner.url}/static/{name}"
        interval: 1h
        items: .items[]
        dedupe_key: .id
        auth: {{ {auth} }}
    outputs:
      sink: {{ http: {{ url: "{sink.url}/in" }} }}
"""
    n401 = len(API.unauthorized)
    pb = Patchbay(HEAD + pipes, env={"ST_TOKEN": "st-tok-1"})
    want = sorted(f"{k}-{i}" for k in ("bearer", "basic", "key") for i in range(3))
    wait_until(lambda: ids_at(sink) == want, 30, "9 records from the three partners")
    check_eq(API.unauthorized[n401:], [], "requests refused")
    check("st-tok-1" not in pb.log() and "pa:ss-9" not in pb.log(), "a secret in the log")
    check_eq(pb.term(), 0, "clean exit")
    sink.stop()


@test
def oauth2_pages_wait_for_the_token_and_a_401_refreshes_once():
    a = auth_server()
    a.control(reset=True, failing=False)
    sink = start_sink()
    with API.lock:
        API.orders.clear()
        API.rows = [{"id": f"o{i:03d}"} for i in range(12)]
    n401 = len(API.unauthorized)
    pb = Patchbay(HEAD + f"""
  orders:
    input:
      http_poll:
        url: "{API.partner.url}/orders"
        interval: 2s
        items: .items[]
        pagination: {{ type: page, size_param: per_page, size: 5 }}
        dedupe_key: .id
        auth:
          oauth2: {{ token_url: "{a.token_url}", client_id: poller,
                    client_secret: "${{POLL_SECRET}}", scopes: [orders.read] }}
    outputs:
      sink: {{ http: {{ url: "{sink.url}/in" }} }}
""", env={"POLL_SECRET": SECRET})
    want = sorted(f"o{i:03d}" for i in range(12))
    wait_until(lambda: ids_at(sink) == want, 30, "12 records over 3 pages")
    # The very first page already carried a token: it waited for it.
    check_eq(API.unauthorized[n401:], [], "pages refused before the revocation")
    check_eq(a.stats()["by_client"].get("poller"), 1, "token requests")
    with API.lock:
        check_eq(sorted({p for p, _ in API.orders}), [1, 2, 3], "pages asked")
    # A second run: the same token, nothing new.
    wait_until(lambda: sum(1 for p, _ in API.orders if p == 1) >= 2, 20, "a second run")
    check_eq(a.stats()["by_client"].get("poller"), 1, "token requests after two runs")
    # Every token so far is refused now; three more orders meanwhile.
    with API.lock:
        API.rows += [{"id": f"o{i:03d}"} for i in range(12, 15)]
        served = len(API.orders)
    # Whole seconds, like iat: the token of the first run is older, a new one is not.
    API.revoked_before = int(time.time())
    want = sorted(f"o{i:03d}" for i in range(15))
    wait_until(lambda: ids_at(sink) == want, 30, "15 records after the revocation")
    refused = API.unauthorized[n401:]
    check_eq([w for _, w in refused], ["revoked"], "one page refused, once")
    check_eq(a.stats()["by_client"].get("poller"), 2, "token requests after the revocation")
    with API.lock:
        after = [p for p, _ in API.orders[served:]]
        again = [p for p, _ in API.orders[API.refused_at:]]
    check(after and after[0] == 1 and again[:1] == [1],
          f"the refused page asked again first: {after[:4]}")
    log_text = pb.log()
    check("run ended with an error" not in log_text, "a run ended with an error")
    check(SECRET not in log_text, "the client secret in the log")
    st, _, body = pb.get("/ready")
    check_eq((st, json.loads(body)), (200, {"ready": True}), "/ready")
    check_eq(pb.dead_letters(), [], "dead letters")
    check_eq(pb.term(), 0, "clean exit")
    sink.stop()


@test
def a_failing_token_endpoint_stops_the_run_and_shows_in_ready():
    a = auth_server()
    a.control(reset=True, failing=True)
    sink = start_sink()
    with API.lock:
        API.rows = [{"id": f"o{i:03d}"} for i in range(7)]
        served = len(API.orders)
    pb = Patchbay(HEAD + f"""
  orders:
    input:
      http_poll:
        url: "{API.partner.url}/orders"
        interval: 1s
        items: .items[]
        pagination: {{ type: page, size_param: per_page, size: 5 }}
        dedupe_key: .id
        auth: {{ oauth2: {{ token_url: "{a.token_url}", client_id: down,
                           client_secret: "{SECRET}" }} }}
    outputs:
      sink: {{ http: {{ url: "{sink.url}/in" }} }}
""", start=False)
    pb.start(wait_ready=False)

    def failing():
        try:
            i = input_doc(pb, "orders")
        except OSError:
            return None
        return i["state"] == "reconnecting" and "no OAuth2 token" in (i.get("detail") or "") \
            and i

    i = wait_until(failing, 30, "the input to say it has no token")
    check("HTTP 503" in i["detail"], f"the endpoint's reason: {i['detail']}")
    st, _, body = pb.get("/ready")
    doc = json.loads(body)
    check_eq((st, doc["ready"]), (503, False), "/ready while the token endpoint fails")
    deg = doc.get("degraded") or []
    check(deg and deg[0]["pipeline"] == "orders" and deg[0].get("part") == "input"
          and a.token_url in deg[0]["reason"], f"/ready degraded: {doc}")
    check("run stopped, no OAuth2 token" in pb.log(), "no error in the log")
    time.sleep(scaled(2))  # noqa: the check is that nothing reaches the partner meanwhile
    with API.lock:
        check_eq(API.orders[served:], [], "pages asked without a token")
    a.control(failing=False)
    want = sorted(f"o{i:03d}" for i in range(7))
    wait_until(lambda: ids_at(sink) == want, 60, "7 records once the endpoint answers")

    def ready():
        st, _, body = pb.get("/ready")
        return st == 200 and json.loads(body) == {"ready": True}

    wait_until(ready, 20, "/ready once the endpoint answers")
    check_eq(input_doc(pb, "orders")["state"], "connected", "input state")
    check_eq(pb.dead_letters(), [], "dead letters")
    check_eq(pb.term(), 0, "clean exit")
    sink.stop()


def nginx():
    global NGINX
    if NGINX is None:
        NGINX = Nginx(API.partner.port)
    return NGINX


@test
def mutual_tls_through_nginx():
    n = nginx()
    sink = start_sink()
    pb = Patchbay(HEAD + f"""
  mtls:
    input:
      http_poll:
        url: "https://127.0.0.1:{n.port}/mtls"
        interval: 1h
        items: .items[]
        dedupe_key: .id
        tls:
          ca_file: "{n.path('ca.crt')}"
          cert_file: "{n.path('client.crt')}"
          key_file: "{n.path('client.key')}"
          server_name: partner.test
          min_version: "1.3"
    outputs:
      sink: {{ http: {{ url: "{sink.url}/in" }} }}
  nocert:
    input:
      http_poll:
        url: "https://127.0.0.1:{n.port}/mtls"
        interval: 1h
        items: .items[]
        tls: {{ ca_file: "{n.path('ca.crt')}", server_name: partner.test }}
    outputs:
      sink: {{ http: {{ url: "{sink.url}/nocert" }} }}
""", start=False)
    pb.start(wait_ready=False)
    wait_until(lambda: ids_at(sink) == ["m0", "m1", "m2", "m3"], 30, "4 records over mTLS")
    dn = json.loads(sink.records()[0]["body"])["dn"]
    check("CN=patchbay-client" in dn, f"client certificate subject: {dn!r}")

    def refused():
        try:
            i = input_doc(pb, "nocert")
        except OSError:
            return None
        return i["state"] == "reconnecting" and i

    i = wait_until(refused, 30, "the input without a client certificate to fail")
    check("HTTP 400" in (i.get("detail") or ""), f"nginx's refusal: {i.get('detail')}")
    check_eq(len([r for r in sink.records() if r.get("path", "").startswith("/nocert")]), 0,
             "records without a client certificate")
    check_eq(pb.term(), 0, "clean exit")
    sink.stop()


@test
def insecure_skip_verify_is_warned():
    n = nginx()
    d = tmpdir("lint")
    cfg = os.path.join(d, "p.yaml")
    with open(cfg, "w") as f:
        f.write(f"""
state: "sqlite:{d}/s.db"
pipelines:
  a:
    input:
      http_poll:
        url: "https://127.0.0.1:{n.port}/mtls"
        tls: {{ insecure_skip_verify: true, cert_file: "{n.path('client.crt')}",
               key_file: "{n.path('client.key')}" }}
    process:
      - enrich:
          url: 'https://127.0.0.1:{n.port}/lookupm/{{{{ .cid }}}}'
          into: '.c = $answer'
          tls: {{ insecure_skip_verify: true }}
    outputs:
      x: {{ http: {{ url: https://api.example.test/x }} }}
""")
    r = subprocess.run([os.environ["PB_BIN"], "lint", cfg], capture_output=True, text=True,
                       timeout=scaled(30))
    out = r.stdout + r.stderr
    check(r.returncode == 0, f"lint failed:\n{out}")
    check('input of pipeline "a": tls.insecure_skip_verify' in out, f"no lint warning:\n{out}")
    check('process step 1 of pipeline "a": tls.insecure_skip_verify' in out,
          f"no lint warning for the enrich step:\n{out}")
    # A bad block is an error with the plugin's name, before anything runs.
    with open(cfg, "w") as f:
        f.write(f"""
state: "sqlite:{d}/s.db"
pipelines:
  a:
    input:
      http_poll:
        url: "https://127.0.0.1:{n.port}/mtls"
        auth: {{ bearer: t1, api_key: {{ value: k }} }}
        tls: {{ cert_file: /nonexistent/client.crt, key_file: /nonexistent/client.key }}
    outputs:
      x: {{ http: {{ url: https://api.example.test/x }} }}
""")
    r = subprocess.run([os.environ["PB_BIN"], "lint", cfg], capture_output=True, text=True,
                       timeout=scaled(30))
    out = r.stdout + r.stderr
    check(r.returncode != 0, "lint passed two kinds of auth")
    check("auth takes one of bearer, basic, api_key or oauth2" in out, f"no auth error:\n{out}")
    # At start: a warning in the log naming the pipeline.
    sink = start_sink()
    pb = Patchbay(HEAD + f"""
  insecure:
    input:
      http_poll:
        url: "https://127.0.0.1:{n.port}/mtls"
        interval: 1h
        items: .items[]
        tls: {{ insecure_skip_verify: true, cert_file: "{n.path('client.crt')}",
               key_file: "{n.path('client.key')}" }}
    outputs:
      sink: {{ http: {{ url: "{sink.url}/in" }} }}
""")
    wait_until(lambda: len(sink.records()) >= 4, 30, "4 records without verification")
    check("tls.insecure_skip_verify is set pipeline=insecure part=input" in pb.log(),
          "no warning at start")
    check_eq(pb.term(), 0, "clean exit")
    sink.stop()


class Rotating:
    """A token endpoint that rotates strictly: one live refresh token, 2 s
    access tokens (opaque) that /rt/items takes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.current, self.n, self.reused, self.rotated_at = "rt-0", 0, [], 0.0
        self.access = {}
        self.polls = 0
        self.partner = Partner(self.handle)

    def handle(self, req):
        if req.path == "/token":
            f = req.form()
            with self.lock:
                if f.get("grant_type") != "refresh_token" or f.get("refresh_token") != self.current:
                    self.reused.append(f.get("refresh_token"))
                    return 400, {}, {"error": "invalid_grant"}
                self.n += 1
                self.rotated_at = time.monotonic()
                self.current = f"rt-{self.n}-{os.urandom(4).hex()}"
                at = f"at-{self.n}-{os.urandom(8).hex()}"
                self.access[at] = time.time() + 2.0
                return 200, {}, {"access_token": at, "token_type": "Bearer", "expires_in": 2,
                                 "refresh_token": self.current}
        a = req.headers.get("authorization", "")
        with self.lock:
            if not a.startswith("Bearer ") or self.access.get(a[7:], 0) <= time.time():
                return 401, {}, {"error": "invalid_token"}
            self.polls += 1
            return 200, {}, {"items": [{"id": f"r{self.polls}"}]}


def stored_refresh(pb):
    db = sqlite3.connect(f"file:{pb.dir}/state.db?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT value FROM kv WHERE scope = 'oauth2'").fetchall()
    finally:
        db.close()
    return json.loads(rows[0][0])["refresh_token"] if rows else None


@test
def a_rotating_refresh_token_survives_kill9_of_the_poller():
    ts = Rotating()
    sink = start_sink()
    pb = Patchbay(HEAD + f"""
  rt:
    input:
      http_poll:
        url: "{ts.partner.url}/rt/items"
        interval: 1s
        items: .items[]
        dedupe_key: .id
        auth:
          oauth2:
            token_url: "{ts.partner.url}/token"
            client_id: crm-app
            client_secret: "{SECRET}"
            grant: refresh_token
            refresh_token: "${{RT0}}"
    outputs:
      sink: {{ http: {{ url: "{sink.url}/in" }} }}
""", env={"RT0": "rt-0"})
    wait_until(lambda: ts.n >= 2, 30, "two rotations")
    wait_until(lambda: stored_refresh(pb) == ts.current and
               time.monotonic() - ts.rotated_at < 0.8, 20, "the current token in the store")
    before, polls = ts.n, ts.polls
    pb.kill9()
    pb.start()
    wait_until(lambda: ts.n >= before + 2 and ts.polls >= polls + 3, 30,
               "rotations and polls after the restart")
    check_eq(ts.reused, [], "refresh tokens sent twice")
    check("run ended with an error" not in pb.log(), "a run ended with an error")
    check("rt-0" not in pb.log() and ts.current not in pb.log(), "a refresh token in the log")
    check_eq(pb.term(), 0, "clean exit")
    ts.partner.stop()
    sink.stop()


def enrich_pipe(name, url, auth):
    return f"""
  {name}:
    input: {{ http_server: {{ path: /{name} }} }}
    process:
      - enrich:
          url: '{url}/{{{{ .cid }}}}'
          key: .cid
          into: '.customer = $answer'
{auth}
    outputs:
      sink: {{ http: {{ url: "@SINK@/{name}" }} }}
"""


def at_sink(sink, name):
    return {json.loads(r["body"])["cid"]: json.loads(r["body"]).get("customer")
            for r in sink.records() if r.get("path") == f"/{name}"}


@test
def enrich_with_oauth2_basic_and_mtls():
    a = auth_server()
    a.control(reset=True, failing=False)
    n = nginx()
    sink = start_sink()
    cfg = HEAD + enrich_pipe("eo", f"{API.partner.url}/lookup", f"""          concurrency: 8
          auth:
            oauth2: {{ token_url: "{a.token_url}", client_id: enricher,
                      client_secret: "{SECRET}" }}""")
    cfg += enrich_pipe("eb", f"{API.partner.url}/lookupb",
                       '          auth: { basic: { user: shop, password: "pa:ss-9" } }')
    cfg += enrich_pipe("em", f"https://127.0.0.1:{n.port}/lookupm", f"""          tls:
            ca_file: "{n.path('ca.crt')}"
            cert_file: "{n.path('client.crt')}"
            key_file: "{n.path('client.key')}"
            server_name: partner.test""")
    pb = Patchbay(cfg.replace("@SINK@", sink.url))
    n401 = len(API.unauthorized)
    for i in range(20):
        for name in ("eo", "eb", "em"):
            st, _, _ = pb.post(f"/{name}", {"cid": f"c{i}"})
            check(st == 202, f"ingest {name} -> {st}")
    wait_until(lambda: len(at_sink(sink, "eo")) == 20 and len(at_sink(sink, "eb")) == 20
               and len(at_sink(sink, "em")) == 20, 60, "60 enriched messages")
    check_eq(at_sink(sink, "eo")["c7"], {"name": "C-c7"}, "OAuth2 lookup's answer")
    check_eq(at_sink(sink, "eb")["c7"], {"name": "B-c7"}, "basic lookup's answer")
    check("CN=patchbay-client" in at_sink(sink, "em")["c7"]["dn"],
          f"mTLS lookup's client: {at_sink(sink, 'em')['c7']}")
    check_eq(API.unauthorized[n401:], [], "lookups refused before the revocation")
    check_eq(a.stats()["by_client"].get("enricher"), 1, "token requests")
    # Revoked: the lookups in flight are refused once, one new token.
    # (iat has whole seconds: every token so far is older than the next second, and no
    # lookup runs until then)
    API.revoked_before = int(time.time()) + 1
    wait_until(lambda: time.time() >= API.revoked_before, 5, "the next second")
    for i in range(20, 40):
        st, _, _ = pb.post("/eo", {"cid": f"c{i}"})
        check(st == 202, f"ingest -> {st}")
    wait_until(lambda: len(at_sink(sink, "eo")) == 40, 60, "40 enriched messages")
    refused = [w for _, w in API.unauthorized[n401:]]
    check(refused and set(refused) == {"revoked"}, f"refused lookups: {refused}")
    check_eq(a.stats()["by_client"].get("enricher"), 2, "token requests after the revocation")
    check_eq(pb.dead_letters(), [], "dead letters")
    check("lookup failed" not in pb.log(), "a lookup failed")
    check(SECRET not in pb.log(), "the client secret in the log")
    check_eq(pb.term(), 0, "clean exit")
    sink.stop()


@test
def enrich_retries_while_the_token_endpoint_fails():
    a = auth_server()
    a.control(reset=True, failing=True)
    sink = start_sink()
    cfg = HEAD + enrich_pipe("ef", f"{API.partner.url}/lookup", f"""          auth:
            oauth2: {{ token_url: "{a.token_url}", client_id: enricher,
                      client_secret: "{SECRET}" }}""")
    pb = Patchbay(cfg.replace("@SINK@", sink.url))
    with API.lock:
        looked = len(API.lookups)
    for i in range(5):
        st, _, _ = pb.post("/ef", {"cid": f"f{i}"})
        check(st == 202, f"ingest -> {st}")

    def degraded():
        st, _, body = pb.get("/ready")
        doc = json.loads(body)
        return st == 200 and doc.get("degraded") and doc

    doc = wait_until(degraded, 30, "/ready to list the failing token endpoint")
    d = doc["degraded"][0]
    check(d["pipeline"] == "ef" and d.get("part") == "process[enrich]"
          and "HTTP 503" in d["reason"], f"degraded: {doc}")
    wait_until(lambda: "no OAuth2 token" in pb.log(), 20, "the lookup's reason in the log")
    with API.lock:
        check_eq(API.lookups[looked:], [], "lookups without a token")
    a.control(failing=False)
    wait_until(lambda: len(at_sink(sink, "ef")) == 5, 90, "5 enriched messages")
    check_eq(pb.dead_letters(), [], "dead letters")
    st, _, body = pb.get("/ready")
    check_eq((st, json.loads(body)), (200, {"ready": True}), "/ready once the endpoint answers")
    check_eq(pb.term(), 0, "clean exit")
    sink.stop()


if __name__ == "__main__":
    run()
