"""A rotating OAuth2 refresh token survives kill -9 (grant refresh_token).

The token server of the test rotates strictly, as many providers do: each
refresh token works once, and the answer carries the next one. An old one
sent again is a broken chain (invalid_grant), which the server counts.
Access tokens live 2 s, so patchbay refreshes every couple of seconds
while messages flow to a partner that takes only live access tokens.

- kill -9 once the current refresh token is in the state store: the
  restarted daemon goes on with it, the chain unbroken;
- kill -9 while a refresh is on its way (the server holds it, then sees the
  client gone and does not rotate): the restarted daemon goes on with the
  last stored one;
- a new refresh_token in the configuration starts a new chain;
- every message is delivered, nothing is dead-lettered, no refresh token
  is ever sent twice, none appears in the log.
"""

import json
import os
import sqlite3
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from partner import Partner  # noqa: E402
from pbtest import Patchbay, check, check_eq, log, run, scaled, test, wait_until  # noqa: E402

CLIENT, SECRET = "crm-app", "cs_rotation_5b7e"


class TokenServer:
    """Strict rotation: one live refresh token; access tokens opaque, 2 s."""

    def __init__(self, first):
        self.lock = threading.Lock()
        self.current = first
        self.n = 0
        self.access = {}  # access token -> expiry (time.time())
        self.reused = []  # refresh tokens sent again after rotating
        self.refreshes = 0
        self.rotated_at = 0.0
        self.hold_next = False  # hold the next refresh until the client is gone
        self.held = threading.Event()
        self.partner = Partner(self.handle)

    def handle(self, req):
        if req.path != "/token":
            return 404, {}, {}
        f = req.form()
        if req.headers.get("authorization", "") == "" or f.get("grant_type") != "refresh_token":
            return 400, {}, {"error": "invalid_request"}
        with self.lock:
            hold = self.hold_next
            self.hold_next = False
        if hold:
            self.held.set()
            deadline = time.monotonic() + scaled(20)
            while req.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if not req.alive():
                return 503, {}, {"error": "client gone"}  # never rotated
        with self.lock:
            rt = f.get("refresh_token")
            if rt != self.current:
                self.reused.append(rt)
                return 400, {}, {"error": "invalid_grant", "error_description": "reused"}
            self.n += 1
            self.refreshes += 1
            self.rotated_at = time.monotonic()
            self.current = f"rt-{self.n}-{os.urandom(4).hex()}"
            at = f"at-{self.n}-{os.urandom(8).hex()}"
            self.access[at] = time.time() + 2.0
            return 200, {}, {"access_token": at, "token_type": "Bearer", "expires_in": 2,
                             "refresh_token": self.current}

    def valid(self, at):
        with self.lock:
            return self.access.get(at, 0) > time.time()


class Api:
    def __init__(self, ts):
        self.ts = ts
        self.lock = threading.Lock()
        self.delivered = {}
        self.refused = 0
        self.partner = Partner(self.handle)

    def handle(self, req):
        h = req.headers.get("authorization", "")
        if not h.startswith("Bearer ") or not self.ts.valid(h[7:]):
            with self.lock:
                self.refused += 1
            return 401, {}, {"error": "invalid_token"}
        with self.lock:
            k = req.headers.get("idempotency-key")
            self.delivered[k] = self.delivered.get(k, 0) + 1
        return 200, {}, {"ok": True}

    def count(self):
        with self.lock:
            return len(self.delivered)


CONFIG = """
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: "sqlite:@DIR@/state.db"
outbound: {{ allow: [127.0.0.0/8] }}
pipelines:
  contacts:
    input: {{ http_server: {{ path: /in }} }}
    outputs:
      crm:
        http:
          url: "{api}/contacts"
          auth:
            oauth2:
              token_url: "{token}/token"
              client_id: {client}
              client_secret: "{secret}"
              grant: refresh_token
              refresh_token: "${{CRM_REFRESH_TOKEN}}"
          retry: {{ max_attempts: 5, initial: 100ms }}
"""


def stored_refresh(pb):
    """The chain's refresh token as the state store holds it."""
    db = sqlite3.connect(f"file:{pb.dir}/state.db?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT value FROM kv WHERE scope = 'oauth2'").fetchall()
    finally:
        db.close()
    return json.loads(rows[0][0])["refresh_token"] if rows else None


class Feeder:
    """Messages into patchbay at ~50/s until stopped; survives the daemon's
    restarts (refused posts are tried again)."""

    def __init__(self, pb):
        self.pb, self.sent, self.stop_ev = pb, 0, threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop_ev.is_set():
            try:
                st, _, _ = self.pb.post("/in", {"n": self.sent}, timeout=2)
                if st == 202:
                    self.sent += 1
            except OSError:
                pass
            self.stop_ev.wait(0.02)

    def stop(self):
        self.stop_ev.set()
        self.t.join(scaled(10))
        return self.sent


@test
def rotating_refresh_token_survives_kill9():
    ts = TokenServer("rt-0")
    api = Api(ts)
    cfg = CONFIG.format(api=api.partner.url, token=ts.partner.url, client=CLIENT, secret=SECRET)
    pb = Patchbay(cfg, env={"CRM_REFRESH_TOKEN": "rt-0"})
    feed = Feeder(pb)

    # Some rotations, then kill -9 once the store holds the current token
    # (just after a rotation: the next is more than a second away, so no
    # rotation the server made is lost with the process).
    wait_until(lambda: ts.refreshes >= 3, 30, "three rotations")
    wait_until(lambda: stored_refresh(pb) == ts.current and
               time.monotonic() - ts.rotated_at < 0.8, 20, "the current token in the store")
    before = ts.refreshes
    pb.kill9()
    pb.start()
    wait_until(lambda: ts.refreshes >= before + 3, 30, "rotations after the restart")
    check_eq(ts.reused, [], "refresh tokens sent twice")

    # kill -9 while a refresh is held by the server: it never rotates.
    ts.held.clear()
    with ts.lock:
        ts.hold_next = True
    wait_until(ts.held.is_set, 30, "a refresh on its way")
    last = stored_refresh(pb)
    pb.kill9()
    check_eq(ts.current, last, "the server's token after the cut refresh")
    before = ts.refreshes
    pb.start()
    wait_until(lambda: ts.refreshes >= before + 2, 30, "rotations after the second restart")
    check_eq(ts.reused, [], "refresh tokens sent twice")

    sent = feed.stop()
    wait_until(lambda: api.count() >= sent, 30, f"{sent} deliveries")
    st, doc = pb.admin("GET", "/api/dead-letters")
    check_eq(doc["items"], [], "dead letters")
    check(max(api.delivered.values()) <= 2, "a message delivered more than twice")
    log(f"sent {sent}, rotations {ts.refreshes}, 401s {api.refused}")
    for rt in ["rt-0", ts.current, last]:
        check(rt not in pb.log(), "a refresh token in the log")

    # A new refresh token in the configuration starts a new chain.
    pb.term()
    with ts.lock:
        ts.current = "rt-reauthorised"
    pb.env["CRM_REFRESH_TOKEN"] = "rt-reauthorised"
    before, n = ts.refreshes, api.count()
    pb.start()
    st, _, _ = pb.post("/in", {"n": "after re-authorisation"})
    check_eq(st, 202, "ingest")
    wait_until(lambda: api.count() > n, 30, "a delivery with the new chain")
    check(ts.refreshes >= before + 1, "no rotation of the new chain")
    check_eq(ts.reused, [], "the old chain's token sent after re-authorisation")
    check("a new chain starts" in pb.log(), "the new chain is not logged")
    pb.term()


if __name__ == "__main__":
    run()
