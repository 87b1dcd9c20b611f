"""Fault 5 - disk full.

The state store lives on a 16 MiB tmpfs mounted by the test (root needed;
without permission to mount the scenario is reported as skipped). Under
steady load a filler file takes every free byte. Then:

  - ingest answers 503 with Retry-After and "state store is out of space",
    never 202 for a message it could not commit;
  - /ready answers 503 "state store is not writable"; /health stays 200;
  - the daemon keeps running and the store stays consistent (integrity_check
    through the sqlite3 tool while full).

The filler is deleted (space returns): /ready turns 200 again, ingest
acknowledges again, every acknowledged message reaches the partner, the
daemon exits 0 on SIGTERM, PRAGMA integrity_check says ok, and after a
restart the store holds no pending delivery. The full phase lasts 3 s in
the short form, 30 s (with several fill/free rounds) in the long form."""

import errno
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib  # noqa: E402
from faultlib import Deliveries, log  # noqa: E402
from pbtest import (  # noqa: E402
    Patchbay,
    Poster,
    check,
    check_eq,
    start_sink,
    test,
    tmpdir,
    wait_until,
)

ROUNDS = 3 if faultlib.LONG else 1
FULL_S = 10.0 if faultlib.LONG else 3.0
SIZE = "16m"

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:MNT/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop }
    outputs:
      payments:
        http:
          url: "SINK/charges"
          timeout: 5s
          retry: { max_attempts: 1000, initial: 50ms, max: 1s, max_age: 1h }
"""


def mount_tmpfs(path, size):
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                       capture_output=True, text=True)
    return r.returncode == 0, r.stderr.strip()


def umount(path):
    for args in (["umount", path], ["umount", "-l", path]):
        if subprocess.run(args, capture_output=True).returncode == 0:
            return


def fill(path):
    """Write zeros to path until the filesystem refuses; return bytes written."""
    n = 0
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1 << 9):
            buf = b"\0" * chunk
            while True:
                try:
                    f.write(buf)
                    n += chunk
                except OSError as e:
                    check(e.errno in (errno.ENOSPC, errno.EDQUOT), f"filler write: {e}")
                    break
    return n


def post_once(pb):
    st, h, data = pb.post("/hooks/shop", faultlib.order(-1), timeout=10)
    return st, h, data


@test
def disk_full_then_space_returns():
    mnt = tmpdir("store-fs")
    ok, why = mount_tmpfs(mnt, SIZE)
    if not ok:
        faultlib.skip(f"cannot mount a tmpfs for the store ({why}); run as root")
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):  # a test runner stopping us: leave no mount behind
        faultlib.pbtest._kill_all()
        umount(mnt)
        if callable(previous):
            previous(signum, frame)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    pb = None
    try:
        sink = start_sink(delay_jitter_ms=5)
        pb = Patchbay(CONFIG.replace("SINK", sink.url).replace("MNT", mnt))
        db = os.path.join(mnt, "state.db")
        dl = Deliveries(sink)
        poster = Poster(pb.port, "/hooks/shop", lambda i: faultlib.order(i, pad=200),
                        concurrency=8).start()
        rounds = []
        try:
            for rnd in range(ROUNDS):
                target = poster.count_acked() + 1500
                wait_until(lambda: poster.count_acked() >= target, 60, f"{target} acknowledgements")
                filler = os.path.join(mnt, "filler")
                size = fill(filler)
                t_full = time.monotonic()
                n_before = len(poster.results)
                log(f"round {rnd + 1}: filled the store's filesystem with {size >> 10} KiB "
                    f"after {poster.count_acked()} acks")

                def refused():
                    st, h, data = post_once(pb)
                    if st == 503:
                        return (h, data)
                    check(st == 202, f"post while full: {st} {data!r}")
                    return None

                h, data = wait_until(refused, 30, "ingest to answer 503 while the disk is full")
                check(h.get("retry-after"), "503 carries Retry-After")
                check(b"out of space" in data, f"503 says why: {data!r}")

                def not_ready():
                    st, _, data = pb.get("/ready")
                    return st == 503 and b"not writable" in data and data

                reason = wait_until(not_ready, 30, "/ready 503 while the disk is full")
                st, _, _ = pb.get("/health")
                check_eq(st, 200, "/health while full")
                left = FULL_S - (time.monotonic() - t_full)
                if left > 0:
                    time.sleep(left)  # the scenario: the disk stays full under load
                while_full = poster.results[n_before:]
                acks_full = sum(1 for _, st, mid in while_full if mid)
                r503 = sum(1 for _, st, _ in while_full if st == 503)
                check(pb.running(), "patchbay survives the full disk")
                faultlib.integrity_ok(db)  # a reader's view while the writer fails
                log(f"round {rnd + 1}: full for {time.monotonic() - t_full:.1f}s: {r503} posts "
                    f"answered 503, {acks_full} acknowledged (committed in space freed by "
                    f"checkpoints); /ready said {reason!r}")

                os.unlink(filler)
                t_free = time.monotonic()
                wait_until(lambda: pb.get("/ready")[0] == 200, 30, "/ready 200 once space returned")
                n_after = len(poster.results)
                wait_until(lambda: any(mid for _, _, mid in poster.results[n_after:]), 30,
                           "acknowledgements once space returned")
                back = time.monotonic() - t_free
                log(f"round {rnd + 1}: ready and acknowledging {back:.1f}s after space returned")
                rounds.append({"full_s": round(t_free - t_full, 1), "answered_503": r503,
                               "acked_while_full": acks_full, "recovered_s": round(back, 1)})
            target = poster.count_acked() + 300
            wait_until(lambda: poster.count_acked() >= target, 60, "more acknowledgements")
        finally:
            poster.stop()

        acked = [mid for _, mid in poster.acked()]
        figures = faultlib.check_ledger(acked, dl, ("payments",), 120)
        def settled():
            # The gauge counts committed results, so it settles on what the store holds.
            backlog = pb.metrics().value("patchbay_backlog", pipeline="orders")
            pending = int(faultlib.sqlite3_query(db, "SELECT count(*) FROM deliveries WHERE state = 0"))
            return (pending,) if backlog == pending else None

        (stuck,) = wait_until(settled, 60, "the backlog gauge to agree with the store")
        paused = pb.log().count("delivery results not recorded")
        log(f"results that failed to commit paused attempts {paused} time(s); all recorded since")
        check_eq(stuck, 0, "deliveries still 'pending' in the store after space returned although "
                 "the partner answered 200 (results that failed to commit must be submitted again)")
        check_eq(pb.term(), 0, "exit code on SIGTERM")
        faultlib.integrity_ok(db)
        pb.start()
        wait_until(lambda: int(faultlib.sqlite3_query(
            db, "SELECT count(*) FROM deliveries WHERE state = 0")) == 0, 60,
            "no pending delivery after a restart")
        dl.refresh()
        figures = faultlib.check_ledger(acked, dl, ("payments",), 10)
        check_eq(pb.term(), 0, "exit code on SIGTERM after the restart")
        faultlib.integrity_ok(db)
        faultlib.result("disk_full", rounds=rounds, fs_size=SIZE, acknowledged=len(acked),
                        pending_after_space_returned=stuck, **figures)
    finally:
        if pb is not None:
            pb.kill9()
        umount(mnt)
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    faultlib.main()
