"""The http_poll input against a paginated API of the test's own.

The API (a Python server on 127.0.0.1) serves one data set of orders, each
with an id and an updated_at at one-second resolution (so many share a
timestamp), filtered by `updated_since` (inclusive) and sorted by
(updated_at, id), through every pagination style: page numbers, offsets,
opaque cursors, Link rel="next" headers, next_url in the body and a GraphQL
connection. Orders are added and changed between polls. Checked: every
version of every order arrives, none twice at the sink beyond its
idempotency key (repeats after kill -9 carry the same key), the cursor is
persisted (a restart asks from it), records at equal timestamps across a page
boundary and across runs are not lost (lookback + dedupe_key), and an API
that repeats its page token or its page ends the run with a clear error
instead of looping."""

import base64
import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (Patchbay, check, check_eq, free_port, run, start_sink, test,  # noqa: E402
                    tmpdir, wait_until)
from servers import port_open  # noqa: E402


def ts(sec):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1700000000 + sec))


class Api:
    def __init__(self):
        self.lock = threading.Lock()
        self.orders = {}  # id -> order
        self.all = set()  # every version ever made
        self.clock = 0  # seconds past the epoch of the data set
        self.requests = []  # (path, query) of every request
        self.slow = 0.0
        owner = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                owner.handle(self, None)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                owner.handle(self, json.loads(self.rfile.read(n) or b"{}"))

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def put(self, n, at=None, start=0):
        """Add (or change) orders start..start+n-1, all at one timestamp."""
        with self.lock:
            if at is None:
                self.clock += 1
                at = self.clock
            for i in range(start, start + n):
                oid = f"o{i:05d}"
                old = self.orders.get(oid)
                self.orders[oid] = {"id": oid, "updated_at": ts(at),
                                    "rev": (old["rev"] + 1) if old else 1}
                self.all.add(f"{oid}@{ts(at)}")

    def versions(self):
        with self.lock:
            return {f"{o['id']}@{o['updated_at']}" for o in self.orders.values()}

    def selected(self, since):
        with self.lock:
            rows = sorted(self.orders.values(), key=lambda o: (o["updated_at"], o["id"]))
        if since:
            rows = [o for o in rows if o["updated_at"] >= since]
        return rows

    def handle(self, h, body):
        u = urllib.parse.urlsplit(h.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        with self.lock:
            self.requests.append((u.path, q, body))
            delay = self.slow
        if delay:
            time.sleep(delay)
        path = u.path
        since = q.get("updated_since")
        if path == "/page":
            page, per = int(q.get("page", 1)), int(q.get("per_page", 10))
            rows = self.selected(since)[(page - 1) * per:page * per]
            return self.send(h, 200, {"orders": rows})
        if path == "/offset":
            off, lim = int(q.get("offset", 0)), int(q.get("limit", 10))
            return self.send(h, 200, {"orders": self.selected(since)[off:off + lim]})
        if path == "/cursor":
            # keyset: the token is the (updated_at, id) of the last row sent
            rows = self.selected(since)
            if "cursor" in q:
                after = json.loads(base64.b64decode(q["cursor"]))
                rows = [o for o in rows if [o["updated_at"], o["id"]] > after]
            lim = int(q.get("limit", 10))
            page = rows[:lim]
            nxt = base64.b64encode(json.dumps([page[-1]["updated_at"], page[-1]["id"]])
                                   .encode()).decode() if len(rows) > lim else None
            return self.send(h, 200, {"orders": page, "next": nxt})
        if path == "/link":
            page, per = int(q.get("page", 1)), int(q.get("per_page", 10))
            rows = self.selected(since)
            headers = {}
            if page * per < len(rows):
                nq = dict(q, page=str(page + 1))
                headers["Link"] = (f'<{path}?{urllib.parse.urlencode(nq)}>; rel="next", '
                                   f'<{path}?page=1>; rel="first"')
            return self.send(h, 200, rows[(page - 1) * per:page * per], headers)
        if path == "/next":
            page, per = int(q.get("page", 1)), int(q.get("per_page", 10))
            rows = self.selected(since)
            nxt = None
            if page * per < len(rows):
                nxt = f"{self.url}{path}?{urllib.parse.urlencode(dict(q, page=str(page + 1)))}"
            return self.send(h, 200, {"orders": rows[(page - 1) * per:page * per],
                                      "next_url": nxt})
        if path == "/graphql":
            v = (body or {}).get("variables", {})
            rows = self.selected(v.get("since"))
            start = int(v["after"]) if v.get("after") else 0
            first = int(v.get("first", 10))
            page = rows[start:start + first]
            edges = [{"cursor": str(start + i + 1), "node": r} for i, r in enumerate(page)]
            return self.send(h, 200, {"data": {"orders": {
                "edges": edges,
                "pageInfo": {"hasNextPage": start + first < len(rows),
                             "endCursor": str(start + len(page)) if page else None}}}})
        if path == "/loop":
            return self.send(h, 200, {"orders": [{"id": f"loop{q.get('cursor', '0')}",
                                                  "updated_at": ts(0)}],
                                      "next": "same-token"})
        if path == "/identical":
            return self.send(h, 200, {"orders": [{"id": "same", "updated_at": ts(0)}]})
        self.send(h, 404, {"error": "no such path"})

    def send(self, h, status, doc, headers=None):
        data = json.dumps(doc).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


API = Api()

CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: sqlite:@DIR@/state.db
outbound: { allow: [127.0.0.0/8] }
pipelines:
  poll:
    input:
      http_poll:
        url: "%(url)s"
        interval: %(interval)s
%(extra)s
        dedupe_key: '"\\(.id)@\\(.updated_at)"'
    outputs:
      sink: { http: { url: "%(sink)s/in" } }
"""

CURSOR = """        cursor: { value: .updated_at, param: updated_since, lookback: 2s }
"""

STYLES = {
    "page": ("/page", """        items: .orders[]
        pagination: { type: page, size_param: per_page, size: 7 }
""" + CURSOR),
    "offset": ("/offset", """        items: .orders[]
        pagination: { type: offset, size: 7 }
""" + CURSOR),
    "cursor": ("/cursor", """        items: .orders[]
        pagination: { type: cursor, cursor: .next, param: cursor, size_param: limit, size: 7 }
""" + CURSOR),
    "link": ("/link", """        items: .[]
        pagination: { type: link, size_param: per_page, size: 7 }
""" + CURSOR),
    "next_url": ("/next", """        items: .orders[]
        pagination: { type: next_url, next_url: .next_url, size_param: per_page, size: 7 }
""" + CURSOR),
    "graphql": ("/graphql", """        items: .data.orders.edges[].node
        graphql:
          query: 'query($after: String, $since: String, $first: Int) { orders(first: $first, after: $after, updatedSince: $since) { edges { cursor node { id updated_at rev } } pageInfo { hasNextPage endCursor } } }'
          variables: '{first: 7}'
          cursor: .data.orders.pageInfo.endCursor
          has_next: .data.orders.pageInfo.hasNextPage
          variable: after
        cursor: { value: .updated_at, param: since, lookback: 2s }
"""),
}


def conf(style, sink, interval="1s"):
    path, extra = STYLES[style]
    return CONF % {"url": API.url + path, "interval": interval, "extra": extra.rstrip("\n"),
                   "sink": sink.url}


def arrived(sink):
    """version -> set of idempotency keys it arrived with."""
    out = {}
    for r in sink.records():
        b = json.loads(r["body"])
        out.setdefault(f"{b['id']}@{b['updated_at']}", set()).add(
            r["headers"].get("idempotency-key"))
    return out


def check_exactly(sink, want, what):
    """Every current version arrived; nothing but versions the API had."""
    got = arrived(sink)
    with API.lock:
        allowed = set(API.all)
    missing = want - set(got)
    extra = set(got) - allowed
    check(not missing, f"{what}: {len(missing)} versions missing, e.g. {sorted(missing)[:3]}")
    check(not extra, f"{what}: unexpected versions {sorted(extra)[:3]}")
    twice = {v: k for v, k in got.items() if len(k) != 1}
    check(not twice, f"{what}: versions delivered as different messages: {list(twice)[:3]}")


def wait_all(sink, timeout=60):
    want = API.versions()
    wait_until(lambda: want <= set(arrived(sink)), timeout,
               f"{len(want)} order versions at the sink")
    return want


def reset_data():
    with API.lock:
        API.orders.clear()
        API.all.clear()
        API.clock += 10


@test
def every_pagination_style_reads_changing_data_completely():
    for style in ("page", "offset", "cursor", "link", "next_url", "graphql"):
        reset_data()
        API.put(30)               # 30 orders at one timestamp: across pages of 7
        sink = start_sink()
        n0 = len(API.requests)
        pb = Patchbay(conf(style, sink))
        wait_all(sink)
        if style in ("page", "offset"):
            # 30 records in pages of 7: the short fifth page ends the run, no sixth asked
            first = [r for r in API.requests[n0:] if r[0] == STYLES[style][0]]
            starts = [i for i, r in enumerate(first)
                      if r[1].get("page", r[1].get("offset")) in ("1", "0")]
            check(len(starts) >= 2 and starts[1] == 5 or len(first) == 5,
                  f"{style}: the first run's requests {[r[1] for r in first[:7]]}")
        API.put(5, start=30)      # new orders
        API.put(4, start=3)       # changed orders: new versions
        # more orders at the timestamp the cursor stands on
        with API.lock:
            at = API.clock
        API.put(3, at=at, start=40)
        want = wait_all(sink)
        # a few more polls: the lookback re-reads, the keys drop the repeats
        n = len(API.requests)
        wait_until(lambda: len(API.requests) >= n + 4, 30, "more polls")
        check_exactly(sink, want, style)
        check_eq(pb.dead_letters(), [], f"{style}: no dead letter")
        check_eq(pb.term(), 0, f"{style}: clean exit")
        # every page request after the first run asked from the cursor
        last = [r for r in API.requests if r[0] == STYLES[style][0]][-1]
        since = (last[2] or {}).get("variables", {}).get("since") if style == "graphql" \
            else last[1].get("updated_since")
        check(since is not None, f"{style}: the cursor was sent")


@test
def kill9_during_runs_loses_and_doubles_nothing():
    reset_data()
    API.put(200)
    sink = start_sink()
    pb = Patchbay(conf("cursor", sink))
    with API.lock:
        API.slow = 0.02
    for round_ in range(4):
        wait_until(lambda: len(sink.records()) > 20 + round_ * 40, 30, "a run under way")
        pb.kill9()
        API.put(10, start=300 + round_ * 10)
        API.put(5, start=round_ * 5)
        pb.start()
    with API.lock:
        API.slow = 0
    want = wait_all(sink, 90)
    check_exactly(sink, want, "after four kill -9")
    # the cursor is persisted: after a clean restart the first request asks from it
    check_eq(pb.term(), 0, "clean exit")
    n = len(API.requests)
    pb.start()
    wait_until(lambda: len(API.requests) > n, 30, "a poll after the restart")
    first = API.requests[n]
    check(first[1].get("updated_since", "") >= ts(API.clock - 3),
          f"the first request after the restart asks from the cursor: {first}")
    check_eq(pb.term(), 0, "clean exit")


@test
def a_repeated_page_token_ends_the_run_with_an_error():
    sink = start_sink()
    c = CONF % {"url": API.url + "/loop", "interval": "1h", "sink": sink.url,
                "extra": "        items: .orders[]\n"
                         "        pagination: { type: cursor, cursor: .next, param: cursor }"}
    pb = Patchbay(c, start=False)
    pb.start(wait_ready=False)
    wait_until(lambda: "pagination loop" in pb.log(), 20, "the loop detected")
    line = [l for l in pb.log().splitlines() if "pagination loop" in l][0]
    check("same-token" in line and "repeated" in line, f"a clear error: {line}")
    loops = [r for r in API.requests if r[0] == "/loop"]
    check(len(loops) <= 3, f"{len(loops)} requests: it stopped")
    wait_until(lambda: len(sink.records()) >= 2, 20, "the pages read before are kept")
    st, doc = pb.admin("GET", "/api/inputs")
    check(st == 200 and "pagination loop" in json.dumps(doc), f"/api/inputs shows it: {doc}")

    sink2 = start_sink()
    c = CONF % {"url": API.url + "/identical", "interval": "1h", "sink": sink2.url,
                "extra": "        items: .orders[]\n"
                         "        pagination: { type: page }"}
    pb2 = Patchbay(c, start=False)
    pb2.start(wait_ready=False)
    wait_until(lambda: "identical" in pb2.log(), 20, "the identical page detected")
    check(len([r for r in API.requests if r[0] == "/identical"]) <= 3, "it stopped")
    pb.term()
    pb2.term()


@test
def lint_checks_the_options():
    sink = start_sink()
    bad = CONF % {"url": API.url + "/page", "interval": "1m", "sink": sink.url,
                  "extra": "        pagination: { type: cursor, param: c }"}
    pb = Patchbay(bad, start=False)
    r = pb.cli("lint", pb.config_path)
    check(r.returncode != 0 and "needs cursor" in r.stderr + r.stdout, f"lint: {r.stderr}")
    bad = CONF % {"url": API.url + "/page", "interval": "1m", "sink": sink.url,
                  "extra": "        cron: '61 * * * *'"}
    pb = Patchbay(bad, start=False)
    r = pb.cli("lint", pb.config_path)
    check(r.returncode != 0 and "minute" in r.stderr + r.stdout, f"lint: {r.stderr}")


@test
def example_shop_sync_runs():
    here = os.path.dirname(os.path.abspath(__file__))
    ex = os.path.normpath(os.path.join(here, "..", "..", "examples", "shop-sync"))
    with open(os.path.join(ex, "patchbay.yaml")) as f:
        text = f.read()
    port = free_port()
    stand_in = subprocess.Popen([sys.executable, os.path.join(ex, "stand_in.py"), str(port)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_open(port), 20, "the stand-in")
        erp = start_sink()
        pport, token = free_port(), "example-token"
        pb = Patchbay(text, port=pport, token=token, env={
            "SHOP_URL": f"http://127.0.0.1:{port}/admin/api/2024-01/graphql.json",
            "CRM_URL": f"http://127.0.0.1:{port}/crm/customers",
            "ERP_URL": erp.url + "/orders", "POLL_INTERVAL": "1s", "EXAMPLE_DIR": ex,
            "PATCHBAY_LISTEN": f"127.0.0.1:{pport}", "PATCHBAY_DATA": tmpdir("data"),
            "PATCHBAY_ADMIN_TOKEN": token})

        def erp_versions():
            return {(b["reference"], b["version"]): b
                    for b in (json.loads(r["body"]) for r in erp.records())}

        wait_until(lambda: len(erp_versions()) >= 108, 60, "108 valid orders at the ERP")
        dead = wait_until(lambda: len(pb.dead_letters()) >= 12 and pb.dead_letters(), 30,
                          "12 invalid orders dead-lettered")
        check_eq(len(dead), 12, "the orders with a zero quantity")
        check(all('"/lines/0/qty"' in d["last_error"] and "minimum" in d["last_error"]
                  for d in dead), f"with the pointer: {dead[0]['last_error']}")
        got = erp_versions()
        one = [b for b in got.values() if b["reference"] == "#1001"][0]
        check_eq(one["tier"], "gold", "customer c1's tier from the CRM")
        check_eq(one["lines"], [{"sku": "SKU-1", "quantity": 2}], "the ERP's shape")
        unknown = [b for b in got.values() if b["reference"] == "#1006"][0]
        check_eq(unknown["tier"], "none", "an unknown customer is kept without a tier")
        # new orders and changed ones
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/_orders?n=30&change=5", body=b"")
        check_eq(conn.getresponse().status, 200, "more orders")
        wait_until(lambda: len(erp_versions()) >= 140, 60, "27 new and 5 changed versions")
        refs = [json.loads(r["body"]) for r in erp.records()]
        keys = {}
        for r in erp.records():
            b = json.loads(r["body"])
            keys.setdefault((b["reference"], b["version"]), set()).add(
                r["headers"].get("idempotency-key"))
        check(all(len(k) == 1 for k in keys.values()), "no version arrived as two messages")
        check_eq(len(keys), 140, f"versions at the ERP ({len(refs)} requests)")
        check_eq(pb.term(), 0, "clean exit")
    finally:
        stand_in.kill()
        stand_in.wait()


if __name__ == "__main__":
    run()
