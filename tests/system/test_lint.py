"""lint as a new user meets it: every error of a configuration in one run,
each with its file:line:col, in file order; server.listen validated; and
warnings (exit 0 when there are only warnings) for a partner on an
internal address the outbound guard would refuse and for $NAME left
uninterpolated."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import check, check_eq, run, run_cli, test, tmpdir  # noqa: E402

BAD = """server: { listen: ":99999" }
pipelines:
  a:
    input: { http_server: { path: /a, max_body: 2x } }
    outputs: { o: { drop: {} } }
  b:
    input: { http_server: { path: /b } }
    outputs:
      o: { http: { url: "http://partner.example/x", timeout: 5q } }
  c:
    input: { http_server: { path: /c } }
    outputs:
      o: { nope: {} }
"""

WARN_ONLY = """server: { listen: "127.0.0.1:8080", admin_token: "$TOKEN" }
pipelines:
  a:
    input: { http_server: { path: /a } }
    process:
      - map: '{x: $meta.path}'
    outputs:
      loop: { http: { url: "http://127.0.0.1:9000/x" } }
      local: { http: { url: "http://localhost/x" } }
      fine: { http: { url: "http://127.0.0.1:9001/y", outbound: { allow: [127.0.0.1] } } }
"""


def write(text):
    path = os.path.join(tmpdir("lint"), "patchbay.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


@test
def every_error_in_one_run():
    path = write(BAD)
    r = run_cli("lint", path)
    check_eq(r.returncode, 1, "exit code")
    lines = [ln for ln in r.stderr.splitlines() if re.match(re.escape(path) + r":\d+:\d+: ", ln)]
    check_eq(len(lines), 4, f"four errors: {r.stderr}")
    check(lines[0].startswith(f"{path}:1:") and "server.listen" in lines[0], lines[0])
    check(lines[1].startswith(f"{path}:4:") and "max_body" in lines[1], lines[1])
    check(lines[2].startswith(f"{path}:9:") and "timeout" in lines[2], lines[2])
    check(lines[3].startswith(f"{path}:13:") and "unknown output" in lines[3], lines[3])
    check("4 errors" in r.stderr, "a count at the end")
    for listen in ("localhost", ":99999", "127.0.0.1", "[::1]", "host.example:80"):
        r = run_cli("lint", write(BAD.split("pipelines:")[0].replace(":99999", listen) +
                                   "pipelines:" + BAD.split("pipelines:")[1].split("  b:")[0]
                                   .replace("2x", "1KiB")))
        check_eq(r.returncode, 1, f"listen {listen!r} refused")
        check("server.listen" in r.stderr, f"listen {listen!r}: {r.stderr}")


@test
def warnings_alone_pass():
    path = write(WARN_ONLY)
    r = run_cli("lint", path)
    check_eq(r.returncode, 0, f"only warnings: exit 0 ({r.stderr})")
    warns = [ln for ln in r.stderr.splitlines() if ": warning: " in ln]
    check(any(f"{path}:8:" in w and "127.0.0.1" in w and "outbound.allow" in w for w in warns),
          f"the loopback partner: {warns}")
    check(any(f"{path}:9:" in w and "localhost" in w for w in warns), f"localhost: {warns}")
    check(not any(f"{path}:10:" in w for w in warns), "an allowed partner is not warned about")
    check(any(f"{path}:1:" in w and "${NAME}" in w for w in warns), f"$TOKEN: {warns}")
    check(not any(f"{path}:6:" in w for w in warns), "jq's $meta is not taken for a variable")
    check_eq(len(warns), 3, f"three warnings: {warns}")


BROKERS = """pipelines:
  a:
    input: { nats: { url: "nats://127.0.0.1:4222", stream: S, consumer: c, subject: "a.>" } }
    outputs:
      bus: { nats: { url: "nats://127.0.0.1:4222", subject: b } }
      api: { http: { url: "http://10.1.2.3/x" } }
  b:
    input: { nats: { url: "nats://10.0.0.7:4222", stream: S, consumer: c, subject: "a.>" } }
    outputs: { o: { drop: {} } }
"""


@test
def broker_urls_warned_with_what_would_follow():
    # An HTTP output dead-letters each refused delivery; a broker output never
    # connects and its deliveries wait; an input stays reconnecting.
    path = write(BROKERS)
    r = run_cli("lint", path)
    check_eq(r.returncode, 0, f"only warnings: exit 0 ({r.stderr})")
    warns = [ln for ln in r.stderr.splitlines() if ": warning: " in ln]
    check(any(f"{path}:3:" in w and 'input of pipeline "a"' in w and "reconnecting" in w
              for w in warns), f"the input: {warns}")
    check(any(f"{path}:5:" in w and 'output "bus"' in w and "wait" in w and "dead-lettered" not in w
              for w in warns), f"the broker output: {warns}")
    check(any(f"{path}:6:" in w and 'output "api"' in w and "dead-lettered" in w for w in warns),
          f"the HTTP output: {warns}")
    check(any(f"{path}:8:" in w and 'input of pipeline "b"' in w and "10.0.0.7" in w
              for w in warns), f"the second input: {warns}")
    check_eq(len(warns), 4, f"four warnings: {warns}")


if __name__ == "__main__":
    run()
