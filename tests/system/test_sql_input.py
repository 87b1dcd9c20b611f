"""The sql input against real databases (one PostgreSQL and one MariaDB for
the module, a SQLite file per case):

- a table updated while it is polled, with many rows sharing one timestamp
  and pages that end in the middle of them, and patchbay killed -9 on the
  way: every row version becomes exactly one message (one message id per
  (id, version)), every row's last version arrives - on PostgreSQL (which is
  also restarted mid-run), MariaDB and SQLite;
- values keep their exact types (numeric as strings, bigint beyond 2^53 as
  strings, bytea base64, timestamps RFC 3339, json embedded, arrays);
- the DSN's password is in no log line, no lint output and no API answer."""

import json
import os
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
    run_cli,
    start_sink,
    test,
    tmpdir,
    wait_until,
)
from srv_mariadb import start_mariadb  # noqa: E402
from srv_postgres import PgError, start_postgres  # noqa: E402

PG = start_postgres()
MY = start_mariadb()

CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  poll:
    input:
      sql:
        driver: %(driver)s
        dsn: "%(dsn)s"
        query: >-
          SELECT id, updated_at, version, payload FROM events
          WHERE (updated_at, id) > (:updated_at, :id) ORDER BY updated_at, id LIMIT 37
        cursor: { columns: [updated_at, id], initial: ["%(initial)s", 0] }
        interval: 100ms
        connect_timeout: 2s
        timeout: 10s
    outputs:
      sink:
        http:
          url: "%(sink)s/rows"
          retry: { max_attempts: 1000, initial: 50ms, max: 1s }
"""

T0 = "2024-01-01 00:00:00"


def ts(k):
    """T0 plus k milliseconds, as text every database reads."""
    return "2024-01-01 00:%02d:%02d.%03d000" % (k // 60000, (k // 1000) % 60, k % 1000)


class PgTable:
    initial = "1970-01-01 00:00:00+00"
    driver = "postgres"

    def __init__(self, db):
        PG.create_db(db)
        self.db = db
        self.c = PG.connect(db)
        self.c.query("CREATE TABLE events (id bigint PRIMARY KEY, updated_at timestamptz "
                     "NOT NULL, version int NOT NULL, payload text)")

    def dsn(self):
        return PG.dsn(self.db)

    def run(self, sql):
        # PostgreSQL may be restarting: connect again; a statement whose
        # commit was lost with the connection runs again (an insert that did
        # commit then stops at its primary key)
        for _ in range(300):
            try:
                self.c.query(sql)
                return
            except PgError as e:
                if e.code == "23505":
                    return
                if not e.code.startswith("57P"):
                    raise
            except OSError:
                pass
            time.sleep(0.1)
            try:
                self.c = PG.connect(self.db, timeout=5)
            except (OSError, PgError):
                pass
        raise AssertionError("PostgreSQL did not come back")

    def final(self):
        rows = PG.query("SELECT id, version FROM events", self.db)
        return {(int(i), int(v)) for i, v in rows}


class MyTable:
    initial = "1970-01-01 00:00:00"
    driver = "mysql"

    def __init__(self, db):
        MY.create_db(db)
        self.db = db
        MY.query(db, "CREATE TABLE events (id BIGINT PRIMARY KEY, updated_at DATETIME(6) "
                     "NOT NULL, version INT NOT NULL, payload TEXT, KEY (updated_at, id))")

    def dsn(self):
        return MY.dsn(self.db)

    def run(self, sql):
        MY.query(self.db, sql)

    def final(self):
        return {(int(i), int(v)) for i, v in MY.query(self.db, "SELECT id, version FROM events")}


class LiteTable:
    initial = "1970-01-01 00:00:00"
    driver = "sqlite"

    def __init__(self, db):
        self.path = os.path.join(tmpdir("sqlite"), db + ".db")
        self.c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.c.execute("PRAGMA journal_mode=WAL")
        self.c.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, updated_at TEXT NOT NULL, "
                       "version INTEGER NOT NULL, payload TEXT)")

    def dsn(self):
        return "sqlite:" + self.path

    def run(self, sql):
        for _ in range(100):
            try:
                self.c.executescript(sql)
                return
            except sqlite3.OperationalError as e:  # locked by the reader for a moment
                if self.c.in_transaction:
                    self.c.execute("ROLLBACK")  # the whole script runs again
                if "locked" not in str(e):
                    raise
                time.sleep(0.02)
        raise AssertionError("sqlite stayed locked")

    def final(self):
        return {(i, v) for i, v in self.c.execute("SELECT id, version FROM events")}


def inserts(ids, when):
    return "INSERT INTO events (id, updated_at, version, payload) VALUES " + ", ".join(
        f"({i}, '{when}', 1, 'row {i}')" for i in ids) + ";"


def received(sink):
    """(id, version) -> set of message ids (from the Idempotency-Key header)."""
    out = {}
    for r in sink.records():
        body = json.loads(r["body"])
        key = r["headers"].get("idempotency-key", "")
        out.setdefault((int(body["id"]), int(body["version"])), set()).add(key.rsplit(".", 1)[0])
    return out


def every_row_once(table, faults):
    """2000 rows at one timestamp, then a writer adding rows 15 at a time
    at one timestamp each and updating others (two by two at one timestamp)
    while patchbay polls in pages of 37; faults() runs in the middle.
    Timestamps grow in commit order, as now() does for one writer."""
    table.run(inserts(range(1, 2001), ts(0)))
    sink = start_sink()
    pb = Patchbay(CONF % {"driver": table.driver, "dsn": table.dsn(), "initial": table.initial,
                          "sink": sink.url})
    done = threading.Event()
    errors = []

    def writer():
        try:
            next_id, k = 2001, 1
            for step in range(40):
                # new rows sharing one timestamp (pages of 37 end among them)
                table.run(inserts(range(next_id, next_id + 15), ts(k)))
                next_id += 15
                k += 1
                # updates move rows to later timestamps, in commit order
                ups = "".join(
                    f"UPDATE events SET version = version + 1, updated_at = '{ts(k + j // 2)}' "
                    f"WHERE id = {(step * 53 + j * 97) % (next_id - 1) + 1};" for j in range(8))
                # one transaction: two rows sharing a timestamp become visible
                # together, never the one with the smaller id after the other
                # was read (a cursor cannot see a row committed behind it)
                table.run("BEGIN;" + ups + "COMMIT;")
                k += 4
        except Exception as e:  # reported by the test
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    wait_until(lambda: len(sink.records()) > 300, 60, "the first pages")
    faults(pb)
    t.join(timeout=300)
    check(done.is_set() and not errors, f"writer: {errors}")
    want = table.final()

    def complete():
        got = received(sink)
        return want <= set(got)
    wait_until(complete, 120, f"every row's last version ({len(want)} rows)")
    wait_until(lambda: pb.metrics().value("patchbay_backlog", pipeline="poll") == 0, 60,
               "backlog 0")
    got = received(sink)
    doubles = {k: v for k, v in got.items() if len(v) > 1}
    check(not doubles, f"row versions made into more than one message: {list(doubles.items())[:5]}")
    ids = {i for i, _ in got}
    check_eq(ids, {i for i, _ in want}, "rows seen")
    log(f"{len(got)} row versions, {len(sink.records())} requests, {pb.starts} starts")
    return pb


def kill_and_restart(pb):
    pb.kill9()
    pb.start()


@test
def every_row_once_postgres():
    def faults(pb):
        kill_and_restart(pb)
        PG.stop()  # PostgreSQL restarted under the poller
        PG.start()
    pb = every_row_once(PgTable("poll_pg"), faults)
    check("query: " in pb.log() or "connect: " in pb.log(), "the outage is in the log")


@test
def every_row_once_mariadb():
    every_row_once(MyTable("poll_my"), kill_and_restart)


@test
def every_row_once_sqlite():
    every_row_once(LiteTable("poll_lite"), kill_and_restart)


TYPES = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  types:
    input:
      sql:
        dsn: "%(dsn)s"
        query: SELECT * FROM t WHERE id > :id ORDER BY id
        cursor: { columns: [id], initial: [0] }
        interval: 100ms
    outputs:
      sink: { http: { url: "%(sink)s/t" } }
"""


@test
def values_keep_their_types():
    PG.create_db("types")
    c = PG.connect("types")
    c.query("CREATE TABLE t (id int PRIMARY KEY, amount numeric(30,10), big bigint, small bigint, "
            "f float8, raw bytea, at timestamptz, local timestamp, day date, doc jsonb, "
            "tags text[], ok bool, nothing text)")
    c.query("INSERT INTO t VALUES (1, '12345678901234567890.0123456789', 9223372036854775807, "
            "42, 0.1, '\\x00ff10', '2024-05-01 12:00:00.123456+02', '2024-05-01 12:00:00', "
            "'2024-05-01', '{\"n\": 1.5, \"s\": [true, null]}', ARRAY['a', 'b,c'], true, NULL)")
    MY.create_db("types")
    MY.query("types", "CREATE TABLE t (id INT PRIMARY KEY, amount DECIMAL(30,10), big BIGINT "
                      "UNSIGNED, raw VARBINARY(8), at TIMESTAMP(6) NULL, local DATETIME, "
                      "bits BIT(12), f DOUBLE)")
    MY.query("types", "INSERT INTO t VALUES (1, '12345678901234567890.0123456789', "
                      "18446744073709551615, X'00FF10', '2024-05-01 10:00:00.123456', "
                      "'2024-05-01 12:00:00', b'101010101010', 0.1)")
    sink = start_sink()
    Patchbay(TYPES % {"dsn": PG.dsn("types"), "sink": sink.url})
    wait_until(lambda: sink.records(), 30, "the postgres row")
    row = json.loads(sink.records()[0]["body"])
    check_eq(row, {"id": 1, "amount": "12345678901234567890.0123456789",
                   "big": "9223372036854775807", "small": 42, "f": 0.1, "raw": "AP8Q",
                   "at": "2024-05-01T10:00:00.123456Z", "local": "2024-05-01T12:00:00",
                   "day": "2024-05-01", "doc": {"n": 1.5, "s": [True, None]},
                   "tags": ["a", "b,c"], "ok": True, "nothing": None}, "postgres row")
    sink2 = start_sink()
    Patchbay(TYPES % {"dsn": MY.dsn("types"), "sink": sink2.url})
    wait_until(lambda: sink2.records(), 30, "the mariadb row")
    row = json.loads(sink2.records()[0]["body"])
    check_eq(row, {"id": 1, "amount": "12345678901234567890.0123456789",
                   "big": "18446744073709551615", "raw": "AP8Q",
                   "at": "2024-05-01T10:00:00.123456Z", "local": "2024-05-01T12:00:00",
                   "bits": 2730, "f": 0.1}, "mariadb row")


@test
def the_password_is_never_shown():
    MY.create_db("secret")
    MY.query("secret", "CREATE TABLE events (id BIGINT PRIMARY KEY, updated_at DATETIME(6), "
                       "version INT, payload TEXT)")
    sink = start_sink()
    conf = CONF % {"driver": "mysql", "dsn": MY.dsn("secret"), "initial": "1970-01-01",
                   "sink": sink.url}
    pb = Patchbay(conf)
    st, doc = pb.admin("GET", "/api/inputs")
    check_eq(st, 200, "GET /api/inputs")
    check_eq(doc["inputs"][0]["state"], "connected", "the input connected")
    lint = run_cli("lint", pb.config_path)
    bad = Patchbay(conf.replace(MY.password, MY.password + "-wrong"), start=False)
    bad.start(wait_ready=False)
    wait_until(lambda: "Access denied" in bad.log(), 30, "the refused login in the log")
    st, doc2 = bad.admin("GET", "/api/inputs")
    for where, text in (("log", pb.log()), ("api", json.dumps(doc)), ("lint", lint.stdout +
                        lint.stderr), ("log of the refused login", bad.log()),
                        ("api of the refused login", json.dumps(doc2))):
        check(MY.password not in text, f"the password is in the {where}")
    check("mysql://pb@127.0.0.1" in pb.log(), "the redacted DSN is logged")


if __name__ == "__main__":
    run()
