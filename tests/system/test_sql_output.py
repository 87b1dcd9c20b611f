"""The sql output against real databases (one PostgreSQL and one MariaDB for
the module, a SQLite file per case):

- 10,000 rows upserted in batches of 500, ids written twice, and one row in
  the middle that violates a CHECK constraint: that row alone is
  dead-lettered with the database's reason, the 9,499 others are in, each
  with the amount of its last write, decimal strings landing exactly in
  numeric columns (19 digits before the point: no double could carry
  them); on PostgreSQL, MariaDB and SQLite;
- PostgreSQL killed -9 and patchbay killed -9 while rows go in with a
  key_column: batches cut by a lost connection are retried, rows written by
  an attempt whose result was lost count as delivered, and every row is in
  the table exactly once;
- a statement with args instead of a table."""

from decimal import Decimal
import json
import os
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    check,
    check_eq,
    log,
    post_many,
    run,
    test,
    tmpdir,
    wait_until,
)
from srv_mariadb import start_mariadb  # noqa: E402
from srv_postgres import start_postgres  # noqa: E402

PG = start_postgres()
MY = start_mariadb()

N = 10000
IDS = 9500
BAD_SEQ = 5000

UPSERT = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  load:
    input:
      generate:
        count: %(n)d
        batch: 1000
        interval: 0
        template: >-
          {id: (($meta.seq - 1) %% %(ids)d + 1),
           amount: (if $meta.seq == %(bad)d then "-1" else "1234567890123456789.\\($meta.seq)" end),
           name: "n\\($meta.seq)"}
    outputs:
      db:
        sql:
          dsn: "%(dsn)s"
          table: accounts
          columns: { id: .id, amount: .amount, name: .name }
          upsert: { key: [id] }
          batch: { count: 500, period: 100ms }
          retry: { max_attempts: 100, initial: 50ms, max: 1s }
"""


def expected():
    """id -> (amount, name) of its last write, without the refused one."""
    want = {}
    for seq in range(1, N + 1):
        if seq == BAD_SEQ:
            continue
        want[(seq - 1) % IDS + 1] = (f"1234567890123456789.{seq}", f"n{seq}")
    return want


def upsert_10000(dsn, rows, fix_amount=Decimal):
    pb = Patchbay(UPSERT % {"n": N, "ids": IDS, "bad": BAD_SEQ, "dsn": dsn})
    t0 = time.monotonic()
    def settled():
        m = pb.metrics()
        lab = {"pipeline": "load", "output": "db"}
        return (m.value("patchbay_deliveries_delivered_total", **lab) +
                m.value("patchbay_deliveries_dead_total", **lab) >= N and
                m.value("patchbay_backlog", **lab) == 0)
    wait_until(settled, 180, "10,000 deliveries settled")
    log(f"{N} upserts settled in {time.monotonic() - t0:.1f}s")
    m = pb.metrics()
    log("attempts", m.value("patchbay_delivery_attempts_total", pipeline="load", output="db"),
        "retried", m.value("patchbay_deliveries_retried_total", pipeline="load", output="db"))
    dead = pb.dead_letters(pipeline="load")
    check_eq(len(dead), 1, "dead letters")
    body = json.loads(dead[0].get("body") or "{}") if dead[0].get("body") else None
    if body is not None:
        check_eq(body["amount"], "-1", "the dead letter is the refused row")
    reason = dead[0].get("last_error") or ""
    check("constraint" in reason.lower() or "check" in reason.lower(),
          f"the reason names the constraint: {reason!r}")
    got = {int(i): (fix_amount(a), n) for i, a, n in rows()}
    want = {i: (fix_amount(a), n) for i, (a, n) in expected().items()}
    check_eq(len(got), len(want), "rows in the table")
    wrong = [(i, got.get(i), w) for i, w in want.items() if got.get(i) != w]
    check(not wrong, f"rows differ from their last write: {wrong[:5]}")
    return pb


@test
def upsert_postgres():
    PG.create_db("out_pg")
    c = PG.connect("out_pg")
    c.query("CREATE TABLE accounts (id bigint PRIMARY KEY, amount numeric(30,10) NOT NULL "
            "CHECK (amount >= 0), name text)")
    before = int(c.value("SELECT xact_commit FROM pg_stat_database WHERE datname = 'out_pg'"))
    # numeric(30,10) writes ten decimals: Decimal compares the value exactly
    upsert_10000(PG.dsn("out_pg"),
                 lambda: PG.query("SELECT id, amount::text, name FROM accounts", "out_pg"))
    after = int(c.value("SELECT xact_commit FROM pg_stat_database WHERE datname = 'out_pg'"))
    log(f"transactions: {after - before}")
    check(after - before < 400, f"rows went in batches ({after - before} transactions)")


@test
def upsert_mariadb():
    MY.create_db("out_my")
    MY.query("out_my", "CREATE TABLE accounts (id BIGINT PRIMARY KEY, amount DECIMAL(30,10) "
                       "NOT NULL CHECK (amount >= 0), name TEXT)")
    upsert_10000(MY.dsn("out_my"),
                 lambda: MY.query("out_my", "SELECT id, amount, name FROM accounts"))


@test
def upsert_sqlite():
    path = os.path.join(tmpdir("lite"), "out.db")
    db = sqlite3.connect(path)
    # SQLite has no exact decimal type: text keeps the digits
    db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, amount TEXT NOT NULL "
               "CHECK (amount NOT LIKE '-%'), name TEXT)")
    db.commit()
    db.close()

    def rows():
        c = sqlite3.connect(path)
        try:
            return c.execute("SELECT id, amount, name FROM accounts").fetchall()
        finally:
            c.close()
    upsert_10000("sqlite:" + path, rows, fix_amount=str)


FAULTS = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input:
      http_server: { path: /orders }
    outputs:
      db:
        sql:
          dsn: "%(dsn)s"
          table: orders
          columns: { seq: .seq, total: .total }
          key_column: delivery
          batch: { count: 200, period: 20ms }
          connect_timeout: 2s
          timeout: 5s
          retry: { max_attempts: 1000, initial: 50ms, max: 500ms, max_age: 1h }
"""


@test
def faults_retry_batches_and_write_each_row_once():
    PG.create_db("out_faults")
    PG.query("CREATE TABLE orders (delivery text UNIQUE NOT NULL, seq int NOT NULL, "
             "total numeric(12,2))", "out_faults")
    pb = Patchbay(FAULTS % {"dsn": PG.dsn("out_faults")})
    total = 6000
    url = pb.url + "/orders"
    acked = set()

    def send(lo, hi):
        res = post_many(url, [{"seq": s, "total": f"{s}.25"} for s in range(lo, hi)], 16)
        for s, (st, mid) in zip(range(lo, hi), res):
            if mid:
                acked.add(s)

    def count():
        return int(PG.value("SELECT count(*) FROM orders", "out_faults"))

    send(0, 2000)
    wait_until(lambda: count() > 200, 60, "rows going in")
    PG.kill9()  # batches in flight lose their connection
    send(2000, 3000)
    PG.start()
    wait_until(lambda: count() > 2000, 60, "rows going in again")
    send(3000, 4000)
    pb.kill9()  # attempts whose results were not recorded run again
    pb.start()
    send(4000, total)
    check_eq(len(acked), total, "every order acknowledged")
    wait_until(lambda: pb.metrics().value("patchbay_backlog", pipeline="orders") == 0, 120,
               "backlog 0")
    rows = PG.query("SELECT seq, total::text, delivery FROM orders", "out_faults")
    seqs = [int(s) for s, _, _ in rows]
    check_eq(len(seqs), total, "rows in the table")
    check_eq(set(seqs), set(range(total)), "one row per order")
    check(all(t == f"{s}.25" for s, t, _ in rows), "totals exact")
    check_eq(pb.dead_letters(pipeline="orders"), [], "dead letters")
    check("sql: " in pb.log(), "the lost connection is in the log")


STATEMENT = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  stock:
    input:
      http_server: { path: /stock }
    outputs:
      pg:
        sql:
          dsn: "%(pg)s"
          statement: >-
            INSERT INTO stock (sku, qty, doc) VALUES ($1, $2, $3::jsonb)
            ON CONFLICT (sku) DO UPDATE SET qty = stock.qty + EXCLUDED.qty, doc = EXCLUDED.doc
          args: [.sku, .qty, .doc]
      my:
        sql:
          dsn: "%(my)s"
          statement: >-
            INSERT INTO stock (sku, qty, ok) VALUES (?, ?, ?)
            ON DUPLICATE KEY UPDATE qty = qty + VALUES(qty), ok = VALUES(ok)
          args: [.sku, .qty, .ok]
"""


@test
def statement_with_args():
    PG.create_db("out_stmt")
    PG.query("CREATE TABLE stock (sku text PRIMARY KEY, qty int NOT NULL, doc jsonb)", "out_stmt")
    MY.create_db("out_stmt")
    MY.query("out_stmt", "CREATE TABLE stock (sku VARCHAR(20) PRIMARY KEY, qty INT NOT NULL, "
                         "ok BOOLEAN)")
    pb = Patchbay(STATEMENT % {"pg": PG.dsn("out_stmt"), "my": MY.dsn("out_stmt")})
    bodies = [{"sku": f"s{i % 3}", "qty": i, "doc": {"i": i}, "ok": i % 2 == 0}
              for i in range(1, 10)]
    for b in bodies:  # one at a time: the sums depend on nothing but the set
        check_eq(pb.post("/stock", b)[0], 202, "accepted")
    wait_until(lambda: pb.metrics().value("patchbay_backlog", pipeline="stock") == 0, 60,
               "backlog 0")
    want = {f"s{k}": sum(i for i in range(1, 10) if i % 3 == k) for k in range(3)}
    got = {s: int(q) for s, q in PG.query("SELECT sku, qty FROM stock", "out_stmt")}
    check_eq(got, want, "postgres stock")
    got = {s: int(q) for s, q in MY.query("out_stmt", "SELECT sku, qty FROM stock")}
    check_eq(got, want, "mariadb stock")
    check_eq(PG.value("SELECT doc::text FROM stock WHERE sku = 's0'", "out_stmt"), '{"i": 9}',
             "json argument")
    check_eq(MY.value("out_stmt", "SELECT ok FROM stock WHERE sku = 's0'"), "0", "boolean argument")


if __name__ == "__main__":
    run()
