"""The mqtt input and output against a mosquitto that wants a user name and
password and has a TLS listener too (one broker for the module):

- credentials from a secret reach the broker and are never printed; a wrong
  password leaves the plugins reconnecting with the broker's reason;
- mqtts:// with the CA file: the certificate is checked against the URL's
  host name (SNI too), though the connection goes to the address the
  outbound guard allowed; an address the certificate does not name, or a CA
  that did not sign it, is refused."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import Patchbay, check, check_eq, run, start_sink, test, wait_until  # noqa: E402
from srv_mqtt import Client, Mosquitto  # noqa: E402

USER, PASSWORD = "pb", "s3cret-Pa55-zz91"


def broker():
    return Mosquitto.module(users={USER: PASSWORD, "tester": "tester-pw"}, tls=True)


def tester(port=None, **kw):
    b = broker()
    return Client(port or b.port, kw.pop("client_id", "tester"), user="tester",
                  password="tester-pw", **kw)


CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  %(name)s:
    input:
      mqtt:
        url: "%(url)s"
        topics: ["%(name)s/in/#"]
        user: %(user)s
        password: "${MQTT_PASSWORD}"
        %(tls)s
    process:
      - map: '. + {topic: $meta.topic}'
    outputs:
      sink: { http: { url: "%(sink)s/%(name)s" } }
      back:
        mqtt:
          url: "%(url)s"
          topic: "%(name)s/out"
          user: %(user)s
          password: "${MQTT_PASSWORD}"
          %(tls)s
"""


def conf(name, url, sink, tls=""):
    return CONF % {"name": name, "url": url, "sink": sink.url, "user": USER, "tls": tls}


def input_detail(pb, pipeline):
    st, doc = pb.admin("GET", "/api/inputs")
    check_eq(st, 200, "GET /api/inputs")
    return [i for i in doc["inputs"] if i["pipeline"] == pipeline][0]


def round_trip(pb, name, port, **kw):
    """A message in through the input, out through the output."""
    sub = tester(port, client_id=f"{name}-sub", **kw)
    sub.subscribe([f"{name}/out"])
    pub = tester(port, client_id=f"{name}-pub", **kw)
    pub.publish(f"{name}/in/a", json.dumps({"hello": name}))
    pub.close()
    got = sub.receive(1, 30)
    sub.close()
    check_eq(len(got), 1, "the message came back out through the output")
    body = json.loads(got[0].payload)
    check_eq(body, {"hello": name, "topic": f"{name}/in/a"}, "mapped on the way")


@test
def credentials_from_a_secret_never_printed():
    b = broker()
    sink = start_sink()
    pb = Patchbay(conf("c1", b.url, sink), env={"MQTT_PASSWORD": PASSWORD})
    round_trip(pb, "c1", b.port)
    wait_until(lambda: len(sink.records()) == 1, 30, "the sink got it too")
    check_eq(pb.term(), 0, "exit code")
    lint = pb.cli("lint", pb.config_path, env={"MQTT_PASSWORD": PASSWORD})
    for where, text in (("log", pb.log()), ("stdout", pb.stdout()),
                        ("lint", lint.stdout + lint.stderr)):
        check(PASSWORD not in text, f"the password is not in the {where}")


@test
def wrong_password_reconnects_with_the_reason():
    b = broker()
    sink = start_sink()
    pb = Patchbay(conf("c2", b.url, sink), env={"MQTT_PASSWORD": "wrong-" + PASSWORD},
                  start=False)
    pb.start(wait_ready=False)
    wait_until(lambda: "refused the connection" in (input_detail(pb, "c2").get("detail") or ""),
               30, "the input refused")
    detail = input_detail(pb, "c2")["detail"]
    check("not authorized" in detail or "bad user name or password" in detail,
          f"the broker's reason: {detail}")
    check_eq(input_detail(pb, "c2")["state"], "reconnecting", "input state")
    st, _, _ = pb.get("/ready")
    check_eq(st, 503, "not ready while the input cannot connect")
    check(("wrong-" + PASSWORD) not in pb.log(), "the password is not logged")


@test
def tls_checks_the_host_name_of_the_url():
    b = broker()
    sink = start_sink()
    tls = f'tls: {{ ca_file: "{b.ca_file}" }}'
    pb = Patchbay(conf("c3", f"mqtts://localhost:{b.tls_port}", sink, tls),
                  env={"MQTT_PASSWORD": PASSWORD})
    round_trip(pb, "c3", b.tls_port, tls_ca=b.ca_file)
    check("url=mqtts://localhost:" in pb.log(), "connected over TLS")
    check_eq(pb.term(), 0, "exit code")


@test
def tls_refuses_a_name_the_certificate_lacks():
    b = broker()
    sink = start_sink()
    tls = f'tls: {{ ca_file: "{b.ca_file}" }}'
    # The certificate names localhost, not 127.0.0.1.
    pb = Patchbay(conf("c4", f"mqtts://127.0.0.1:{b.tls_port}", sink, tls),
                  env={"MQTT_PASSWORD": PASSWORD}, start=False)
    pb.start(wait_ready=False)
    wait_until(lambda: "certificate refused" in (input_detail(pb, "c4").get("detail") or ""),
               30, "the certificate refused")
    detail = input_detail(pb, "c4")["detail"]
    check("mismatch" in detail, f"for its name: {detail}")
    check("mqtt: connected" not in pb.log(), "never connected")


@test
def tls_refuses_an_unknown_ca():
    b = broker()
    sink = start_sink()
    # No ca_file: the system's CAs, which did not sign the test certificate.
    pb = Patchbay(conf("c5", f"mqtts://localhost:{b.tls_port}", sink),
                  env={"MQTT_PASSWORD": PASSWORD}, start=False)
    pb.start(wait_ready=False)
    wait_until(lambda: "certificate refused" in (input_detail(pb, "c5").get("detail") or ""),
               30, "the certificate refused")
    detail = input_detail(pb, "c5")["detail"]
    check("issuer" in detail or "self-signed certificate in certificate chain" in detail,
          f"for its issuer: {detail}")


if __name__ == "__main__":
    run()
