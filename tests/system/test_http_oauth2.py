"""OAuth2 on the http output against a real authorization server
(oauth2-mock-server from npm, behind tests/system/oauth2/server.js) and a
partner API of the test's own that takes only unexpired, unrevoked tokens
it can verify against the server's keys:

- tokens of 2 s lifetime during 10 s of traffic at 64 concurrent
  deliveries, shared by two outputs: every message delivered, token
  requests close to traffic time / lifetime (no stampede), no dead letter;
- revocation: the partner answers 401, one new token for everyone, the
  deliveries go again without spending an attempt;
- the jwt_bearer grant (RFC 7523) and private_key_jwt client assertions,
  checked by the server against the key the test made;
- a token endpoint down (then killed and restarted): deliveries wait
  without spending attempts, /ready and /api/pipelines say why, all go once
  it answers;
- lint: bad settings with file:line:col, never a secret.
"""

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from partner import Partner  # noqa: E402
from pbtest import (  # noqa: E402
    Patchbay,
    check,
    check_eq,
    log,
    run,
    scaled,
    tmpdir,
    test,
    wait_until,
)
from srv_oauth2 import OAuth2  # noqa: E402

SECRET = "cs_oauth2_9d1f2e"
KEYDIR = None
AUTH = None


def keys():
    """An RSA key pair for jwt_bearer and private_key_jwt, made with openssl."""
    global KEYDIR
    if KEYDIR is None:
        import tempfile

        KEYDIR = tempfile.mkdtemp(prefix="oauth2-keys-")
        priv, pub = os.path.join(KEYDIR, "client.key"), os.path.join(KEYDIR, "client.pub")
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:2048", "-out", priv], check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", priv, "-pubout", "-out", pub], check=True,
                       capture_output=True)
    return os.path.join(KEYDIR, "client.key"), os.path.join(KEYDIR, "client.pub")


def auth_server():
    global AUTH
    if AUTH is None:
        _, pub = keys()
        AUTH = OAuth2(ttl=2, clients={"shop": SECRET, "longlived": SECRET, "down": SECRET},
                      client_ttls={"longlived": 3600, "down": 3600}, key_client="svc-key",
                      public_key=pub, assertion_aud="https://login.example.test")
    return AUTH


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Jwks:
    """RS256 verification against a JSON Web Key Set, by hand (the standard
    library has no RSA): s^e mod n must be the PKCS#1 v1.5 encoding of the
    SHA-256 of the signed part. Keys are fetched again for an unknown kid
    (the server restarted with new ones)."""

    DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")

    def __init__(self, url):
        self.url = url
        self.keys = {}
        self.lock = threading.Lock()

    def _fetch(self):
        with urllib.request.urlopen(self.url, timeout=10) as r:
            doc = json.loads(r.read())
        with self.lock:
            for k in doc["keys"]:
                self.keys[k["kid"]] = (int.from_bytes(b64url(k["n"]), "big"),
                                       int.from_bytes(b64url(k["e"]), "big"))

    def verify(self, token):
        head, body, sig = token.split(".")
        hdr = json.loads(b64url(head))
        if hdr.get("alg") != "RS256":
            raise ValueError("alg " + str(hdr.get("alg")))
        with self.lock:
            key = self.keys.get(hdr.get("kid"))
        if key is None:
            self._fetch()
            with self.lock:
                key = self.keys.get(hdr.get("kid"))
        if key is None:
            raise ValueError("unknown kid")
        n, e = key
        k = (n.bit_length() + 7) // 8
        em = pow(int.from_bytes(b64url(sig), "big"), e, n).to_bytes(k, "big")
        digest = hashlib.sha256(f"{head}.{body}".encode()).digest()
        want = b"\x00\x01" + b"\xff" * (k - 3 - len(self.DIGEST_INFO) - 32) + b"\x00" + \
            self.DIGEST_INFO + digest
        if em != want:
            raise ValueError("signature")
        return json.loads(b64url(body))


class Api:
    """The partner: a token must verify with the server's keys, be unexpired
    (to the millisecond) and issued after the last revocation."""

    def __init__(self, jwks_url, delay=0.0):
        self.jwks = Jwks(jwks_url)
        self.delay = delay
        self.revoked_before = 0.0
        self.lock = threading.Lock()
        self.delivered = {}  # Idempotency-Key -> times
        self.unauthorized = []  # (time, reason)
        self.by_client = {}
        self.inflight = 0
        self.max_inflight = 0
        self.partner = Partner(self.handle)

    def handle(self, req):
        h = req.headers.get("authorization", "")
        why = None
        claims = {}
        if not h.startswith("Bearer "):
            why = "no bearer token"
        else:
            tok = h[7:]
            try:
                claims = self.jwks.verify(tok)
            except Exception as e:  # noqa: BLE001 - any bad token is a 401
                why = f"bad token: {e}"
            now = time.time()
            if not why and claims.get("exp", 0) <= now:
                why = "expired"
            if not why and claims.get("iat", 0) < self.revoked_before:
                why = "revoked"
        if why:
            with self.lock:
                self.unauthorized.append((time.monotonic(), why))
            return 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}, {"error": why}
        with self.lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.delay:
                time.sleep(self.delay)
        finally:
            with self.lock:
                self.inflight -= 1
        key = req.headers.get("idempotency-key")
        with self.lock:
            self.delivered[key] = self.delivered.get(key, 0) + 1
            c = claims.get("client_id", "?")
            self.by_client[c] = self.by_client.get(c, 0) + 1
        return 200, {}, {"ok": True}

    def count(self):
        with self.lock:
            return len(self.delivered)

    def stop(self):
        self.partner.stop()


def dead(pb):
    st, doc = pb.admin("GET", "/api/dead-letters")
    check(st == 200, f"dead letters -> {st}")
    return doc["items"]


def output_doc(pb, pipeline, output):
    st, doc = pb.admin("GET", "/api/pipelines")
    check(st == 200, f"/api/pipelines -> {st}")
    for p in doc["pipelines"]:
        if p["name"] == pipeline:
            for o in p["outputs"]:
                if o["name"] == output:
                    return o
    raise AssertionError(f"no output {pipeline}/{output}")


@test
def two_second_tokens_shared_under_64_concurrent_deliveries():
    a = auth_server()
    a.control(reset=True)
    api = Api(a.jwks_url, delay=0.3)
    # 10 s of traffic: 200 messages/s into one output (64 in flight at the
    # partner's 0.3 s), 20/s into another; both share one token.
    pb = Patchbay(f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: "sqlite:@DIR@/state.db"
outbound: {{ allow: [127.0.0.0/8] }}
pipelines:
  orders:
    input: {{ generate: {{ interval: 50ms, batch: 10, count: 2000, template: '{{n: $meta.seq}}' }} }}
    outputs:
      api:
        http:
          url: "{api.partner.url}/orders"
          auth: {{ oauth2: {{ token_url: "{a.token_url}", client_id: shop,
                             client_secret: "${{SHOP_SECRET}}", scopes: [orders.write] }} }}
          concurrency: 64
          retry: {{ max_attempts: 3, initial: 100ms }}
  refunds:
    input: {{ generate: {{ interval: 50ms, batch: 1, count: 200, template: '{{n: $meta.seq}}' }} }}
    outputs:
      api2:
        http:
          url: "{api.partner.url}/refunds"
          auth: {{ oauth2: {{ token_url: "{a.token_url}", client_id: shop,
                             client_secret: "${{SHOP_SECRET}}", scopes: [orders.write] }} }}
          retry: {{ max_attempts: 3, initial: 100ms }}
""", env={"SHOP_SECRET": SECRET})
    t0 = time.monotonic()
    wait_until(lambda: api.count() >= 2200, 60, "2200 deliveries")
    traffic = time.monotonic() - t0
    stats = a.stats()
    tokens = stats["by_client"].get("shop", 0)
    log(f"traffic {traffic:.1f}s, tokens {tokens}, max in flight {api.max_inflight}, "
        f"401s {len(api.unauthorized)}")
    check(api.max_inflight >= 48, f"at most {api.max_inflight} deliveries in flight, want ~64")
    # One token at a time for both outputs, renewed shortly before its 2 s
    # run out: about traffic / lifetime requests, never one per delivery.
    expected = traffic / 2.0
    check(expected * 0.6 <= tokens <= expected * 1.6 + 2,
          f"{tokens} token requests for {traffic:.1f}s of 2 s tokens")
    check_eq(stats["refused"], 0, "token requests refused")
    check_eq(sorted(set(api.delivered.values())), [1], "each message delivered once")
    check_eq(dead(pb), [], "dead letters")
    # Secrets never in the log; the token in use shows in the API.
    check(SECRET not in pb.log(), "client secret in the log")
    o = output_doc(pb, "orders", "api")
    check_eq(o["auth"]["type"], "oauth2", "auth type in /api/pipelines")
    check_eq(o["auth"]["client_id"], "shop", "client in /api/pipelines")
    check(SECRET not in json.dumps(o), "secret in /api/pipelines")
    m = pb.metrics()
    check(m.value("patchbay_oauth2_token_requests_total", client_id="shop") >= tokens - 1,
          "token requests in /metrics")
    pb.term()
    api.stop()


@test
def revocation_gets_one_new_token_and_no_attempt_is_spent():
    a = auth_server()
    a.control(reset=True)
    api = Api(a.jwks_url, delay=0.02)
    pb = Patchbay(f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: "sqlite:@DIR@/state.db"
outbound: {{ allow: [127.0.0.0/8] }}
pipelines:
  orders:
    input: {{ http_server: {{ path: /in }} }}
    outputs:
      api:
        http:
          url: "{api.partner.url}/orders"
          auth: {{ oauth2: {{ token_url: "{a.token_url}", client_id: longlived,
                             client_secret: "{SECRET}", auth_method: client_secret_post }} }}
          concurrency: 32
          retry: {{ max_attempts: 1 }}
""")
    ids = []
    for i in range(100):
        st, _, body = pb.post("/in", {"n": i})
        check(st == 202, f"ingest -> {st}")
        ids.append(json.loads(body)["id"])
    wait_until(lambda: api.count() >= 100, 30, "100 deliveries")
    check_eq(a.stats()["by_client"].get("longlived"), 1, "tokens before the revocation")
    # Every token issued so far is refused now.
    api.revoked_before = time.time()
    for i in range(200):
        st, _, body = pb.post("/in", {"n": 100 + i})
        check(st == 202, f"ingest -> {st}")
        ids.append(json.loads(body)["id"])
    wait_until(lambda: api.count() >= 300, 30, "300 deliveries")
    check(len(api.unauthorized) >= 1, "the partner never refused the revoked token")
    # 32 deliveries in flight saw 401 with the old token: one new token.
    check_eq(a.stats()["by_client"].get("longlived"), 2, "tokens after the revocation")
    # max_attempts is 1: a 401 that got a new token cost no attempt.
    check_eq(dead(pb), [], "dead letters")
    pb.wait_states(ids[100:110], {"api": "delivered"})
    for mid in ids[100:110]:
        d = pb.message(mid)["deliveries"][0]
        check_eq(d["attempts"], 1, f"attempts of {mid}")
        check_eq(d["attempt_log"][0]["status"], 200, f"the one attempt of {mid}")
    pb.term()
    api.stop()


@test
def jwt_bearer_grant_and_private_key_jwt():
    a = auth_server()
    a.control(reset=True)
    api = Api(a.jwks_url)
    priv, _ = keys()
    pb = Patchbay(f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: "sqlite:@DIR@/state.db"
outbound: {{ allow: [127.0.0.0/8] }}
pipelines:
  crm:
    input: {{ generate: {{ interval: 10ms, count: 30, template: '{{n: $meta.seq}}' }} }}
    outputs:
      bearer_grant:
        http:
          url: "{api.partner.url}/contacts"
          auth:
            oauth2:
              token_url: "{a.token_url}"
              client_id: svc-key
              grant: jwt_bearer
              private_key: "{priv}"
              claims: {{ sub: integration@example.test, aud: "https://login.example.test" }}
      key_client:
        http:
          url: "{api.partner.url}/contacts"
          auth:
            oauth2:
              token_url: "{a.token_url}"
              client_id: svc-key
              auth_method: private_key_jwt
              private_key: "{priv}"
              key_id: k1
""")
    wait_until(lambda: api.count() >= 60, 30, "60 deliveries")
    s = a.stats()
    check_eq(s["refused"], 0, "token requests refused")
    check(s["by_grant"].get("urn:ietf:params:oauth:grant-type:jwt-bearer", 0) >= 1,
          f"no jwt-bearer grant: {s['by_grant']}")
    check(s["by_method"].get("private_key_jwt", 0) >= 1, f"no private_key_jwt: {s['by_method']}")
    asrt = s["assertions"][0]
    check_eq(asrt["sub"], "integration@example.test", "assertion sub")
    check_eq(asrt["aud"], "https://login.example.test", "assertion aud")
    check_eq(asrt["iss"], "svc-key", "assertion iss")
    check(0 < asrt["exp"] - asrt["iat"] <= 300, "assertion lifetime")
    check_eq(dead(pb), [], "dead letters")
    pb.term()
    api.stop()


@test
def token_endpoint_down_costs_no_attempt():
    a = auth_server()
    a.control(reset=True, failing=True)
    api = Api(a.jwks_url)
    pb = Patchbay(f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: "sqlite:@DIR@/state.db"
outbound: {{ allow: [127.0.0.0/8] }}
pipelines:
  orders:
    input: {{ http_server: {{ path: /in }} }}
    outputs:
      api:
        http:
          url: "{api.partner.url}/orders"
          auth: {{ oauth2: {{ token_url: "{a.token_url}", client_id: down,
                             client_secret: "{SECRET}" }} }}
          retry: {{ max_attempts: 2, initial: 100ms }}
""")
    ids = []
    for i in range(20):
        st, _, body = pb.post("/in", {"n": i})
        check(st == 202, f"ingest -> {st}")
        ids.append(json.loads(body)["id"])

    def degraded():
        st, _, body = pb.get("/ready")
        doc = json.loads(body)
        return st == 200 and doc.get("degraded") and doc

    doc = wait_until(degraded, 20, "/ready to list the failing token endpoint")
    check("HTTP 503" in doc["degraded"][0]["reason"], f"reason: {doc['degraded']}")
    check_eq(doc["degraded"][0]["output"], "api", "degraded output")
    o = output_doc(pb, "orders", "api")
    check_eq(o["auth"]["state"], "failing", "auth state")
    check_eq(o["state"], "reconnecting", "output state")
    check("no OAuth2 token" in o.get("detail", ""), f"detail: {o.get('detail')}")
    # The endpoint's server dies and comes back on the same port: still
    # nothing reaches the partner, and no attempt is spent waiting.
    a.kill9()
    a.start()
    a.control(failing=True)
    time.sleep(scaled(3))  # noqa: the check below is that nothing happens meanwhile
    check_eq(api.count(), 0, "deliveries without a token")
    for mid in ids[:5]:
        d = pb.message(mid)["deliveries"][0]
        check_eq((d["attempts"], d["attempt_log"]), (0, []), f"attempts of {mid}")
    check(pb.metrics().value("patchbay_output_not_sent_total", output="api") >= 20,
          "not-sent counter")
    a.control(failing=False)
    wait_until(lambda: api.count() >= 20, 60, "20 deliveries once the endpoint answers")
    pb.wait_states(ids, {"api": "delivered"}, timeout=30)
    check_eq(dead(pb), [], "dead letters")
    wait_until(lambda: output_doc(pb, "orders", "api")["state"] == "connected", 10,
               "output connected again")
    st, _, body = pb.get("/ready")
    check_eq(json.loads(body), {"ready": True}, "/ready once the endpoint answers")
    pb.term()
    api.stop()


@test
def lint_names_bad_settings_and_never_a_secret():
    d = tmpdir("lint")
    cfg = os.path.join(d, "p.yaml")
    with open(cfg, "w") as f:
        f.write(f"""
state: "sqlite:{d}/s.db"
pipelines:
  a:
    input: {{ http_server: {{ path: /a }} }}
    outputs:
      x:
        http:
          url: https://api.example.test/x
          auth: {{ oauth2: {{ token_url: https://login.example.test/token, client_id: c,
                             client_secret: "sup3r-s3cret-1" }} }}
  b:
    input: {{ http_server: {{ path: /b }} }}
    outputs:
      y:
        http:
          url: https://api.example.test/y
          auth: {{ oauth2: {{ token_url: https://login.example.test/token, client_id: c,
                             client_secret: "sup3r-s3cret-2" }} }}
  c:
    input: {{ http_server: {{ path: /c }} }}
    outputs:
      z:
        http:
          url: https://api.example.test/z
          auth: {{ oauth2: {{ token_url: https://login.example.test/token, client_id: k,
                             grant: jwt_bearer, private_key: /nonexistent/key.pem }} }}
          tls: {{ insecure_skip_verify: true }}
""")
    r = subprocess.run([os.environ["PB_BIN"], "lint", cfg], capture_output=True, text=True,
                       timeout=scaled(30))
    out = r.stdout + r.stderr
    check(r.returncode != 0, "lint passed a bad configuration")
    check("sup3r-s3cret" not in out, f"a secret in lint's output:\n{out}")
    check("used by a/x too" in out and "p.yaml:" in out, f"no shared-settings error:\n{out}")
    check("/nonexistent/key.pem" in out, f"no key error:\n{out}")
    # A configuration that only skips certificate checks passes, warned.
    with open(cfg, "w") as f:
        f.write(f"""
state: "sqlite:{d}/s.db"
pipelines:
  a:
    input: {{ http_server: {{ path: /a }} }}
    outputs:
      x:
        http:
          url: https://api.example.test/x
          tls: {{ insecure_skip_verify: true }}
""")
    r = subprocess.run([os.environ["PB_BIN"], "lint", cfg], capture_output=True, text=True,
                       timeout=scaled(30))
    out = r.stdout + r.stderr
    check(r.returncode == 0, f"lint failed:\n{out}")
    check("warning: output \"x\": tls.insecure_skip_verify" in out, f"no warning:\n{out}")


if __name__ == "__main__":
    run()
