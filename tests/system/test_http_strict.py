"""Request shapes HTTP forbids, by which a request can be smuggled past a
proxy in front of patchbay (RFC 9112 section 6), are answered 400 and the
connection closed, and nothing is stored: two Content-Length headers, a
Content-Length list or junk, Content-Length with Transfer-Encoding, a
Transfer-Encoding whose last coding is not chunked, and a path with an
encoded NUL. Sent as raw bytes, so no client library tidies them first."""

import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import Patchbay, check, check_eq, run, start_sink, test, wait_until  # noqa: E402

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  p:
    input: { http_server: { path: /in } }
    outputs: { out: { http: { url: "SINK/x" } } }
"""

BODY = b'{"a":1}'


def raw(port, data, timeout=5):
    """Send data, read until the server closes (or timeout); returns
    (status, whole answer bytes, closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    closed = False
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            out += chunk
    except socket.timeout:
        pass
    s.close()
    status = int(out.split(b" ", 2)[1]) if out.startswith(b"HTTP/1.") else 0
    return status, out, closed


def req(head_lines, body=BODY, target=b"/in"):
    head = b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    for line in head_lines:
        head += line + b"\r\n"
    return head + b"\r\n" + body


@test
def smuggling_shapes_are_refused_and_closed():
    sink = start_sink(record=True)
    pb = Patchbay(CONFIG.replace("SINK", sink.url))
    n = str(len(BODY)).encode()
    chunked = b"7\r\n" + BODY + b"\r\n0\r\n\r\n"
    shapes = {
        "two differing Content-Length": req([b"Content-Length: " + n, b"Content-Length: 3"]),
        "Content-Length repeated": req([b"Content-Length: " + n, b"Content-Length: " + n]),
        "Content-Length list": req([b"Content-Length: " + n + b", " + n]),
        "Content-Length and Transfer-Encoding": req(
            [b"Content-Length: " + n, b"Transfer-Encoding: chunked"], chunked),
        "Transfer-Encoding not ending in chunked": req([b"Transfer-Encoding: gzip"], chunked),
        "Transfer-Encoding chunked, gzip": req([b"Transfer-Encoding: chunked, gzip"], chunked),
        "encoded NUL in the path": req([b"Content-Length: " + n], target=b"/in%00x"),
    }
    for name, data in shapes.items():
        status, answer, closed = raw(pb.port, data)
        check_eq(status, 400, f"{name}: status ({answer[:200]!r})")
        check(closed, f"{name}: the connection is closed")
        check(b"connection: close" in answer.lower(), f"{name}: says Connection: close")
    # A control request of each framing is taken.
    status, _, _ = raw(pb.port, req([b"Content-Length: " + n, b"Connection: close"]))
    check_eq(status, 202, "a plain Content-Length request is accepted")
    status, _, _ = raw(pb.port, req([b"Transfer-Encoding: chunked", b"Connection: close"], chunked))
    check_eq(status, 202, "a chunked request is accepted")
    wait_until(lambda: len(sink.records()) == 2, 10, "the two good requests delivered")
    st, doc = pb.admin("GET", "/api/pipelines")
    check_eq(doc["pipelines"][0]["accepted"], 2, "only the good requests were stored")
    check_eq([json.loads(r["body"]) for r in sink.records()], [{"a": 1}, {"a": 1}], "bodies")
    check_eq(pb.term(), 0, "exit code")


if __name__ == "__main__":
    run()
