"""srv_prism - Prism (@stoplight/prism-cli from npm) mocking an OpenAPI
spec on 127.0.0.1 with a free port: it answers with the spec's examples and
validates every request against the spec (422 for one that does not fit).
Installed into tests/system/prism/node_modules with npm on first use.

    from srv_prism import Prism
    p = Prism()          # the petstore spec, started and waited for
    p.url                # http://127.0.0.1:PORT

Standard library only.
"""

import fcntl
import os
import shutil
import subprocess

from servers import Server, port_open
from pbtest import TestFailure, check, scaled

HERE = os.path.dirname(os.path.abspath(__file__))
PRISM_DIR = os.path.join(HERE, "prism")


def ensure_prism():
    """npm install in tests/system/prism (under a lock) if prism is missing."""
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            raise TestFailure(f"{tool} not found: ./dev.sh installs nodejs and npm")
    with open(os.path.join(PRISM_DIR, "package.json")) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(PRISM_DIR, "node_modules", ".bin", "prism")):
            return
        has_lock = os.path.exists(os.path.join(PRISM_DIR, "package-lock.json"))
        argv = ["npm", "ci" if has_lock else "install", "--no-audit", "--no-fund"]
        r = subprocess.run(argv, cwd=PRISM_DIR,
                           capture_output=True, text=True, timeout=scaled(600),
                           env=dict(os.environ, SCARF_ANALYTICS="false"))
        check(r.returncode == 0, f"{' '.join(argv)} in {PRISM_DIR} failed:\n{r.stdout}\n{r.stderr}")


class Prism(Server):
    name = "prism"
    start_timeout = 60

    def __init__(self, spec="petstore.yaml", **kw):
        self.spec = os.path.join(PRISM_DIR, spec)
        ensure_prism()
        super().__init__(**kw)

    def argv(self):
        return [os.path.join(PRISM_DIR, "node_modules", ".bin", "prism"), "mock", "-h",
                "127.0.0.1", "-p", str(self.port), self.spec]

    def env(self):
        return dict(os.environ, SCARF_ANALYTICS="false", NO_COLOR="1")

    def ready(self):
        return port_open(self.port)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"
