"""The smtp output against aiosmtpd (python3-aiosmtpd), one plain server and
one that requires STARTTLS and AUTH, each started once for the module:
headers, addresses and bodies as received; 4xx answers retried, 5xx
dead-lettered; STARTTLS required refused by a server without it (and used
when only opportunistic); header injection and bad addresses refused
before anything is sent; the outbound guard; kill -9 of patchbay and the
server restarted while mails go out (every mail arrives, a copy carries the
same Message-ID)."""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import Patchbay, check, check_eq, run, test, wait_until  # noqa: E402
from srv_smtp import Smtp  # noqa: E402

PLAIN = Smtp()
SECURE = Smtp(tls=True, auth=("shop", "s3cret"))

CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
%(outbound)s
pipelines:
  mail:
    input: { http_server: { path: /in } }
    outputs:
      m:
        smtp:
          url: "%(url)s"
          starttls: %(starttls)s
          %(extra)s
          from: 'Shop Ünited <orders@shop.example>'
          to: ['{{ .email }}', 'audit@shop.example']
          cc: ['{{ .cc // "" }}']
          bcc: [archive@shop.example]
          reply_to: help@shop.example
          subject: '{{ .subject // "Order \\(.order) – confirmed" }}'
          text: "Hello {{ .name }},\\nyour order {{ .order }} is confirmed.\\n"
          html: '<p>Hello <b>{{ .name }}</b></p>'
          headers: { X-Campaign: spring }
          retry: { max_attempts: %(attempts)d, initial: 100ms, max: 300ms }
"""


def conf(server, starttls="required", auth=True, outbound=True, attempts=5):
    extra = []
    if server.tls:
        extra.append(f"tls: {{ ca_file: {server.ca_file} }}")
    if auth and server.auth:
        extra.append('auth: { user: shop, password: "${SMTP_PASSWORD}" }')
    return CONF % {"url": server.url, "starttls": starttls, "extra": "\n          ".join(extra),
                   "outbound": "outbound: { allow: [127.0.0.0/8] }" if outbound else "",
                   "attempts": attempts}


def daemon(text):
    return Patchbay(text, env={"SMTP_PASSWORD": "s3cret"})


def post(pb, doc):
    st, _, body = pb.post("/in", doc)
    check_eq(st, 202, f"ingest: {body!r}")
    return json.loads(body)["id"]


def deliveries(pb, mid):
    return [d for d in pb.message(mid)["deliveries"] if d["output"] == "m"]


@test
def headers_addresses_and_bodies_over_starttls_with_auth():
    SECURE.clear()
    pb = daemon(conf(SECURE))
    mid = post(pb, {"email": "ann@example.com", "cc": "\"Bob, B\" <bob@example.com>, carl@example.com",
                    "name": "Ann", "order": 42})
    pb.wait_states([mid], {"m": "delivered"})
    mails = SECURE.mails()
    check_eq(len(mails), 1, "one mail")
    m = mails[0]
    check(m["tls"], "sent after STARTTLS")
    check_eq(m["user"], "shop", "authenticated")
    check_eq(m["from"], "orders@shop.example", "the envelope sender")
    check_eq(sorted(m["to"]), sorted(["ann@example.com", "audit@shop.example", "bob@example.com",
                                      "carl@example.com", "archive@shop.example"]),
             "every recipient, bcc included")
    msg = m["msg"]
    check_eq(str(msg["From"]), "Shop Ünited <orders@shop.example>", "From")
    check_eq(str(msg["To"]), "ann@example.com, audit@shop.example", "To")
    check_eq(str(msg["Cc"]), '"Bob, B" <bob@example.com>, carl@example.com', "Cc")
    check(msg["Bcc"] is None, "no Bcc header")
    check_eq(str(msg["Reply-To"]), "help@shop.example", "Reply-To")
    check_eq(str(msg["Subject"]), "Order 42 – confirmed", "Subject (RFC 2047)")
    check_eq(str(msg["X-Campaign"]), "spring", "a static header")
    check_eq(str(msg["X-Patchbay-Message-Id"]), mid, "the message id")
    check(re.fullmatch(r"<[0-9a-f]{32}@shop\.example>", str(msg["Message-ID"])),
          f"a Message-ID from the key: {msg['Message-ID']}")
    check(msg["Date"] is not None, "Date")
    check_eq(msg.get_content_type(), "multipart/alternative", "text and html")
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    check_eq(text.replace("\r\n", "\n"), "Hello Ann,\nyour order 42 is confirmed.\n", "the text")
    check_eq(html.strip(), "<p>Hello <b>Ann</b></p>", "the html")
    d = deliveries(pb, mid)[0]
    check_eq(d["attempt_log"][-1]["status"], 250, "the server's answer recorded")
    answer = d["attempt_log"][-1]["answer"] or ""
    check(answer.startswith("250 "), f"the server's reply to the mail kept as the answer: {answer!r}")
    check("s3cret" not in answer and "c2hvcA" not in answer,
          f"nothing of the login in the answer: {answer!r}")


@test
def tempfail_retried_and_refusal_dead_lettered():
    SECURE.clear()
    SECURE.set_mode({"tempfail": {"slow@example.com": 2},
                     "rcpt": {"gone@example.com": "550 5.1.1 no such user"}})
    pb = daemon(conf(SECURE))
    slow = post(pb, {"email": "slow@example.com", "name": "S", "order": 1})
    gone = post(pb, {"email": "gone@example.com", "name": "G", "order": 2})
    pb.wait_states([slow], {"m": "delivered"})
    pb.wait_states([gone], {"m": "dead"})
    atts = deliveries(pb, slow)[0]["attempt_log"]
    check_eq([a["status"] for a in atts], [451, 451, 250], "two 4xx answers retried, then sent")
    check_eq([(a["answer"] or "")[:4] for a in atts], ["451 ", "451 ", "250 "],
             f"each attempt keeps the server's reply: {atts}")
    d = deliveries(pb, gone)[0]
    check_eq(len(d["attempt_log"]), 1, "a 5xx answer is not retried")
    check("550" in (d["attempt_log"][0]["error"] or ""), f"the reason: {d['attempt_log'][0]}")
    check_eq(d["attempt_log"][0]["answer"], "550 5.1.1 no such user", "the refusal as the answer")
    mails = SECURE.mails()
    check_eq(len(mails), 1, "only the retried mail arrived")
    check("slow@example.com" in mails[0]["to"], "the retried mail")
    SECURE.set_mode({})


@test
def starttls_required_is_refused_by_a_server_without_it():
    PLAIN.clear()
    pb = daemon(conf(PLAIN, attempts=2))
    mid = post(pb, {"email": "ann@example.com", "name": "A", "order": 3})
    pb.wait_states([mid], {"m": "dead"})
    d = deliveries(pb, mid)[0]
    check("STARTTLS" in (d["attempt_log"][-1]["error"] or ""), f"the reason: {d['attempt_log']}")
    check_eq(PLAIN.mails(), [], "nothing sent in clear text")
    pb.term()
    pb = daemon(conf(PLAIN, starttls="opportunistic"))
    mid = post(pb, {"email": "ann@example.com", "name": "A", "order": 4})
    pb.wait_states([mid], {"m": "delivered"})
    mails = PLAIN.mails()
    check_eq(len(mails), 1, "sent when STARTTLS is opportunistic")
    check(not mails[0]["tls"], "in clear text, as allowed")


@test
def injection_bad_addresses_and_the_outbound_guard():
    PLAIN.clear()
    pb = daemon(conf(PLAIN, starttls="opportunistic"))
    a = post(pb, {"email": "ann@example.com", "name": "A", "order": 5,
                  "subject": "hi\r\nBcc: victim@example.com"})
    b = post(pb, {"email": "not an address", "name": "B", "order": 6})
    c = post(pb, {"email": "ann@example.com\r\nRCPT TO:<x@y.z>", "name": "C", "order": 7})
    pb.wait_states([a, b, c], {"m": "dead"})
    reasons = [deliveries(pb, x)[0]["attempt_log"][-1]["error"] for x in (a, b, c)]
    check("line break" in reasons[0], f"{reasons[0]}")
    check("not an e-mail address" in reasons[1], f"{reasons[1]}")
    check("line break" in reasons[2], f"{reasons[2]}")
    check_eq(PLAIN.mails(), [], "nothing sent")
    pb.term()
    pb = daemon(conf(PLAIN, starttls="opportunistic", outbound=False))
    mid = post(pb, {"email": "ann@example.com", "name": "A", "order": 8})
    pb.wait_states([mid], {"m": "dead"})
    err = deliveries(pb, mid)[0]["attempt_log"][-1]["error"]
    check("blocked: 127.0.0.1 is loopback" in err, f"the reason: {err}")
    check_eq(PLAIN.mails(), [], "nothing sent")


@test
def kill9_and_server_restart_while_sending():
    PLAIN.clear()
    pb = daemon(conf(PLAIN, starttls="opportunistic", attempts=50))
    n = 60
    for i in range(n):
        post(pb, {"email": f"r{i}@example.com", "name": f"R{i}", "order": 1000 + i})
    wait_until(lambda: len(PLAIN.mails()) >= 10, 30, "the first mails")
    pb.kill9()
    PLAIN.kill9()
    pb.start()
    PLAIN.start()
    wait_until(lambda: {r for m in PLAIN.mails() for r in m["to"] if r.startswith("r")} ==
               {f"r{i}@example.com" for i in range(n)}, 120, "every mail")
    ids = {}
    for m in PLAIN.mails():
        rcpt = [r for r in m["to"] if r.startswith("r")][0]
        ids.setdefault(rcpt, set()).add(str(m["msg"]["Message-ID"]))
    check(all(len(v) == 1 for v in ids.values()), "a copy sent again keeps its Message-ID")
    check_eq(len({next(iter(v)) for v in ids.values()}), n, "one Message-ID per mail")


if __name__ == "__main__":
    run()
