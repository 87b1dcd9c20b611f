"""Three patchbay nodes on one PostgreSQL store under faults: a round-robin
client posts PB_CHAOS_MESSAGES (30,000) messages, half to an unordered
pipeline and half to one ordered by a key, while one node is killed with
kill -9 (and restarted), one is frozen with SIGSTOP for longer than the lease
(and resumed), and the database connections of one are cut through a TCP
proxy this test controls. A singleton http_poll input polls a partner that
records its callers. Then:

- Nothing acknowledged is lost: every message the client got a 202 for is
  delivered (a 200 from its partner) at its output, or is a dead letter in
  the admin API.
- Duplicates (a message answered 200 more than once at its output) are
  counted and bounded by what the failed nodes held: at each failure the
  test reads, from the store, the pending deliveries leased to the victim's
  epoch (the victim is stopped, or its database traffic held, while it
  reads, so that set cannot change); a delivery is sent twice only when the
  node that sent it lost it before its result was committed, so every
  duplicated message must be in one of those sets, with at most one extra
  copy per set it is in. The in-flight part of those sets is at most the
  output's `concurrency` per node; the rest (answered, result not yet
  committed, or held in memory waiting) at most `limits.in_memory`; the
  sets are printed with the counts.
- Per-key order of the ordered pipeline: for every key, in the order the
  partner received them (pb_sink's arrival number), each sequence number is
  either larger than every one received before for that key (new), or
  equal to the largest (a redelivery of the last one: a duplicate); one
  smaller than the largest already received is a reorder, and fails.
- The frozen node does not overwrite what it no longer owns: its partner
  answers the requests it had in flight when it froze with 500 (after a
  delay, so the answers arrive while it is stopped); after it is resumed
  the admin API still shows those deliveries `delivered` by the newer
  attempt (last status 200, no 500 in the attempt log).
- The singleton poller: no two calls to the poll partner overlap in time
  (whichever nodes made them), the cursor it sends never goes back, and
  after its holder is killed another node polls within a bound.

The whole run takes about two minutes with the release build on a loaded
two-core machine; ctest runs it in the release build only (label
"postgres", see CMakeLists.txt). Set PB_CHAOS_MESSAGES lower for a quick
run (a few thousand still sees every fault while the load runs).
"""

import http.client
import http.server
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (Patchbay, check, check_eq, log, run, scaled, start_sink,  # noqa: E402
                    test, wait_until)
from srv_postgres import Postgres, quote  # noqa: E402

MESSAGES = int(os.environ.get("PB_CHAOS_MESSAGES", "30000"))
# The client's pace (messages a second): the faults (about 25 s together)
# must fall inside the load however fast the nodes take it in.
RATE = float(os.environ.get("PB_CHAOS_RATE", "300"))
LEASE_S, HEARTBEAT_S = 3.0, 1.0
PLAIN_CONCURRENCY, ORDERED_CONCURRENCY, IN_MEMORY = 16, 16, 500
KEYS = 24                  # client threads (one key each) per pipeline
POLL_INTERVAL_S = 1.0
POLL_DELAY_S = 0.15        # how long the poll partner takes to answer
STALE_DELAY_MS = 2000      # the frozen node's partner answers this late
PLAIN_DELAY_MS, ORDERED_DELAY_MS = 100, 10   # the partners' answers otherwise
SCHEMA = "chaos"
NAMES = ("n1", "n2", "n3")

CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "${PB_STATE_URL}"
cluster: { node: "${NODE}", lease: %(lease)dms, heartbeat: %(heartbeat)dms }
outbound: { allow: [127.0.0.0/8] }
limits: { in_memory: %(in_memory)d }
pipelines:
  plain:
    input:
      http_server: { path: /plain }
    outputs:
      plain:
        http:
          url: "${PLAIN_SINK}/${NODE}"
          concurrency: %(plain_c)d
          retry: { max_attempts: 1000, initial: 50ms, max: 500ms }
  ordered:
    input:
      http_server: { path: /ordered }
    ordering: { key: .k }
    outputs:
      ordered:
        http:
          url: "${ORDERED_SINK}/${NODE}"
          concurrency: %(ordered_c)d
          retry: { max_attempts: 1000, initial: 50ms, max: 500ms }
  poll:
    input:
      http_poll:
        url: "${POLL_URL}/items"
        interval: %(interval)dms
        timeout: 5s
        headers: { X-Node: "${NODE}" }
        items: .items[]
        cursor: { value: .seq, param: since, initial: "0" }
        dedupe_key: .id
    outputs:
      drop: { drop: {} }
""" % {"lease": LEASE_S * 1000, "heartbeat": HEARTBEAT_S * 1000, "in_memory": IN_MEMORY,
       "plain_c": PLAIN_CONCURRENCY, "ordered_c": ORDERED_CONCURRENCY,
       "interval": POLL_INTERVAL_S * 1000}


# ---- the database proxy -----------------------------------------------------------------


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of PostgreSQL, on threads. hold()
    stops forwarding (both ways; the sessions stay open), cut() closes
    every connection and the listener (connects are refused), restore()
    listens again on the same port."""

    def __init__(self, target_port):
        self.target = target_port
        self.lock = threading.Lock()
        self.pairs = set()
        self.flowing = threading.Event()
        self.flowing.set()
        self.cut_now = False
        self.accepted = 0
        self.listener = self._listen(0)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _listen(self, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        return s

    def _accept_loop(self):
        lsock = self.listener
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return  # cut: restore() listens again on a thread of its own
            try:
                u = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            with self.lock:
                if self.cut_now:
                    c.close()
                    u.close()
                    continue
                pair = (c, u)
                self.pairs.add(pair)
                self.accepted += 1
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b, pair), daemon=True).start()

    def _pump(self, src, dst, pair):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self.flowing.wait()
                if self.cut_now:
                    break
                dst.sendall(data)
        except OSError:
            pass
        self._close_pair(pair)

    def _close_pair(self, pair):
        with self.lock:
            self.pairs.discard(pair)
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def hold(self):
        self.flowing.clear()

    def cut(self):
        with self.lock:
            self.cut_now = True
            pairs = list(self.pairs)
            old, self.listener = self.listener, None
        old.close()
        self.flowing.set()
        for p in pairs:
            self._close_pair(p)

    def restore(self):
        deadline = time.monotonic() + 10
        while True:
            try:
                s = self._listen(self.port)
                break
            except OSError:
                check(time.monotonic() < deadline, f"proxy: port {self.port} taken")
                time.sleep(0.1)
        with self.lock:
            self.listener = s
            self.cut_now = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def close(self):
        self.cut()


# ---- the poll partner ---------------------------------------------------------------------


class PollPartner:
    """An HTTP API for the singleton http_poll input: GET /items?since=S
    answers three new records after S, POLL_DELAY_S later, and records each
    call: the caller's X-Node header, since, and when it started and ended
    (time.time(), this process's clock)."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()
        partner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                start = time.time()
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                since = int(q.get("since", ["0"])[0])
                time.sleep(POLL_DELAY_S)
                items = [{"id": f"r{s}", "seq": s} for s in range(since + 1, since + 4)]
                body = json.dumps({"items": items}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                except OSError:
                    pass
                with partner.lock:
                    partner.calls.append({"node": self.headers.get("X-Node", "?"),
                                          "since": since, "start": start, "end": time.time()})

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def snapshot(self):
        with self.lock:
            return list(self.calls)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---- the client ------------------------------------------------------------------------


class RoundRobin:
    """The load: KEYS threads per pipeline, each posting its key's messages
    in sequence ({"p", "k", "s"}), the next only once the last is
    acknowledged. Posts go to the nodes in turn (a shared counter); a post
    with no 202 (no answer within the timeout, a refused connection, 503)
    goes again to the next node with the same Idempotency-Key, so every
    message ends acknowledged once, by whichever node."""

    def __init__(self, nodes, per_pipeline):
        self.nodes = nodes
        self.per_key = max(1, per_pipeline // KEYS)
        self.total = 2 * KEYS * self.per_key
        self.lock = threading.Lock()
        self.turn = 0
        self.acked = {}       # (p, k, s) -> message id
        self.by_id = {}       # message id -> (p, k, s)
        self.failed_posts = 0
        self.replayed = 0
        self.gave_up = []
        self.stop = threading.Event()
        self.threads = []
        self.next_slot = None

    def _pace(self):
        """Wait for this message's slot: RATE a second over all threads."""
        with self.lock:
            now = time.monotonic()
            if self.next_slot is None or self.next_slot < now - 1:
                self.next_slot = now
            slot = self.next_slot
            self.next_slot += 1 / RATE
        if slot > now:
            time.sleep(slot - now)

    def _next_node(self):
        with self.lock:
            i = self.turn
            self.turn += 1
        return self.nodes[i % len(self.nodes)]

    def _post(self, conns, node, path, body, key):
        conn = conns.get(node.port)
        for attempt in range(2):
            fresh = conn is None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=scaled(3))
                    conns[node.port] = conn
                conn.request("POST", path, body=body,
                             headers={"Content-Type": "application/json", "Idempotency-Key": key})
                r = conn.getresponse()
                data = r.read()
                if (r.getheader("Connection") or "").lower() == "close":
                    conn.close()
                    conns.pop(node.port, None)
                return r.status, data, r.getheader("Idempotent-Replayed")
            except (OSError, http.client.HTTPException):
                conn.close()
                conns.pop(node.port, None)
                conn = None
                if fresh:
                    return None, b"", None
        return None, b"", None

    def _worker(self, p, k):
        conns = {}
        path = "/" + p
        for s in range(self.per_key):
            body = json.dumps({"p": p, "k": f"key{k}", "s": s, "pad": "x" * 200})
            key = f"{p}-{k}-{s}"
            self._pace()
            deadline = time.monotonic() + scaled(90)
            while True:
                if self.stop.is_set():
                    return
                node = self._next_node()
                st, data, replayed = self._post(conns, node, path, body, key)
                if st == 202:
                    mid = json.loads(data)["id"]
                    with self.lock:
                        self.acked[(p, f"key{k}", s)] = mid
                        self.by_id[mid] = (p, f"key{k}", s)
                        if replayed:
                            self.replayed += 1
                    break
                with self.lock:
                    self.failed_posts += 1
                if time.monotonic() > deadline:
                    with self.lock:
                        self.gave_up.append((p, k, s))
                    return  # this key stops: its order would have a hole
                time.sleep(0.02)
        for c in conns.values():
            c.close()

    def start(self):
        for p in ("plain", "ordered"):
            for k in range(KEYS):
                t = threading.Thread(target=self._worker, args=(p, k), daemon=True)
                t.start()
                self.threads.append(t)
        return self

    def count(self):
        with self.lock:
            return len(self.acked)

    def running(self):
        return any(t.is_alive() for t in self.threads)

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        check(not self.running(), "the client did not finish in time")


# ---- helpers -----------------------------------------------------------------------------


def stopped(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except OSError:
        return False


def sink_delivered(sink):
    """(p, k, s) -> [(arrival n, node path)] of the 200 answers."""
    out = {}
    for r in sink.records():
        if r["status"] != 200:
            continue
        b = json.loads(r["body"])
        out.setdefault((b["p"], b["k"], b["s"]), []).append((r["n"], r["path"]))
    return out


class Cluster:
    def __init__(self):
        self.pg = Postgres(settings={"max_connections": "120"})
        self.pg.create_db("pb")
        self.db = self.pg.connect("pb")
        self.proxy = Proxy(self.pg.port)
        self.poll = PollPartner()
        # Partners that take a moment to answer, so that every node has
        # attempts in flight when a fault hits it.
        self.plain_sinks = {n: start_sink(delay_ms=PLAIN_DELAY_MS) for n in NAMES}
        self.ordered_sink = start_sink(delay_ms=ORDERED_DELAY_MS)
        self.token = "adm-" + secrets.token_hex(8)
        direct = self.pg.dsn("pb") + "?schema=" + SCHEMA
        proxied = (f"postgres://postgres@127.0.0.1:{self.proxy.port}/pb?schema={SCHEMA}"
                   "&connect_timeout=3")
        self.nodes = {}
        for name in NAMES:
            env = {"NODE": name, "PB_STATE_URL": proxied if name == "n3" else direct,
                   "PLAIN_SINK": self.plain_sinks[name].url,
                   "ORDERED_SINK": self.ordered_sink.url, "POLL_URL": self.poll.url}
            self.nodes[name] = Patchbay(CONF, env=env, token=self.token)
        self.events = []  # {"kind", "node", "epoch", "t", "held": {(output, msg_id)}}
        self.missing_holds = []

    def q(self, sql):
        return self.db.query(sql)

    def epoch(self, name):
        v = self.db.value(f"SELECT max(epoch) FROM {SCHEMA}.nodes WHERE name = {quote(name)}"
                          " AND state = 0")
        return int(v) if v else None

    def live(self):
        return {r[0] for r in self.q(f"SELECT name FROM {SCHEMA}.nodes WHERE state = 0")}

    def holder_of(self, hold, fallback):
        """The node holding hold; when none does (within a few seconds) the
        fault goes to fallback and the run fails at the end."""
        try:
            return wait_until(lambda: self.holder(hold), 10, f"a node holding {hold}")
        except Exception:
            self.missing_holds.append(hold)
            log(f"  no node holds {hold}: {fallback} instead")
            return fallback

    def holder(self, hold):
        rows = self.q(f"SELECT n.name FROM {SCHEMA}.holds h JOIN {SCHEMA}.nodes n"
                      f" ON n.epoch = h.epoch AND n.state = 0 WHERE h.name = {quote(hold)}")
        return rows[0][0] if rows else None

    def held_by(self, epoch):
        rows = self.q(f"SELECT d.output, m.id FROM {SCHEMA}.deliveries d JOIN {SCHEMA}.messages m"
                      f" ON m.seq = d.msg_seq WHERE d.lease = {int(epoch)} AND d.state = 0")
        return {(r[0], r[1]) for r in rows}

    def dead(self, epoch):
        return self.db.value(f"SELECT state FROM {SCHEMA}.nodes WHERE epoch = {int(epoch)}") == "2"

    def record(self, kind, name, epoch, held):
        by_out = {}
        for o, _ in held:
            by_out[o] = by_out.get(o, 0) + 1
        log(f"  {kind} {name} (epoch {epoch}): held {by_out}")
        ev = {"kind": kind, "node": name, "epoch": epoch, "t": time.time(), "held": held}
        self.events.append(ev)
        return ev

    def stop_process(self, name):
        pb = self.nodes[name]
        pb.proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: stopped(pb.proc.pid), 5, f"{name} stopped")

    def wait_live(self, name, timeout=40):
        pb = self.nodes[name]

        def ok():
            st, _, _ = pb.request("GET", "/ready", timeout=2)
            return st == 200 and name in self.live()

        wait_until(ok, timeout, f"{name} ready and live again")


# ---- the faults ----------------------------------------------------------------------------


def kill_poll_holder(c):
    name = c.holder_of("input/poll", "n1")
    epoch = c.epoch(name)
    # Stopped first, so that what it holds can be read before the others
    # take it; then killed: for the cluster, a kill -9 at the stop.
    c.stop_process(name)
    ev = c.record("kill -9", name, epoch, c.held_by(epoch))
    c.nodes[name].proc.send_signal(signal.SIGKILL)
    c.nodes[name].proc.wait()
    t_kill = time.time()
    ev["t"] = t_kill
    bound = LEASE_S + HEARTBEAT_S + POLL_INTERVAL_S + 5

    def moved():
        return [x for x in c.poll.snapshot() if x["start"] > t_kill and x["node"] != name]

    wait_until(moved, bound, f"the poller moved off the killed {name}")
    first = moved()[0]
    ev["poll_moved_after"] = first["start"] - t_kill
    ev["poll_moved_to"] = first["node"]
    log(f"  poller moved to {first['node']} {first['start'] - t_kill:.1f}s after the kill")
    wait_until(lambda: c.dead(epoch), 15, f"{name} presumed dead")
    c.nodes[name].start(wait_ready=False)
    c.wait_live(name)
    return ev


def freeze_ordered_holder(c):
    name = c.holder_of("ordered/ordered", "n2")
    epoch = c.epoch(name)
    # Its partners answer 500 two seconds late: what it has in flight when it
    # freezes is answered while it is stopped, and read when it resumes. The
    # ordered partner hears only from the holder, so this node always has
    # some there; its own unordered partner, when it has deliveries of its own.
    sinks = (c.plain_sinks[name], c.ordered_sink)
    before = sum(k.requests() for k in sinks)
    for k in sinks:
        k.set_mode(status=500, delay_ms=STALE_DELAY_MS)
    deadline = time.monotonic() + STALE_DELAY_MS / 2000
    while sum(k.requests() for k in sinks) < before + 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    c.stop_process(name)
    t_freeze = time.time()
    c.plain_sinks[name].set_mode(status=200, delay_ms=PLAIN_DELAY_MS)
    c.ordered_sink.set_mode(status=200, delay_ms=ORDERED_DELAY_MS)
    ev = c.record("SIGSTOP", name, epoch, c.held_by(epoch))
    ev["t"] = t_freeze
    try:
        wait_until(lambda: c.dead(epoch), LEASE_S + HEARTBEAT_S + 10,
                   f"the frozen {name} presumed dead")
        frozen_for = time.time() - t_freeze
        # Its last heartbeat may have been up to one period before it froze.
        check(frozen_for >= LEASE_S - HEARTBEAT_S, f"{name} presumed dead {frozen_for:.1f}s "
              f"into a {LEASE_S}s lease")
        # The others deliver what it held meanwhile.
        wait_until(lambda: not any(d for d in c.held_by(epoch)), 15,
                   f"the frozen {name}'s leases set free")
    finally:
        c.nodes[name].proc.send_signal(signal.SIGCONT)
    ev["frozen_for"] = time.time() - t_freeze
    log(f"  {name} resumed after {ev['frozen_for']:.1f}s")
    wait_until(lambda: "restarting in place" in c.nodes[name].log(), 20,
               f"{name} restarts in place")
    c.wait_live(name)
    # Answered after it stopped: it read them only once resumed.
    stale = [r for k in sinks for r in k.records() if r["status"] == 500
             and r["path"] == "/" + name and r["ts"] + STALE_DELAY_MS > t_freeze * 1000 + 100]
    ev["stale"] = stale
    log(f"  {len(stale)} requests of {name} answered 500 while it was frozen")
    check(stale, f"{name} had nothing in flight when it froze: the check of its late results "
          "has nothing to look at")
    return ev


def cut_database_of(c, name):
    epoch = c.epoch(name)
    c.proxy.hold()
    time.sleep(0.05)  # what was on its way to the database got there
    ev = c.record("database cut", name, epoch, c.held_by(epoch))
    c.proxy.cut()
    t_cut = time.time()
    ev["t"] = t_cut
    pb = c.nodes[name]

    def not_ready():
        st, _, data = pb.request("GET", "/ready", timeout=2)
        return st == 503

    wait_until(not_ready, LEASE_S + HEARTBEAT_S + 10, f"{name} not ready without its database")
    wait_until(lambda: c.dead(epoch), LEASE_S + HEARTBEAT_S + 10,
               f"{name}, cut off, presumed dead")
    # Cut for twice the lease, then back.
    while time.time() < t_cut + 2 * LEASE_S:
        time.sleep(0.1)
    c.proxy.restore()
    ev["cut_for"] = time.time() - t_cut
    log(f"  {name}'s database back after {ev['cut_for']:.1f}s")
    c.wait_live(name, timeout=60)
    return ev


# ---- the checks --------------------------------------------------------------------------------


def check_poller(c, kill_ev):
    calls = sorted(c.poll.snapshot(), key=lambda x: x["start"])
    check(len(calls) >= 5, f"the poller ran {len(calls)} times")
    overlaps, regress = [], []
    last = None
    for x in calls:
        if last is not None:
            if x["start"] < last["end"]:
                overlaps.append((last, x))
            if x["since"] < last["since"]:
                regress.append((last, x))
        if last is None or x["end"] > last["end"]:
            last = x
    by_node = {}
    for x in calls:
        by_node[x["node"]] = by_node.get(x["node"], 0) + 1
    log(f"poller: {len(calls)} calls by node {by_node}, moved "
        f"{kill_ev['poll_moved_after']:.1f}s after the kill")
    check(not overlaps, f"{len(overlaps)} poll calls overlapped another: {overlaps[:3]}")
    check(not regress, f"the poll cursor went back {len(regress)} times: {regress[:3]}")
    check(len(by_node) >= 2, f"only {by_node} polled")


def check_delivery(c, client):
    """Every acknowledged message at its output; duplicates inside the
    victims' held sets; per-key order."""
    held_in = {}  # (output, msg_id) -> number of failure sets it is in
    for ev in c.events:
        for h in ev["held"]:
            held_in[h] = held_in.get(h, 0) + 1
    dead = {d["message_id"] for d in c.nodes["n1"].dead_letters()}
    plain = {}
    for name in NAMES:
        for m, arr in sink_delivered(c.plain_sinks[name]).items():
            plain.setdefault(m, []).extend(arr)
    ordered = sink_delivered(c.ordered_sink)
    report = {}
    for p, got in (("plain", plain), ("ordered", ordered)):
        acked = {m: mid for m, mid in client.acked.items() if m[0] == p}
        missing = [m for m in acked if m not in got]
        invisible = [m for m in missing if acked[m] not in dead]
        check(not invisible, f"{p}: {len(invisible)} acknowledged messages neither delivered nor "
              f"dead-lettered, e.g. {[(m, acked[m]) for m in invisible[:5]]}")
        dups = {m: len(a) - 1 for m, a in got.items() if len(a) > 1}
        unexplained = []
        for m, extra in dups.items():
            mid = acked.get(m)
            sets = held_in.get((p, mid), 0)
            if extra > sets:
                unexplained.append((m, mid, extra, sets))
        report[p] = {"acked": len(acked), "delivered": len(got), "dead": len(missing),
                     "duplicated": len(dups), "extra_copies": sum(dups.values()),
                     "held_at_failures": sum(1 for (o, _) in held_in if o == p)}
        check(not unexplained, f"{p}: {len(unexplained)} duplicates outside what the failed nodes "
              f"held (message, id, extra copies, failure sets holding it): {unexplained[:5]}")
    log(f"delivery: {report}")
    # Per-key order at the ordered partner, by arrival.
    arrivals = {}
    for r in c.ordered_sink.records():
        if r["status"] != 200:
            continue
        b = json.loads(r["body"])
        arrivals.setdefault(b["k"], []).append((r["n"], b["s"], r["path"], r["ts"]))
    reorders, redeliveries = [], 0
    for k, arr in arrivals.items():
        arr.sort()
        top = -1
        for n, s, path, ts in arr:
            if s > top:
                top = s
            elif s == top:
                redeliveries += 1
            else:
                reorders.append((k, s, "after", top, path, n, ts))
    log(f"order: {len(arrivals)} keys, {redeliveries} redeliveries of a key's last message, "
        f"{len(reorders)} reorders")
    check(not reorders, f"{len(reorders)} deliveries out of order (key, seq, 'after', largest "
          f"seq before, node, arrival, ts): {reorders[:5]}")
    return report


def check_frozen_results(c, client, ev):
    """What the frozen node finished after it was presumed dead is not
    recorded: the store keeps the newer attempt's outcome."""
    pb = c.nodes["n1"] if ev["node"] != "n1" else c.nodes["n2"]
    checked = 0
    for r in ev["stale"]:
        b = json.loads(r["body"])
        mid = client.acked.get((b["p"], b["k"], b["s"]))
        if mid is None:
            continue
        doc = pb.message(mid)
        for d in doc["deliveries"]:
            if d["output"] != b["p"]:
                continue
            statuses = [a.get("status") for a in d.get("attempt_log", [])]
            check(d["state"] == "delivered" and d["last_status"] == 200 and 500 not in statuses,
                  f"message {mid}: the frozen {ev['node']}'s late 500 shows in the store: {d}")
            checked += 1
    log(f"frozen node: {checked} deliveries it had in flight show the newer attempt's outcome")
    return checked


@test
def three_nodes_under_kill_freeze_and_cut():
    t0 = time.monotonic()
    c = Cluster()
    wait_until(lambda: c.live() >= set(NAMES), 20, "three live nodes")
    wait_until(lambda: c.poll.snapshot(), 15, "the first poll")
    per_pipeline = MESSAGES // 2
    client = RoundRobin([c.nodes[n] for n in NAMES], per_pipeline)
    log(f"posting {client.total} messages over {2 * KEYS} keys to 3 nodes")
    client.start()
    t_load = time.monotonic()

    def at(frac):
        wait_until(lambda: client.count() >= frac * client.total or not client.running(),
                   600, f"{int(frac * 100)}% of the messages acknowledged")
        log(f"at {client.count()} acknowledged ({time.monotonic() - t_load:.0f}s):")

    faults = {}
    for frac, kind, fault in ((0.10, "kill", kill_poll_holder),
                              (0.35, "freeze", freeze_ordered_holder),
                              (0.60, "cut", lambda c: cut_database_of(c, "n3"))):
        at(frac)
        began = client.running()
        faults[kind] = fault(c)
        faults[kind]["under_load"] = began and client.running()
        check(began, f"the load ended before the {kind}: raise PB_CHAOS_MESSAGES or lower "
              "PB_CHAOS_RATE")
    kill_ev, freeze_ev = faults["kill"], faults["freeze"]
    client.join(scaled(400))
    load_s = time.monotonic() - t_load
    log(f"load done: {client.count()} acknowledged in {load_s:.0f}s, {client.failed_posts} "
        f"posts unanswered or refused and sent again, {client.replayed} answered as replays, "
        f"{len(client.gave_up)} given up")
    check(all(f["under_load"] for f in faults.values()),
          f"the load ended during a fault: raise PB_CHAOS_MESSAGES or lower PB_CHAOS_RATE")
    check_eq(client.gave_up, [], "messages never acknowledged")
    check_eq(client.count(), client.total, "messages acknowledged")

    def drained():
        got = set()
        for name in NAMES:
            got |= set(sink_delivered(c.plain_sinks[name]))
        return len(got)

    wait_until(lambda: drained() >= client.total // 2
               and len(sink_delivered(c.ordered_sink)) >= client.total // 2,
               120, "every message delivered")
    # Nothing pending anywhere.
    wait_until(lambda: c.db.value(f"SELECT count(*) FROM {SCHEMA}.deliveries WHERE state = 0"
                                  " AND pipeline <> 'poll'") == "0", 30, "no delivery pending")
    check_eq(c.missing_holds, [], "holds no node had when a fault came")
    report = check_delivery(c, client)
    for p in ("plain", "ordered"):
        check(report[p]["dead"] == 0, f"{p}: {report[p]['dead']} dead letters")
    check_frozen_results(c, client, freeze_ev)
    check_poller(c, kill_ev)
    polled = int(c.db.value(f"SELECT count(*) FROM {SCHEMA}.messages WHERE pipeline = 'poll'"))
    served = len({s for x in c.poll.snapshot() for s in range(x["since"] + 1, x["since"] + 4)})
    check(polled <= served, f"{polled} poll messages of {served} records served")
    check(c.live() >= set(NAMES), f"live at the end: {c.live()}")
    conns = c.q("SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = 'pb'"
                " AND pid <> pg_backend_pid() GROUP BY 1")
    log(f"database connections of the three nodes at the end: {conns}")
    log(f"total {time.monotonic() - t0:.0f}s")
    for name in NAMES:
        c.nodes[name].term()
    c.proxy.close()
    c.poll.close()
    c.db.close()


if __name__ == "__main__":
    run()
