"""srv_postgres - a throwaway PostgreSQL cluster for system tests: initdb in a
temporary directory, started on 127.0.0.1 with a free port (never the
machine's own instance), wal_level=logical so logical replication works, and a
small client speaking the wire protocol (simple queries, trust / cleartext /
MD5 / SCRAM-SHA-256 authentication) to look at it.

    from srv_postgres import Postgres
    pg = Postgres()                          # initdb once, started, waited for
    pg.create_db("erp")
    c = pg.connect("erp")                    # a Client; autocommit
    c.query("CREATE TABLE t (id int PRIMARY KEY, v text)")
    rows = c.query("SELECT id, v FROM t")    # [("1", "a"), ...]: text, None for NULL
    c.value("SELECT count(*) FROM t")        # the first column of the first row
    pg.dsn("erp")                            # postgres://postgres@127.0.0.1:PORT/erp
    pg.kill9(); pg.start()                   # same port, same data
    pg.psql("erp", "SELECT 1")               # psql itself, for what the client lacks

Options: Postgres(settings={"max_wal_senders": "20"}, password="pw") adds to
postgresql.conf; with a password the superuser needs it (scram-sha-256 over
TCP) and dsn() carries it. The server runs as the `postgres` user when the
tests run as root (initdb refuses root), through setpriv.

Standard library only.
"""

import base64
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
import socket
import struct
import subprocess

from servers import Server, port_open
from pbtest import TestFailure, wait_until

BIN = None
for v in ("17", "16", "15", "14", "13"):
    if os.path.exists(f"/usr/lib/postgresql/{v}/bin/postgres"):
        BIN = f"/usr/lib/postgresql/{v}/bin"
        break


class PgError(Exception):
    """An ErrorResponse: fields holds the message fields (S, C, M, D...)."""

    def __init__(self, fields):
        self.fields = fields
        self.code = fields.get("C", "")
        super().__init__(f"{fields.get('C', '')} {fields.get('M', '')}")


class Client:
    """A blocking client: simple-query protocol, results as text (None for
    NULL). Autocommit unless the SQL says BEGIN."""

    def __init__(self, port, dbname="postgres", user="postgres", password=None,
                 host="127.0.0.1", timeout=60, params=None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.user, self.password = user, password
        self.params = {}
        startup = {"user": user, "database": dbname, "client_encoding": "UTF8"}
        startup.update(params or {})
        body = struct.pack("!I", 196608)
        for k, v in startup.items():
            body += k.encode() + b"\0" + v.encode() + b"\0"
        body += b"\0"
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        self._auth()

    # -- framing ------------------------------------------------------------------------

    def _recv(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("postgres closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _msg(self):
        head = self._recv(5)
        kind, ln = head[:1], struct.unpack("!I", head[1:])[0]
        return kind, self._recv(ln - 4)

    def _send(self, kind, body):
        self.sock.sendall(kind + struct.pack("!I", len(body) + 4) + body)

    @staticmethod
    def _fields(body):
        out = {}
        for part in body.split(b"\0"):
            if part:
                out[part[:1].decode()] = part[1:].decode("utf-8", "replace")
        return out

    # -- authentication -----------------------------------------------------------------

    def _auth(self):
        while True:
            kind, body = self._msg()
            if kind == b"E":
                raise PgError(self._fields(body))
            if kind == b"R":
                code = struct.unpack("!I", body[:4])[0]
                if code == 0:
                    continue
                if code == 3:  # cleartext
                    self._send(b"p", (self.password or "").encode() + b"\0")
                elif code == 5:  # md5
                    salt = body[4:8]
                    inner = hashlib.md5(((self.password or "") + self.user).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + salt).hexdigest()
                    self._send(b"p", b"md5" + outer.encode() + b"\0")
                elif code == 10:  # SASL
                    self._scram()
                else:
                    raise TestFailure(f"postgres auth method {code} not supported by the client")
            elif kind == b"S":
                k, v = body[:-1].split(b"\0", 1)
                self.params[k.decode()] = v.decode()
            elif kind == b"Z":
                return

    def _scram(self):
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        first_bare = f"n=,r={nonce}"
        msg = b"n,," + first_bare.encode()
        self._send(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(msg)) + msg)
        kind, body = self._msg()
        if kind == b"E":
            raise PgError(self._fields(body))
        server_first = body[4:].decode()
        attrs = dict(x.split("=", 1) for x in server_first.split(","))
        salt, iters = base64.b64decode(attrs["s"]), int(attrs["i"])
        salted = hashlib.pbkdf2_hmac("sha256", (self.password or "").encode(), salt, iters)
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored = hashlib.sha256(client_key).digest()
        final_bare = f"c=biws,r={attrs['r']}"
        auth_msg = f"{first_bare},{server_first},{final_bare}".encode()
        sig = hmac.new(stored, auth_msg, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        self._send(b"p", f"{final_bare},p={base64.b64encode(proof).decode()}".encode())
        kind, body = self._msg()  # SASLFinal
        if kind == b"E":
            raise PgError(self._fields(body))

    # -- queries ------------------------------------------------------------------------

    def query(self, sql):
        """Run sql (one or more statements); the rows of the last result as
        tuples of text (None for NULL). Raises PgError."""
        self._send(b"Q", sql.encode() + b"\0")
        rows, err, cur = [], None, []
        while True:
            kind, body = self._msg()
            if kind == b"T":
                cur = []
            elif kind == b"D":
                n = struct.unpack("!H", body[:2])[0]
                pos, row = 2, []
                for _ in range(n):
                    ln = struct.unpack("!i", body[pos:pos + 4])[0]
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(body[pos:pos + ln].decode("utf-8"))
                        pos += ln
                cur.append(tuple(row))
            elif kind == b"C":
                rows = cur
            elif kind == b"E":
                err = PgError(self._fields(body))
            elif kind == b"Z":
                if err:
                    raise err
                return rows
            # N (notice), S, A, I: ignored

    def value(self, sql):
        rows = self.query(sql)
        return rows[0][0] if rows and rows[0] else None

    def close(self):
        try:
            self._send(b"X", b"")
            self.sock.close()
        except OSError:
            pass


def quote(s):
    """A SQL string literal."""
    return "'" + str(s).replace("'", "''") + "'"


class Postgres(Server):
    name = "postgres"
    start_timeout = 60

    def __init__(self, port=None, start=True, settings=None, password=None):
        self.settings = dict(settings or {})
        self.password = password
        if BIN is None:
            raise TestFailure("PostgreSQL server binaries not found: ./dev.sh installs postgresql")
        super().__init__(port=port, start=start)

    @property
    def data(self):
        return os.path.join(self.dir, "data")

    def _as_postgres(self):
        """argv prefix that runs a command as the postgres user when we are root."""
        if os.geteuid() != 0:
            return []
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]

    def prepare(self):
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            # the directories above ours must let the postgres user through
            d = self.dir
            while d not in ("/", "/tmp", ""):
                os.chmod(d, os.stat(d).st_mode | 0o711)
                d = os.path.dirname(d)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        argv = self._as_postgres() + [
            f"{BIN}/initdb", "-D", self.data, "-U", "postgres", "--no-sync", "-E", "UTF8",
            "--locale=C", "--auth-local=trust",
            "--auth-host=" + ("scram-sha-256" if self.password else "trust")]
        pwfile = None
        if self.password:
            pwfile = os.path.join(self.dir, "pw")
            with open(pwfile, "w") as f:
                f.write(self.password)
            if os.geteuid() == 0:
                os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
            argv.append("--pwfile=" + pwfile)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if pwfile:
            os.unlink(pwfile)
        if r.returncode != 0:
            raise TestFailure(f"initdb failed:\n{r.stdout}\n{r.stderr}")
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.dir}'",
            "wal_level": "logical",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "max_connections": "60",
            "shared_buffers": "32MB",
            "fsync": "off",  # the OS keeps what a kill -9 of postgres leaves
            "full_page_writes": "off",
            "synchronous_commit": "on",
            "wal_sender_timeout": "60s",
            "checkpoint_timeout": "30s",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        conf.update(self.settings)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        method = "scram-sha-256" if self.password else "trust"
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\n")
            f.write("local replication all trust\n")
            f.write(f"host all all 127.0.0.1/32 {method}\n")
            f.write(f"host replication all 127.0.0.1/32 {method}\n")

    def argv(self):
        return self._as_postgres() + [f"{BIN}/postgres", "-D", self.data]

    def ready(self):
        if not port_open(self.port):
            return False
        try:
            c = self.connect(timeout=5)
        except (OSError, PgError, ConnectionError):
            return False  # starting up, or in recovery
        c.close()
        return True

    # -- clients ------------------------------------------------------------------------

    def connect(self, dbname="postgres", timeout=60, **params):
        return Client(self.port, dbname=dbname, password=self.password, timeout=timeout,
                      params=params)

    def query(self, sql, dbname="postgres"):
        c = self.connect(dbname)
        try:
            return c.query(sql)
        finally:
            c.close()

    def value(self, sql, dbname="postgres"):
        rows = self.query(sql, dbname)
        return rows[0][0] if rows and rows[0] else None

    def dsn(self, dbname="postgres", user="postgres"):
        pw = f":{self.password}" if self.password else ""
        return f"postgres://{user}{pw}@127.0.0.1:{self.port}/{dbname}"

    def create_db(self, name):
        self.query(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.query(f'CREATE DATABASE "{name}"')

    def psql(self, dbname, sql):
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD"] = self.password
        r = subprocess.run([f"{BIN}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                            "-d", dbname, "-c", sql],
                           capture_output=True, text=True, timeout=120, env=env)
        if r.returncode != 0:
            raise TestFailure(f"psql failed: {r.stderr}")
        return r.stdout

    # -- replication ----------------------------------------------------------------------

    def slot(self, name):
        """The row of pg_replication_slots for slot name as a dict, or None."""
        rows = self.query(
            "SELECT slot_name, active::text, restart_lsn::text, confirmed_flush_lsn::text, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint::text, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint::text "
            f"FROM pg_replication_slots WHERE slot_name = {quote(name)}")
        if not rows:
            return None
        r = rows[0]
        return {"slot_name": r[0], "active": r[1] == "true", "restart_lsn": r[2],
                "confirmed_flush_lsn": r[3], "retained_bytes": int(r[4] or 0),
                "lag_bytes": int(r[5] or 0)}

    # -- life cycle -------------------------------------------------------------------------

    def stop(self, timeout=60):
        """A fast shutdown (SIGINT: active sessions are ended)."""
        if not self.running():
            return
        self._signal_group(2)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()

    def kill9(self):
        super().kill9()
        self.wait_port_closed()


def lsn_int(text):
    """'0/16B3748' -> an integer, for comparisons."""
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


_started = []


def start_postgres(**kw):
    """One PostgreSQL for the test module; removed when the module ends."""
    pg = Postgres(**kw)
    _started.append(pg)
    return pg


import atexit  # noqa: E402


@atexit.register
def _cleanup():
    for pg in _started:
        pg.kill9()
        shutil.rmtree(pg.dir, ignore_errors=True)


__all__ = ["Postgres", "Client", "PgError", "quote", "lsn_int", "start_postgres", "TestFailure"]
