#!/usr/bin/env python3
"""A stand-in for the shop's GraphQL Admin API and the CRM, for trying the
example without either: python3 stand_in.py [PORT]  (default 9100).

  POST /admin/api/2024-01/graphql.json  orders(first, after, updatedSince)
  GET  /crm/customers/<id>              {"id", "tier"}; 404 for unknown ones
  POST /_orders?n=N                     make N more orders (or change some: ?change=N)

Every tenth order has a line with quantity 0, which the example's schema
refuses: it goes to the dead-letter queue with the reason. Standard library only.
"""

import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
ORDERS = {}
SEQ = [0]


LAST = [0]


def now():
    # Milliseconds, and never the same twice: a changed order's new updatedAt
    # is a new version (its dedupe_key is id@updatedAt).
    ms = max(int(time.time() * 1000), LAST[0] + 1)
    LAST[0] = ms
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def make(n):
    with LOCK:
        for _ in range(n):
            SEQ[0] += 1
            i = SEQ[0]
            ORDERS[i] = {"id": f"gid://shop/Order/{i}", "name": f"#{1000 + i}",
                         "email": f"buyer{i}@example.com",
                         "customerId": f"c{i % 7}" if i % 5 else None,
                         "updatedAt": now(),
                         "lines": [{"sku": f"SKU-{i % 3}", "qty": 0 if i % 10 == 0 else 1 + i % 4}]}


def change(n):
    with LOCK:
        for i in list(ORDERS)[:n]:
            ORDERS[i] = dict(ORDERS[i], updatedAt=now(),
                             lines=[dict(ln, qty=ln["qty"] + 1) for ln in ORDERS[i]["lines"]])


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/crm/customers/"):
            cid = path.rsplit("/", 1)[-1]
            if cid in ("c0", "c6"):
                return self.send(404, {"error": "unknown customer"})
            return self.send(200, {"id": cid, "tier": "gold" if cid == "c1" else "silver"})
        self.send(404, {"error": "not found"})

    def do_POST(self):
        u = urllib.parse.urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        req = json.loads(self.rfile.read(n) or b"{}")
        if u.path == "/_orders":
            q = dict(urllib.parse.parse_qsl(u.query))
            make(int(q.get("n", 0)))
            change(int(q.get("change", 0)))
            return self.send(200, {"orders": len(ORDERS)})
        if not u.path.endswith("/graphql.json"):
            return self.send(404, {"error": "not found"})
        if not self.headers.get("X-Shopify-Access-Token"):
            return self.send(401, {"errors": "[API] Invalid API key or access token"})
        v = req.get("variables") or {}
        with LOCK:
            rows = sorted(ORDERS.values(), key=lambda o: (o["updatedAt"], o["id"]))
        if v.get("since"):
            rows = [o for o in rows if o["updatedAt"] >= v["since"]]
        start = int(v["after"]) if v.get("after") else 0
        page = rows[start:start + 50]
        self.send(200, {"data": {"orders": {
            "edges": [{"node": o} for o in page],
            "pageInfo": {"hasNextPage": start + 50 < len(rows),
                         "endCursor": str(start + len(page))}}}})


if __name__ == "__main__":
    make(120)
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9100
    srv = ThreadingHTTPServer(("127.0.0.1", port), H)
    print(f"shop and CRM stand-in on 127.0.0.1:{port} ({len(ORDERS)} orders)", flush=True)
    srv.serve_forever()
