"""srv_redis_streams - a real redis-server for the redis_streams tests, on
127.0.0.1 with a free port and a directory of its own (append-only file,
fsync on every write, so a kill -9 of Redis loses nothing acknowledged), and
a small RESP2 client to look at it.

    from srv_redis_streams import Redis
    r = Redis()                         # started, waited for
    c = r.client()
    c.call("XADD", "s", "*", "body", "{}")
    c.pipeline([("XADD", "s", "*", "body", str(i)) for i in range(1000)])
    r.pending("s", "g")                 # XPENDING summary count (the PEL)

Standard library only.
"""

import atexit
import os
import shutil
import socket

from servers import Server
from pbtest import TestFailure, wait_until


class RedisError(Exception):
    pass


class Client:
    """A blocking RESP2 client: call() one command, pipeline() many."""

    def __init__(self, port, host="127.0.0.1", timeout=30):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    @staticmethod
    def _encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            elif isinstance(a, int):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf += chunk

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            self._fill()

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._fill()
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise ConnectionError(f"bad RESP line {line!r}")

    def call(self, *args):
        self.sock.sendall(self._encode(args))
        r = self._read()
        if isinstance(r, RedisError):
            raise r
        return r

    def pipeline(self, commands, chunk=1000):
        """Send commands in chunks, each chunk in one write; returns the replies."""
        out = []
        for i in range(0, len(commands), chunk):
            part = commands[i:i + chunk]
            self.sock.sendall(b"".join(self._encode(c) for c in part))
            out += [self._read() for _ in part]
        for r in out:
            if isinstance(r, RedisError):
                raise r
        return out


def s(v):
    return v.decode() if isinstance(v, bytes) else v


class Redis(Server):
    name = "redis"

    def argv(self):
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--appendonly", "yes", "--appendfsync", "always",
                "--save", "", "--protected-mode", "no",
                "--daemonize", "no"]

    def ready(self):
        try:
            c = Client(self.port, timeout=2)
        except OSError:
            return False
        try:
            return c.call("PING") == "PONG"
        except (OSError, RedisError):  # LOADING while it reads its append-only file
            return False
        finally:
            c.close()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def client(self):
        return Client(self.port)

    def call(self, *args):
        c = self.client()
        try:
            return c.call(*args)
        finally:
            c.close()

    # -- what the tests look at ---------------------------------------------------------

    def pending(self, stream, group):
        """The group's pending entries (the PEL), 0 when there is no such group."""
        try:
            return self.call("XPENDING", stream, group)[0]
        except RedisError:
            return 0

    def pending_by_consumer(self, stream, group):
        try:
            r = self.call("XPENDING", stream, group)
        except RedisError:
            return {}
        return {s(c): int(n) for c, n in (r[3] or [])}

    def group_info(self, stream, group):
        for g in self.call("XINFO", "GROUPS", stream):
            d = {s(g[i]): g[i + 1] for i in range(0, len(g), 2)}
            if s(d["name"]) == group:
                return {k: s(v) for k, v in d.items()}
        return None

    def entries(self, stream):
        """Every entry as (id, {field: value}), values as bytes."""
        out, start = [], "-"
        while True:
            got = self.call("XRANGE", stream, start, "+", "COUNT", 5000)
            for eid, fields in got:
                out.append((s(eid), {s(fields[i]): fields[i + 1] for i in range(0, len(fields), 2)}))
            if len(got) < 5000:
                return out
            start = "(" + s(got[-1][0])

    def add_many(self, stream, bodies, field="body", extra=None):
        c = self.client()
        try:
            cmds = []
            for b in bodies:
                cmd = ["XADD", stream, "*", field, b]
                for k, v in (extra or {}).items():
                    cmd += [k, v]
                cmds.append(cmd)
            return [s(x) for x in c.pipeline(cmds)]
        finally:
            c.close()

    def kill9(self):
        super().kill9()
        self.wait_port_closed()


_started = []


def start_redis():
    """One Redis for the test module; removed when the module ends."""
    r = Redis()
    _started.append(r)
    return r


@atexit.register
def _cleanup():
    for r in _started:
        r.kill9()
        shutil.rmtree(r.dir, ignore_errors=True)


def wait_pel_empty(r, stream, group, timeout=60):
    wait_until(lambda: r.pending(stream, group) == 0, timeout,
               f"the pending entries list of {stream}/{group} to be empty")


__all__ = ["Redis", "Client", "RedisError", "start_redis", "wait_pel_empty", "TestFailure", "s"]
