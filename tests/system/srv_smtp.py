"""srv_smtp - a real SMTP server for the smtp tests: aiosmtpd (Debian's
python3-aiosmtpd) on 127.0.0.1 with a free port and a folder of its own,
plain or with STARTTLS required (a certificate made for it) and AUTH.

    from srv_smtp import Smtp
    m = Smtp(tls=True, auth=("shop", "pw"))    # started, waited for
    m.mails()                                  # every mail accepted, parsed
    m.set_mode({"rcpt": {"x@y.z": "550 5.1.1 no such user"}})
    m.ca_file                                  # the certificate, to trust it

Standard library only (plus openssl for the certificate).
"""

import email
import email.policy
import json
import os
import subprocess
import sys

from pbtest import TestFailure
from servers import Server

PYTHON = "/usr/bin/python3"  # Debian's, which has aiosmtpd
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smtp_server.py")


class Smtp(Server):
    name = "smtp"

    def __init__(self, tls=False, auth=None, **kw):
        self.tls = tls
        self.auth = auth
        super().__init__(**kw)

    def prepare(self):
        r = subprocess.run([PYTHON, "-c", "import aiosmtpd"], capture_output=True)
        if r.returncode != 0:
            raise TestFailure("aiosmtpd missing: ./dev.sh installs python3-aiosmtpd")
        self.ca_file = None
        if self.tls:
            self.cert = os.path.join(self.dir, "cert.pem")
            self.key = os.path.join(self.dir, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", self.key, "-out", self.cert, "-days", "2",
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                           check=True, capture_output=True)
            self.ca_file = self.cert

    def argv(self):
        a = [PYTHON, SCRIPT, "--port", str(self.port), "--dir", self.dir]
        if self.tls:
            a += ["--tls", self.cert, self.key]
        if self.auth:
            a += ["--auth", f"{self.auth[0]}:{self.auth[1]}"]
        return a

    @property
    def url(self):
        return f"smtp://127.0.0.1:{self.port}"

    def set_mode(self, mode):
        tmp = os.path.join(self.dir, "mode.json.tmp")
        with open(tmp, "w") as f:
            json.dump(mode, f)
        os.rename(tmp, os.path.join(self.dir, "mode.json"))

    def mails(self):
        """Every mail accepted: dicts with from, to, tls, user, data and msg
        (an email.message.EmailMessage)."""
        out = []
        try:
            with open(os.path.join(self.dir, "mails.jsonl")) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    rec["msg"] = email.message_from_string(rec["data"],
                                                           policy=email.policy.default)
                    out.append(rec)
        except OSError:
            pass
        return out

    def clear(self):
        try:
            os.unlink(os.path.join(self.dir, "mails.jsonl"))
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit("a fixture: import it")
