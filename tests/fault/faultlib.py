"""faultlib - what the fault scenarios (tests/fault/test_*.py) share on top of
tests/system/pbtest.py: the --long switch, a seeded random source, an
incremental reader of pb_sink's record file, the lost/duplicate checker,
an RSS sampler, and the one-line result every scenario prints.

A scenario is a pbtest file: it registers @test functions and ends with
faultlib.main(), which strips the fault options from argv and calls
pbtest.run(). Options (also settable through the environment):

    --long            the long form (PB_FAULT_LONG=1)
    --seed N          the random seed (PB_FAULT_SEED); printed either way

Every scenario ends by printing one line

    FAULT-RESULT {"scenario": ..., "acknowledged": N, "lost": 0, ...}

and, when PB_FAULT_RESULTS names a directory, also writes it there as
<scenario>.json (tests/fault/run_long.sh collects them into a table).

Every check can fail: a defect the suite finds fails the run (there is no
mode that reports it and passes), so a regression never lands quietly.

Standard library only."""

import json
import os
import random
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "system"))
import pbtest  # noqa: E402
from pbtest import TestFailure, check, log, scaled  # noqa: E402

LONG = os.environ.get("PB_FAULT_LONG", "") not in ("", "0")
SEED = int(os.environ.get("PB_FAULT_SEED", "0") or 0) or int(time.time() * 1000) % 1000003
SANITIZE = pbtest.SANITIZE
SKIP = 77  # ctest SKIP_RETURN_CODE


def _parse_argv():
    global LONG, SEED
    rest = [sys.argv[0]]
    args = iter(sys.argv[1:])
    for a in args:
        if a == "--long":
            LONG = True
        elif a == "--seed":
            SEED = int(next(args))
        elif a.startswith("--seed="):
            SEED = int(a.split("=", 1)[1])
        else:
            rest.append(a)
    sys.argv[:] = rest


_parse_argv()
rng = random.Random(SEED)


def main():
    log(f"fault suite: form={'long' if LONG else 'short'} seed={SEED} "
        f"sanitizers={'on' if SANITIZE else 'off'}")
    pbtest.run()


def skip(why):
    """Leave the scenario as skipped (ctest reports it so, not as passed)."""
    log(f"SKIP: {why}")
    pbtest._kill_all()
    sys.exit(SKIP)


def known_defect(name, ok, what):
    """A check for a defect this suite once found (name), kept so it never
    comes back: it fails the run like any other check."""
    if ok:
        return True
    _defects.append(name)
    raise TestFailure(f"DEFECT {name}: {what}")


_defects = []


def result(scenario, **fields):
    """Print (and maybe save) the scenario's figures."""
    doc = {"scenario": scenario, "form": "long" if LONG else "short", "seed": SEED,
           "sanitizers": SANITIZE, "known_defects": sorted(set(_defects))}
    _defects.clear()  # the next scenario in this file reports its own
    doc.update(fields)
    line = json.dumps(doc, sort_keys=True)
    log("FAULT-RESULT " + line)
    d = os.environ.get("PB_FAULT_RESULTS")
    if d:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, scenario + ".json"), "w") as f:
            f.write(line + "\n")
    return doc


# ---- message bodies ---------------------------------------------------------------------


def order(i, pad=0):
    """A small order event; pad adds that many bytes of filler."""
    b = {"id": f"ord-{i}", "total_cents": i * 7 + 1, "customer": {"id": f"c{i % 97}"}}
    if pad:
        b["note"] = "x" * pad
    return b


# ---- the partner's records ---------------------------------------------------------------


class Deliveries:
    """Reads a pb_sink record file incrementally (only the lines added since
    the last call are parsed) and keeps, per output, which message ids were
    answered 2xx and how many times. The output of a record is taken from
    the Idempotency-Key patchbay sends (<msg id>.<output>).

    The id a record counts for is patchbay's message id (the
    X-Patchbay-Message-Id header), or what id_of(record) returns: for
    messages that came from a broker, whose ids the sender never saw, the
    sender's own id read from the body. pb_ids then maps each such id to the
    patchbay message ids it arrived under (more than one: stored twice)."""

    def __init__(self, sink, id_of=None):
        self.id_of = id_of
        self.pb_ids = {}  # id_of's id -> {patchbay message id}
        self.path = sink.record_path
        check(self.path, "the sink must record")
        self._off = 0
        self._partial = b""
        self.count = {}  # (output, msg id) -> 2xx answers
        self.failed = 0  # non-2xx answers recorded
        self.total = 0
        self.first_ok_ts = {}  # (output, msg id) -> ts (ms) of the first 2xx
        self.keep = None  # when a callable, records passing it are kept in .kept
        self.kept = []

    def refresh(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self._off)
                data = f.read()
        except FileNotFoundError:
            return self
        self._off += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()  # "" when data ended with a newline
        for line in lines:
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line cut by kill -9 of the sink: never answered
            self.total += 1
            if self.keep and self.keep(r):
                self.kept.append(r)
            if not 200 <= r.get("status", 0) < 300:
                self.failed += 1
                continue
            h = r.get("headers", {})
            mid = h.get("x-patchbay-message-id")
            key = h.get("idempotency-key", "")
            out = key[len(mid) + 1:] if mid and key.startswith(mid + ".") else ""
            if self.id_of:
                pb_mid, mid = mid, self.id_of(r)
                self.pb_ids.setdefault(mid, set()).add(pb_mid)
            k = (out, mid)
            self.count[k] = self.count.get(k, 0) + 1
            if k not in self.first_ok_ts:
                self.first_ok_ts[k] = r.get("ts")
        return self

    def ids(self, output):
        return {m for (o, m) in self.count if o == output}

    def missing(self, acked, outputs):
        """(output, id) pairs acknowledged but not delivered."""
        self.refresh()
        return [(o, m) for o in outputs for m in acked if (o, m) not in self.count]


def check_ledger(acked, deliveries, outputs, timeout, what="every acknowledged message delivered"):
    """Wait until every acknowledged id reached every output; return the
    figures: lost (must be 0), duplicates (extra 2xx deliveries), and
    delivered-but-never-acknowledged (the client saw no 202, e.g. killed
    mid-answer: allowed)."""
    acked = set(acked)
    try:
        pbtest.wait_until(lambda: not deliveries.missing(acked, outputs), timeout, what,
                          interval=0.1)
    except TestFailure:
        miss = deliveries.missing(acked, outputs)
        log(f"LOST {len(miss)} of {len(acked) * len(outputs)}: e.g. {sorted(miss)[:8]}")
        raise
    dup_msgs = 0
    dup_extra = 0
    unacked = set()
    for (o, m), n in deliveries.count.items():
        if o not in outputs:
            continue
        if n > 1:
            dup_msgs += 1
            dup_extra += n - 1
        if m not in acked:
            unacked.add(m)
    return {"lost": 0, "duplicate_messages": dup_msgs, "duplicate_deliveries": dup_extra,
            "delivered_not_acknowledged": len(unacked)}


# ---- processes ---------------------------------------------------------------------------


def proc_status(pid):
    """VmRSS and VmHWM of pid in KiB (None when gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    out = {}
    for k in ("VmRSS", "VmHWM"):
        m = re.search(rf"^{k}:\s+(\d+) kB", text, re.M)
        out[k] = int(m.group(1)) if m else 0
    return out


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every interval; peak is the highest VmHWM seen."""

    def __init__(self, pid, interval=0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self.samples = []  # (monotonic, rss KiB)
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            st = proc_status(self.pid)
            if st is None:
                break
            self.peak_kib = max(self.peak_kib, st["VmHWM"], st["VmRSS"])
            self.samples.append((time.monotonic(), st["VmRSS"]))
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(5)
        return self.peak_kib


def established(port):
    """TCP connections in state ESTABLISHED whose local port is port (the
    server side of connections to a listener on 127.0.0.1:port)."""
    n = 0
    want = f"{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].rsplit(":", 1)[1] == want and parts[3] == "01":
                        n += 1
        except OSError:
            pass
    return n


def socket_fds(pid):
    """Open sockets of process pid (listeners, accepted connections, clients)."""
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    n += 1
            except OSError:
                pass
    except OSError:
        return None
    return n


def sqlite3_query(db, sql, timeout=60):
    """Run sqlite3 DB SQL (the sqlite3 command-line tool); return stdout stripped."""
    r = subprocess.run(["sqlite3", db, sql], capture_output=True, text=True,
                       timeout=scaled(timeout))
    check(r.returncode == 0, f"sqlite3 {db} {sql!r} exited {r.returncode}: {r.stderr.strip()}")
    return r.stdout.strip()


def integrity_ok(db):
    out = sqlite3_query(db, "PRAGMA integrity_check")
    check(out == "ok", f"PRAGMA integrity_check on {db}: {out[:500]}")
    return out


def wait_backlog_zero(pb, timeout, pipeline="orders"):
    """Wait for patchbay_backlog to reach 0 for every output of pipeline; on
    timeout show the gauge next to what the store holds, per output."""
    try:
        pbtest.wait_until(lambda: pb.metrics().value("patchbay_backlog", pipeline=pipeline) == 0,
                          timeout, "backlog 0")
    except TestFailure:
        gauges = {lab.get("output"): v for lab, v in pb.metrics().series("patchbay_backlog")}
        db = os.path.join(pb.dir, "state.db")
        rows = sqlite3_query(db, "SELECT output, state, count(*) FROM deliveries GROUP BY 1, 2")
        log(f"backlog gauge per output {gauges}; store (output|state|count; 0 pending, 1 "
            f"delivered, 2 dead, 3 filtered, 4 replayed):\n{rows}")
        raise


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]
