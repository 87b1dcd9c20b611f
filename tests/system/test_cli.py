"""The command line as a new user meets it: every command answers --help
on stdout with exit 0, options such as --url and --token work before or
after the command, and an unknown option is named with exit 2."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import Patchbay, check, check_eq, run, run_cli, test  # noqa: E402

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
pipelines:
  p:
    input: { http_server: { path: /in } }
    outputs: { out: { drop: {} } }
"""


@test
def every_command_has_help():
    for args in (["--help"], ["help"], ["run", "--help"], ["lint", "-h"], ["dlq", "--help"],
                 ["dlq", "list", "--help"], ["dlq", "replay", "--help"],
                 ["endpoints", "--help"], ["endpoints", "create", "--help"],
                 ["version", "--help"], ["--help", "run"]):
        r = run_cli(*args)
        check_eq(r.returncode, 0, f"patchbay {' '.join(args)} exit code")
        check("usage: patchbay" in r.stdout, f"patchbay {' '.join(args)} prints usage: {r.stdout!r}")


@test
def global_options_go_anywhere():
    pb = Patchbay(CONFIG)
    for args in (["--url", pb.url, "--token", pb.token, "dlq", "list"],
                 ["dlq", "list", "--url", pb.url, "--token", pb.token],
                 ["dlq", "--token", pb.token, "list", "--url", pb.url],
                 ["--log-level", "warn", "endpoints", "list", "--url", pb.url, "--token", pb.token]):
        r = run_cli(*args, env=dict(os.environ, PATCHBAY_URL="", PATCHBAY_ADMIN_TOKEN=""))
        check_eq(r.returncode, 0, f"patchbay {' '.join(a if a != pb.token else '***' for a in args)}: {r.stderr}")
    pb.term()


@test
def unknown_options_are_named():
    for args, bad in ((["run", "--bogus", "x.yaml"], "--bogus"), (["lint", "-x", "c.yaml"], "-x"),
                      (["dlq", "list", "--nope"], "--nope"), (["--what"], "--what")):
        r = run_cli(*args)
        check_eq(r.returncode, 2, f"patchbay {' '.join(args)} exit code")
        check(bad in r.stderr, f"the error names {bad}: {r.stderr!r}")


if __name__ == "__main__":
    run()
