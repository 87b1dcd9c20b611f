"""The file input: folders of CSV, JSON lines and XML files taken record by
record while patchbay runs and under kill -9 (every record once, a file
archived only once all of it is committed, the malformed one in error_dir
with its report), `run --once` (exit 0, a progress line on a terminal, a
summary), bad records dead-lettered, files kept in place, files still being
written left alone, inotify and the poll fallback, and memory that stays
flat for a large file."""

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import filegen  # noqa: E402
from pbtest import (PB_BIN, Patchbay, check, check_eq, log, run, scaled, start_sink, test,  # noqa: E402
                    tmpdir, wait_until)

CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  files:
    input:
      file:
        paths: ["%(inbox)s/*.csv", "%(inbox)s/*.jsonl", "%(inbox)s/*.xml"]
        format: %(format)s
        xml: { record: /orders/order }
        archive_dir: %(archive)s
        error_dir: %(errors)s
        min_age: %(min_age)s
        batch: %(batch)d
        %(extra)s
    outputs:
      sink:
        http:
          url: "%(sink)s/in"
          map: '{id: (.id // ."@id"), file: $meta.name, record: $meta.record, line: $meta.line}'
"""


def folders():
    root = tmpdir("files")
    d = {k: os.path.join(root, k) for k in ("inbox", "archive", "errors", "stage")}
    for p in d.values():
        os.makedirs(p)
    return d


def conf(d, sink, fmt="csv", min_age="0s", batch=200, extra="", archive=True):
    text = CONF % {"inbox": d["inbox"], "archive": d["archive"], "errors": d["errors"],
                   "format": fmt, "min_age": min_age, "batch": batch, "extra": extra,
                   "sink": sink.url}
    if not archive:
        text = text.replace("        archive_dir: %s\n" % d["archive"], "")
    return text


def sink_ids(sink):
    out = {}
    for r in sink.records():
        try:
            doc = json.loads(r["body"])
        except (TypeError, ValueError):
            continue
        out.setdefault(doc["id"], set()).add(r["headers"].get("idempotency-key"))
    return out


# Each format is its own pipeline below: one input reads one format.
MULTI = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
%(pipes)s
"""
PIPE = """  %(name)s:
    input:
      file:
        paths: ["%(inbox)s/*.%(ext)s"]
        format: %(format)s
        xml: { record: /orders/order }
        archive_dir: %(archive)s
        error_dir: %(errors)s
        min_age: 500ms
        batch: 300
    outputs:
      sink:
        http:
          url: "%(sink)s/in"
          map: '{id: (.id // ."@id"), file: $meta.name, record: $meta.record}'
"""


def multi_conf(d, sink):
    pipes = "".join(PIPE % {"name": f"files_{ext}", "inbox": d["inbox"], "ext": ext,
                            "format": fmt, "archive": d["archive"], "errors": d["errors"],
                            "sink": sink.url}
                    for ext, fmt in (("csv", "csv"), ("jsonl", "jsonl"), ("xml", "xml")))
    return MULTI % {"pipes": pipes}


def check_archived_committed(pb, d, sizes):
    """With patchbay dead: every file in the archive has all its records in
    the store (nothing was archived before it was committed)."""
    db = os.path.join(pb.dir, "state.db")
    stored = {}
    for ext in ("csv", "jsonl", "xml"):
        for k, v in filegen.records_in_store(db, f"files_{ext}").items():
            stored[k] = stored.get(k, 0) + v
    for name in os.listdir(d["archive"]):
        n = sizes[name]
        missing = [i for i in range(1, n + 1) if (name, i) not in stored]
        check(not missing, f"{name} archived with records {missing[:5]} not committed")
    return stored


@test
def fifty_files_dropped_while_running_with_kill9():
    sink = start_sink(delay_ms=1)
    d = folders()
    pb = Patchbay(multi_conf(d, sink))
    expected, sizes = set(), {}
    plan = []
    for i in range(50):
        ext = ("csv", "jsonl", "xml")[i % 3]
        n = (1, 7, 40, 300, 1500)[i % 5]
        plan.append((f"f{i:02d}.{ext}", ext, n))
    bad = "f25_bad.csv"

    def drop():
        for k, (name, ext, n) in enumerate(plan):
            stage = os.path.join(d["stage"], name)
            tag = name.split(".")[0]
            write = {"csv": filegen.write_csv, "jsonl": filegen.write_jsonl,
                     "xml": filegen.write_xml}[ext]
            ids = write(stage, tag, n)
            expected.update(ids)
            sizes[name] = n
            os.rename(stage, os.path.join(d["inbox"], name))
            if k == 25:
                with open(os.path.join(d["stage"], bad), "wb") as f:
                    f.write(filegen.csv_bytes("bad", 50) + b'51,1,"never closed\r\n52,1,x\r\n')
                os.rename(os.path.join(d["stage"], bad), os.path.join(d["inbox"], bad))
            time.sleep(0.03)

    dropper = threading.Thread(target=drop)
    dropper.start()
    try:
        for k in range(3):
            wait_until(lambda: len(sink.records()) > 800 * (k + 1), 60, "deliveries before a kill")
            pb.kill9()
            check_archived_committed(pb, d, sizes)
            pb.start()
    finally:
        dropper.join()
    wait_until(lambda: set(sink_ids(sink)) >= expected, 120, "every record at the sink")
    wait_until(lambda: not os.listdir(d["inbox"]), 30, "the inbox emptied")
    pb.kill9()
    stored = check_archived_committed(pb, d, sizes)
    # Every record once: one message each in the store, one key at the sink.
    ids = sink_ids(sink)
    check_eq(set(ids), expected, "the records at the sink")
    check(all(len(k) == 1 for k in ids.values()), "one message (one key) per record")
    doubled = [k for k, v in stored.items() if v != 1]
    check(not doubled, f"records stored twice: {doubled[:5]}")
    check_eq(len(stored), len(expected), "messages in the store")
    check_eq(sorted(os.listdir(d["archive"])), sorted(sizes), "every good file archived")
    # The malformed file: in error_dir with its report, nothing of it taken.
    check_eq(sorted(os.listdir(d["errors"])), [bad, bad + ".error.json"], "error_dir")
    with open(os.path.join(d["errors"], bad + ".error.json")) as f:
        rep = json.load(f)
    check_eq((rep["line"], rep["column"]), (52, 6), "the report's line and column")
    check("not terminated" in rep["reason"], f"the report's reason: {rep}")
    check_eq(len(rep["digest"]), 64, "the report names the digest")
    check(not any(i.startswith("bad-") for i in ids), "nothing of the malformed file taken")
    log(f"files resumed after a kill: {pb.log().count('file resumed')}, sink requests "
        f"{len(sink.records())} for {len(expected)} records")


def run_once(pb, use_pty=False, timeout=60):
    """Run `patchbay run --once` to its end: (exit code, stderr text)."""
    argv = [PB_BIN, "run", "--once", pb.config_path]
    if not use_pty:
        r = subprocess.run(argv, capture_output=True, text=True, env=pb.env,
                           timeout=scaled(timeout))
        return r.returncode, r.stderr
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=slave, env=pb.env)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + scaled(timeout)
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif p.poll() is not None:
                break
        code = p.wait(timeout=scaled(10))
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    return code, out.decode("utf-8", "replace")


@test
def once_takes_a_folder_and_exits():
    sink = start_sink(delay_ms=2)
    d = folders()
    expected = set()
    for i in range(6):
        expected.update(filegen.write_csv(os.path.join(d["inbox"], f"o{i}.csv"), f"o{i}", 150))
    with open(os.path.join(d["inbox"], "broken.csv"), "wb") as f:
        f.write(b"id,qty\n1,2,3\n")
    pb = Patchbay(conf(d, sink), start=False)
    code, err = run_once(pb, use_pty=True)
    check_eq(code, 0, f"exit code of run --once: {err[-2000:]}")
    check_eq(set(sink_ids(sink)), expected, "every record delivered before the exit")
    # On a terminal: a progress line drawn in place, then the summary.
    check("\r[" in err and "files" in err and "delivered" in err, f"a progress line: {err[-800:]!r}")
    check("7/7 files" in err, f"the progress line ends at 7/7 files: {err[-800:]!r}")
    check("run --once: 7 files (1 failed), 900 records, 900 delivered, 0 dead-lettered" in err,
          f"the summary: {err[-800:]!r}")
    check_eq(sorted(os.listdir(d["errors"])), ["broken.csv", "broken.csv.error.json"],
             "the broken file in error_dir")
    # Not a terminal: no progress line, the summary alone; nothing left to take.
    code, err = run_once(pb)
    check_eq(code, 0, f"second run --once: {err[-2000:]}")
    check("\r" not in err, "no progress line without a terminal")
    check("run --once: 0 files (0 failed), 0 records, 0 delivered" in err, f"summary: {err[-500:]}")
    check_eq(len(sink.records()), 900, "nothing taken twice")


@test
def bad_records_dead_lettered_the_rest_taken():
    sink = start_sink()
    d = folders()
    pb = Patchbay(conf(d, sink, fmt="jsonl", extra="on_bad_record: dead_letter"))
    with open(os.path.join(d["inbox"], "mixed.jsonl"), "wb") as f:
        f.write(b'{"id":"m-1"}\n{"id": oops}\n{"id":"m-3"}\n')
    wait_until(lambda: os.listdir(d["archive"]) == ["mixed.jsonl"], 30, "the file archived")
    wait_until(lambda: set(sink_ids(sink)) == {"m-1", "m-3"}, 30, "the good records")
    dead = wait_until(lambda: pb.dead_letters(pipeline="files"), 20, "a dead letter")
    check_eq(len(dead), 1, "one dead letter")
    st, msg = pb.admin("GET", f"/api/messages/{dead[0]['message_id']}")
    check_eq(st, 200, "the dead message")
    text = json.dumps(msg)
    check("line 2, column 8: invalid JSON" in text, f"the reason names line and column: {text}")
    check_eq(os.listdir(d["errors"]), [], "nothing in error_dir")


@test
def keep_min_age_and_changes():
    sink = start_sink()
    d = folders()
    pb = Patchbay(conf(d, sink, min_age="1500ms", extra="after: keep", archive=False))
    path = os.path.join(d["inbox"], "slow.csv")
    # Written a line at a time: nothing is taken while it is being written.
    with open(path, "wb") as f:
        f.write(b"id,qty\r\n")
        for i in range(1, 6):
            f.write(f"s-{i},{i}\r\n".encode())
            f.flush()
            time.sleep(0.3)
            check_eq(len(sink.records()), 0, "nothing taken from a file being written")
    wait_until(lambda: len(sink_ids(sink)) == 5, 30, "the file taken once it was quiet")
    check(os.path.exists(path), "after: keep leaves the file")
    # Kept across a restart: not taken again while unchanged.
    pb.restart()
    time.sleep(2)  # a negative check: nothing may happen in this window
    check_eq(len(sink.records()), 5, "a kept file is not taken again")
    # Changed: another file (another digest), taken again as a whole.
    with open(path, "ab") as f:
        f.write(b"s-6,6\r\n")
    wait_until(lambda: "s-6" in sink_ids(sink), 30, "the changed file taken again")
    wait_until(lambda: len(sink.records()) == 11, 10, "the changed file's six records")
    check_eq(len(sink.records()), 11, "the changed file's six records, once")


@test
def inotify_and_poll_fallback():
    sink = start_sink()
    d = folders()
    pb = Patchbay(conf(d, sink, extra="poll_interval: 1h"))
    t0 = time.monotonic()
    filegen.write_csv(os.path.join(d["inbox"], "w.csv"), "w", 3)
    wait_until(lambda: len(sink_ids(sink)) == 3, 10, "the file taken through inotify")
    check(time.monotonic() - t0 < scaled(10), "taken long before the poll")
    pb.term()
    sink2 = start_sink()
    d2 = folders()
    pb2 = Patchbay(conf(d2, sink2, extra="watch: false\n        poll_interval: 200ms"))
    filegen.write_jsonl(os.path.join(d2["inbox"], "p.jsonl"), "p", 4)
    os.rename(os.path.join(d2["inbox"], "p.jsonl"), os.path.join(d2["inbox"], "p.csv"))
    with open(os.path.join(d2["inbox"], "p.csv"), "w") as f:
        f.write("id\np-1\np-2\n")
    wait_until(lambda: len(sink_ids(sink2)) == 2, 10, "the file taken by polling")
    pb2.term()


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


@test
def large_file_in_flat_memory():
    """A 150 MB CSV streams through in bounded memory (the peak RSS stays
    far below the file's size)."""
    d = folders()
    path = os.path.join(d["stage"], "big.csv")
    with open(path, "wb") as f:
        f.write(b"id,payload\n")
        row = 0
        chunk = []
        while f.tell() < 150 * 1024 * 1024:
            for _ in range(1000):
                row += 1
                chunk.append(b"big-%d,%s\n" % (row, b"z" * 6000))
            f.write(b"".join(chunk))
            chunk = []
    pb = Patchbay(CONF.replace("""      sink:
        http:
          url: "%(sink)s/in"
          map: '{id: (.id // ."@id"), file: $meta.name, record: $meta.record, line: $meta.line}'""",
                               "      drop: { drop: {} }") % {
        "inbox": d["inbox"], "archive": d["archive"], "errors": d["errors"], "format": "csv",
        "min_age": "0s", "batch": 500, "extra": "max_record: 64KiB"})
    base = rss_kb(pb.proc.pid)
    os.rename(path, os.path.join(d["inbox"], "big.csv"))
    wait_until(lambda: os.listdir(d["archive"]) == ["big.csv"], 300, "the big file archived")
    peak = rss_kb(pb.proc.pid)
    m = pb.metrics()
    check_eq(m.value("patchbay_messages_accepted_total", pipeline="files"), row, "every row taken")
    check(peak - base < 80 * 1024, f"peak RSS grew by {(peak - base) // 1024} MiB for a 150 MiB "
                                    f"file (base {base // 1024} MiB)")


if __name__ == "__main__":
    run()
