"""pbtest - the harness system tests use to drive the real patchbay binary.

Each tests/system/test_*.py imports this module, registers test functions with
@test and ends with run(). ctest runs every file as `python3 FILE` with:

    PB_BIN       the patchbay binary
    PB_SINK      the pb_sink binary (tests/tools/pb_sink.c)
    PB_SANITIZE  "ON" when both were built with ASan/UBSan (timeouts x3)
    PB_STATE     "postgres" runs every daemon on a PostgreSQL state store: a
                 throwaway cluster (srv_postgres) started once per module,
                 a schema of its own per Patchbay; `state: sqlite:@DIR@/F`
                 in a config becomes that schema's postgres:// URL. Tests
                 about SQLite's file itself call sqlite_only() first.

Rules the helpers enforce: loopback only, every wait polls with a deadline
(never a fixed sleep standing in for synchronisation), every process started
here is killed when the test ends or the interpreter exits, and a sanitizer
report in any daemon log fails the test.

Standard library only (python3 from Debian 12).
"""

import atexit
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

PB_BIN = os.environ.get("PB_BIN", "")
PB_SINK = os.environ.get("PB_SINK", "")
SANITIZE = os.environ.get("PB_SANITIZE", "OFF").upper() in ("ON", "1", "TRUE", "YES")
SCALE = 3.0 if SANITIZE else 1.0
PB_STATE = os.environ.get("PB_STATE", "sqlite").strip().lower() or "sqlite"

_procs = []  # every Popen started through this module
_procs_lock = threading.Lock()


def scaled(seconds):
    """A timeout, stretched when the binaries run under sanitizers."""
    return seconds * SCALE


class TestFailure(Exception):
    pass


class TestSkipped(Exception):
    pass


def sqlite_only(why="reads the SQLite file itself"):
    """A case about the SQLite store: skipped under PB_STATE=postgres."""
    if PB_STATE != "sqlite":
        raise TestSkipped(f"SQLite only: {why}")


_state_pg = None  # PB_STATE=postgres: the module's PostgreSQL (srv_postgres)
_state_pg_lock = threading.Lock()
_SQLITE_STATE = re.compile(r'sqlite:@DIR@/[A-Za-z0-9_.-]+')


def state_postgres():
    """The module's PostgreSQL cluster for PB_STATE=postgres (started once)."""
    global _state_pg
    with _state_pg_lock:
        if _state_pg is None:
            from srv_postgres import Postgres  # imports this module: not at the top
            pg = Postgres()
            pg.create_db("patchbay")
            _state_pg = pg
        return _state_pg


def check(cond, what):
    if not cond:
        raise TestFailure(what)


def check_eq(got, want, what):
    if got != want:
        raise TestFailure(f"{what}: got {got!r}, want {want!r}")


def log(*args):
    print(*args, flush=True)


def wait_until(pred, timeout, what, interval=0.02):
    """Poll pred() until it returns a truthy value; return that value.
    timeout is scaled. Raises TestFailure naming what was awaited."""
    deadline = time.monotonic() + scaled(timeout)
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except (OSError, http.client.HTTPException, ValueError) as e:
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise TestFailure(f"timed out after {scaled(timeout):.0f}s waiting for {what}{extra}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.25)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def strict_equal(a, b):
    """JSON equality that also tells 1 from 1.0 and True from 1."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b))
    return a == b


# ---- processes -------------------------------------------------------------------------


def _spawn(argv, stdout, stderr, env=None):
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env)
    with _procs_lock:
        _procs.append(p)
    return p


def _kill_all(keep_servers=False):
    """Kill every process started here; keep_servers spares the servers of
    servers.py (started once per module, for all its tests)."""
    with _procs_lock:
        procs = [p for p in _procs if not (keep_servers and getattr(p, "pb_server", False))]
        _procs[:] = [p for p in _procs if p not in procs]
    for p in procs:
        # A server started in a session of its own (servers.py) takes the
        # processes it started with it.
        try:
            if os.getpgid(p.pid) == p.pid:
                os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


atexit.register(_kill_all)


def _on_term(signum, frame):
    _kill_all()
    os._exit(128 + signum)


signal.signal(signal.SIGTERM, _on_term)

_tmp_root = None


def tmpdir(name="t"):
    """A fresh directory under the current test's temporary root."""
    return tempfile.mkdtemp(prefix=name + "-", dir=_tmp_root)


def _http(method, port, path, body=None, headers=None, timeout=10.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=scaled(timeout))
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def _tail(path, n=40):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return ""


# ---- the sink --------------------------------------------------------------------------


class Sink:
    """A pb_sink process. Options map to its flags: status, fail_every,
    fail_status, delay_ms, delay_jitter_ms, retry_after, threads, quiet;
    record=True (the default unless quiet) keeps a JSON-lines file."""

    def __init__(self, port=0, record=None, **opts):
        self.dir = tmpdir("sink")
        self.opts = opts
        self.record_path = None
        if record is None:
            record = not opts.get("quiet")
        if record:
            self.record_path = os.path.join(self.dir, "records.jsonl")
        self.port = port
        self.proc = None
        self._start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _start(self):
        check(PB_SINK and os.access(PB_SINK, os.X_OK), f"PB_SINK not executable: {PB_SINK!r}")
        port_file = os.path.join(self.dir, "port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        argv = [PB_SINK, "--listen", f"127.0.0.1:{self.port}", "--port-file", port_file]
        if self.record_path:
            argv += ["--record", self.record_path]
        for k, v in self.opts.items():
            flag = "--" + k.replace("_", "-")
            if v is True:
                argv.append(flag)
            elif v is not None and v is not False:
                argv += [flag, str(v)]
        self.log_path = os.path.join(self.dir, "sink.log")
        self.proc = _spawn(argv, subprocess.DEVNULL, open(self.log_path, "ab"))

        def ready():
            if self.proc.poll() is not None:
                raise TestFailure(f"pb_sink exited {self.proc.returncode}: {_tail(self.log_path)}")
            try:
                with open(port_file) as f:
                    return int(f.read().strip())
            except (OSError, ValueError):
                return None

        self.port = wait_until(ready, 10, "pb_sink to listen")

    def restart(self):
        """Start again on the same port (after stop() or kill())."""
        check(self.proc is None or self.proc.poll() is not None, "sink still running")
        self._start()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=scaled(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def records(self):
        """Every complete recorded request, in the order they were answered."""
        out = []
        if not self.record_path or not os.path.exists(self.record_path):
            return out
        with open(self.record_path, "rb") as f:
            data = f.read()
        for line in data.split(b"\n"):
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line being written (or cut by kill -9)
        return out

    def _control(self, method, path, body=None):
        st, _, data = _http(method, self.port, path, body)
        check(st == 200, f"pb_sink {method} {path} -> {st} {data!r}")
        return json.loads(data)

    def stats(self):
        return self._control("GET", "/_sink/stats")

    def set_mode(self, **mode):
        return self._control("POST", "/_sink/mode", mode)

    def reset(self):
        return self._control("POST", "/_sink/reset")

    def requests(self):
        return self.stats()["requests"]

    def ok_count(self):
        return self.stats()["by_status"].get("200", 0)


def start_sink(**opts):
    return Sink(**opts)


# ---- metrics ---------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """Prometheus text, parsed. m.get(name, **labels) sums every series of
    name whose labels include the given ones (None when there is none)."""

    def __init__(self, text):
        self.text = text
        self.samples = []  # (name, {labels}, value)
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            if not m:
                raise ValueError(f"bad metrics line: {line!r}")
            labels = dict(_LABEL.findall(m.group(3) or ""))
            self.samples.append((m.group(1), labels, float(m.group(4))))

    def series(self, name, **labels):
        return [
            (lab, v)
            for n, lab, v in self.samples
            if n == name and all(lab.get(k) == str(want) for k, want in labels.items())
        ]

    def get(self, name, **labels):
        s = self.series(name, **labels)
        return sum(v for _, v in s) if s else None

    def value(self, name, **labels):
        """Like get() but 0 when the series is absent."""
        return self.get(name, **labels) or 0

    def __contains__(self, name):
        return any(n == name for n, _, _ in self.samples)


# ---- the daemon ------------------------------------------------------------------------


class Patchbay:
    """A `patchbay run` process. The config text may use @PORT@, @DIR@,
    @TOKEN@ and @LISTEN@ (127.0.0.1:@PORT@), replaced before it is written;
    anything else (like ${VAR}) is left for patchbay. env adds to os.environ."""

    def __init__(self, config, env=None, start=True, token=None, port=None):
        self.dir = tmpdir("patchbay")
        self.port = port or free_port()
        self.token = token or "adm-" + secrets.token_hex(8)
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.config_path = os.path.join(self.dir, "patchbay.yaml")
        self.stderr_path = os.path.join(self.dir, "patchbay.log")
        self.stdout_path = os.path.join(self.dir, "stdout.log")
        self._template = config
        self.run_args = []  # options of `patchbay run` (e.g. --force)
        self._write_config()
        self.proc = None
        self.starts = 0
        if start:
            self._first_start()

    def _write_config(self):
        template = self._template
        if PB_STATE == "postgres" and _SQLITE_STATE.search(template):
            if not getattr(self, "state_schema", None):
                self.state_schema = "pb_" + secrets.token_hex(6)
            url = state_postgres().dsn("patchbay") + "?schema=" + self.state_schema
            template = _SQLITE_STATE.sub(url, template)
        text = (
            template.replace("@LISTEN@", "127.0.0.1:@PORT@")
            .replace("@PORT@", str(self.port))
            .replace("@DIR@", self.dir)
            .replace("@TOKEN@", self.token)
        )
        with open(self.config_path, "w") as f:
            f.write(text)

    def _first_start(self):
        # free_port() can race with another test binding the same port: on
        # "address in use" the first start moves to another port.
        for _ in range(5):
            try:
                return self.start()
            except TestFailure:
                if self.running() or "in use" not in _tail(self.stderr_path, 5):
                    raise
                self.port = free_port()
                self._write_config()
        return self.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready=True, timeout=30):
        check(PB_BIN and os.access(PB_BIN, os.X_OK), f"PB_BIN not executable: {PB_BIN!r}")
        check(self.proc is None or self.proc.poll() is not None, "patchbay already running")
        self.starts += 1
        err = open(self.stderr_path, "ab")
        err.write(f"==== pbtest: start #{self.starts}\n".encode())
        err.flush()
        self.proc = _spawn(
            [PB_BIN, "run", *self.run_args, self.config_path], open(self.stdout_path, "ab"), err,
            env=self.env
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=30):
        def ready():
            if self.proc.poll() is not None:
                raise TestFailure(
                    f"patchbay exited {self.proc.returncode} before ready:\n"
                    + _tail(self.stderr_path)
                )
            try:
                st, _, _ = _http("GET", self.port, "/ready", timeout=2)
                return st == 200
            except OSError:
                return False

        wait_until(ready, timeout, "patchbay /ready == 200")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def request(self, method, path, body=None, headers=None, timeout=10):
        return _http(method, self.port, path, body, headers, timeout)

    def post(self, path, body, headers=None, timeout=10):
        """POST; body may be dict/list (JSON-encoded), str or bytes.
        Returns (status, lowercased headers, body bytes)."""
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        return self.request("POST", path, body, h, timeout)

    def get(self, path, headers=None):
        return self.request("GET", path, None, headers)

    def admin(self, method, path, body=None, token=True):
        """Admin API call. token=True uses the configured one, a string
        overrides it, None sends no Authorization. Returns (status, json or None)."""
        h = {}
        if token is True:
            token = self.token
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        if body is not None:
            h["Content-Type"] = "application/json"
        st, _, data = self.request(method, path, body, h)
        try:
            doc = json.loads(data) if data else None
        except ValueError:
            doc = None
        return st, doc

    def metrics(self):
        st, _, data = self.get("/metrics")
        check(st == 200, f"/metrics -> {st}")
        return Metrics(data.decode())

    def message(self, msg_id):
        st, doc = self.admin("GET", f"/api/messages/{urllib.parse.quote(msg_id)}")
        check(st == 200, f"GET /api/messages/{msg_id} -> {st} {doc}")
        return doc

    def wait_states(self, mids, want, timeout=20):
        """Wait until, for every message in mids, each output named in want
        (a dict output -> state) has a delivery in that state and none of them
        is still pending. Counters and partners see a result a moment before
        the store commits it, so tests read the admin API through this."""

        def states(mid):
            out = {}
            for d in self.message(mid)["deliveries"]:
                out.setdefault(d["output"], set()).add(d["state"])
            return out

        def done():
            for mid in mids:
                st = states(mid)
                for output, state in want.items():
                    got = st.get(output, set())
                    if state not in got or "pending" in got:
                        return False
            return True

        wait_until(done, timeout, f"deliveries of {len(mids)} message(s) to reach {want}")

    def dead_letters(self, **query):
        """Every dead letter matching query, following next_after pages."""
        items, after = [], None
        for _ in range(10000):
            q = dict(query)
            if after is not None:
                q["after"] = after
            path = "/api/dead-letters"
            if q:
                path += "?" + urllib.parse.urlencode(q)
            st, doc = self.admin("GET", path)
            check(st == 200, f"GET {path} -> {st} {doc}")
            items += doc["items"]
            after = doc.get("next_after")
            if after is None or not doc["items"]:
                return items
        raise TestFailure("dead-letter paging does not end")

    def cli(self, *args, env=None, timeout=30):
        """Run `patchbay ARGS` (a client subcommand, lint, version)."""
        e = dict(self.env)
        e.update(env or {})
        return run_cli(*args, env=e, timeout=timeout)

    def kill9(self):
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def term(self, timeout=30):
        """SIGTERM; wait (scaled deadline) and return the exit code."""
        check(self.running(), "patchbay not running")
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=scaled(timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise TestFailure(f"patchbay did not exit within {scaled(timeout):.0f}s of SIGTERM")

    def restart(self, wait_ready=True, timeout=30):
        if self.running():
            code = self.term()
            check(code == 0, f"patchbay exited {code} on SIGTERM")
        return self.start(wait_ready=wait_ready, timeout=timeout)

    def log(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stdout(self):
        try:
            with open(self.stdout_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def run_cli(*args, env=None, timeout=30):
    check(PB_BIN and os.access(PB_BIN, os.X_OK), f"PB_BIN not executable: {PB_BIN!r}")
    return subprocess.run(
        [PB_BIN, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=scaled(timeout),
    )


# ---- load ------------------------------------------------------------------------------


def _parse_ack(status, data):
    if status != 202:
        return None
    try:
        return json.loads(data)["id"]
    except (ValueError, KeyError, TypeError):
        return None


class Poster:
    """Background load: `concurrency` threads, each with one keep-alive
    connection, POST make_body(i) for i = 0, 1, 2, ... until stop() or n
    bodies. A connection error (daemon down) is recorded as status None
    and retried after a short pause with the next body. results is a list of
    (i, status, id); id is set only for a 202 acknowledgement."""

    def __init__(self, port, path, make_body, concurrency=16, n=None, headers=None, timeout=10):
        self.port, self.path, self.make_body = port, path, make_body
        self.concurrency, self.n = concurrency, n
        self.headers = {"Content-Type": "application/json"}
        self.headers.update(headers or {})
        self.timeout = scaled(timeout)
        self.results = []
        self.retry_after = []  # Retry-After values of 503 answers
        self._lock = threading.Lock()
        self._next = 0
        self._stop = threading.Event()
        self._threads = []

    def _take(self):
        with self._lock:
            if self._stop.is_set() or (self.n is not None and self._next >= self.n):
                return None
            i = self._next
            self._next += 1
            return i

    def _worker(self):
        conn = None
        while True:
            i = self._take()
            if i is None:
                break
            body = self.make_body(i)
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            if isinstance(body, str):
                body = body.encode()
            status, data = None, b""
            for attempt in range(2):
                reused = conn is not None
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(
                            "127.0.0.1", self.port, timeout=self.timeout
                        )
                    conn.request("POST", self.path, body=body, headers=self.headers)
                    r = conn.getresponse()
                    data = r.read()
                    status = r.status
                    if status == 503:
                        with self._lock:
                            self.retry_after.append(r.getheader("Retry-After"))
                    if (r.getheader("Connection") or "").lower() == "close":
                        conn.close()
                        conn = None
                    break
                except (OSError, http.client.HTTPException) as e:
                    if conn is not None:
                        conn.close()
                        conn = None
                    # A kept-alive connection the server had already closed
                    # gets one fresh try; any other failure is "no answer".
                    stale = isinstance(
                        e, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
                    )
                    if not (attempt == 0 and reused and stale):
                        break
            with self._lock:
                self.results.append((i, status, _parse_ack(status, data)))
            if status is None or status == 503:
                self._stop.wait(0.05)  # down or pushing back: do not spin
        if conn is not None:
            conn.close()

    def start(self):
        for _ in range(self.concurrency):
            t = threading.Thread(target=self._worker, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        return self.join()

    def join(self, timeout=600):
        for t in self._threads:
            t.join(scaled(timeout))
            check(not t.is_alive(), "poster thread did not finish")
        return self.results

    def acked(self):
        with self._lock:
            return [(i, mid) for i, st, mid in self.results if mid is not None]

    def count_acked(self):
        with self._lock:
            return sum(1 for _, _, mid in self.results if mid is not None)


def post_many(url, bodies, concurrency=64, headers=None):
    """POST every body to url (http://127.0.0.1:PORT/path) over `concurrency`
    keep-alive connections. Returns a list aligned with bodies of
    (status, id): status None when no answer came, id set for a 202."""
    u = urllib.parse.urlsplit(url)
    p = Poster(u.port, u.path or "/", lambda i: bodies[i], concurrency, len(bodies), headers)
    p.start()
    res = p.join()
    out = [(None, None)] * len(bodies)
    for i, st, mid in res:
        out[i] = (st, mid)
    return out


# ---- the runner ------------------------------------------------------------------------

_tests = []
_SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                    "ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


def test(fn):
    _tests.append(fn)
    return fn


def _sanitizer_reports(root):
    found = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".log"):
                continue
            path = os.path.join(dirpath, name)
            text = _tail(path, 100000)
            for mark in _SANITIZER_MARKS:
                if mark in text:
                    found.append(f"{path}: {mark}\n" + text[text.index(mark):][:4000])
                    break
    return found


def run():
    """Run every @test in order; print `N passed, N failed`; exit 0/1."""
    global _tmp_root
    only = sys.argv[1:]
    passed = failed = skipped = 0
    if not PB_BIN or not PB_SINK:
        log("PB_BIN and PB_SINK must be set (ctest sets them)")
        sys.exit(2)
    for fn in _tests:
        if only and fn.__name__ not in only:
            continue
        _tmp_root = tempfile.mkdtemp(prefix=f"pbtest-{fn.__name__}-")
        t0 = time.monotonic()
        log(f"---- {fn.__name__}")
        ok = False
        try:
            fn()
            _kill_all(keep_servers=True)
            reports = _sanitizer_reports(_tmp_root)
            if reports:
                raise TestFailure("sanitizer report:\n" + "\n".join(reports))
            ok = True
        except TestSkipped as e:
            _kill_all(keep_servers=True)
            log(f"SKIP {fn.__name__}: {e}")
            skipped += 1
            shutil.rmtree(_tmp_root, ignore_errors=True)
            continue
        except Exception as e:  # a test's own bug counts as a failure too
            _kill_all(keep_servers=True)
            log(f"FAIL {fn.__name__}: {e}")
            if not isinstance(e, TestFailure):
                traceback.print_exc()
            for dirpath, _, files in os.walk(_tmp_root):
                for name in sorted(files):
                    if name.endswith(".log"):
                        tail = _tail(os.path.join(dirpath, name), 25)
                        if tail:
                            log(f"  -- tail of {os.path.join(dirpath, name)}:\n{tail}")
        dt = time.monotonic() - t0
        if ok:
            passed += 1
            log(f"PASS {fn.__name__} ({dt:.1f}s)")
            shutil.rmtree(_tmp_root, ignore_errors=True)
        else:
            failed += 1
            log(f"  (kept {_tmp_root})")
    log(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    sys.exit(1 if failed or passed + skipped == 0 else 0)


def ensure_node_client(node_dir, package="standardwebhooks"):
    """node_dir/node_modules installed with npm if package is missing
    (under a lock: several builds may run the suite at once)."""
    import fcntl
    import shutil

    for tool in ("node", "npm"):
        if not shutil.which(tool):
            raise TestFailure(f"{tool} not found: ./dev.sh installs nodejs and npm")
    with open(os.path.join(node_dir, "package.json")) as lock:  # flock needs no write access
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(os.path.join(node_dir, "node_modules", package)):
            return
        has_lock = os.path.exists(os.path.join(node_dir, "package-lock.json"))
        argv = ["npm", "ci" if has_lock else "install", "--no-audit", "--no-fund"]
        r = subprocess.run(argv, cwd=node_dir, capture_output=True, text=True,
                           timeout=scaled(300))
        check(r.returncode == 0, f"{' '.join(argv)} failed:\n{r.stdout}\n{r.stderr}")
