"""srv_oauth2 - the OAuth2 authorization server of the tests: the npm
package oauth2-mock-server behind a front of the tests' own
(tests/system/oauth2/server.js: client authentication, the RFC 7523
jwt-bearer grant, token lifetime, counters), on 127.0.0.1 with a free
port. npm installs it into tests/system/oauth2/node_modules on first use.

    from srv_oauth2 import OAuth2
    a = OAuth2(ttl=2, clients={"id": "secret"}, client_ttls={"id": 3600},
               key_client="k", public_key=path)
    a.token_url; a.jwks_url; a.stats(); a.set_failing(True)

Standard library only.
"""

import json
import os

from pbtest import _http, check, ensure_node_client
from servers import Server

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oauth2")


class OAuth2(Server):
    name = "oauth2"

    def __init__(self, ttl=3600, clients=None, key_client=None, public_key=None,
                 assertion_aud=None, client_ttls=None, **kw):
        self.ttl = ttl
        self.client_ttls = client_ttls or {}
        self.clients = clients or {}
        self.key_client = key_client
        self.public_key = public_key
        self.assertion_aud = assertion_aud
        ensure_node_client(NODE_DIR, "oauth2-mock-server")
        super().__init__(**kw)

    def argv(self):
        a = ["node", os.path.join(NODE_DIR, "server.js"), "--port", str(self.port),
             "--ttl", str(self.ttl)]
        for cid, secret in self.clients.items():
            a += ["--client", f"{cid}:{secret}"]
        for cid, ttl in self.client_ttls.items():
            a += ["--client-ttl", f"{cid}:{ttl}"]
        if self.key_client:
            a += ["--key-client", self.key_client]
        if self.public_key:
            a += ["--public-key", self.public_key]
        if self.assertion_aud:
            a += ["--assertion-aud", self.assertion_aud]
        return a

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self):
        return self.url + "/token"

    @property
    def jwks_url(self):
        return self.url + "/jwks"

    def stats(self):
        st, _, data = _http("GET", self.port, "/stats")
        check(st == 200, f"oauth2 /stats -> {st}")
        return json.loads(data)

    def control(self, **body):
        st, _, data = _http("POST", self.port, "/control", json.dumps(body),
                            {"Content-Type": "application/json"})
        check(st == 200, f"oauth2 /control -> {st} {data!r}")
        return json.loads(data)
