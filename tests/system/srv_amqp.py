"""srv_amqp - a RabbitMQ server (Debian's rabbitmq-server) for system tests.

Started without systemd on 127.0.0.1 and free ports (AMQP, distribution and
its own epmd), with its node name, data, logs, configuration and Erlang
cookie (HOME) in a temporary directory, so tests never touch the machine's
own node nor share an epmd with another test. epmd runs in the foreground in
the server's process group, so kill9() takes the whole Erlang VM and its
epmd with it.

RabbitMQ takes several seconds to start: a test module starts one for all
its cases. The pbtest runner kills every process it knows of after each
case, so this server is kept out of that list and killed when the module
ends (or the interpreter is told to stop):

    from srv_amqp import RabbitMQ
    rmq = RabbitMQ.module()        # one per module
    rmq.url                        # amqp://guest:guest@127.0.0.1:PORT/%2f
    rmq.queues()                   # {name: (ready, unacked)} via rabbitmqctl
    rmq.kill9(); rmq.start()
    rmq.declare("q", binds=["ex:key:topic"]); rmq.publish("ex", "key", 100)
    rmq.consume("q")               # [{body, message_id, headers, ...}] (pb_amqp)

Standard library only.
"""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile

import json

import pbtest
from pbtest import PB_SINK, TestFailure, scaled
from servers import Server, port_open

RABBIT_BIN = "/usr/lib/rabbitmq/bin"
# tests/tools/pb_amqp.c, built next to pb_sink
PB_AMQP = os.environ.get("PB_AMQP") or os.path.join(os.path.dirname(PB_SINK), "pb_amqp")

_module_server = None


class RabbitMQ(Server):
    name = "rabbitmq"
    start_timeout = 90

    def __init__(self, port=None, start=True, tls=False):
        # tls: an amqps listener too, with a certificate for "localhost"
        # only, signed by a CA of the test's own (self.ca_file).
        amqp, self.dist_port, self.epmd_port, tls_port = _free_ports(4)
        self.tls_port = tls_port if tls else None
        self.ca_file = None
        super().__init__(port=port or amqp, start=start)

    @classmethod
    def module(cls, **kw):
        """The server shared by every case of the calling test module."""
        global _module_server
        if _module_server is None:
            # Under a root of its own, not the first case's (removed when it passes).
            case_root = pbtest._tmp_root
            pbtest._tmp_root = tempfile.mkdtemp(prefix="pbtest-rabbitmq-")
            try:
                server = cls(start=False, **kw)
            finally:
                pbtest._tmp_root = case_root
            atexit.register(server._cleanup)
            _chain_term(server)
            server.start()
            _module_server = server
        return _module_server

    @property
    def node(self):
        return f"pbt{self.port}@localhost"

    @property
    def url(self):
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2f"

    def env(self):
        e = dict(os.environ)
        d = self.dir
        e.update({
            "HOME": d,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": os.path.join(d, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(d, "log"),
            "RABBITMQ_CONFIG_FILE": os.path.join(d, "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(d, "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": os.path.join(d, "plugins-expand"),
            "RABBITMQ_PID_FILE": os.path.join(d, "rabbitmq.pid"),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(d, "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(d, "advanced.config"),
            "RABBITMQ_LOGS": "-",
            "ERL_CRASH_DUMP": os.path.join(d, "erl_crash.dump"),
        })
        e.pop("RABBITMQ_ALLOW_INPUT", None)
        return e

    def _make_certs(self):
        d = os.path.join(self.dir, "tls")
        os.makedirs(d)

        def ossl(*args):
            r = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True)
            if r.returncode != 0:
                raise TestFailure(f"openssl {' '.join(args)}: {r.stderr}")

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=pbtest amqp CA")
        ossl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
        with open(os.path.join(d, "ext.cnf"), "w") as f:
            f.write("subjectAltName=DNS:localhost\n")
        ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
        self.ca_file = os.path.join(d, "ca.pem")
        return ("listeners.ssl.default = 127.0.0.1:@TLS_PORT@\n"
                f"ssl_options.cacertfile = {self.ca_file}\n"
                f"ssl_options.certfile = {os.path.join(d, 'server.pem')}\n"
                f"ssl_options.keyfile = {os.path.join(d, 'server.key')}\n"
                "ssl_options.verify = verify_none\n"
                "ssl_options.fail_if_no_peer_cert = false\n")

    def prepare(self):
        d = self.dir
        for sub in ("mnesia", "log", "plugins-expand"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        self._tls_conf = self._make_certs() if self.tls_port else ""
        for name, text in (("enabled_plugins", "[].\n"), ("rabbitmq-env.conf", ""),
                           ("advanced.config", "[].\n")):
            with open(os.path.join(d, name), "w") as f:
                f.write(text)

    def _write_conf(self):
        tls = self._tls_conf.replace("@TLS_PORT@", str(self.tls_port))
        with open(os.path.join(self.dir, "rabbitmq.conf"), "w") as f:
            f.write(
                f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
                "loopback_users = none\n"
                "disk_free_limit.absolute = 10MB\n"
                "log.console = true\n"
                "log.console.level = info\n"
                "log.file = false\n" + tls
            )

    def argv(self):
        # epmd in the foreground, in this process group; the server after it.
        script = (
            f"epmd -port {self.epmd_port} -address 127.0.0.1 & "
            f"exec {RABBIT_BIN}/rabbitmq-server"
        )
        return ["/bin/sh", "-c", script]

    def ready(self):
        if not port_open(self.port) or (self.tls_port and not port_open(self.tls_port)):
            return False
        # The port opens before the boot steps end: ask the node itself.
        r = self.ctl("await_startup", "--timeout", "5", check_rc=False, timeout=30)
        return r.returncode == 0

    def ctl(self, *args, check_rc=True, timeout=60):
        r = subprocess.run([f"{RABBIT_BIN}/rabbitmqctl", "-n", self.node, *args],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env=self.env(), timeout=scaled(timeout))
        if check_rc and r.returncode != 0:
            raise TestFailure(f"rabbitmqctl {' '.join(args)} -> {r.returncode}:\n"
                              f"{r.stdout}\n{r.stderr}")
        return r

    def queues(self):
        """{queue: (messages_ready, messages_unacknowledged)} of vhost /."""
        r = self.ctl("list_queues", "-q", "--no-table-headers", "name", "messages_ready",
                     "messages_unacknowledged")
        out = {}
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3:
                out[parts[0]] = (int(parts[1]), int(parts[2]))
        return out

    def consumers(self, queue):
        r = self.ctl("list_consumers", "-q", "--no-table-headers", "queue_name", "channel_pid")
        return sum(1 for line in r.stdout.splitlines() if line.split()[:1] == [queue])

    # -- the pb_amqp tool -------------------------------------------------------------

    def tool(self, *args, timeout=120):
        if not os.access(PB_AMQP, os.X_OK):
            raise TestFailure(f"pb_amqp not executable: {PB_AMQP!r}")
        r = subprocess.run([PB_AMQP, args[0], self.url, *map(str, args[1:])],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=scaled(timeout))
        if r.returncode != 0:
            raise TestFailure(f"pb_amqp {' '.join(map(str, args))} -> {r.returncode}:\n"
                              f"{r.stdout}\n{r.stderr}")
        return r.stdout

    def declare(self, queue, binds=(), delete=False):
        args = ["declare", queue]
        for b in binds:
            args += ["--bind", b]
        if delete:
            args.append("--delete")
        self.tool(*args)

    def publish(self, exchange, key, count, start=0, id_prefix=None, poison=(), rich=False,
                transient=False):
        args = ["publish", exchange, key, count, "--start", start]
        if id_prefix is not None:
            args += ["--id-prefix", id_prefix]
        for n in poison:
            args += ["--poison", n]
        if rich:
            args.append("--rich")
        if transient:
            args.append("--transient")
        return self.tool(*args, timeout=300).strip()

    def consume(self, queue, idle=2, count=None):
        """Take (and ack) what the queue holds until it is idle for `idle` s."""
        path = os.path.join(self.dir, f"consumed-{queue}.jsonl")
        args = ["consume", queue, "--idle", idle, "--out", path]
        if count is not None:
            args += ["--count", count]
        self.tool(*args, timeout=300)
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def ready_count(self, queue):
        """Messages ready in the queue (passive declare through AMQP: fast)."""
        return int(self.tool("count", queue).split()[0])

    def purge(self, queue):
        self.tool("purge", queue)

    # -- life cycle -----------------------------------------------------------------------

    def start(self, timeout=None):
        # free_port() races with every other test of the machine: a port
        # taken in the meantime fails the start. The first start moves to
        # other ports; later ones keep the AMQP ports clients know.
        first = self.starts == 0
        for attempt in range(4):
            if not self._prepared:
                self.prepare()
                self._prepared = True
            self._write_conf()
            try:
                super().start(timeout)
                break
            except TestFailure:
                self.kill9()
                if attempt == 3 or not _port_clash(self.tail(200)):
                    raise
                amqp, self.dist_port, self.epmd_port, tls_port = _free_ports(4, avoid={
                    self.port, self.tls_port})
                if first:
                    self.port = amqp
                    self.tls_port = tls_port if self.tls_port else None
        # Out of pbtest's list: the runner kills it after each case otherwise.
        with pbtest._procs_lock:
            if self.proc in pbtest._procs:
                pbtest._procs.remove(self.proc)
        return self

    def stop(self, timeout=60):
        if not self.running():
            return
        self.ctl("stop", check_rc=False, timeout=timeout)
        try:
            self.proc.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            pass
        self.kill9()  # epmd, and whatever did not go

    def kill9(self):
        super().kill9()
        self.wait_port_closed()

    def _cleanup(self):
        if self.proc is not None:
            self._signal_group(signal.SIGKILL)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(os.path.dirname(self.dir), ignore_errors=True)


def _free_ports(n, avoid=()):
    """n distinct ports of 127.0.0.1 that were free a moment ago (free_port()
    twice in a row may give the same one)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            p = s.getsockname()[1]
            if p not in avoid:
                ports.append(p)
    finally:
        for s in socks:
            s.close()
    return ports


def _port_clash(log):
    return any(m in log for m in ("already_used", "eaddrinuse", "could not bind",
                                  "Address already in use"))


def _chain_term(server):
    """SIGTERM (a ctest timeout) kills the server too, then does what pbtest does."""
    prev = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        server._cleanup()
        if callable(prev):
            prev(signum, frame)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
