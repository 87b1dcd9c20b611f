"""The state store on PostgreSQL: the store's unit tests (tests/unit/
test_store.c, every op of the writer, the reads, migrations, two nodes
racing on one idempotency key) run against a throwaway PostgreSQL cluster
this module starts, each test in a schema of its own."""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import PB_BIN, check, run, scaled, test  # noqa: E402
from srv_postgres import Postgres  # noqa: E402

_pg = None


def pg():
    global _pg
    if _pg is None:
        _pg = Postgres()
        _pg.create_db("pbstore")
    return _pg


@test
def store_unit_tests_pass_on_postgres():
    binary = os.path.join(os.path.dirname(os.path.abspath(PB_BIN)), "test_store")
    check(os.access(binary, os.X_OK), f"no unit test binary at {binary}")
    tests_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    env = dict(os.environ, PB_TEST_STORE_URL=pg().dsn("pbstore"))
    r = subprocess.run([binary], cwd=tests_dir, env=env, capture_output=True, text=True,
                       timeout=scaled(200))
    tail = "\n".join((r.stdout + r.stderr).splitlines()[-40:])
    check(r.returncode == 0, f"test_store against PostgreSQL exited {r.returncode}:\n{tail}")
    check("0 failed" in r.stdout, f"summary:\n{tail}")
    # The PostgreSQL-only cases ran (not skipped as on SQLite).
    for name in ("two_nodes_same_key_make_one_message", "older_schema_refused_until_migrated"):
        check(f"ok   {name}" in r.stdout, f"{name} did not pass:\n{tail}")
    check("(PostgreSQL only)" not in r.stdout, "a PostgreSQL-only case was skipped")


if __name__ == "__main__":
    run()
