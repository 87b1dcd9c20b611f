"""Fault 6 - corrupt or truncated store.

A real store is made first: 300 messages acknowledged while the partner
is down (so all are pending), then the daemon is killed with SIGKILL, which
leaves the recent commits in the write-ahead log (the "wal" snapshot). A
restart and SIGTERM of a copy folds the log into the database file (the
"clean" snapshot). Each damage below is applied to a fresh copy; patchbay
must then refuse to start: a non-zero exit within seconds, a message
naming the file and what is wrong, and the files byte for byte as they
were (never reset, never started empty over existing data):

  clean: truncated to 50 bytes, to one page, to half, by one page; a page
         of random bytes in the middle, the last page zeroed, the header's
         magic overwritten;
  mixed: (the clean file plus 20 more commits in the log) a page of the
         file that the log does not supersede overwritten;
  wal:   the database file truncated to 0 bytes while the log holds the
         messages; the log's header garbage; a page in the middle of the
         log's current run garbage. SQLite itself would ignore the log from
         the damage on, so the commits after it would vanish silently.

What a crash leaves at the end of the log is no damage: a frame cut short,
or a last frame that fails its checksum, after the last commit, is dropped
by SQLite, and patchbay must start on it with every message. Two such torn
tails are written behind the log's current run in copies of the "wal"
snapshot.

Finally the intact snapshot starts and delivers all 300 messages."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib  # noqa: E402
from faultlib import Deliveries, log  # noqa: E402
from pbtest import (  # noqa: E402
    PB_BIN,
    Patchbay,
    check,
    check_eq,
    post_many,
    scaled,
    start_sink,
    test,
    tmpdir,
)

N = 300
PAGE = 4096

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:STATE"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop }
    outputs:
      payments:
        http:
          url: "SINK/charges"
          retry: { max_attempts: 1000, initial: 50ms, max: 1s, max_age: 1h }
          rate_limit: RATE
"""


def sha(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None


def files_of(db):
    return [db, db + "-wal"]


def copy_store(src_db, dst_dir):
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, "state.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(src_db + suffix):
            shutil.copyfile(src_db + suffix, dst + suffix)
    return dst


def overwrite(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def garbage(n, seed):
    return faultlib.random.Random(seed).randbytes(n)


def run_daemon(config_path, port, timeout):
    """patchbay run CONFIG; (exit code, stderr), exit code None when it
    started instead (answered /health) - it is then stopped with SIGKILL
    so that it changes no more than it already has."""
    p = subprocess.Popen([PB_BIN, "run", config_path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + scaled(timeout)
    code = None
    while time.monotonic() < deadline:
        code = p.poll()
        if code is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1."):
                    break
        except OSError:
            time.sleep(0.02)
    if code is None:
        p.kill()
    _, err = p.communicate()
    return code, err.decode("utf-8", "replace")


def db_size(db):
    return os.path.getsize(db)


def wal_pages(wal):
    """Page numbers the log holds a frame for (its frame headers)."""
    pages = set()
    with open(wal, "rb") as f:
        data = f.read()
    page_size = int.from_bytes(data[8:12], "big")
    off = 32
    while off + 24 + page_size <= len(data):
        pages.add(int.from_bytes(data[off:off + 4], "big"))
        off += 24 + page_size
    return pages


def current_run(data):
    """Frames from the first on that carry the log header's salts (the
    frames of an earlier run, behind them, are stale)."""
    salt = data[16:24]
    frame = 24 + PAGE
    n = 0
    while 32 + (n + 1) * frame <= len(data) and data[32 + n * frame + 8:32 + n * frame + 16] == salt:
        n += 1
    return n


def torn_frame(db, page_bytes, commit):
    """Right after the log's current run, a frame of it (its salts) whose
    page is page_bytes of garbage and whose checksum fails, as a crash in
    the middle of writing a commit nobody was told about leaves it."""
    with open(db + "-wal", "rb") as f:
        data = f.read()
    header = (2).to_bytes(4, "big") + (1 if commit else 0).to_bytes(4, "big") + data[16:24]
    overwrite(db + "-wal", 32 + current_run(data) * (24 + PAGE),
              header + garbage(8, 5) + garbage(page_bytes, 6))


def page_not_in_log(db):
    """A page in the middle of the database file that the log does not
    supersede: damage to it is damage SQLite will read."""
    n = db_size(db) // PAGE
    in_log = wal_pages(db + "-wal")
    for p in sorted(range(2, n + 1), key=lambda p: abs(p - n // 2)):
        if p not in in_log:
            return p
    raise AssertionError("every page is in the log")


STARTS = "starts"  # not damage: patchbay must start on it, with every message


# name, snapshot, damage(db) -> None, and what is expected: None (refused),
# STARTS, or the name of a known defect it shows
def _damages():
    def wal_header(db):
        overwrite(db + "-wal", 0, garbage(32, 2))

    def wal_middle_frame(db):
        # The middle frame of the log's current run (frames carrying the
        # header's salt): every commit after it is cut off.
        with open(db + "-wal", "rb") as f:
            valid = current_run(f.read())
        check(valid >= 10, f"the log has a current run of frames: {valid}")
        overwrite(db + "-wal", 32 + (valid // 2) * (24 + PAGE) + 24, garbage(PAGE, 3))

    return [
        ("truncated to 50 bytes", "clean", lambda db: truncate(db, 50), None),
        ("truncated to one page", "clean", lambda db: truncate(db, PAGE), None),
        ("truncated to half", "clean", lambda db: truncate(db, db_size(db) // PAGE // 2 * PAGE), None),
        ("truncated by one page", "clean", lambda db: truncate(db, db_size(db) - PAGE), None),
        ("random page in the middle", "clean",
         lambda db: overwrite(db, db_size(db) // PAGE // 2 * PAGE, garbage(PAGE, 1)), None),
        ("last page zeroed", "clean", lambda db: overwrite(db, db_size(db) - PAGE, b"\0" * PAGE), None),
        ("header magic overwritten", "clean", lambda db: overwrite(db, 0, b"NOT A DATABASE!\0"), None),
        ("a page overwritten, log present", "mixed",
         lambda db: overwrite(db, (page_not_in_log(db) - 1) * PAGE, garbage(PAGE, 4)), None),
        ("database 0 bytes, log holds the data", "wal", lambda db: truncate(db, 0), None),
        ("log header garbage", "wal", wal_header, None),
        ("log frame garbage", "wal", wal_middle_frame, None),
        ("log tail: a frame cut short", "wal",
         lambda db: torn_frame(db, PAGE // 2, commit=False), STARTS),
        ("log tail: a torn commit frame", "wal",
         lambda db: torn_frame(db, PAGE, commit=True), STARTS),
    ]


@test
def corrupt_store_refuses_to_start():
    sink = start_sink()
    sink.kill()  # down: every message stays pending in the store
    base = tmpdir("base")
    state = os.path.join(base, "state.db")
    # While the snapshots are made, one attempt per hour: the log holds the
    # ingest commits and hardly anything else, so its damage hits messages.
    cfg = CONFIG.replace("SINK", sink.url).replace("RATE", "1/h")
    pb = Patchbay(cfg.replace("STATE", state))
    res = post_many(pb.url + "/hooks/shop", [faultlib.order(i, pad=1000) for i in range(N)], 16)
    acked = [mid for st, mid in res if st == 202 and mid]
    check_eq(len(acked), N, "all posts acknowledged")
    pb.kill9()
    wal_snap = copy_store(state, tmpdir("snap-wal"))
    check(os.path.getsize(wal_snap + "-wal") > 32 * 1024, "the kill left commits in the log")
    clean_dir = tmpdir("snap-clean")
    clean_snap = copy_store(state, clean_dir)
    p2 = Patchbay(cfg.replace("STATE", clean_snap))  # folds the log into the file on exit
    check_eq(p2.term(), 0, "clean snapshot: SIGTERM")
    check(not os.path.exists(clean_snap + "-wal") or os.path.getsize(clean_snap + "-wal") == 0,
          "clean snapshot has no log left")
    # mixed: the clean file plus a few commits in the log (killed again).
    mixed_state = copy_store(clean_snap, tmpdir("mixed-run"))
    p4 = Patchbay(cfg.replace("STATE", mixed_state))
    more = post_many(p4.url + "/hooks/shop", [faultlib.order(N + i) for i in range(20)], 4)
    check(all(st == 202 for st, _ in more), "posts into the mixed store acknowledged")
    p4.kill9()
    mixed_snap = copy_store(mixed_state, tmpdir("snap-mixed"))
    log(f"snapshots: clean {db_size(clean_snap)} bytes; wal: db {db_size(wal_snap)} bytes + "
        f"log {os.path.getsize(wal_snap + '-wal')} bytes; mixed: db {db_size(mixed_snap)} bytes + "
        f"log {os.path.getsize(mixed_snap + '-wal')} bytes")

    outcomes = []
    for k, (name, snap, damage, defect) in enumerate(_damages()):
        d = tmpdir(f"case{k}")
        db = copy_store({"clean": clean_snap, "wal": wal_snap, "mixed": mixed_snap}[snap], d)
        damage(db)
        before = {p: sha(p) for p in files_of(db)}
        conf = os.path.join(d, "patchbay.yaml")
        port = faultlib.pbtest.free_port()
        with open(conf, "w") as f:
            f.write(cfg.replace("STATE", db).replace("@LISTEN@", f"127.0.0.1:{port}")
                    .replace("@TOKEN@", "t"))
        t = time.monotonic()
        code, err = run_daemon(conf, port, 20)
        dt = time.monotonic() - t
        after = {p: sha(p) for p in files_of(db)}
        unchanged = before == after
        lines = [ln for ln in err.splitlines() if "state store" in ln or "refus" in ln]
        message = (lines or err.strip().splitlines() or [""])[-1]
        clear = db in err and ("refusing" in err or "corrupt" in err or "not a SQLite" in err)
        outcomes.append({"damage": name, "store": snap, "exit": code, "seconds": round(dt, 2),
                         "unchanged": unchanged, "message": message[-300:]})
        log(f"{name} ({snap}): exit {code} in {dt:.2f}s, files "
            f"{'unchanged' if unchanged else 'CHANGED'}: {message[-200:]}")
        refused = code not in (None, 0) and clear
        db_now = None
        if code is None:
            what = f"started (and kept running) on it; files {'unchanged' if unchanged else 'changed'}"
            view = copy_store(db, tmpdir("view"))  # what the daemon serves, without touching db
            db_now = faultlib.sqlite3_query(view, "SELECT count(*) FROM messages")
            what += f"; messages it holds: {db_now} of the {N} acknowledged"
        else:
            what = f"exited {code}" + ("" if clear else f" without a clear message: {err[-300:]!r}")
        if defect == STARTS:
            check(code is None, f"{name}: a crash leaves such a tail, yet patchbay {what}")
            check_eq(db_now, str(N), f"{name}: messages the started store holds")
        elif defect is None:
            check(refused, f"{name}: patchbay {what}")
            check(unchanged, f"{name}: the store's files were modified: {before} -> {after}")
        elif defect == "refusal-checkpoints-log":
            check(refused, f"{name}: patchbay {what}")
            changed = [f"{os.path.basename(p)} {'removed' if after[p] is None else 'rewritten'}"
                       for p in before if before[p] != after[p]]
            faultlib.known_defect(
                defect, unchanged,
                f"{name}: patchbay refused to start but changed the store on its way out "
                f"({', '.join(changed)}): closing the SQLite connection checkpointed the log "
                f"into the damaged database file and deleted the log")
        else:
            faultlib.known_defect(defect, refused and unchanged, f"{name}: patchbay {what}")
        outcomes[-1]["refused"] = refused
        outcomes[-1]["expected"] = "start" if defect == STARTS else "refusal"
        outcomes[-1]["known_defect"] = (defect if defect != STARTS and not (refused and unchanged)
                                        else None)

    # The intact snapshot still holds and delivers everything.
    sink.restart()
    dl = Deliveries(sink)
    cfg = CONFIG.replace("SINK", sink.url).replace("RATE", "1000/s")
    p3 = Patchbay(cfg.replace("STATE", copy_store(wal_snap, tmpdir("intact"))))
    figures = faultlib.check_ledger(acked, dl, ("payments",), 60,
                                    "the intact store delivers every message")
    check_eq(p3.term(), 0, "exit code on SIGTERM")
    damages = [o for o in outcomes if o["expected"] == "refusal"]
    refused = sum(1 for o in damages if o["exit"] not in (None, 0) and o["unchanged"])
    started = sum(1 for o in outcomes if o["expected"] == "start" and o["exit"] is None)
    faultlib.result("corrupt_store", damages=len(damages), refused_unchanged=refused,
                    torn_tails_started=started, acknowledged=len(acked), outcomes=outcomes,
                    **figures)



@test
def body_changed_on_disk_is_dead_lettered():
    """SQLite checks the structure of its pages, not the data in them: a body
    whose bytes change in the file (bit rot, a stray write) passes
    quick_check. The checksum taken at ingest catches it when the body is
    read back: that delivery goes to the dead-letter queue with the reason,
    and the partner never gets the altered body."""
    sink = start_sink()
    sink.kill()
    state = os.path.join(tmpdir("bitrot"), "state.db")
    cfg = CONFIG.replace("SINK", sink.url).replace("RATE", "1000/s")
    pb = Patchbay(cfg.replace("STATE", state))
    bodies = [dict(faultlib.order(i), mark=f"bitrot-{i:04d}-mark") for i in range(40)]
    res = post_many(pb.url + "/hooks/shop", bodies, 4)
    mids = [mid for st, mid in res if st == 202 and mid]
    check_eq(len(mids), len(bodies), "all posts acknowledged")
    check_eq(pb.term(), 0, "SIGTERM folds the log into the database file")
    victim = 17
    with open(state, "r+b") as f:
        data = f.read()
        at = data.find(b"bitrot-0017-mark")
        check(at > 0 and data.count(b"bitrot-0017-mark") == 1, "the body is in the file once")
        f.seek(at + len("bitrot-00"))
        f.write(b"9")  # now it reads like another, valid order
    check_eq(faultlib.sqlite3_query(state, "PRAGMA quick_check"), "ok",
             "quick_check does not see the change")

    sink.restart()
    dl = Deliveries(sink)
    dl.keep = lambda r: b"bitrot-0097-mark" in r.get("body", "").encode()
    pb.start()
    others = [m for k, m in enumerate(mids) if k != victim]
    pb.wait_states(others, {"payments": "delivered"}, 60)
    pb.wait_states([mids[victim]], {"payments": "dead"}, 60)
    msg = pb.message(mids[victim])
    (d,) = msg["deliveries"]
    check("stored body damaged" in (d["last_error"] or ""), f"the dead letter says why: {d}")
    check(msg.get("body_damaged") is True, f"the message view flags the body: {msg.keys()}")
    dl.refresh()
    check(mids[victim] not in dl.ids("payments"), "the altered body never reached the partner")
    check_eq(dl.kept, [], "deliveries carrying the altered bytes")
    check_eq(pb.term(), 0, "exit code on SIGTERM")
    log(f"1 body changed in the file: dead-lettered with its reason; {len(others)} delivered")

if __name__ == "__main__":
    faultlib.main()
