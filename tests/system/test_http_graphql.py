"""The http output sending GraphQL mutations to a small GraphQL server of the
test's own: the body is {query, variables, operationName} with variables
from jq; an `errors` array in a 200 answer fails the delivery, retried only
for the extension codes in graphql.retry_on (THROTTLED here) and otherwise
dead-lettered at once with the first error's message and code."""

import json
import os
import re
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from partner import Partner  # noqa: E402
from pbtest import Patchbay, check, check_eq, run, test  # noqa: E402

QUERY = "mutation CreateOrder($input: OrderInput!) { createOrder(input: $input) { id } }"


class GraphQL:
    """Enough GraphQL for one mutation: the document must be a mutation on
    createOrder taking $input, the variables must carry the input, and what
    goes wrong is said the GraphQL way (200 with errors)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.orders = {}
        self.seen = {}
        self.requests = []
        self.p = Partner(self.handle)

    @staticmethod
    def error(msg, code):
        return 200, {}, {"data": None, "errors": [
            {"message": msg, "path": ["createOrder"], "extensions": {"code": code}}]}

    def handle(self, req):
        with self.lock:
            self.requests.append(req)
        if req.headers.get("content-type") != "application/json" or not isinstance(req.json, dict):
            return 400, {}, {"errors": [{"message": "expected a JSON body"}]}
        q = req.json.get("query", "")
        if not re.match(r"\s*mutation\b", q) or "createOrder(input: $input)" not in q:
            return 200, {}, {"errors": [{"message": "unknown operation",
                                         "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}]}
        inp = (req.json.get("variables") or {}).get("input")
        if not isinstance(inp, dict) or "sku" not in inp:
            return self.error("Variable $input of required type OrderInput! was not provided",
                              "BAD_USER_INPUT")
        sku = inp["sku"]
        with self.lock:
            self.seen[sku] = self.seen.get(sku, 0) + 1
            times = self.seen[sku]
        if sku == "throttle-once" and times == 1:
            return self.error("Throttled: cost 50, available 10", "THROTTLED")
        if sku == "bad":
            return self.error("SKU bad does not exist", "BAD_USER_INPUT")
        if sku == "html":
            return 200, {"Content-Type": "text/html"}, "<html>maintenance</html>"
        with self.lock:
            oid = f"gid://shop/Order/{len(self.orders) + 1}"
            self.orders[sku] = oid
        return 200, {}, {"data": {"createOrder": {"id": oid}}}


def post(pb, body):
    st, _, data = pb.post("/in", body)
    check_eq(st, 202, "ingest")
    return json.loads(data)["id"]


@test
def graphql_mutations_and_their_errors():
    g = GraphQL()
    pb = Patchbay(f"""
server: {{ listen: "@LISTEN@", admin_token: "@TOKEN@" }}
state: "sqlite:@DIR@/state.db"
outbound: {{ allow: [127.0.0.0/8] }}
pipelines:
  orders:
    input: {{ http_server: {{ path: /in }} }}
    outputs:
      shop:
        http:
          url: "{g.p.url}/graphql"
          graphql:
            query: '{QUERY}'
            variables: 'if .raw then .raw else {{input: {{sku, qty}}}} end'
            operation_name: CreateOrder
            retry_on: [THROTTLED]
          retry: {{ max_attempts: 5, initial: 100ms, max: 500ms }}
""")
    ok = post(pb, {"sku": "tee-1", "qty": 2, "note": "not sent"})
    throttled = post(pb, {"sku": "throttle-once", "qty": 1})
    bad = post(pb, {"sku": "bad", "qty": 1})
    html = post(pb, {"sku": "html", "qty": 1})
    notobj = post(pb, {"raw": [1, 2]})
    pb.wait_states([ok, throttled], {"shop": "delivered"})
    pb.wait_states([bad, html, notobj], {"shop": "dead"})

    first = next(r for r in g.requests if r.json["variables"]["input"]["sku"] == "tee-1")
    check_eq(first.json, {"query": QUERY, "variables": {"input": {"sku": "tee-1", "qty": 2}},
                          "operationName": "CreateOrder"}, "the request body")
    check(first.headers.get("accept") == "application/json", "Accept header")
    check(first.headers.get("idempotency-key"), "Idempotency-Key on a GraphQL request")

    d = pb.message(throttled)["deliveries"][0]
    check_eq(d["attempts"], 2, "attempts of the throttled mutation")
    e = d["attempt_log"][0]["error"]
    check("GraphQL errors (1): Throttled: cost 50, available 10 [THROTTLED]" in e, e)

    d = pb.message(bad)["deliveries"][0]
    check_eq(d["attempts"], 1, "a BAD_USER_INPUT error is not retried")
    check("SKU bad does not exist [BAD_USER_INPUT]" in d["last_error"], d["last_error"])
    d = pb.message(html)["deliveries"][0]
    check("not a GraphQL answer" in d["last_error"], d["last_error"])
    d = pb.message(notobj)["deliveries"][0]
    check("graphql.variables must give an object" in d["last_error"], d["last_error"])
    check_eq(g.seen.get("bad"), 1, "requests for the bad SKU")
    pb.term()


@test
def graphql_options_are_checked():
    pb = Patchbay("""
server: { listen: "@LISTEN@" }
state: "sqlite:@DIR@/state.db"
pipelines:
  orders:
    input: { http_server: { path: /in } }
    outputs:
      shop:
        http:
          url: https://shop.example.test/graphql
          method: PUT
          graphql: { query: 'mutation { x }', variables: '.[' }
""", start=False)
    r = pb.cli("lint", pb.config_path)
    out = r.stdout + r.stderr
    check(r.returncode != 0, "lint passed")
    check("graphql.variables" in out and "patchbay.yaml:" in out, out)


if __name__ == "__main__":
    run()
