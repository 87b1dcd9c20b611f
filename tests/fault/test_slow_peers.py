"""Fault 4 - slow partner and slow clients.

slow_partner_and_slow_clients: one pipeline, two outputs. `fast` answers at
once; `slow` answers after 3 s, past its 1 s timeout, so every attempt to
it times out and is retried. Meanwhile raw-socket clients misbehave
against the listener (server.connection_timeout 2s):

  idle               connect and send nothing;
  stalled-header     send half a request head, then nothing;
  stalled-body       send the head and 10 of 1000 announced body bytes;
  trickle-header     send the head one byte every 0.5 s, without end;
  trickle-body       send the head, then the body one byte every 0.5 s;
  keepalive-trickle  post one message, keep the connection idle for 1 s,
                     then send the next head one byte every 0.5 s.

Limits that must hold: idle and stalled connections are closed within the
connection timeout (plus the listener's 1 s timer granularity); a client
trickling its request is closed once the request is connection_timeout old
(plus the request-deadline sweep's granularity), and not before: counted
from connect, or for keepalive-trickle from the second request's first byte
(the idle time between requests is the inactivity timeout's business);
attempts to the slow partner end at the output timeout. Other traffic keeps
flowing meanwhile: a normal client's posts all succeed with bounded latency,
and the fast output delivers each message within a bounded delay of its
acknowledgement, while the slow output keeps timing out. When the slow
partner recovers, everything reaches it too.

connection_limit_holds: with server.max_connections 16, 40 idle
connections: at most 16 stay open, the rest are closed at once; the server
stays healthy and, once the idle ones time out, normal posts succeed again.

slow_clients_do_not_shut_out_ingest: with server.max_connections 8, 8
clients trickle requests (half of them the head, half the body) and open a
new connection as soon as one is closed, so every slot stays taken. A
normal client's posts still succeed, each within about one
connection_timeout: its connection waits in the listen queue until the
request deadline frees a slot."""

import http.client
import json
import os
import select
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib  # noqa: E402
from faultlib import Deliveries, log, percentile  # noqa: E402
from pbtest import (  # noqa: E402
    Patchbay,
    check,
    check_eq,
    scaled,
    start_sink,
    test,
    wait_until,
)

CONN_TIMEOUT = 2.0
ATTACK_S = 60.0 if faultlib.LONG else 8.0
PER_KIND = 12 if faultlib.LONG else 5
TRICKLE_GAP = 0.5
KEEPALIVE_IDLE = 1.0  # below the 2 s inactivity timeout
# A request trickled in is closed once it is connection_timeout old, not
# before (less 0.5 s: the server may start counting a little before the
# client's clock starts), and not much later: the deadline sweep's
# granularity (connection_timeout / 8) and scheduling slack. The lower bound
# also tells whether idle time between kept-alive requests was counted
# (keepalive-trickle would be closed about KEEPALIVE_IDLE early).
CUT_MIN = CONN_TIMEOUT - 0.5
CUT_MAX = CONN_TIMEOUT + scaled(1.5)

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@", connection_timeout: 2s,
          max_connections: MAXCONN }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop, max_body: 256KiB }
    outputs:
      fast:
        http: { url: "FAST/fast", timeout: 5s, retry: { max_attempts: 1000, initial: 100ms, max: 1s } }
      slow:
        http:
          url: "SLOW/slow"
          timeout: 1s
          retry: { max_attempts: 1000, initial: 200ms, max: 1s, max_age: 1h }
          concurrency: 16
"""

HEAD = b"POST /hooks/shop HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
TRICKLE_HEAD = HEAD + b"X-Pad: " + b"a" * 100000
TRICKLE_BODY = b'{"pad": "' + b"b" * 990


def read_answer(sock, timeout):
    """Read one HTTP answer with a Content-Length from a raw socket; its
    status (OSError when none arrives)."""
    data, end = b"", time.monotonic() + timeout
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            n = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    n = int(v)
            if len(rest) >= n:
                return int(head.split(b" ")[1])
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer within {timeout}s: got {data[:200]!r}")
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before answering: got {data[:200]!r}")
        data += chunk


class SlowClient(threading.Thread):
    """One misbehaving client: for run_for seconds it opens a connection,
    misbehaves until the server closes it (giving up CUT_MAX + 2 s after),
    and starts again. closed: for
    each connection, seconds from connect (for keepalive-trickle: from the
    second request's first byte) to the server closing it (None: still open
    when the run ended)."""

    def __init__(self, port, kind, run_for):
        super().__init__(daemon=True)
        self.port, self.kind, self.run_for = port, kind, run_for
        self.closed = []
        self.sent = 0
        self.answer = b""
        self.error = None

    def run(self):
        end = time.monotonic() + self.run_for
        while time.monotonic() < end:
            self.closed_after = None
            # Long enough for the server to close it, not for ever.
            self._one(CUT_MAX + 2.0)
            if self.error:
                return
            self.closed.append(self.closed_after)
            if self.closed_after is None:
                return

    def _wait_closed(self, sock, timeout):
        """Read until EOF or timeout; True when the server closed."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select([sock], [], [], left)
            if not r:
                return False
            try:
                data = sock.recv(4096)
            except OSError:
                return True
            if not data:
                return True
            self.answer += data

    def _one(self, run_for):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        except OSError as e:
            self.error = repr(e)
            return
        t0 = time.monotonic()
        try:
            if self.kind in ("stalled-header", "stalled-body", "trickle-body"):
                head = HEAD[:40] if self.kind == "stalled-header" else HEAD + b"Content-Length: 1000\r\n\r\n"
                if self.kind == "stalled-body":
                    head += b'{"id": "x'
                s.sendall(head)
                self.sent = len(head)
            if self.kind in ("idle", "stalled-header", "stalled-body"):
                if self._wait_closed(s, run_for):
                    self.closed_after = time.monotonic() - t0
                return
            if self.kind == "keepalive-trickle":
                body = b'{"id": "keepalive-then-trickle"}'
                s.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                try:
                    st = read_answer(s, scaled(10))
                except OSError as e:
                    st = repr(e)
                if st != 202:
                    self.error = f"first request answered {st}"
                    return
                if self._wait_closed(s, KEEPALIVE_IDLE):
                    self.error = f"closed while idle for {KEEPALIVE_IDLE}s between requests"
                    return
                t0 = time.monotonic()
            src = TRICKLE_BODY if self.kind == "trickle-body" else TRICKLE_HEAD
            i = 0
            while time.monotonic() - t0 < run_for:
                try:
                    s.send(src[i:i + 1])
                except OSError:
                    self.closed_after = time.monotonic() - t0
                    return
                i += 1
                self.sent += 1
                if self._wait_closed(s, TRICKLE_GAP):
                    self.closed_after = time.monotonic() - t0
                    return
        finally:
            s.close()


class NormalClient(threading.Thread):
    """Posts one message after another on a keep-alive connection and keeps
    (id, ack wall time, latency, status) of each."""

    def __init__(self, port, start_i):
        super().__init__(daemon=True)
        self.port, self.i = port, start_i
        self.results = []
        self._halt = threading.Event()

    def run(self):
        conn = None
        while not self._halt.is_set():
            body = ('{"id": "n-%d", "total_cents": %d}' % (self.i, self.i)).encode()
            self.i += 1
            t = time.monotonic()
            st, mid = None, None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=scaled(10))
                conn.request("POST", "/hooks/shop", body, {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                st = r.status
                if st == 202:
                    mid = json.loads(data)["id"]
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            self.results.append((mid, time.time(), time.monotonic() - t, st))
            self._halt.wait(0.02)
        if conn is not None:
            conn.close()

    def stop(self):
        self._halt.set()
        self.join(scaled(20))


@test
def slow_partner_and_slow_clients():
    fast = start_sink()
    slow = start_sink(delay_ms=3000, threads=2)
    pb = Patchbay(CONFIG.replace("FAST", fast.url).replace("SLOW", slow.url).replace("MAXCONN", "256"))
    dfast, dslow = Deliveries(fast), Deliveries(slow)
    normals = [NormalClient(pb.port, k * 1_000_000) for k in range(4)]
    for n in normals:
        n.start()
    time.sleep(0.3)
    kinds = ("idle", "stalled-header", "stalled-body", "trickle-header", "trickle-body",
             "keepalive-trickle")
    attackers = [SlowClient(pb.port, k, ATTACK_S) for k in kinds for _ in range(PER_KIND)]
    t0 = time.monotonic()
    for a in attackers:
        a.start()
    conns_seen = 0
    while any(a.is_alive() for a in attackers):
        conns_seen = max(conns_seen, faultlib.established(pb.port))
        time.sleep(0.2)
    attack_s = time.monotonic() - t0
    for n in normals:
        n.stop()

    # The normal client was served all along, with bounded latency.
    res = [r for n in normals for r in n.results]
    lat = [r[2] for r in res]
    bad = [r for r in res if r[3] != 202]
    p50, p99, worst = percentile(lat, 50), percentile(lat, 99), max(lat)
    log(f"normal client: {len(res)} posts during {attack_s:.1f}s of attack, {len(bad)} not 202, "
        f"latency p50 {p50 * 1000:.1f} ms p99 {p99 * 1000:.1f} ms max {worst * 1000:.1f} ms; "
        f"up to {conns_seen} server-side connections")
    check(not bad, f"normal posts failed during the attack: {bad[:5]}")
    check(len(res) >= 20, f"the normal client made progress: {len(res)} posts")
    check(p99 <= scaled(0.5) and worst <= scaled(2.0),
          f"normal latency bounded: p99 {p99:.3f}s max {worst:.3f}s")

    # Idle and stalled connections are closed by the connection timeout.
    by_kind = {}
    for a in attackers:
        check(a.error is None, f"{a.kind}: {a.error}")
        by_kind.setdefault(a.kind, []).extend(a.closed)
    summary = {k: {"connections": len(vs), "still_open": sum(v is None for v in vs),
                   "min_s": round(min((v for v in vs if v is not None), default=0), 1),
                   "max_s": round(max((v for v in vs if v is not None), default=0), 1)}
               for k, vs in by_kind.items()}
    log(f"seconds until the server closed each slow connection: {summary}")
    for k in ("idle", "stalled-header", "stalled-body"):
        for v in by_kind[k]:
            check(v is not None and v <= CONN_TIMEOUT + scaled(1.5),
                  f"{k} connection closed within connection_timeout: {v}")
    # slow-client-not-disconnected: clients trickling their request are
    # closed by the request deadline, neither before nor much after it.
    for k in ("trickle-header", "trickle-body", "keepalive-trickle"):
        for v in by_kind[k]:
            check(v is not None and CUT_MIN <= v <= CUT_MAX,
                  f"{k} connection (one byte every {TRICKLE_GAP}s) closed by the request deadline "
                  f"{CONN_TIMEOUT}s: after {v} s, want {CUT_MIN:.1f}..{CUT_MAX:.1f}s")
    m = pb.metrics()
    cut_head = m.value("patchbay_http_request_timeouts_total", part="head")
    cut_body = m.value("patchbay_http_request_timeouts_total", part="body")
    log(f"connections closed by the request deadline: head {cut_head:.0f}, body {cut_body:.0f}")
    check(cut_head >= 2 * PER_KIND, f"trickled heads counted: {cut_head}")
    check(cut_body >= PER_KIND, f"trickled bodies counted: {cut_body}")
    check("request did not arrive within server.connection_timeout" in pb.log(),
          "the cuts are logged")
    # libmicrohttpd's own line per misbehaving client is rate-limited (20 per
    # 10 s, then a count of what was left out): an attack does not flood the log.
    mhd_lines = [ln for ln in pb.log().splitlines() if "http server:" in ln
                 and "request did not arrive" not in ln]
    windows = int(time.monotonic() - t0) // 10 + 2
    log(f"libmicrohttpd lines logged during the attack: {len(mhd_lines)}")
    check(len(mhd_lines) <= 21 * windows,
          f"{len(mhd_lines)} lines from the HTTP library in {windows} windows of 10 s")

    # Fast deliveries flowed while the slow partner timed out.
    acked = {mid: t for n in normals for (mid, t, _, st) in n.results if st == 202}
    faultlib.check_ledger(acked, dfast, ("fast",), 30, "every message delivered to the fast output")
    lags = [dfast.first_ok_ts[("fast", m)] / 1000.0 - t for m, t in acked.items()]
    lag99 = percentile(lags, 99)
    log(f"fast output: acknowledgement to delivery p50 {percentile(lags, 50) * 1000:.0f} ms, "
        f"p99 {lag99 * 1000:.0f} ms")
    check(lag99 <= scaled(1.0), f"fast deliveries not held back by the slow output: p99 lag {lag99:.2f}s")
    # (The slow partner itself records its late answers: patchbay had given up on them.)
    check_eq(pb.metrics().value("patchbay_deliveries_delivered_total", output="slow"), 0,
             "nothing counted delivered to the slow output while it times out")
    sample = sorted(acked, key=acked.get)[:20]  # the oldest: they had time for attempts
    timed_out, odd = 0, []
    for mid in sample:
        (d,) = [d for d in pb.message(mid)["deliveries"] if d["output"] == "slow"]
        for a in d["attempt_log"]:
            check(a["status"] in (0, None), f"slow attempt answered: {a}")
            if 900 <= a["latency_ms"] <= 1000 + scaled(500) and "timed out" in (a["error"] or ""):
                timed_out += 1
            else:
                odd.append(a)
    check(timed_out + len(odd) > 0, "attempts to the slow partner were made")
    made = pb.metrics().value("patchbay_delivery_attempts_total", output="slow")
    reached = slow.requests()
    log(f"slow output: {made:.0f} attempts made, {reached} reached the partner; of the oldest "
        f"messages' attempts {timed_out} ended at the 1 s timeout, {len(odd)} otherwise")
    # Every attempt reaches the partner and ends at the output timeout (until
    # cc20a09, CURLOPT_PIPEWAIT held new transfers back past their own timeout).
    check(not odd, f"{len(odd)} of {timed_out + len(odd)} attempts to a partner slower than the "
                   f"output timeout did not end at the timeout, e.g. {odd[:1]}")

    # The slow partner recovers: it gets everything.
    slow.set_mode(delay_ms=0)
    figures = faultlib.check_ledger(acked, dslow, ("slow",), 60,
                                    "every message delivered to the slow output after it recovered")
    check(pb.running(), "patchbay running")
    check_eq(pb.term(), 0, "exit code on SIGTERM")
    faultlib.result("slow_peers", acknowledged=len(acked), normal_posts=len(res),
                    normal_p50_ms=round(p50 * 1000, 1), normal_p99_ms=round(p99 * 1000, 1),
                    normal_max_ms=round(worst * 1000, 1), attack_seconds=round(attack_s, 1),
                    slow_clients=len(attackers), closed_after_s=summary,
                    fast_lag_p99_ms=round(lag99 * 1000), slow_attempts_made=int(made),
                    slow_attempts_reached_partner=reached, slow_attempts_stalled=len(odd),
                    **figures)


@test
def connection_limit_holds():
    sink = start_sink()
    pb = Patchbay(CONFIG.replace("FAST", sink.url).replace("SLOW", sink.url).replace("MAXCONN", "16"))
    base = faultlib.socket_fds(pb.proc.pid)
    socks, t0 = [], time.monotonic()
    for _ in range(40):
        socks.append(socket.create_connection(("127.0.0.1", pb.port), timeout=5))
    time.sleep(0.5)
    accepted = faultlib.socket_fds(pb.proc.pid) - base
    closed = 0
    for s in socks:
        r, _, _ = select.select([s], [], [], 0)
        if r:
            try:
                closed += s.recv(100) == b""
            except OSError:
                closed += 1
    log(f"40 idle connections: {accepted} accepted by the server, {closed} closed at once, "
        f"the rest wait in the kernel's listen queue")
    check(accepted <= 16, f"at most max_connections (16) accepted: {accepted}")
    check(accepted >= 8, f"the server accepts idle connections up to its limit: {accepted}")

    def post_ok():
        st, _, _ = pb.post("/hooks/shop", {"id": "after-limit"}, timeout=2)
        return st == 202

    wait_until(post_ok, CONN_TIMEOUT + 5, "a normal post once the idle connections timed out")
    recovered = time.monotonic() - t0
    log(f"normal posts succeed again {recovered:.1f}s after the flood (connection_timeout {CONN_TIMEOUT}s)")
    for s in socks:
        s.close()
    st, _, _ = pb.get("/health")
    check_eq(st, 200, "/health")
    check_eq(pb.term(), 0, "exit code on SIGTERM")
    faultlib.result("connection_limit", flood=40, max_connections=16, accepted=accepted,
                    recovered_after_s=round(recovered, 1))


def accepted_connections(pid, port):
    """Connections to the listener on port that process pid has accepted:
    its sockets among the established ones (those still waiting in the listen
    queue belong to no process yet)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            next(f)
            for line in f:
                parts = line.split()
                if (parts[1].rsplit(":", 1)[1] == f"{port:04X}" and parts[3] == "01"
                        and parts[9] in inodes):
                    n += 1
    return n


class Slowloris(threading.Thread):
    """Trickles a request (kind trickle-header or trickle-body) one byte
    every TRICKLE_GAP and connects again as soon as the server closes the
    connection, until stopped. held: seconds each connection lasted."""

    def __init__(self, port, kind):
        super().__init__(daemon=True)
        self.port, self.kind = port, kind
        self.held = []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            except OSError:
                self._halt.wait(0.05)
                continue
            t0 = time.monotonic()
            try:
                if self.kind == "trickle-body":
                    s.sendall(HEAD + b"Content-Length: 1000\r\n\r\n")
                src = TRICKLE_BODY if self.kind == "trickle-body" else TRICKLE_HEAD
                for i in range(len(src)):
                    s.send(src[i:i + 1])
                    r, _, _ = select.select([s], [], [], TRICKLE_GAP)
                    if (r and not s.recv(4096)) or self._halt.is_set():
                        break
            except OSError:
                pass
            finally:
                s.close()
            self.held.append(time.monotonic() - t0)

    def stop(self):
        self._halt.set()
        self.join(scaled(10))


@test
def slow_clients_do_not_shut_out_ingest():
    maxconn = 8
    sink = start_sink()
    pb = Patchbay(CONFIG.replace("FAST", sink.url).replace("SLOW", sink.url)
                  .replace("MAXCONN", str(maxconn)))
    attackers = [Slowloris(pb.port, k) for k in ("trickle-header", "trickle-body")
                 for _ in range(maxconn // 2)]
    for a in attackers:
        a.start()
    wait_until(lambda: accepted_connections(pb.proc.pid, pb.port) == maxconn, scaled(10),
               f"the {maxconn} trickling clients hold every connection slot")
    waits = []
    try:
        for i in range(3):
            t = time.monotonic()
            try:
                st, _, _ = pb.post("/hooks/shop", {"id": f"past-slowloris-{i}"},
                                   timeout=CONN_TIMEOUT + scaled(10))
            except (OSError, http.client.HTTPException) as e:
                st = repr(e)
            waits.append(time.monotonic() - t)
            check_eq(st, 202, f"post {i} while {maxconn} clients trickle requests, after "
                              f"{waits[-1]:.1f}s")
    finally:
        for a in attackers:
            a.stop()
    held = sorted(v for a in attackers for v in a.held) or [0]
    log(f"normal posts through {maxconn} trickling clients answered after "
        f"{[round(w, 1) for w in waits]} s; trickling connections lasted {held[0]:.1f}.."
        f"{held[-1]:.1f} s ({len(held)} connections)")
    for i, w in enumerate(waits):
        check(w <= CUT_MAX, f"post {i} waited at most about one connection_timeout for a slot: "
                            f"{w:.1f}s, limit {CUT_MAX:.1f}s")
    cut = [v for a in attackers for v in a.held[:-1]]  # the last one ended by stop()
    check(cut and max(cut) <= CUT_MAX, f"trickling connections closed by the request deadline: "
                                       f"longest {max(cut, default=0):.1f}s")
    check_eq(pb.term(), 0, "exit code on SIGTERM")
    faultlib.result("slowloris", max_connections=maxconn, slow_clients=len(attackers),
                    normal_waits_s=[round(w, 1) for w in waits],
                    slow_connection_max_s=round(max(cut), 1))


if __name__ == "__main__":
    faultlib.main()
