"""partner - HTTP partners of the tests' own, inside the test process: a
threaded HTTP/1.1 server on 127.0.0.1 with a free port whose answers a
function of the test decides (an OAuth2-protected API, a rate-limited API,
a GraphQL server, a partner of fixed capacity...). Every request is logged
with its arrival time and the status it got.

    def handle(req):                 # req.method, .path, .headers (lower-case
        return 200, {}, {"ok": True} #   names), .body (bytes), .json, .t
    p = Partner(handle)              # started; p.url, p.port
    p.stop(); p.start()              # the same port again
    p.log                            # [(t, method, path, status, req)]

Standard library only.
"""

import http.server
import json
import select
import socket
import socketserver
import threading
import time
import urllib.parse

from pbtest import free_port, wait_until
from servers import port_open


class Request:
    def __init__(self, method, path, headers, body, t, sock=None):
        self.method, self.path, self.headers, self.body, self.t = method, path, headers, body, t
        self.sock = sock
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def form(self):
        return dict(urllib.parse.parse_qsl(self.body.decode()))

    def alive(self):
        """False once the client closed its side (killed meanwhile)."""
        try:
            r, _, _ = select.select([self.sock], [], [], 0)
            return not r or self.sock.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            return False


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class Partner:
    def __init__(self, handle, port=None):
        self.handle = handle
        self.port = port or free_port()
        self.log = []
        self.lock = threading.Lock()
        self.conns = set()  # open client connections, cut by stop()
        self.server = None
        self.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _handler_class(self):
        partner = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with partner.lock:
                    partner.conns.add(self.connection)

            def finish(self):
                with partner.lock:
                    partner.conns.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def _serve(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                req = Request(self.command, self.path,
                              {k.lower(): v for k, v in self.headers.items()}, body,
                              time.monotonic(), self.connection)
                try:
                    status, headers, out = partner.handle(req)
                except Exception as e:  # a bug in the test's handler: say so
                    status, headers, out = 500, {}, {"error": repr(e)}
                if isinstance(out, (dict, list)):
                    out = json.dumps(out)
                if isinstance(out, str):
                    out = out.encode()
                with partner.lock:
                    partner.log.append((req.t, req.method, req.path, status, req))
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, str(v))
                    self.send_header("Content-Length", str(len(out)))
                    if "Content-Type" not in (headers or {}):
                        self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(out)
                except OSError:
                    self.close_connection = True  # the client went away

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        return H

    def start(self):
        self.server = _Server(("127.0.0.1", self.port), self._handler_class())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        wait_until(lambda: port_open(self.port), 10, f"partner on port {self.port}")
        return self

    def stop(self):
        """Stop listening and cut open connections (as a partner going down):
        from now on connections are refused."""
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def entries(self, since=0.0, status=None, path=None):
        with self.lock:
            return [e for e in self.log
                    if e[0] >= since and (status is None or e[3] == status)
                    and (path is None or e[2].startswith(path))]
