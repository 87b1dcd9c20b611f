"""srv_nats - nats-server with JetStream for the system tests, on 127.0.0.1
with a free port, a monitoring port and its own store directory, plus the
test client pb_nats (tests/tools/pb_nats.c, built next to pb_sink) to create
streams, publish, dump a stream and read a consumer's state.

    from srv_nats import Nats
    n = Nats()
    n.stream_add("ORDERS", "orders.>")
    n.publish("orders.new", 100, msg_id="order-%d")
    n.consumer_info("ORDERS", "patchbay")["num_ack_pending"]
"""

import json
import os
import shutil
import subprocess
import urllib.request

from pbtest import PB_SINK, TestFailure, check, free_port, scaled
from servers import Server, port_open

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def tool_path():
    return os.path.join(os.path.dirname(os.path.abspath(PB_SINK)), "pb_nats")


class Nats(Server):
    name = "nats"

    def __init__(self, port=None, start=True, extra_args=()):
        self.mon_port = free_port()
        self.extra_args = list(extra_args)
        super().__init__(port, start)

    def argv(self):
        return [NATS_SERVER, "-js", "-sd", os.path.join(self.dir, "store"), "-a", "127.0.0.1",
                "-p", str(self.port), "-m", str(self.mon_port), *self.extra_args]

    def ready(self):
        if not port_open(self.port):
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.mon_port}/healthz",
                                        timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    # -- monitoring -----------------------------------------------------------------------

    def monitor(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.mon_port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def connection_names(self):
        return [c.get("name", "") for c in self.monitor("/connz").get("connections", [])]

    # -- the client ------------------------------------------------------------------------

    def tool(self, *args, ok=(0,), timeout=120):
        exe = tool_path()
        check(os.access(exe, os.X_OK), f"pb_nats not built: {exe}")
        r = subprocess.run([exe, self.url, *[str(a) for a in args]], capture_output=True,
                           text=True, timeout=scaled(timeout))
        if r.returncode not in ok:
            raise TestFailure(f"pb_nats {' '.join(map(str, args))} -> {r.returncode}: {r.stderr}")
        return r

    def stream_add(self, name, subject, duplicate_window_s=600):
        self.tool("stream-add", name, subject, duplicate_window_s)

    def stream_info(self, name):
        return json.loads(self.tool("stream-info", name).stdout)

    def consumer_info(self, stream, consumer):
        """The consumer's state, or None when it does not exist."""
        r = self.tool("consumer-info", stream, consumer, ok=(0, 3))
        return json.loads(r.stdout) if r.returncode == 0 else None

    def publish(self, subject, count, start=0, body=None, msg_id=None, headers=()):
        args = ["publish", subject, count, "--start", start]
        if body is not None:
            args += ["--body", body]
        if msg_id is not None:
            args += ["--msg-id", msg_id]
        for h in headers:
            args += ["--header", h]
        return json.loads(self.tool(*args).stdout)

    def dump(self, stream):
        out = self.tool("dump", stream, timeout=300).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]
