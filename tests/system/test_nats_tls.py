"""The nats input and output over TLS with client certificates (mutual TLS),
against a nats-server that requires them (one for the module): messages
flow both ways; the server's certificate is checked against the URL's host
name even though the client connects to the address the outbound guard
allowed; a certificate for another name, or no client certificate, is
refused."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import Patchbay, check, check_eq, log, run, start_sink, test, wait_until  # noqa: E402
from servers import _server_dir  # noqa: E402
from srv_nats import Nats  # noqa: E402

NATS = None
PKI = None


def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    check(r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}")


def make_pki():
    """A CA, a server certificate for localhost and a client certificate."""
    d = _server_dir("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, ext in (("server", "subjectAltName=DNS:localhost"),
                      ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                f"{name}.key", "-out", f"{name}.csr", cwd=d)
        with open(os.path.join(d, f"{name}.ext"), "w") as f:
            f.write(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out",
                f"{name}.pem", cwd=d)
    return d


def server():
    global NATS, PKI
    if NATS is None:
        PKI = make_pki()
        NATS = TlsNats(PKI)
    return NATS


class TlsNats(Nats):
    """Clients must speak TLS and present a certificate of the test CA; the
    test client pb_nats is given one too."""

    def __init__(self, pki):
        self.pki = pki
        super().__init__(extra_args=["--tls", "--tlscert", os.path.join(pki, "server.pem"),
                                     "--tlskey", os.path.join(pki, "server.key"),
                                     "--tlscacert", os.path.join(pki, "ca.pem"),
                                     "--tlsverify"])

    @property
    def url(self):
        return f"tls://localhost:{self.port}"


CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  consume:
    input:
      nats:
        url: "%(url)s"
        stream: TIN
        consumer: patchbay
        subject: "tin.>"
        tls: %(tls)s
    outputs:
      sink: { http: { url: "%(sink)s/in" } }
  publish:
    input: { http_server: { path: /orders } }
    outputs:
      js: { nats: { url: "%(url)s", subject: tout.x, tls: %(tls)s } }
"""


def tls_block(pki, server_name=None, client=True):
    parts = [f'ca_file: "{pki}/ca.pem"']
    if client:
        parts += [f'cert_file: "{pki}/client.pem"', f'key_file: "{pki}/client.key"']
    if server_name:
        parts.append(f"server_name: {server_name}")
    return "{ " + ", ".join(parts) + " }"


def input_state(pb):
    _, doc = pb.admin("GET", "/api/inputs")
    return [i for i in doc["inputs"] if i["pipeline"] == "consume"][0]


@test
def messages_flow_both_ways_over_mutual_tls():
    n = server()
    # pb_nats speaks no TLS: the inputs create the streams (create_stream),
    # and a third pipeline reads back what the output published.
    sink = start_sink()
    conf = CONF % {"url": n.url, "tls": tls_block(n.pki), "sink": sink.url}
    conf = conf.replace('subject: "tin.>"', 'subject: "tin.>"\n        create_stream: true')
    conf += """
  readback:
    input:
      nats:
        url: "%(url)s"
        stream: TOUT
        consumer: readback
        subject: "tout.>"
        create_stream: true
        tls: %(tls)s
    outputs:
      sink: { http: { url: "%(sink)s/readback" } }
""" % {"url": n.url, "tls": tls_block(n.pki), "sink": sink.url}
    pb = Patchbay(conf)
    def connected():
        _, doc = pb.admin("GET", "/api/inputs")
        return all(i["state"] == "connected" for i in doc["inputs"])

    wait_until(connected, 30, "the inputs connected (and their streams created)")
    for i in range(20):
        st, _, _ = pb.post("/orders", {"n": i})
        check_eq(st, 202, "accepted")

    wait_until(lambda: len(sink.records()) >= 20, 60, "the published messages read back")
    back = sorted(json.loads(r["body"])["n"] for r in sink.records() if r["path"] == "/readback")
    check_eq(back, list(range(20)), "published over TLS, consumed over TLS")
    names = [c for c in n.connection_names() if c.startswith("patchbay")]
    check_eq(len(names), 3, f"three TLS connections from patchbay: {names}")


@test
def a_certificate_for_another_name_is_refused():
    n = server()
    sink = start_sink()
    conf = CONF % {"url": n.url, "tls": tls_block(n.pki, server_name="other.example"),
                   "sink": sink.url}
    pb = Patchbay(conf, start=False)
    pb.start(wait_ready=False)
    st = wait_until(lambda: (lambda s: s if s["state"] == "reconnecting" else None)(
        input_state(pb)), 30, "the input refusing the server")
    log(f"refused: {st['detail']}")
    check("hostname mismatch" in (st["detail"] or ""), f"for the certificate's name: {st}")
    check_eq([c for c in n.connection_names() if c.startswith("patchbay")], [],
             "no connection was established")


@test
def no_client_certificate_is_refused_by_the_server():
    n = server()
    sink = start_sink()
    conf = CONF % {"url": n.url, "tls": tls_block(n.pki, client=False), "sink": sink.url}
    pb = Patchbay(conf, start=False)
    pb.start(wait_ready=False)
    st = wait_until(lambda: (lambda s: s if s["state"] == "reconnecting" else None)(
        input_state(pb)), 30, "the input refused")
    log(f"refused: {st['detail']}")
    check(st["detail"], f"with a reason: {st}")


if __name__ == "__main__":
    run()
