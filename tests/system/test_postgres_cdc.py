"""The postgres_cdc input against a real PostgreSQL (one cluster for the
module, wal_level=logical, a database per case):

- the shape of a change: insert, update (with the old row under REPLICA
  IDENTITY FULL), delete and truncate, values typed as the sql input types
  them, one transaction's changes sharing its xid and commit_lsn;
- an initial snapshot taken while a writer is busy, then streaming: every
  row's versions arrive in order, each exactly once (no gap and no overlap
  between the snapshot and the stream), through a long transaction larger
  than one submit, five kill -9 of patchbay and a PostgreSQL restart;
  the LSN confirmed to PostgreSQL never passes the checkpoint committed to
  patchbay's store, and it advances to the end of the WAL;
- an idle database with heartbeats while another database writes: the
  slot's retained WAL stays small, the lag is in /api/inputs and the
  metrics, and no heartbeat becomes a message."""

import json
import os
import re
import sqlite3
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    check,
    check_eq,
    log,
    run,
    start_sink,
    test,
    wait_until,
)
from srv_postgres import PgError, lsn_int, start_postgres  # noqa: E402

PG = start_postgres()

CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  erp:
    input:
      postgres_cdc:
        dsn: "%(dsn)s"
        slot: %(slot)s
        publication: %(slot)s
        tables: [%(tables)s]
        snapshot: %(snapshot)s
        heartbeat: %(heartbeat)s
        status_interval: 200ms
        snapshot_batch: 250
        connect_timeout: 2s
    outputs:
      sink:
        http:
          url: "%(sink)s/changes"
          retry: { max_attempts: 1000, initial: 50ms, max: 1s }
"""


def conf(db, slot, sink, tables="public.items", snapshot="initial", heartbeat="1m"):
    return CONF % {"dsn": PG.dsn(db), "slot": slot, "tables": tables, "snapshot": snapshot,
                   "heartbeat": heartbeat, "sink": sink.url}


class Db:
    """A connection that survives PostgreSQL restarts: a statement whose
    connection is lost runs again (an insert that did commit then stops at
    its primary key; an update runs twice, which is just one more version)."""

    def __init__(self, db):
        self.db = db
        self.c = PG.connect(db)

    def run(self, sql):
        for _ in range(600):
            try:
                return self.c.query(sql)
            except PgError as e:
                if e.code == "23505":
                    try:
                        self.c.query("ROLLBACK")
                    except (PgError, OSError):
                        pass
                    return None
                if not e.code.startswith("57P") and not e.code.startswith("08"):
                    raise
            except OSError:
                pass
            time.sleep(0.1)
            try:
                self.c = PG.connect(self.db, timeout=5)
            except (OSError, PgError):
                pass
        raise AssertionError("PostgreSQL did not come back")


def changes(sink):
    """The changes received: (message id, body) in the order answered, a
    message delivered twice (a result lost with a kill -9) once."""
    seen, out = set(), []
    for r in sink.records():
        mid = r["headers"].get("idempotency-key", "").rsplit(".", 1)[0]
        if mid in seen:
            continue
        seen.add(mid)
        out.append((mid, json.loads(r["body"])))
    return out


LSN = re.compile(r"^[0-9A-F]+/[0-9A-F]+$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@test
def the_shape_of_a_change():
    PG.create_db("shape")
    db = Db("shape")
    db.run("CREATE TABLE items (id bigint PRIMARY KEY, amount numeric(30,10), big bigint, "
           "raw bytea, at timestamptz, doc jsonb, note text)")
    db.run("ALTER TABLE items REPLICA IDENTITY FULL")
    db.run("CREATE TABLE notes (a int, b text, PRIMARY KEY (a, b))")
    db.run("INSERT INTO items VALUES (1, '12345678901234567890.0123456789', "
           "9223372036854775807, '\\x00ff10', '2024-05-01 12:00:00.5+02', '{\"n\": [1, null]}', "
           "'before')")
    sink = start_sink()
    pb = Patchbay(conf("shape", "shape", sink, tables="public.items, public.notes"))
    wait_until(lambda: len(changes(sink)) >= 1, 30, "the snapshot row")
    db.run("BEGIN; UPDATE items SET note = 'after', amount = amount + 1 WHERE id = 1; "
           "INSERT INTO notes VALUES (7, 'x'); COMMIT")
    db.run("DELETE FROM items WHERE id = 1")
    db.run("TRUNCATE notes")
    wait_until(lambda: len(changes(sink)) >= 5, 30, "five changes")
    # rows of different keys may arrive in any order: commit order is the LSNs'
    got = sorted((b for _, b in changes(sink)),
                 key=lambda b: (lsn_int(b["commit_lsn"]), lsn_int(b["lsn"])))
    for b in got:
        check_eq(sorted(b), sorted(["op", "schema", "table", "key", "before", "after", "lsn",
                                    "commit_lsn", "commit_time", "xid"]), f"fields of {b}")
        check(LSN.match(b["lsn"]) and LSN.match(b["commit_lsn"]), f"LSNs of {b}")
    read, upd, ins, dele, trunc = got[:5]
    row = {"id": 1, "amount": "12345678901234567890.0123456789", "big": "9223372036854775807",
           "raw": "AP8Q", "at": "2024-05-01T10:00:00.5Z", "doc": {"n": [1, None]},
           "note": "before"}
    check_eq((read["op"], read["schema"], read["table"], read["key"], read["before"],
              read["after"], read["commit_time"], read["xid"]),
             ("read", "public", "items", {"id": 1}, None, row, None, None), "the snapshot row")
    row2 = dict(row, amount="12345678901234567891.0123456789", note="after")
    check_eq((upd["op"], upd["key"], upd["before"], upd["after"]),
             ("update", {"id": 1}, row, row2), "the update (old row: REPLICA IDENTITY FULL)")
    check_eq((ins["op"], ins["table"], ins["key"], ins["before"], ins["after"]),
             ("insert", "notes", {"a": 7, "b": "x"}, None, {"a": 7, "b": "x"}), "the insert")
    check_eq((upd["xid"], upd["commit_lsn"], upd["commit_time"]),
             (ins["xid"], ins["commit_lsn"], ins["commit_time"]), "one transaction")
    check(isinstance(upd["xid"], int) and RFC3339.match(upd["commit_time"]),
          f"xid and commit_time: {upd}")
    check(lsn_int(upd["lsn"]) < lsn_int(ins["lsn"]) <= lsn_int(ins["commit_lsn"]),
          "LSNs in order within the transaction")
    check_eq((dele["op"], dele["key"], dele["before"], dele["after"]),
             ("delete", {"id": 1}, row2, None), "the delete")
    check_eq((trunc["op"], trunc["table"], trunc["key"], trunc["after"]),
             ("truncate", "notes", None, None), "the truncate")
    check(lsn_int(upd["commit_lsn"]) < lsn_int(dele["commit_lsn"]) < lsn_int(trunc["commit_lsn"]),
          "commit order")
    st, doc = pb.admin("GET", "/api/inputs")
    check_eq(st, 200, "GET /api/inputs")
    check_eq(doc["inputs"][0]["position"][:11], "slot=shape ", "the position in /api/inputs")


def checkpoint_lsn(pb):
    """The postgres_cdc checkpoint committed in patchbay's store:
    (phase, lsn as an integer), or None."""
    try:
        c = sqlite3.connect(f"file:{pb.dir}/state.db?mode=ro", uri=True, timeout=5)
        try:
            rows = c.execute("SELECT value FROM kv WHERE key = 'lsn'").fetchall()
        finally:
            c.close()
    except sqlite3.Error:
        return None
    for (v,) in rows:
        try:
            ck = json.loads(v)
        except ValueError:
            continue
        return ck.get("phase"), lsn_int(ck.get("lsn", "0/0"))
    return None


class Writer(threading.Thread):
    """Inserts (v = 1), updates (v + 1) and deletes rows of items, a
    transaction at a time, until stopped."""

    def __init__(self, db, first_id):
        super().__init__(daemon=True)
        self.db, self.next_id = Db(db), first_id
        self.stop = threading.Event()
        self.errors, self.steps = [], 0

    def run(self):
        try:
            while not self.stop.is_set():
                s = self.steps
                ids = range(self.next_id, self.next_id + 10)
                self.db.run("INSERT INTO items (id, v, note) VALUES " +
                            ", ".join(f"({i}, 1, 'w')" for i in ids))
                self.next_id += 10
                ups = "; ".join(f"UPDATE items SET v = v + 1 WHERE id = {(s * 37 + j * 101) % 2000 + 1}"
                                for j in range(4))
                self.db.run(f"BEGIN; {ups}; COMMIT")
                self.db.run(f"UPDATE items SET v = v + 1 WHERE id = {self.next_id - 3}")
                if s % 5 == 0:
                    self.db.run(f"DELETE FROM items WHERE id = {self.next_id - 7}")
                self.steps += 1
                time.sleep(0.01)
        except Exception as e:  # reported by the test
            self.errors.append(e)


class Sampler(threading.Thread):
    """The slot's confirmed LSN, read before the checkpoint in the store:
    the confirmed position must never pass what is committed."""

    def __init__(self, pb, slot):
        super().__init__(daemon=True)
        self.pb, self.slot = pb, slot
        self.stop = threading.Event()
        self.bad, self.samples = [], 0

    def run(self):
        while not self.stop.is_set():
            try:
                s = PG.slot(self.slot)
            except Exception:  # PostgreSQL restarting
                s = None
            ck = checkpoint_lsn(self.pb)
            if s and s["confirmed_flush_lsn"] and ck and ck[0] == "stream":
                self.samples += 1
                if lsn_int(s["confirmed_flush_lsn"]) > ck[1]:
                    self.bad.append((s["confirmed_flush_lsn"], ck))
            time.sleep(0.02)


def check_chains(got, final):
    """Each row's changes, in the order received: a read of any version or
    an insert of version 1 first, then version + 1 at each update, then
    maybe a delete; rows still there end at their version in the table."""
    chains = {}
    for _, b in got:
        row = b["after"] or b["before"] or b["key"]
        chains.setdefault(int(b["key"]["id"]), []).append((b["op"], row.get("v")))
    bad = []
    for i, ch in chains.items():
        op, v = ch[0]
        ok = op == "read" or (op == "insert" and v == 1)
        for (op2, v2) in ch[1:]:
            if op == "delete":
                ok = False  # nothing after a delete (ids are never reused)
            elif op2 == "update":
                ok = ok and v2 == v + 1
                v = v2
            elif op2 != "delete":
                ok = False
            op = op2
        if i in final:
            ok = ok and op != "delete" and v == final[i]
        else:
            ok = ok and op == "delete"
        if not ok:
            bad.append((i, ch, final.get(i)))
    missing = set(final) - set(chains)
    return bad, missing


@test
def snapshot_stream_kill9_and_a_restart_lose_and_double_nothing():
    PG.create_db("erp")
    db = Db("erp")
    db.run("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text)")
    db.run("INSERT INTO items (id, v, note) SELECT g, 1, 'seed' FROM generate_series(1, 2000) g")
    sink = start_sink()
    w = Writer("erp", 10001)
    w.start()  # busy while the snapshot is read
    pb = Patchbay(conf("erp", "erp", sink))
    sampler = Sampler(pb, "erp")
    sampler.start()
    wait_until(lambda: len(changes(sink)) > 2500, 120, "the snapshot and the first changes")

    # a long transaction, larger than one submit, with two changes per row,
    # open across the kills
    long_db = Db("erp")
    long_db.run("BEGIN")
    for k in range(5):
        lo = 500001 + k * 300
        long_db.run(f"INSERT INTO items (id, v, note) SELECT g, 1, 'long' "
                    f"FROM generate_series({lo}, {lo + 299}) g")
        long_db.run(f"UPDATE items SET v = 2 WHERE id BETWEEN {lo} AND {lo + 299}")
        n = len(sink.records())
        wait_until(lambda: len(sink.records()) > n + 50, 60, f"progress before kill {k + 1}")
        pb.kill9()
        pb.start()
    long_db.run("COMMIT")

    def long_seen():
        return sum(1 for _, b in changes(sink) if b["after"] and b["after"].get("note") == "long")
    wait_until(long_seen, 60, "the long transaction", interval=0.005)
    log(f"killed with {long_seen()} of the long transaction's 3000 changes delivered")
    pb.kill9()  # maybe in the middle of the long transaction's parts
    pb.start()
    PG.stop()  # the walsender and the writer lose their sessions
    PG.start()
    n = len(sink.records())
    wait_until(lambda: len(sink.records()) > n + 100, 60, "changes after the restart")
    w.stop.set()
    w.join(timeout=120)
    check(not w.is_alive() and not w.errors, f"writer: {w.errors}")
    end = PG.value("SELECT pg_current_wal_lsn()::text", "erp")
    final = {int(i): int(v) for i, v in PG.query("SELECT id, v FROM items", "erp")}

    def complete():
        bad, missing = check_chains(changes(sink), final)
        return not bad and not missing
    try:
        wait_until(complete, 120, f"every change of {len(final)} rows")
    finally:
        bad, missing = check_chains(changes(sink), final)
        log(f"rows not right: {len(bad)} {bad[:3]}, missing: {len(missing)} {sorted(missing)[:5]}")
    wait_until(lambda: lsn_int(PG.slot("erp")["confirmed_flush_lsn"]) >= lsn_int(end), 60,
               f"the slot confirmed up to {end}")
    sampler.stop.set()
    sampler.join(timeout=30)
    got = changes(sink)
    log(f"{len(got)} changes, {len(sink.records())} requests, {w.steps} writer steps, "
        f"{pb.starts} starts, {sampler.samples} samples")
    check(sampler.samples > 20, "the confirmed LSN was sampled")
    check_eq(sampler.bad[:5], [], "confirmed LSN past the committed checkpoint")
    # no change made into two messages
    keys = [(b["op"], b["table"], json.dumps(b["key"]), b["lsn"]) for _, b in got]
    check_eq(len(keys), len(set(keys)), "changes made into one message each")
    long_rows = [b for _, b in got if b["after"] and b["after"].get("note") == "long"]
    check_eq(len(long_rows), 3000, "the long transaction's changes")
    check_eq(len({b["commit_lsn"] for b in long_rows}), 1, "one commit_lsn")
    check_eq(pb.dead_letters(pipeline="erp"), [], "dead letters")
    log_text = pb.log()
    check("postgres_cdc" in log_text and ("stream" in log_text), "the outage is in the log")


BUSY = 3000


@test
def heartbeats_keep_an_idle_slot_small():
    PG.create_db("idle")
    PG.create_db("busy")
    Db("idle").run("CREATE TABLE items (id int PRIMARY KEY, v int)")
    busy = Db("busy")
    busy.run("CREATE TABLE t (id serial PRIMARY KEY, pad text)")
    sink = start_sink()
    pb = Patchbay(conf("idle", "idle", sink, snapshot="never", heartbeat="300ms"))
    wait_until(lambda: PG.slot("idle") and PG.slot("idle")["active"], 30, "the slot in use")
    # a second slot sees what is written in the idle database: the heartbeats
    PG.query("SELECT pg_create_logical_replication_slot('probe', 'test_decoding')", "idle")
    start = lsn_int(PG.value("SELECT pg_current_wal_lsn()::text"))
    for _ in range(10):  # about 30 MB of WAL in another database
        busy.run(f"INSERT INTO t (pad) SELECT repeat('x', 1000) FROM generate_series(1, {BUSY})")
    written = lsn_int(PG.value("SELECT pg_current_wal_lsn()::text")) - start
    check(written > 20 << 20, f"WAL written elsewhere: {written}")

    def small():
        PG.query("CHECKPOINT")  # logs the running transactions the slot moves on with
        s = PG.slot("idle")
        return s["retained_bytes"] < 4 << 20 and s["lag_bytes"] < 1 << 20
    wait_until(small, 60, "the idle slot's retained WAL small", interval=0.5)
    log("slot", PG.slot("idle"))

    def lag_shown():
        st, doc = pb.admin("GET", "/api/inputs")
        lag = doc["inputs"][0].get("lag_bytes")
        m = pb.metrics().get("patchbay_input_lag_bytes", pipeline="erp")
        return lag is not None and lag < 1 << 20 and m is not None
    wait_until(lag_shown, 30, "a small lag in /api/inputs and the metrics")
    wait_until(lambda: "patchbay.heartbeat" in str(PG.query(
        "SELECT data FROM pg_logical_slot_get_changes('probe', NULL, NULL)", "idle")), 30,
        "heartbeats in the idle database's WAL")
    PG.query("SELECT pg_drop_replication_slot('probe')", "idle")
    check_eq(sink.records(), [], "heartbeats are not changes")


if __name__ == "__main__":
    run()
