"""Packaging and systemd: `cmake --install` into a temporary prefix gives a
binary that runs the installed example end to end, a man page, a starter
configuration whose tests pass, and a hardened Type=notify unit that
`systemd-analyze verify` accepts; the Debian package built by CPack holds
what it should; `patchbay init` writes, for every pattern, a configuration
lint accepts (or, for a plugin this build does not have yet, one lint
refuses naming that plugin); and sd_notify is spoken on a datagram socket of
the test's own: READY=1 once the listener takes requests, WATCHDOG=1 at half
of WATCHDOG_USEC, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    PB_BIN,
    Patchbay,
    check,
    check_eq,
    log,
    post_many,
    run,
    scaled,
    start_sink,
    test,
    tmpdir,
    wait_until,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.dirname(os.path.abspath(PB_BIN)) if PB_BIN else ""
SAN_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")

_prefix = None


def installed():
    """cmake --install of the build under test, once per module."""
    global _prefix
    if _prefix:
        return _prefix
    base = os.path.join(BUILD, "test-install")
    shutil.rmtree(base, ignore_errors=True)
    r = subprocess.run(["cmake", "--install", BUILD, "--prefix", base], capture_output=True,
                       text=True, timeout=scaled(120))
    check_eq(r.returncode, 0, f"cmake --install: {r.stdout}{r.stderr}")
    _prefix = base
    return base


def sh(*argv, env=None, timeout=60, input=None):
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=scaled(timeout),
                       input=input, stdin=None if input is not None else subprocess.DEVNULL)
    for mark in SAN_MARKS:
        check(mark not in r.stderr, f"sanitizer report:\n{r.stderr[-3000:]}")
    return r


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "ASAN_OPTIONS", "UBSAN_OPTIONS",
                                                         "LSAN_OPTIONS", "LANG", "LC_ALL")}
    env.update(extra)
    return env


@test
def install_into_a_prefix_and_run_the_installed_example():
    p = installed()
    pb = os.path.join(p, "bin", "patchbay")
    for path in ("bin/patchbay", "share/man/man1/patchbay.1.gz", "etc/patchbay/patchbay.yaml",
                 "etc/patchbay/patchbay.test.yaml", "etc/default/patchbay",
                 "lib/systemd/system/patchbay.service", "share/doc/patchbay/configuration.md",
                 "share/doc/patchbay/cli.md",
                 "share/doc/patchbay/examples/order-fulfillment/patchbay.yaml",
                 "share/doc/patchbay/examples/order-fulfillment/patchbay.test.yaml"):
        check(os.path.exists(os.path.join(p, path)), f"installed: {path}")
    check_eq(oct(os.stat(os.path.join(p, "etc/default/patchbay")).st_mode & 0o777), "0o600",
             "the environment file (secrets) is readable by its owner only")
    r = sh(pb, "version")
    check(r.returncode == 0 and r.stdout.startswith("patchbay "), r.stdout)
    # The man page renders without warnings.
    if shutil.which("man"):
        r = sh("man", "--warnings", "-l", os.path.join(p, "share/man/man1/patchbay.1.gz"),
               env=dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8"))
        check(r.returncode == 0 and "patchbay test" in r.stdout and not r.stderr.strip(),
              f"man: {r.stderr}")
    # The starter configuration: lint and its own tests, with nothing set.
    cfg = os.path.join(p, "etc/patchbay/patchbay.yaml")
    r = sh(pb, "lint", cfg, env=clean_env())
    check_eq(r.returncode, 0, f"lint {cfg}: {r.stderr}")
    r = sh(pb, "test", "--no-color", cfg, env=clean_env())
    check(r.returncode == 0 and "0 failed" in r.stdout, r.stdout)
    # The installed example: its tests, then the daemon against four partners.
    ex = os.path.join(p, "share/doc/patchbay/examples/order-fulfillment")
    r = sh(pb, "test", "--no-color", os.path.join(ex, "patchbay.yaml"), env=clean_env())
    check(r.returncode == 0 and "0 failed" in r.stdout, r.stdout)
    sinks = {name: start_sink() for name in ("payments", "inventory", "shipping", "email")}
    env = {f"{n.upper()}_URL": f"{s.url}/{n}" for n, s in sinks.items()}
    with open(os.path.join(ex, "patchbay.yaml")) as f:
        text = f.read()
    # Patchbay writes the config into its own directory; the installed binary runs it.
    import pbtest
    saved = pbtest.PB_BIN
    pbtest.PB_BIN = pb
    try:
        d = Patchbay(text.replace("${PATCHBAY_LISTEN:-127.0.0.1:8080}", "@LISTEN@")
                     .replace("${PATCHBAY_ADMIN_TOKEN}", "@TOKEN@")
                     .replace("${PATCHBAY_DATA:-./patchbay-data}", "@DIR@"), env=env)
        with open(os.path.join(ROOT, "examples/order-fulfillment/orders.json")) as f:
            orders = json.load(f)
        acked = post_many(f"{d.url}/hooks/shop", orders, concurrency=4)
        check_eq([st for st, _ in acked], [202] * len(orders), "orders acknowledged")
        live = [o for o in orders if not o.get("test")]
        for name, s in sinks.items():
            wait_until(lambda: s.ok_count() >= len(live), 60, f"{name} deliveries")
        got = sorted(json.loads(r["body"])["reference"] for r in sinks["payments"].records()
                     if r["status"] == 200)
        check_eq(got, sorted(o["id"] for o in live), "payments got every order once")
    finally:
        pbtest.PB_BIN = saved


@test
def the_unit_is_hardened_type_notify_and_systemd_accepts_it():
    p = installed()
    unit = os.path.join(p, "lib/systemd/system/patchbay.service")
    with open(unit) as f:
        text = f.read()
    for want in ("Type=notify", "WatchdogSec=", "DynamicUser=yes", "ProtectSystem=strict",
                 "StateDirectory=patchbay", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n",
                 f"ExecStart={p}/bin/patchbay run {p}/etc/patchbay/patchbay.yaml",
                 "ExecReload=/bin/kill -HUP $MAINPID", f"EnvironmentFile=-{p}/etc/default/patchbay"):
        check(want in text, f"unit lacks {want!r}")
    sa = shutil.which("systemd-analyze")
    check(sa is not None, "systemd-analyze (Debian package systemd) is needed: ./dev.sh test installs it")
    env = dict(os.environ, MANPATH=os.path.join(p, "share/man"), SYSTEMD_LOG_LEVEL="notice")
    r = subprocess.run([sa, "verify", unit], capture_output=True, text=True, env=env,
                       timeout=scaled(60))
    log(r.stdout, r.stderr)
    check_eq(r.returncode, 0, f"systemd-analyze verify: {r.stderr}")
    check_eq(r.stderr.strip(), "", "systemd-analyze verify says nothing (an unknown key would be "
             "a warning)")
    r = subprocess.run([sa, "security", "--offline=true", unit], capture_output=True, text=True,
                       timeout=scaled(60))
    if r.returncode == 0 or "Overall exposure level" in r.stdout:
        line = [l for l in r.stdout.splitlines() if "Overall exposure level" in l][0]
        score = float(line.split(":")[1].split()[0])
        log(line)
        check(score <= 2.0, f"exposure {score} (want <= 2.0, 'OK'): {r.stdout[-2000:]}")
    # A unit with a typo would not pass: the check can fail.
    bad = os.path.join(tmpdir("unit"), "patchbay.service")
    with open(bad, "w") as f:
        f.write(text.replace("ProtectSystem=strict", "ProtectSystm=strict"))
    r = subprocess.run([sa, "verify", bad], capture_output=True, text=True, env=env,
                       timeout=scaled(60))
    check("Unknown key" in r.stderr, f"a typo is reported: {r.stderr}")


@test
def the_debian_package_holds_what_it_should():
    out = tmpdir("deb")
    r = subprocess.run(["cpack", "--config", os.path.join(BUILD, "CPackConfig.cmake"), "-B", out],
                       capture_output=True, text=True, timeout=scaled(300))
    check_eq(r.returncode, 0, f"cpack: {r.stdout}{r.stderr}")
    debs = [f for f in os.listdir(out) if f.endswith(".deb")]
    check_eq(len(debs), 1, f"one .deb in {os.listdir(out)}")
    deb = os.path.join(out, debs[0])
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True).stdout
    files = {l.split()[-1]: l.split()[0] for l in listing.splitlines()}
    for path, mode in (("./usr/bin/patchbay", "-rwxr-xr-x"),
                       ("./usr/share/man/man1/patchbay.1.gz", "-rw-r--r--"),
                       ("./usr/lib/systemd/system/patchbay.service", "-rw-r--r--"),
                       ("./etc/patchbay/patchbay.yaml", "-rw-r--r--"),
                       ("./etc/patchbay/patchbay.test.yaml", "-rw-r--r--"),
                       ("./etc/default/patchbay", "-rw-------"),
                       ("./usr/share/doc/patchbay/configuration.md", "-rw-r--r--"),
                       ("./usr/share/doc/patchbay/examples/order-fulfillment/patchbay.yaml",
                        "-rw-r--r--")):
        check_eq(files.get(path), mode, f"{path} in the package")
    check(not any("/usr/local" in f or "pb_sink" in f or "test_" in f for f in files),
          "nothing but the product")
    info = subprocess.run(["dpkg-deb", "-I", deb], capture_output=True, text=True).stdout
    for want in ("Package: patchbay", "Depends:", "libjq1", "libcurl4", "Section: net"):
        check(want in info, f"control lacks {want!r}:\n{info}")
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", deb], capture_output=True).stdout
    check(b"conffiles" in conffiles and b"postinst" in conffiles, "conffiles and postinst")
    x = tmpdir("debx")
    subprocess.run(["dpkg-deb", "-x", deb, x], check=True)
    with open(os.path.join(x, "usr/lib/systemd/system/patchbay.service")) as f:
        unit = f.read()
    check("ExecStart=/usr/bin/patchbay run /etc/patchbay/patchbay.yaml" in unit, unit)
    r = sh(os.path.join(x, "usr/bin/patchbay"), "version")
    check_eq(r.returncode, 0, "the packaged binary runs")


@test
def init_writes_what_lint_accepts_for_every_pattern():
    r = sh(PB_BIN, "init", "--list")
    patterns = [l.split()[0] for l in r.stdout.splitlines()[1:]]
    check_eq(patterns, ["webhook-relay", "api-sync", "queue-bridge", "cdc-to-api"], "patterns")
    linted = 0
    for name in patterns:
        d = tmpdir(name)
        r = sh(PB_BIN, "init", name, "--output", os.path.join(d, "patchbay.yaml"))
        check_eq(r.returncode, 0, f"init {name}: {r.stderr}")
        check(os.path.exists(os.path.join(d, "patchbay.test.yaml")), "its tests")
        cfg = os.path.join(d, "patchbay.yaml")
        lint = sh(PB_BIN, "lint", cfg, env=clean_env())
        missing = [l.split()[5] for l in r.stdout.splitlines()
                   if l.startswith("note: this build has no")]
        if missing:
            named = (f'unknown input "{missing[0]}"' in lint.stderr
                     or f'unknown output "{missing[0]}"' in lint.stderr)
            check(lint.returncode == 1 and named, lint.stderr)
            log(f"{name}: needs {missing[0]}, which this build does not have")
            continue
        check_eq(lint.returncode, 0, f"lint of init {name}: {lint.stderr}")
        t = sh(PB_BIN, "test", "--no-color", cfg, env=clean_env())
        check(t.returncode == 0 and "0 failed" in t.stdout, f"test of init {name}: {t.stdout}")
        linted += 1
        # An existing file is kept; --force replaces it; - writes to stdout.
        again = sh(PB_BIN, "init", name, "--output", cfg)
        check(again.returncode == 1 and "exists" in again.stderr, again.stderr)
        check(sh(PB_BIN, "init", name, "--output", cfg, "--force").returncode == 0, "--force")
        out = sh(PB_BIN, "init", name, "--output", "-")
        with open(cfg) as f:
            check_eq(out.stdout, f.read(), "--output - prints the same configuration")
    check(linted >= 2, f"patterns whose plugins exist: {linted}")
    r = sh(PB_BIN, "init", "nope")
    check(r.returncode == 2 and "webhook-relay" in r.stderr, r.stderr)


# ---- sd_notify ------------------------------------------------------------------------------

NOTIFY_CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
pipelines:
  p:
    input: { http_server: { path: /in } }
    outputs: { o: { drop: {} } }
"""


class Notifications:
    def __init__(self):
        self.path = os.path.join(tmpdir("notify"), "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.got = []  # (monotonic time, text)

    def poll(self):
        try:
            while True:
                data = self.sock.recv(4096)
                self.got.append((time.monotonic(), data.decode()))
        except (socket.timeout, BlockingIOError):
            pass
        return self.got

    def wait(self, pred, timeout, what):
        return wait_until(lambda: pred(self.poll()), timeout, what, interval=0.0)

    def texts(self):
        return [t for _, t in self.poll()]


@test
def sd_notify_ready_watchdog_reload_stopping():
    n = Notifications()
    pb = Patchbay(NOTIFY_CONFIG, start=False,
                  env={"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "600000"})
    pb.start(wait_ready=False)
    # READY=1 comes once the listener takes requests: /ready answers at once.
    n.wait(lambda g: any("READY=1" in t for _, t in g), 30, "READY=1")
    st, _, _ = pb.get("/ready")
    check_eq(st, 200, "/ready when READY=1 arrived")
    ready = [t for t in n.texts() if "READY=1" in t][0]
    check("STATUS=running: 1 pipeline, 1 output" in ready, ready)
    check(not any("WATCHDOG=1" in t for t in n.texts()[: n.texts().index(ready)]),
          "no ping before READY")
    # WATCHDOG=1 every WATCHDOG_USEC/2 = 300 ms.
    t0 = time.monotonic()
    n.wait(lambda g: sum(1 for t, x in g if x == "WATCHDOG=1" and t > t0) >= 8, 15, "8 pings")
    pings = [t for t, x in n.poll() if x == "WATCHDOG=1" and t > t0]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    mean = sum(gaps) / len(gaps)
    log(f"watchdog gaps: {[round(g, 3) for g in gaps]} mean {mean:.3f}s")
    check(0.2 <= mean <= 0.45, f"mean gap {mean:.3f}s, want about 0.3s")
    check(max(gaps) < 0.6, f"a gap of {max(gaps):.3f}s reaches WATCHDOG_USEC")
    # SIGHUP: RELOADING=1, then READY=1 from the same process after the re-exec.
    before = len(n.texts())
    pb.proc.send_signal(signal.SIGHUP)
    n.wait(lambda g: any("RELOADING=1" in t for _, t in g[before:]), 30, "RELOADING=1")
    rl = [t for t in n.texts()[before:] if "RELOADING=1" in t][0]
    check("MONOTONIC_USEC=" in rl, rl)
    n.wait(lambda g: any("READY=1" in t for _, t in g[before:]), 60, "READY=1 after the reload")
    check(pb.running(), "the same process goes on")
    st, _, _ = pb.get("/ready")
    check_eq(st, 200, "/ready after the reload")
    # SIGTERM: STOPPING=1, then a clean exit.
    before = len(n.texts())
    pb.proc.send_signal(signal.SIGTERM)
    n.wait(lambda g: any("STOPPING=1" in t for _, t in g[before:]), 30, "STOPPING=1")
    check_eq(pb.proc.wait(timeout=scaled(30)), 0, "exit status")


@test
def the_watchdog_is_not_fed_while_the_dispatcher_hangs():
    # A stdout output writes on the dispatcher's thread: with a pipe nobody
    # reads, the dispatcher blocks once the pipe is full.
    import pbtest
    n = Notifications()
    d = tmpdir("hang")
    port = pbtest.free_port()
    cfg = os.path.join(d, "patchbay.yaml")
    with open(cfg, "w") as f:
        f.write(f"""
server: {{ listen: "127.0.0.1:{port}" }}
state: "sqlite:{d}/state.db"
pipelines:
  p:
    input: {{ http_server: {{ path: /in }} }}
    outputs: {{ out: {{ stdout: {{}} }} }}
""")
    env = dict(os.environ, NOTIFY_SOCKET=n.path, WATCHDOG_USEC="400000")
    proc = pbtest._spawn([PB_BIN, "run", cfg], subprocess.PIPE, open(os.path.join(d, "pb.log"), "ab"),
                         env=env)
    n.wait(lambda g: any("READY=1" in t for _, t in g), 30, "READY=1")
    n.wait(lambda g: sum(1 for _, t in g if t == "WATCHDOG=1") >= 3, 10, "pings while healthy")
    body = {"pad": "x" * 1024}
    acked = post_many(f"http://127.0.0.1:{port}/in", [body] * 150, concurrency=4)
    check(all(st == 202 for st, _ in acked), "accepted")
    # The pipe fills, the dispatcher blocks in write(): the pings stop.
    def stalled():
        g = n.poll()
        pings = [t for t, x in g if x == "WATCHDOG=1"]
        return pings and time.monotonic() - pings[-1] > 1.5
    n.wait(lambda g: stalled(), 30, "the pings to stop")
    with open(os.path.join(d, "pb.log")) as f:
        check("the dispatcher has not answered" in f.read(), "the log says why")
    # Unblocked, it is fed again.
    import threading
    threading.Thread(target=lambda: proc.stdout.read(), daemon=True).start()
    t0 = time.monotonic()
    n.wait(lambda g: any(x == "WATCHDOG=1" and t > t0 for t, x in g), 30, "pings again")
    proc.terminate()
    check_eq(proc.wait(timeout=scaled(30)), 0, "exit status")


@test
def no_notifications_without_a_socket_and_none_for_another_pid():
    n = Notifications()
    # WATCHDOG_PID names another process: no pings, READY still.
    pb = Patchbay(NOTIFY_CONFIG, env={"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "200000",
                                      "WATCHDOG_PID": "1"})
    n.wait(lambda g: any("READY=1" in t for _, t in g), 30, "READY=1")
    deadline = time.monotonic() + scaled(1.0)
    while time.monotonic() < deadline:
        n.poll()
    check(not any("WATCHDOG" in t for t in n.texts()), f"pings for another pid: {n.texts()}")
    pb.term()
    # Without NOTIFY_SOCKET nothing is sent and nothing fails.
    pb2 = Patchbay(NOTIFY_CONFIG)
    check(pb2.running(), "runs without systemd")
    pb2.term()


if __name__ == "__main__":
    run()
