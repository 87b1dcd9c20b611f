"""srv_mqtt - a mosquitto broker for system tests, and a small MQTT 3.1.1 /
5 client to feed and read it.

    from srv_mqtt import Mosquitto, Client
    b = Mosquitto.module()                   # one broker for every case of the module
    b = Mosquitto()                          # 127.0.0.1, free port, persistence in its dir
    b = Mosquitto(users={"u": "secret"})     # no anonymous access
    b = Mosquitto(tls=True)                  # a TLS listener too (b.tls_port, b.ca_file)
    c = Client(b.port, "tester")             # clean session
    c.publish_many("in/a", [b'{"i":1}', ...])  # QoS 1, pipelined, every PUBACK awaited
    c.subscribe(["out/#"]); msgs = c.receive(10)

The broker keeps sessions and queued QoS 1 messages on disk (persistence,
autosave every second and on exit), queues without limit for offline
persistent sessions, and logs to mosquitto.log in its directory.

The pbtest runner kills the processes a case started and removes its
temporary root when it passes; the broker of Mosquitto.module() lives under
a root of its own, out of that list, until the interpreter exits (or is
sent SIGTERM), so a module starts it once.

Standard library only; the client is independent of patchbay's own, so the
tests do not check patchbay's MQTT with itself.
"""

import atexit
import os
import pwd
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time

import pbtest
from pbtest import TestFailure, scaled, wait_until
from servers import Server, port_open

MOSQUITTO = "/usr/sbin/mosquitto"
_module_brokers = {}


class Mosquitto(Server):
    name = "mosquitto"

    def __init__(self, port=None, start=True, users=None, tls=False, max_inflight=None):
        self.users = users
        self.tls = tls
        self.max_inflight = max_inflight
        self.tls_port = None
        self.ca_file = None
        self.module_owned = False
        super().__init__(port=port, start=start)

    @classmethod
    def module(cls, **kw):
        """The broker shared by every case of the calling module (one per
        set of options)."""
        key = repr(sorted(kw.items()))
        if key not in _module_brokers:
            case_root = pbtest._tmp_root
            pbtest._tmp_root = tempfile.mkdtemp(prefix="pbtest-mosquitto-")
            try:
                b = cls(start=False, **kw)
                b.module_owned = True
                b.start()
            finally:
                pbtest._tmp_root = case_root
            atexit.register(b._cleanup)
            _chain_term(b)
            _module_brokers[key] = b
        b = _module_brokers[key]
        if not b.running():
            b.start()
        return b

    def start(self, timeout=None):
        super().start(timeout)
        if self.module_owned:
            with pbtest._procs_lock:
                if self.proc in pbtest._procs:
                    pbtest._procs.remove(self.proc)
        return self

    def _cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self._signal_group(signal.SIGKILL)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(os.path.dirname(self.dir), ignore_errors=True)

    def prepare(self):
        conf = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            "max_queued_messages 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
        ]
        if self.max_inflight is not None:
            conf.append(f"max_inflight_messages {self.max_inflight}")
        if self.users:
            pw = os.path.join(self.dir, "passwords")
            open(pw, "w").close()
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", pw, user, password], check=True,
                               capture_output=True)
            os.chmod(pw, 0o600)
            conf += ["allow_anonymous false", f"password_file {pw}"]
        else:
            conf.append("allow_anonymous true")
        if self.tls:
            from pbtest import free_port
            self.tls_port = free_port()
            self._make_certs()
            conf += [f"listener {self.tls_port} 127.0.0.1",
                     f"cafile {self.ca_file}",
                     f"certfile {self.dir}/server.crt",
                     f"keyfile {self.dir}/server.key"]
        with open(os.path.join(self.dir, "mosquitto.conf"), "w") as f:
            f.write("\n".join(c for c in conf if c) + "\n")

    def _make_certs(self):
        """A CA and a server certificate for localhost (openssl CLI)."""
        d = self.dir
        self.ca_file = os.path.join(d, "ca.crt")

        def run(*args):
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=patchbay test CA", "-keyout", "ca.key", "-out", "ca.crt")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout",
            "server.key", "-out", "server.csr")
        with open(os.path.join(d, "ext.cnf"), "w") as f:
            f.write("subjectAltName=DNS:localhost\n")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt")

    def argv(self):
        return [MOSQUITTO, "-c", os.path.join(self.dir, "mosquitto.conf")]

    def ready(self):
        if not port_open(self.port):
            return False
        return self.tls_port is None or port_open(self.tls_port)

    @property
    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def _chain_term(server):
    """SIGTERM (a ctest timeout) takes the broker down too, then does what
    pbtest does."""
    prev = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        server._cleanup()
        if callable(prev):
            prev(signum, frame)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)


# ---- a small client ---------------------------------------------------------------------


def _varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 128
        out.append(b)
        if not n:
            return bytes(out)


def _str(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("!H", len(s)) + s


class Message:
    def __init__(self, topic, payload, qos, retain, dup, pid, props=b""):
        self.topic, self.payload, self.qos = topic, payload, qos
        self.retain, self.dup, self.pid, self.props = retain, dup, pid, props

    def __repr__(self):
        return f"Message({self.topic!r}, {self.payload[:60]!r}, qos={self.qos}, dup={self.dup})"


class Client:
    """One MQTT connection. version 4 (3.1.1) or 5. auto_ack=False leaves QoS 1
    messages unacknowledged (the broker sends them again on the next
    connection of a persistent session)."""

    def __init__(self, port, client_id, clean=True, user=None, password=None, version=4,
                 keepalive=60, auto_ack=True, tls_ca=None, host="127.0.0.1", timeout=10):
        self.version = version
        self.auto_ack = auto_ack
        self.sock = socket.create_connection((host, port), timeout=scaled(timeout))
        if tls_ca:
            ctx = ssl.create_default_context(cafile=tls_ca)
            self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        self.next_pid = 0
        self.inbox = []  # messages read while waiting for something else
        flags = (0x02 if clean else 0) | (0x80 if user else 0) | (0x40 if password else 0)
        vh = _str("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
        if version == 5:
            props = b"" if clean else b"\x11" + struct.pack("!I", 0xFFFFFFFF)
            vh += _varint(len(props)) + props
        payload = _str(client_id)
        if user:
            payload += _str(user)
        if password:
            payload += _str(password)
        self._send(0x10, vh + payload)
        t, _, body = self._read_packet()
        if t != 2:
            raise TestFailure(f"expected CONNACK, got packet type {t}")
        self.session_present = bool(body[0] & 1)
        self.rc = body[1]
        if self.rc != 0:
            raise TestFailure(f"broker refused the connection: code {self.rc}")

    # -- wire --------------------------------------------------------------------------------

    def _send(self, first, body):
        self.sock.sendall(bytes([first]) + _varint(len(body)) + body)

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the broker")
        self.buf += data

    def _read_packet(self):
        while True:
            if len(self.buf) >= 2:
                n, mult, i = 0, 1, 1
                complete = False
                while i < len(self.buf):
                    b = self.buf[i]
                    n += (b & 127) * mult
                    mult *= 128
                    i += 1
                    if not b & 128:
                        complete = True
                        break
                if complete and len(self.buf) >= i + n:
                    first = self.buf[0]
                    body = self.buf[i:i + n]
                    self.buf = self.buf[i + n:]
                    return first >> 4, first & 15, body
            self._fill()

    def _pid(self):
        self.next_pid = self.next_pid % 65535 + 1
        return self.next_pid

    def _parse_publish(self, flags, body):
        tl = struct.unpack("!H", body[:2])[0]
        topic = body[2:2 + tl].decode("utf-8", "replace")
        pos = 2 + tl
        qos = (flags >> 1) & 3
        pid = 0
        if qos:
            pid = struct.unpack("!H", body[pos:pos + 2])[0]
            pos += 2
        props = b""
        if self.version == 5:
            n, mult = 0, 1
            while True:
                b = body[pos]
                pos += 1
                n += (b & 127) * mult
                mult *= 128
                if not b & 128:
                    break
            props = body[pos:pos + n]
            pos += n
        return Message(topic, body[pos:], qos, bool(flags & 1), bool(flags & 8), pid, props)

    def _handle(self, t, flags, body):
        """Packets that arrive unasked: PUBLISH goes to the inbox."""
        if t == 3:
            m = self._parse_publish(flags, body)
            if m.qos == 1 and self.auto_ack:
                self.ack(m)
            self.inbox.append(m)
            return True
        return False

    # -- operations ----------------------------------------------------------------------------

    def ack(self, m):
        self._send(0x40, struct.pack("!H", m.pid))

    def publish_many(self, topic, payloads, qos=1, retain=False, window=200, props=b""):
        """Publish every payload (topic: a string or a function of the index),
        with up to `window` unacknowledged; returns once every PUBACK came."""
        pending = set()
        i = 0
        n = len(payloads)
        while i < n or pending:
            while i < n and len(pending) < window:
                t = topic(i) if callable(topic) else topic
                p = payloads[i]
                if isinstance(p, str):
                    p = p.encode()
                body = _str(t)
                if qos:
                    pid = self._pid()
                    body += struct.pack("!H", pid)
                    pending.add(pid)
                if self.version == 5:
                    body += _varint(len(props)) + props
                self._send(0x30 | (qos << 1) | (1 if retain else 0), body + p)
                i += 1
            if pending:
                t, flags, body = self._read_packet()
                if t == 4:
                    pending.discard(struct.unpack("!H", body[:2])[0])
                elif not self._handle(t, flags, body):
                    raise TestFailure(f"unexpected packet type {t} while publishing")

    def publish(self, topic, payload, qos=1, retain=False, props=b""):
        self.publish_many(topic, [payload], qos=qos, retain=retain, props=props)

    def subscribe(self, filters, qos=1):
        pid = self._pid()
        body = struct.pack("!H", pid)
        if self.version == 5:
            body += b"\x00"
        for f in filters:
            body += _str(f) + bytes([qos])
        self._send(0x82, body)
        while True:
            t, flags, b = self._read_packet()
            if t == 9 and struct.unpack("!H", b[:2])[0] == pid:
                codes = b[2:] if self.version != 5 else b[3:]
                if any(c >= 0x80 for c in codes):
                    raise TestFailure(f"subscription refused: {codes!r}")
                return
            self._handle(t, flags, b)

    def receive(self, n, timeout=30):
        """Read until n messages are in the inbox (or the scaled timeout);
        returns and empties the inbox."""
        deadline = time.monotonic() + scaled(timeout)
        while len(self.inbox) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(min(left, 1.0))
            try:
                t, flags, body = self._read_packet()
            except socket.timeout:
                continue
            self._handle(t, flags, body)
        self.sock.settimeout(None)
        got, self.inbox = self.inbox, []
        return got

    def receive_until(self, pred, timeout=30, what="a message"):
        """Read until pred(message) holds for one; returns every message read."""
        deadline = time.monotonic() + scaled(timeout)
        got = []
        while True:
            got += self.inbox
            self.inbox = []
            if any(pred(m) for m in got):
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestFailure(f"timed out waiting for {what} ({len(got)} other messages)")
            self.sock.settimeout(min(left, 1.0))
            try:
                t, flags, body = self._read_packet()
            except socket.timeout:
                continue
            self._handle(t, flags, body)

    def close(self, graceful=True):
        try:
            if graceful:
                self._send(0xE0, b"")
            self.sock.close()
        except OSError:
            pass


def leftover(port, client_id, sentinel_topic, timeout=30, **kw):
    """What a persistent session still holds for client_id: publish a sentinel
    to sentinel_topic (which the session subscribes to), connect as the
    session and read until the sentinel. Every message before it was left
    unacknowledged or queued. The caller's own patchbay must be stopped."""
    pub = Client(port, f"leftover-pub-{os.getpid()}", **kw)
    token = f"sentinel-{time.monotonic_ns()}".encode()
    pub.publish(sentinel_topic, token)
    pub.close()
    c = Client(port, client_id, clean=False, **kw)
    got = c.receive_until(lambda m: m.payload == token, timeout, "the sentinel")
    c.close()
    return [m for m in got if m.payload != token]


def wait_broker_log(broker, text, timeout=20):
    wait_until(lambda: text in broker.log(), timeout, f"{text!r} in the mosquitto log")


# ---- a scripted broker ------------------------------------------------------------------


class FakeBroker:
    """A listening socket the test scripts packet by packet, for what a real
    broker will not do on demand (a connection cut right after a PUBLISH, a
    PUBACK with a refusal code). accept() returns a FakeConn."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    @property
    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"

    def accept(self, timeout=30):
        self.sock.settimeout(scaled(timeout))
        try:
            s, _ = self.sock.accept()
        except socket.timeout:
            raise TestFailure("no connection came to the fake broker")
        return FakeConn(s)

    def close(self):
        self.sock.close()


class FakeConn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.version = 4
        self.connect = None

    def send(self, first, body):
        self.sock.sendall(bytes([first]) + _varint(len(body)) + body)

    def read(self, timeout=30):
        """The next packet (type, flags, body), or None when the peer closed."""
        deadline = time.monotonic() + scaled(timeout)
        while True:
            if len(self.buf) >= 2:
                n, mult, i, complete = 0, 1, 1, False
                while i < len(self.buf):
                    b = self.buf[i]
                    n += (b & 127) * mult
                    mult *= 128
                    i += 1
                    if not b & 128:
                        complete = True
                        break
                if complete and len(self.buf) >= i + n:
                    first, body = self.buf[0], self.buf[i:i + n]
                    self.buf = self.buf[i + n:]
                    return first >> 4, first & 15, body
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestFailure("timed out waiting for a packet from patchbay")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionError:
                return None
            if not data:
                return None
            self.buf += data

    def expect(self, ptype, timeout=30):
        p = self.read(timeout)
        if p is None or p[0] != ptype:
            raise TestFailure(f"expected packet type {ptype}, got {p and p[0]}")
        return p

    def handshake(self, session_present=False, rc=0):
        """Read CONNECT, answer CONNACK; returns the CONNECT's fields."""
        _, _, body = self.expect(1)
        self.version = body[6]
        flags = body[7]
        pos = 10
        if self.version == 5:
            n, mult = 0, 1
            while True:
                b = body[pos]
                pos += 1
                n += (b & 127) * mult
                mult *= 128
                if not b & 128:
                    break
            pos += n
        idl = struct.unpack("!H", body[pos:pos + 2])[0]
        cid = body[pos + 2:pos + 2 + idl].decode()
        self.connect = {"version": self.version, "clean": bool(flags & 2), "client_id": cid}
        ack = bytes([1 if session_present else 0, rc])
        if self.version == 5:
            ack += b"\x00"
        self.send(0x20, ack)
        return self.connect

    def suback(self):
        """Answer the next SUBSCRIBE, granting what it asked."""
        _, _, body = self.expect(8)
        pid = body[:2]
        pos = 2 + (1 if self.version == 5 else 0)
        codes = b""
        while pos < len(body):
            ln = struct.unpack("!H", body[pos:pos + 2])[0]
            pos += 2 + ln
            codes += bytes([body[pos] & 3])
            pos += 1
        self.send(0x90, pid + (b"\x00" if self.version == 5 else b"") + codes)

    def publish(self, topic, payload, pid, dup=False, qos=1):
        if isinstance(payload, str):
            payload = payload.encode()
        body = _str(topic) + (struct.pack("!H", pid) if qos else b"")
        if self.version == 5:
            body += b"\x00"
        self.send(0x30 | (0x08 if dup else 0) | (qos << 1), body + payload)

    def publish_then_break(self, topic, payload, pid):
        """A PUBLISH and, in the same write, a packet a broker never sends:
        patchbay takes the message and drops the connection at once."""
        body = _str(topic) + struct.pack("!H", pid) + (b"\x00" if self.version == 5 else b"")
        pub = bytes([0x32]) + _varint(len(body) + len(payload)) + body + payload
        self.sock.sendall(pub + bytes([0x10, 0x00]))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
