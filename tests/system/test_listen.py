"""A second daemon on a port already in use refuses to start, naming the
address, and the first goes on serving: the listener never shares a port
with a live process (no SO_REUSEPORT)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import Patchbay, check, check_eq, run, test  # noqa: E402

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
pipelines:
  p:
    input: { http_server: { path: /in } }
    outputs: { out: { drop: {} } }
"""


@test
def second_daemon_on_a_used_port_refuses():
    first = Patchbay(CONFIG)
    second = Patchbay(CONFIG, start=False, port=first.port)
    second.start(wait_ready=False)
    deadline = time.time() + 20
    while second.proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    check(second.proc.poll() is not None, "the second daemon exited")
    check(second.proc.returncode != 0, "with a failure code")
    log = second.log()
    check(f"127.0.0.1:{first.port}" in log and "in use" in log,
          f"its error names the address and says it is in use: {log[-400:]}")
    for _ in range(20):
        st, _, _ = first.post("/in", {"n": 1})
        check_eq(st, 202, "the first daemon still takes every request")
    check_eq(first.term(), 0, "the first stops cleanly")


if __name__ == "__main__":
    run()
