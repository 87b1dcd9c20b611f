"""srv_mariadb - a throwaway MariaDB server for system tests:
mariadb-install-db into a temporary directory, started on 127.0.0.1 with a
free port and a socket of its own (never the machine's instance), a user with
a password for the tests, and the `mariadb` command-line client to look at it.

    from srv_mariadb import MariaDB
    db = MariaDB()                         # installed once, started, waited for
    db.create_db("wms")
    db.query("wms", "CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
    rows = db.query("wms", "SELECT id, v FROM t")   # [["1", "a"], ...]; None for NULL
    db.value("wms", "SELECT COUNT(*) FROM t")
    db.dsn("wms")                          # mysql://pb:PASSWORD@127.0.0.1:PORT/wms
    db.kill9(); db.start()                 # same port, same data

Standard library only.
"""

import atexit
import os
import secrets
import shutil
import subprocess

from servers import Server, port_open
from pbtest import TestFailure

INSTALL = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
SERVER = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
CLIENT = shutil.which("mariadb") or shutil.which("mysql")


class MariaDB(Server):
    name = "mariadb"
    start_timeout = 60

    def __init__(self, port=None, start=True, user="pb", password=None):
        self.user = user
        self.password = password or "pw-" + secrets.token_hex(6)
        if not INSTALL or not CLIENT:
            raise TestFailure("MariaDB not found: ./dev.sh installs mariadb-server")
        self._user_made = False
        super().__init__(port=port, start=start)

    @property
    def data(self):
        return os.path.join(self.dir, "data")

    @property
    def socket(self):
        return os.path.join(self.dir, "mysqld.sock")

    def prepare(self):
        r = subprocess.run([INSTALL, "--no-defaults", f"--datadir={self.data}", "--user=root",
                            "--auth-root-authentication-method=normal", "--skip-test-db",
                            "--skip-name-resolve"],
                           capture_output=True, text=True, timeout=180)
        if r.returncode != 0:
            raise TestFailure(f"mariadb-install-db failed:\n{r.stdout}\n{r.stderr}")

    def argv(self):
        return [SERVER, "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
                "--bind-address=127.0.0.1", f"--socket={self.socket}", "--user=root",
                f"--pid-file={os.path.join(self.dir, 'mysqld.pid')}", "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=32M",
                "--innodb-flush-log-at-trx-commit=2", "--skip-log-bin", "--max-connections=100",
                "--character-set-server=utf8mb4", "--collation-server=utf8mb4_bin"]

    def ready(self):
        if not port_open(self.port):
            return False
        r = self._cli(None, "SELECT 1", root=True, check=False)
        if r.returncode != 0:
            return False
        if not self._user_made:
            self._cli(None, f"CREATE USER IF NOT EXISTS '{self.user}'@'%' IDENTIFIED BY "
                            f"'{self.password}'; GRANT ALL ON *.* TO '{self.user}'@'%'; "
                            "FLUSH PRIVILEGES", root=True)
            self._user_made = True
        return True

    # -- the client -------------------------------------------------------------------------

    def _cli(self, db, sql, root=False, check=True):
        argv = [CLIENT, "--no-defaults", "--batch", "--raw", "--skip-column-names",
                "--protocol=tcp", "-h", "127.0.0.1", "-P", str(self.port)]
        if root:
            argv += ["-u", "root"]
        else:
            argv += ["-u", self.user, f"-p{self.password}"]
        if db:
            argv += ["-D", db]
        r = subprocess.run(argv, input=sql, capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise TestFailure(f"mariadb: {r.stderr.strip()}\n(sql: {sql[:300]})")
        return r

    def query(self, db, sql):
        """Run sql; the rows of what it printed as lists of text (None for NULL)."""
        out = self._cli(db, sql).stdout
        rows = []
        for line in out.splitlines():
            rows.append([None if v == "NULL" else v for v in line.split("\t")])
        return rows

    def value(self, db, sql):
        rows = self.query(db, sql)
        return rows[0][0] if rows and rows[0] else None

    def create_db(self, name):
        self._cli(None, f"DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}`")

    def dsn(self, db):
        return f"mysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def kill9(self):
        super().kill9()
        self.wait_port_closed()


_started = []


def start_mariadb(**kw):
    """One MariaDB for the test module; removed when the module ends."""
    db = MariaDB(**kw)
    _started.append(db)
    return db


@atexit.register
def _cleanup():
    for db in _started:
        db.kill9()
        shutil.rmtree(db.dir, ignore_errors=True)


__all__ = ["MariaDB", "start_mariadb", "TestFailure"]
