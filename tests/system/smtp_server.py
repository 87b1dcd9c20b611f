"""smtp_server - a mail server for the smtp tests, on aiosmtpd (Debian's
python3-aiosmtpd; run with /usr/bin/python3). Started by srv_smtp.py.

    smtp_server.py --port N --dir D [--tls CERT KEY] [--auth USER:PASS]

Every mail accepted is appended to D/mails.jsonl as {"from", "to", "data",
"tls", "user"}. D/mode.json, read at each command, changes the answers:
{"rcpt": {"addr": "550 5.1.1 no such user"}} answers RCPT TO with that
line; {"tempfail": {"addr": 2}} answers the first 2 RCPT TO of addr with
451. With --tls the server offers STARTTLS and requires it (and AUTH, when
--auth is given, only after it); without, it offers neither.
"""

import argparse
import asyncio
import json
import os
import ssl

from aiosmtpd.smtp import SMTP, AuthResult


class Handler:
    def __init__(self, d):
        self.dir = d
        self.counts = {}

    def mode(self):
        try:
            with open(os.path.join(self.dir, "mode.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        mode = self.mode()
        answer = mode.get("rcpt", {}).get(address)
        if answer:
            return answer
        times = mode.get("tempfail", {}).get(address, 0)
        n = self.counts.get(address, 0)
        if n < times:
            self.counts[address] = n + 1
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        user = None
        if session.auth_data is not None:
            user = session.auth_data.login.decode()
        rec = {"from": envelope.mail_from, "to": envelope.rcpt_tos,
               "data": envelope.content.decode("utf-8", "replace"),
               "tls": session.ssl is not None, "user": user}
        with open(os.path.join(self.dir, "mails.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return "250 2.0.0 queued"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--tls", nargs=2)
    ap.add_argument("--auth")
    a = ap.parse_args()
    ctx = None
    if a.tls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls[0], a.tls[1])
    auth = None
    if a.auth:
        user, password = a.auth.split(":", 1)

        def auth(server, session, envelope, mechanism, data):
            ok = data.login.decode() == user and data.password.decode() == password
            return AuthResult(success=ok, auth_data=data if ok else None)

    handler = Handler(a.dir)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def factory():
        return SMTP(handler, hostname="pbtest.local", tls_context=ctx,
                    require_starttls=bool(ctx), authenticator=auth,
                    auth_required=bool(auth), auth_require_tls=True, loop=loop)

    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", a.port))
    print(f"listening on {a.port}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
