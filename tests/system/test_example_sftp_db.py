"""examples/sftp-csv-to-postgres run as it ships: Debian's openssh-server on a
loopback port as the partner's SFTP server and a throwaway PostgreSQL as the
database (one of each for the module). A nightly `run --once` upserts the
rows of a good file into the stock table and archives it, moves a broken
file to failed/ with nothing of it written, exits 0 with the summary; a
second night's file with new quantities updates the same rows."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import Patchbay, check, check_eq, free_port, run, test, tmpdir  # noqa: E402
from srv_postgres import start_postgres  # noqa: E402
from srv_sftp import Sshd  # noqa: E402

SSHD = Sshd()
PG = start_postgres()
HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "..", "examples", "sftp-csv-to-postgres", "patchbay.yaml")


def night(sub, local, data, files):
    for name, body in files.items():
        path = os.path.join(local, name)
        with open(path, "wb") as f:
            f.write(body)
        old = time.time() - 3600  # min_age is 10s in the example
        os.utime(path, (old, old))
    with open(EXAMPLE) as f:
        conf = f.read()
    port, token = free_port(), "example-token"
    pb = Patchbay(conf, port=port, token=token, start=False, env={
        "SFTP_URL": SSHD.url(sub), "SFTP_KEY": SSHD.client_key,
        "SFTP_KNOWN_HOSTS": SSHD.known_hosts, "STOCK_DSN": PG.dsn("stock"),
        "PATCHBAY_LISTEN": f"127.0.0.1:{port}", "PATCHBAY_DATA": data,
        "PATCHBAY_ADMIN_TOKEN": token})
    pb.run_args = ["--once"]
    pb.start(wait_ready=False)
    check_eq(pb.proc.wait(timeout=120), 0, f"run --once: {pb.log()[-1500:]}")
    return pb


@test
def example_sftp_csv_to_postgres_runs():
    PG.create_db("stock")
    PG.query("CREATE TABLE stock (sku text NOT NULL, warehouse text NOT NULL, "
             "quantity numeric(12,2) NOT NULL CHECK (quantity >= 0), as_of text NOT NULL, "
             "source_file text, source_row int, PRIMARY KEY (sku, warehouse))", "stock")
    sub = "outbox"
    local = SSHD.path(sub)
    data = tmpdir("data")
    pb = night(sub, local, data, {
        "stock-20240507.csv": b"sku;warehouse;quantity\r\nA-100;BER;42\r\nB-200;HAM;7\r\n"
                              b"C-300;BER;12.50\r\n",
        "stock-20240508.csv": b"sku;warehouse;quantity\r\nD-400;BER\r\n"})
    rows = PG.query("SELECT sku, warehouse, quantity::text, as_of, source_file, "
                    "source_row::text FROM stock ORDER BY sku", "stock")
    check_eq(rows, [("A-100", "BER", "42.00", "20240507", "stock-20240507.csv", "1"),
                    ("B-200", "HAM", "7.00", "20240507", "stock-20240507.csv", "2"),
                    ("C-300", "BER", "12.50", "20240507", "stock-20240507.csv", "3")],
             "the good file's rows in the table")
    check_eq(os.listdir(os.path.join(local, "done")), ["stock-20240507.csv"], "archived")
    check_eq(sorted(os.listdir(os.path.join(local, "failed"))),
             ["stock-20240508.csv", "stock-20240508.csv.error.json"], "the broken file")
    check("run --once: 2 files (1 failed), 3 records, 3 delivered, 0 dead-lettered" in pb.log(),
          f"the summary line: {pb.log()[-800:]}")

    # The next night: new quantities for the same sku and warehouse update the
    # rows; a negative quantity breaks the table's CHECK and is dead-lettered
    # alone.
    pb = night(sub, local, data, {
        "stock-20240509.csv": b"sku;warehouse;quantity\r\nA-100;BER;40\r\nB-200;HAM;-1\r\n"
                              b"E-500;HAM;3\r\n"})
    rows = PG.query("SELECT sku, quantity::text, as_of FROM stock ORDER BY sku", "stock")
    check_eq(rows, [("A-100", "40.00", "20240509"), ("B-200", "7.00", "20240507"),
                    ("C-300", "12.50", "20240507"), ("E-500", "3.00", "20240509")],
             "upserted by sku and warehouse; the refused row left as it was")
    check("run --once: 1 file (0 failed), 3 records, 2 delivered, 1 dead-lettered" in pb.log(),
          f"the summary line: {pb.log()[-800:]}")
    check_eq(sorted(os.listdir(os.path.join(local, "done"))),
             ["stock-20240507.csv", "stock-20240509.csv"], "the second file archived")


if __name__ == "__main__":
    run()
