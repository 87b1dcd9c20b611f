"""servers - real servers for system tests, started on 127.0.0.1 with a free
port and a temporary directory, stopped when the test ends (or the
interpreter exits), never the machine's own instances.

A server module (tests/system/srv_<name>.py) subclasses Server: argv() says
how to run it, ready() when it takes connections. A test module starts one
server for all its cases (slow servers such as RabbitMQ or PostgreSQL start
once per module, not once per case: made at module level, before run(), a
server outlives each test and is stopped at exit) and may kill -9 it,
restart it on the same port, or stop it:

    from srv_redis import Redis
    r = Redis()                    # started, waited for
    r.kill9(); r.restart()         # same port, same data directory
    r.stop()

Standard library only.
"""

import os
import signal
import socket
import subprocess
import time

from pbtest import TestFailure, _in_test, _register, free_port, scaled, tmpdir, wait_until


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Server:
    """One server process. Subclasses set name and implement argv(); they may
    override env(), prepare() (once, before the first start) and ready()."""

    name = "server"
    start_timeout = 30

    def __init__(self, port=None, start=True):
        # Made before run() (outside any test): it serves every test of the
        # module, restarts included, and is stopped at exit.
        self.module_wide = not _in_test()
        self.dir = tmpdir(self.name)
        self.port = port or free_port()
        self.log_path = os.path.join(self.dir, f"{self.name}.log")
        self.proc = None
        self.starts = 0
        self._prepared = False
        if start:
            self.start()

    # -- to override --------------------------------------------------------------------

    def argv(self):
        raise NotImplementedError

    def env(self):
        return dict(os.environ)

    def prepare(self):
        """Once, before the first start (write a config, initialise a data dir)."""

    def ready(self):
        """True once the server takes connections (default: its port accepts)."""
        return port_open(self.port)

    # -- life cycle -----------------------------------------------------------------------

    def start(self, timeout=None):
        if not self._prepared:
            self.prepare()
            self._prepared = True
        if self.running():
            raise TestFailure(f"{self.name} already running")
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"==== servers: start #{self.starts}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=self.env(),
                                     start_new_session=True)
        _register(self.proc, self.module_wide)

        def up():
            if self.proc.poll() is not None:
                raise TestFailure(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")
            return self.ready()

        wait_until(up, timeout or self.start_timeout, f"{self.name} on port {self.port}")
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _signal_group(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill9(self):
        """kill -9 the server and every process it started."""
        if self.proc is not None:
            self._signal_group(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout=30):
        if not self.running():
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.proc.wait()

    def restart(self, timeout=None):
        """Stop (gracefully) if running, then start on the same port."""
        self.stop()
        return self.start(timeout)

    def wait_port_closed(self, timeout=10):
        deadline = time.monotonic() + scaled(timeout)
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def tail(self, n=40):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""
