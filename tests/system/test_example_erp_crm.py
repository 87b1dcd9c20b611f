"""examples/erp-postgres-crm run as it ships, against a real PostgreSQL (one
throwaway cluster for the module, wal_level=logical) with pb_sink as the CRM:

- the rows already in the ERP's tables come first (the snapshot), then
  inserts, updates and deletes of customers and orders as the CRM's upserts
  and deletes of contacts and deals, amounts as exact decimal strings, with
  the CRM's bearer key and an Idempotency-Key;
- a truncate sends nothing;
- a kill -9 of patchbay in the middle of a stream of updates: after the
  restart every version of the order reaches the CRM, in commit order, and
  none is lost (a request sent again after the kill carries the same
  Idempotency-Key)."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (Patchbay, check, check_eq, free_port, run, start_sink, test,  # noqa: E402
                    tmpdir, wait_until)
from srv_postgres import start_postgres  # noqa: E402

PG = start_postgres()
HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "..", "examples", "erp-postgres-crm", "patchbay.yaml")

SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text,
                        updated_at timestamptz NOT NULL DEFAULT '2026-12-01T09:00:00Z');
CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL, total numeric(16,2),
                     currency text, status text,
                     updated_at timestamptz NOT NULL DEFAULT '2026-12-01T09:00:00Z');
"""


def start(db, crm, data):
    with open(EXAMPLE) as f:
        conf = f.read()
    port, token = free_port(), "example-token"
    pb = Patchbay(conf, port=port, token=token, start=False, env={
        "ERP_DSN": PG.dsn(db), "CDC_SLOT": "crm_" + db, "CRM_URL": crm.url + "/crm/sync",
        "CRM_API_KEY": "crm-secret-key", "PATCHBAY_LISTEN": f"127.0.0.1:{port}",
        "PATCHBAY_DATA": data, "PATCHBAY_ADMIN_TOKEN": token})
    pb.start()
    return pb


def bodies(crm):
    return [json.loads(r["body"]) for r in crm.records() if r["status"] == 200]


@test
def example_erp_postgres_crm_runs():
    PG.create_db("erp")
    db = PG.connect("erp")
    db.query(SCHEMA)
    db.query("INSERT INTO customers (id, name, email) VALUES (1, 'Ada', 'ada@example.com')")
    db.query("INSERT INTO orders (id, customer_id, total, currency, status) "
             "VALUES (10, 1, 5.00, 'EUR', 'open')")
    crm = start_sink()
    pb = start("erp", crm, tmpdir("data"))

    # The snapshot: what was there when the slot was made.
    wait_until(lambda: len(bodies(crm)) >= 2, 60, "the snapshot's two rows at the CRM")
    snap = sorted(bodies(crm), key=lambda b: b["external_id"])
    check_eq([(b["object"], b["action"], b["external_id"], b["source"]["op"]) for b in snap],
             [("contact", "upsert", "erp-customers-1", "read"),
              ("deal", "upsert", "erp-orders-10", "read")], "the snapshot as upserts")
    check_eq(snap[1]["fields"]["amount"], "5.00", "an amount as an exact decimal string")

    # Changes, in one transaction and in several.
    db.query("BEGIN; INSERT INTO customers (id, name, email) VALUES (2, 'Grace', 'grace@example.com');"
             "INSERT INTO orders (id, customer_id, total, currency, status) "
             "VALUES (11, 2, 12345678901234.99, 'EUR', 'open'); COMMIT")
    db.query("UPDATE orders SET status = 'paid' WHERE id = 11")
    db.query("DELETE FROM customers WHERE id = 1")
    db.query("TRUNCATE orders")  # sends nothing
    db.query("INSERT INTO customers (id, name, email) VALUES (3, 'Marker', 'm@example.com')")
    # Different rows may reach the CRM in any order (one row's changes in
    # commit order): wait for all five, then compare them as a set.
    wait_until(lambda: len(bodies(crm)) >= 7, 60, "the five changes after the snapshot")
    got = bodies(crm)[2:]
    check_eq(sorted((b["object"], b["action"], b["external_id"], b["source"]["op"]) for b in got),
             [("contact", "delete", "erp-customers-1", "delete"),
              ("contact", "upsert", "erp-customers-2", "insert"),
              ("contact", "upsert", "erp-customers-3", "insert"),
              ("deal", "upsert", "erp-orders-11", "insert"),
              ("deal", "upsert", "erp-orders-11", "update")],
             "every change once, the truncate left out")
    by_id = {b["external_id"]: b for b in got}
    order = [b for b in got if b["external_id"] == "erp-orders-11"]
    check_eq([o["fields"]["stage"] for o in order], ["open", "paid"], "one row's versions in order")
    check_eq(order[0]["fields"]["amount"], "12345678901234.99", "a large amount exactly")
    check_eq(order[0]["fields"]["contact_external_id"], "erp-customers-2", "the order's contact")
    check_eq(by_id["erp-customers-1"]["fields"], None, "a delete carries no fields")
    check_eq(by_id["erp-customers-2"]["fields"]["name"], "Grace", "the contact's fields")
    rec = [r for r in crm.records() if r["status"] == 200]
    check(all(r["headers"].get("authorization") == "Bearer crm-secret-key" for r in rec),
          "the CRM key on every request")
    keys = [r["headers"].get("idempotency-key") for r in rec]
    check(all(keys) and len(set(keys)) == len(keys), f"a distinct Idempotency-Key each: {keys}")
    check("crm-secret-key" not in pb.log(), "the CRM key is not logged")

    # kill -9 in the middle of a stream of updates of one order: every version
    # arrives after the restart, in commit order.
    db.query("INSERT INTO orders (id, customer_id, total, currency, status) "
             "VALUES (20, 2, 0.00, 'EUR', 'v0')")
    for i in range(1, 61):
        db.query(f"UPDATE orders SET status = 'v{i}', total = {i}.01 WHERE id = 20")
        if i == 30:
            pb.kill9()
    pb.start()
    versions = lambda: [b["fields"]["stage"] for b in bodies(crm)  # noqa: E731
                        if b["external_id"] == "erp-orders-20"]
    wait_until(lambda: "v60" in versions(), 90, "the last version after the restart")
    seen = []
    for r in crm.records():
        if r["status"] != 200:
            continue
        b = json.loads(r["body"])
        if b["external_id"] == "erp-orders-20":
            seen.append((r["headers"]["idempotency-key"], b["fields"]["stage"]))
    once = []
    for key, stage in seen:  # a request repeated after the kill has the same key
        if (key, stage) not in once:
            once.append((key, stage))
    check_eq([s for _, s in once], [f"v{i}" for i in range(61)],
             "every version of the order once, in commit order, through kill -9")
    check_eq(len({k for k, _ in once}), 61, "one key per change")
    check_eq(pb.term(), 0, "a clean stop")
    db.close()


if __name__ == "__main__":
    run()
