"""The state store on PostgreSQL: the store's unit tests (tests/unit/
test_store.c, every op of the writer, the reads, migrations, two nodes
racing on one idempotency key) run against a throwaway PostgreSQL cluster
this module starts, each test in a schema of its own; and the daemon on it:
delivery across a kill -9, `patchbay migrate` and the refusal of an older
schema, /ready while the database is down, /api/nodes, and a second node
taking over what a killed one held."""

import json
import os
import signal
import time
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (PB_BIN, Patchbay, Poster, check, check_eq, log, run,  # noqa: E402
                    run_cli, scaled, start_sink, test, wait_until)
from srv_postgres import Postgres  # noqa: E402

_pg = None


def pg():
    global _pg
    if _pg is None:
        _pg = Postgres()
        _pg.create_db("pbstore")
    return _pg


@test
def store_unit_tests_pass_on_postgres():
    binary = os.path.join(os.path.dirname(os.path.abspath(PB_BIN)), "test_store")
    check(os.access(binary, os.X_OK), f"no unit test binary at {binary}")
    tests_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    env = dict(os.environ, PB_TEST_STORE_URL=pg().dsn("pbstore"))
    r = subprocess.run([binary], cwd=tests_dir, env=env, capture_output=True, text=True,
                       timeout=scaled(200))
    tail = "\n".join((r.stdout + r.stderr).splitlines()[-40:])
    check(r.returncode == 0, f"test_store against PostgreSQL exited {r.returncode}:\n{tail}")
    check("0 failed" in r.stdout, f"summary:\n{tail}")
    # The PostgreSQL-only cases ran (not skipped as on SQLite).
    for name in ("two_nodes_same_key_make_one_message", "older_schema_refused_until_migrated"):
        check(f"ok   {name}" in r.stdout, f"{name} did not pass:\n{tail}")
    check("(PostgreSQL only)" not in r.stdout, "a PostgreSQL-only case was skipped")


@test
def store_search_unit_tests_pass_on_postgres():
    """The dashboard's store ops (message search, dead letters by filter,
    sets replayed or purged by id, inject) and schema 3's migration."""
    binary = os.path.join(os.path.dirname(os.path.abspath(PB_BIN)), "test_store_search")
    check(os.access(binary, os.X_OK), f"no unit test binary at {binary}")
    tests_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    env = dict(os.environ, PB_TEST_STORE_URL=pg().dsn("pbstore"))
    r = subprocess.run([binary], cwd=tests_dir, env=env, capture_output=True, text=True,
                       timeout=scaled(120))
    tail = "\n".join((r.stdout + r.stderr).splitlines()[-40:])
    check(r.returncode == 0, f"test_store_search against PostgreSQL exited {r.returncode}:\n{tail}")
    check("0 failed" in r.stdout, f"summary:\n{tail}")
    for name in ("edit_and_replay_makes_a_linked_message", "dead_letters_by_filter_both_ways",
                 "search_filters_and_pages_newest_first", "inject_to_targets_and_sub_outputs",
                 "pg_migrate_v2_keeps_keys_still_in_the_window", "attempt_answers_kept_once_each",
                 "pg_migrate_v3_adds_attempt_answers"):
        check(f"ok   {name}" in r.stdout, f"{name} did not pass:\n{tail}")
    check("(PostgreSQL only)" not in r.stdout, "a PostgreSQL-only case was skipped")


CONF = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "%(state)s"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input:
      http_server: { path: /in }
    outputs:
      sink:
        http:
          url: "%(sink)s/charges"
          retry: { max_attempts: 1000, initial: 50ms, max: 500ms }
"""


def state_url(schema):
    return pg().dsn("pbstore") + "?schema=" + schema


def ready(pb):
    try:
        st, _, data = pb.get("/ready")
    except OSError:
        return None, b""
    return st, data


@test
def daemon_delivers_and_survives_kill9():
    sink = start_sink()
    pb = Patchbay(CONF % {"state": state_url("deliver"), "sink": sink.url})
    for i in range(50):
        st, _, _ = pb.post("/in", {"n": i}, headers={"Idempotency-Key": f"k{i}"})
        check_eq(st, 202, f"POST {i}")
    # A repeated key is answered as a duplicate: one message.
    pb.post("/in", {"n": 0}, headers={"Idempotency-Key": "k0"})
    wait_until(lambda: len(sink.records()) >= 50, scaled(30), "50 deliveries")
    sink.set_mode(status=500)
    for i in range(50, 80):
        st, _, _ = pb.post("/in", {"n": i})
        check_eq(st, 202, f"POST {i}")
    pb.kill9()
    sink.set_mode(status=200)
    pb.start()
    def got():
        return sorted({json.loads(r["body"])["n"] for r in sink.records() if r["status"] == 200})

    wait_until(lambda: got() == list(range(80)), scaled(60),
               "every acknowledged message delivered after kill -9")
    c = pg().connect("pbstore")
    check_eq(c.value("SELECT count(*) FROM deliver.messages"), "80", "one message per key")
    c.close()
    pb.term()


@test
def migrate_command_and_older_schema_refused():
    sink = start_sink()
    conf = CONF % {"state": state_url("mig"), "sink": sink.url}
    pb = Patchbay(conf, start=False)
    r = run_cli("migrate", pb.config_path)
    check_eq(r.returncode, 0, f"migrate on an empty schema: {r.stderr}")
    check("at this patchbay's schema" in r.stdout, r.stdout)
    c = pg().connect("pbstore")
    current = c.value("SELECT value FROM mig.meta WHERE key = 'schema_version'")
    check(int(current) >= 2, f"schema_version {current}")
    # Back to schema 1, as a node of an older binary left it.
    c.query("ALTER TABLE mig.messages DROP COLUMN idem_key, DROP COLUMN edit_of;"
            " DROP INDEX mig.deliveries_dead_id; DROP INDEX mig.messages_received_seq;"
            " CREATE INDEX messages_received ON mig.messages(received_at);"
            " DROP TABLE mig.holds; DROP TABLE mig.nodes; DROP SEQUENCE mig.node_epoch;"
            " DROP INDEX mig.deliveries_lease;"
            " ALTER TABLE mig.attempts DROP COLUMN answer;"
            " ALTER TABLE mig.deliveries DROP COLUMN last_answer;"
            " UPDATE mig.meta SET value = '1' WHERE key = 'schema_version'")
    pb.start(wait_ready=False)
    check_eq(pb.proc.wait(timeout=scaled(30)), 1, "run on an older schema exits 1")
    log = pb.log()
    check("schema version 1" in log and "patchbay migrate CONFIG" in log,
          f"the refusal says what to do:\n{log[-1500:]}")
    check_eq(c.value("SELECT value FROM mig.meta WHERE key = 'schema_version'"), "1",
             "the refused schema is left alone")
    r = run_cli("migrate", pb.config_path)
    check_eq(r.returncode, 0, f"migrate from 1: {r.stderr}")
    check_eq(c.value("SELECT value FROM mig.meta WHERE key = 'schema_version'"), current,
             "migrated to the current schema")
    pb.start()
    st, _, _ = pb.post("/in", {"n": 1})
    check_eq(st, 202, "ingest after migrate")
    wait_until(lambda: len(sink.records()) >= 1, scaled(30), "delivery after migrate")
    pb.term()
    # A newer schema than this binary knows: refused, by migrate too.
    c.query("UPDATE mig.meta SET value = '99' WHERE key = 'schema_version'")
    r = run_cli("migrate", pb.config_path)
    check_eq(r.returncode, 1, "migrate refuses a newer schema")
    check("newer" in r.stderr, r.stderr)
    c.close()


@test
def ready_false_while_the_database_is_down():
    sink = start_sink()
    pb = Patchbay(CONF % {"state": state_url("ready"), "sink": sink.url})
    check_eq(ready(pb)[0], 200, "/ready with the database up")
    pg().kill9()
    try:
        # Not writable may come first (a commit failing); the heartbeat
        # names the cause within one period.
        wait_until(lambda: ready(pb)[0] == 503 and b"unreachable" in ready(pb)[1], scaled(30),
                   "/ready 503, the database unreachable")
    finally:
        pg().start()
    # Back without any write to make the store try: the heartbeat's probe.
    wait_until(lambda: ready(pb)[0] == 200, scaled(25), "/ready 200 once the database is back")
    st, _, _ = pb.post("/in", {"n": 1})
    check_eq(st, 202, "ingest once the database is back")
    wait_until(lambda: len(sink.records()) >= 1, scaled(30), "delivery once the database is back")
    pb.term()


TWO = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "%(state)s"
cluster: { node: %(node)s, lease: 1500ms, heartbeat: 250ms }
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input:
      http_server: { path: /in }
    outputs:
      sink:
        http:
          url: "%(sink)s/${NODE}"
          concurrency: 4
          retry: { max_attempts: 1000, initial: 50ms, max: 300ms }
"""


def node(conf, name, state, sink):
    return Patchbay(conf % {"state": state, "node": name, "sink": sink.url}, env={"NODE": name})


def nodes(pb):
    st, doc = pb.admin("GET", "/api/nodes")
    check_eq(st, 200, f"GET /api/nodes: {doc}")
    check(all(n.get("id") == n["name"] for n in doc["nodes"]), f"each node's id: {doc}")
    return {n["name"]: n for n in doc["nodes"]}, doc


@test
def a_killed_nodes_work_is_taken_over_by_another():
    sink = start_sink()
    state = state_url("two")
    alpha = node(TWO, "alpha", state, sink)
    beta = node(TWO, "beta", state, sink)
    wait_until(lambda: nodes(alpha)[1]["live"] == 2, scaled(10), "both nodes live in /api/nodes")
    by_name, doc = nodes(alpha)
    check_eq(doc["self"], "alpha", "self")
    check(doc["clustered"] and doc["live"] == 2, f"/api/nodes: {doc}")
    check(by_name["alpha"]["self"] and not by_name["beta"]["self"], f"{by_name}")
    check_eq(by_name["beta"]["state"], "live", "beta's state")
    # beta takes 20 messages its partner refuses: it holds them, retrying.
    sink.set_mode(status=503)
    for i in range(20):
        st, _, _ = beta.post("/in", {"n": i})
        check_eq(st, 202, f"POST {i} to beta")
    # Pending work may also be claimed by alpha (both nodes claim what is
    # unleased); beta must hold some of it when it is killed.
    wait_until(lambda: sum(n["leases"] for n in nodes(alpha)[1]["nodes"]) == 20
               and nodes(alpha)[0]["beta"]["leases"] >= 8, scaled(10),
               "the 20 deliveries held, most by beta")
    beta.kill9()
    sink.set_mode(status=200)

    def delivered():
        return {json.loads(r["body"])["n"] for r in sink.records() if r["status"] == 200}

    wait_until(lambda: delivered() == set(range(20)), scaled(30),
               "alpha delivers what the killed beta held")
    wait_until(lambda: nodes(alpha)[0]["beta"]["state"] == "dead", scaled(10),
               "beta presumed dead")
    check_eq(nodes(alpha)[0]["beta"]["leases"], 0, "beta holds nothing")
    alpha.term()


@test
def a_frozen_node_resumed_sends_nothing_it_lost():
    sink = start_sink()
    state = state_url("frozen")
    alpha = node(TWO, "alpha", state, sink)
    beta = node(TWO, "beta", state, sink)
    wait_until(lambda: set(nodes(alpha)[0]) >= {"alpha", "beta"}, scaled(10),
               "both nodes in /api/nodes")
    sink.set_mode(status=503)
    for i in range(20):
        st, _, _ = beta.post("/in", {"n": i})
        check_eq(st, 202, f"POST {i} to beta")
    # Pending work may also be claimed by alpha (both nodes claim what is
    # unleased); beta must hold some of it when it freezes.
    wait_until(lambda: sum(n["leases"] for n in nodes(alpha)[1]["nodes"]) == 20
               and nodes(alpha)[0]["beta"]["leases"] >= 8, scaled(10),
               "the 20 deliveries held, most by beta")
    beta.proc.send_signal(signal.SIGSTOP)
    try:
        # Longer than the lease: alpha presumes beta dead and takes its work.
        wait_until(lambda: nodes(alpha)[0]["beta"]["state"] == "dead", scaled(15),
                   "the frozen beta presumed dead")
        sink.set_mode(status=200)

        def delivered():
            out = {}  # n -> 200s
            for r in sink.records():
                if r["status"] == 200:
                    n = json.loads(r["body"])["n"]
                    out[n] = out.get(n, 0) + 1
            return out

        wait_until(lambda: set(delivered()) == set(range(20)), scaled(30),
                   "alpha delivers what the frozen beta held")
    finally:
        resumed_ms = int(time.time() * 1000)
        beta.proc.send_signal(signal.SIGCONT)
    # beta wakes with its retry timers due: it must start none of them, learn
    # it was presumed dead, and restart in place under a new epoch.
    wait_until(lambda: "restarting in place" in beta.log(), scaled(15), "beta restarts in place")
    wait_until(lambda: any(n["name"] == "beta" and n["state"] == "live"
                           for n in nodes(alpha)[1]["nodes"]), scaled(30), "beta live again")
    # What beta had handed to its HTTP client before it froze may still go
    # out (at most its concurrency, 4); nothing it started after waking.
    late = [r for r in sink.records() if r["path"] == "/beta" and r["ts"] >= resumed_ms]
    check(len(late) <= 4, f"beta sent {len(late)} requests after waking (in flight: 4 at most)")
    twice = {n: c for n, c in delivered().items() if c != 1}
    check(len(twice) <= 4, f"deliveries sent twice: {twice}")
    check("cluster heartbeat overdue" in beta.log(), "beta paused its attempts")
    alpha.term()
    beta.term()


POLL = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "%(state)s"
cluster: { node: %(node)s, lease: 1500ms, heartbeat: 250ms }
outbound: { allow: [127.0.0.0/8] }
pipelines:
  feed:
    input:
      http_poll:
        url: "%(partner)s/feed"
        interval: 1s
        headers: { X-Node: "${NODE}" }
        items: .items[]
        cursor: { value: .id, param: since, initial: "0" }
        dedupe_key: '"\\(.id)"'
    outputs:
      sink:
        http: { url: "%(sink)s/feed", retry: { max_attempts: 1000, initial: 50ms, max: 300ms } }
  events:
    input:
      http_server: { path: /in }
    ordering: { key: .k }
    outputs:
      sink:
        http:
          url: "%(sink)s/ordered"
          concurrency: 4
          retry: { max_attempts: 1000, initial: 20ms, max: 200ms }
"""


class Feed:
    """A partner polled by the cluster's http_poll: each call is recorded
    with the caller's node and its start and end; each answer has the items
    after `since`, one new item per call."""

    def __init__(self):
        import http.server
        import threading
        import urllib.parse
        self.calls, self.lock, self.next_id = [], threading.Lock(), 1
        self.fixed = None  # a list of ids: every answer has those after `since`
        self.delay = 0.03
        self.in_call = threading.Event()
        feed = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                start = time.monotonic()
                q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                since = int(q.get("since", ["0"])[0] or 0)
                feed.in_call.set()
                time.sleep(feed.delay)  # a call lasts a while: overlaps would show
                with feed.lock:
                    if feed.fixed is not None:
                        items = [{"id": i} for i in feed.fixed if i > since]
                    else:
                        feed.next_id += 1
                        items = [{"id": i}
                                 for i in range(since + 1, min(feed.next_id, since + 20))]
                body = json.dumps({"items": items}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with feed.lock:
                    feed.calls.append((self.headers.get("X-Node"), start, time.monotonic()))

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def by(self):
        with self.lock:
            return [c[0] for c in self.calls]

    def overlaps(self):
        """Calls of two different nodes that ran at the same time."""
        with self.lock:
            calls = sorted(self.calls, key=lambda c: c[1])
        bad = []
        for i, a in enumerate(calls):
            for b in calls[i + 1:]:
                if b[1] >= a[2]:
                    break
                if b[0] != a[0]:
                    bad.append((a, b))
        return bad

    def stop(self):
        self.srv.shutdown()


def poll_node(name, state, partner, sink):
    return Patchbay(POLL % {"state": state, "node": name, "partner": partner.url,
                            "sink": sink.url}, env={"NODE": name})


def holder_of(pb, hold):
    by_name, _ = nodes(pb)
    return [n for n, v in by_name.items()
            if v["state"] == "live" and hold in (v.get("holds") or [])]


@test
def singleton_poller_and_ordered_keys_have_one_node_at_a_time():
    """Two nodes with an http_poll input and an ordered pipeline: the poller
    runs on the node holding it, never on both at once; when that node is
    killed the other takes it over with the cursor where it was committed.
    Posts of one key alternate between the nodes and still go out in order;
    retention runs on one node."""
    sink = start_sink()
    feed = Feed()
    state = state_url("single")
    alpha = poll_node("alpha", state, feed, sink)
    beta = poll_node("beta", state, feed, sink)
    try:
        wait_until(lambda: len(holder_of(alpha, "input/feed")) == 1
                   and len(holder_of(alpha, "ordered/events")) == 1
                   and len(holder_of(alpha, "retention")) == 1, scaled(10),
                   "each hold on one node")
        first = holder_of(alpha, "input/feed")[0]
        wait_until(lambda: len(feed.by()) >= 4, scaled(15), "the feed polled")
        check_eq(set(feed.by()), {first}, "callers of the feed while both nodes live")
        other = beta if first == "alpha" else alpha
        st, doc = other.admin("GET", "/api/inputs")
        check_eq(st, 200, f"GET /api/inputs: {doc}")
        feed_in = [i for i in doc["inputs"] if i["pipeline"] == "feed"][0]
        check_eq(feed_in["state"], "standby", f"the other node's poller: {feed_in}")
        check_eq(ready(other)[0], 200, "a standby node is ready")

        # One key posted to each node in turn: delivered in the order posted.
        for i in range(60):
            pb = alpha if i % 2 == 0 else beta
            st, _, _ = pb.post("/in", {"k": "a" if i % 3 else "b", "n": i})
            check_eq(st, 202, f"POST {i}")

        def ordered():
            return [json.loads(r["body"]) for r in sink.records()
                    if r["path"] == "/ordered" and r["status"] == 200]

        wait_until(lambda: len({o["n"] for o in ordered()}) == 60, scaled(30),
                   "the 60 ordered messages delivered")
        for k in ("a", "b"):
            seq = [o["n"] for o in ordered() if o["k"] == k]
            check_eq(seq, sorted(seq), f"key {k} in order")

        # The poller's node killed: the other takes the poller over.
        holder = alpha if first == "alpha" else beta
        seen_before = len(feed.by())
        holder.kill9()
        wait_until(lambda: (set(feed.by()[seen_before:]) - {first}) != set(), scaled(15),
                   "the other node polls once the holder is dead")
        check_eq(feed.overlaps(), [], "calls of two nodes at the same time")
        ids = {json.loads(r["body"])["id"] for r in sink.records() if r["path"] == "/feed"}
        wait_until(lambda: len({json.loads(r["body"])["id"] for r in sink.records()
                                if r["path"] == "/feed"}) > len(ids), scaled(10),
                   "new items after the takeover")
        got = sorted({json.loads(r["body"])["id"] for r in sink.records() if r["path"] == "/feed"})
        check_eq(got, list(range(1, got[-1] + 1)), "every item of the feed, no gap")
        # The killed node back: it waits; the poller stays where it is.
        holder.start()
        wait_until(lambda: nodes(other)[1]["live"] == 2, scaled(10), "both live again")
        mark = len(feed.by())
        wait_until(lambda: len(feed.by()) >= mark + 4, scaled(15), "polling goes on")
        check_eq(set(feed.by()[mark:]), {"beta" if first == "alpha" else "alpha"},
                 "callers after the old holder came back")
        check_eq(feed.overlaps(), [], "calls of two nodes at the same time")
    finally:
        feed.stop()
    alpha.term()
    beta.term()


@test
def a_page_not_committed_is_fetched_again_without_a_false_loop():
    """A poller's page whose commit fails (the database went away while the
    partner answered) is fetched again once the database is back: the same
    page again is not a pagination loop, and its items arrive."""
    sink = start_sink()
    feed = Feed()
    feed.fixed = []
    pb = poll_node("solo", state_url("refetch"), feed, sink)
    try:
        wait_until(lambda: len(feed.by()) >= 1, scaled(15), "the feed polled")
        with feed.lock:
            feed.fixed = [1, 2, 3]
            feed.delay = 2.0
        feed.in_call.clear()
        wait_until(feed.in_call.is_set, scaled(15), "a call with the new items under way")
        pg().kill9()
        try:
            time.sleep(3)  # the answer comes while the database is away
        finally:
            pg().start()
        feed.delay = 0.03

        def got():
            return sorted({json.loads(r["body"])["id"] for r in sink.records()
                           if r["path"] == "/feed"})

        wait_until(lambda: got() == [1, 2, 3], scaled(40), "the page's items once it commits")
        check("pagination loop" not in pb.log(), "no false pagination loop")
    finally:
        feed.stop()
    pb.term()


@test
def a_rolling_restart_loses_nothing():
    """Both nodes take load throughout while each in turn is reloaded
    (SIGHUP) and restarted (SIGTERM, a new process): every acknowledged
    message is delivered, and duplicates stay within the attempts in flight
    when a node stopped."""
    sink = start_sink(delay_ms=2)
    state = state_url("rolling")
    alpha = node(TWO, "alpha", state, sink)
    beta = node(TWO, "beta", state, sink)
    wait_until(lambda: nodes(alpha)[1]["live"] == 2, scaled(10), "both nodes live")
    def body(t, i):
        time.sleep(0.01)  # about 200 a second to each node, throughout
        return {"n": f"{t}{i}"}

    posters = [Poster(pb.port, "/in", lambda i, t=t: body(t, i), concurrency=2)
               for t, pb in (("a", alpha), ("b", beta))]
    for p in posters:
        p.start()

    def acked():
        return sum(p.count_acked() for p in posters)

    def starts(pb):
        return pb.log().count(" started listen=")

    for pb in (alpha, beta):
        mark = acked()
        wait_until(lambda: acked() >= mark + 200, scaled(30), "load flowing")
        before = starts(pb)
        pb.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: starts(pb) > before, scaled(30), f"{pb.env['NODE']} reloaded")
        pb.wait_ready()
        mark = acked()
        wait_until(lambda: acked() >= mark + 200, scaled(30), "load flowing")
        pb.term()
        pb.start()
    mark = acked()
    wait_until(lambda: acked() >= mark + 200, scaled(30), "load flowing")
    for p in posters:
        p.stop()
    want = {f"{t}{i}" for t, p in zip("ab", posters) for i, _ in p.acked()}
    check(len(want) >= 1000, f"only {len(want)} acknowledged")

    def delivered():
        out = {}
        for r in sink.records():
            if r["status"] == 200:
                n = json.loads(r["body"])["n"]
                out[n] = out.get(n, 0) + 1
        return out

    wait_until(lambda: want <= set(delivered()), scaled(60),
               "every acknowledged message delivered")
    # A clean stop waits for its attempts' answers: nothing is sent twice.
    twice = {n: c for n, c in delivered().items() if c > 1}
    log(f"rolling restart: {len(want)} acknowledged, all delivered, {len(twice)} twice")
    check(len(twice) <= 8, f"sent more than once: {twice}")
    alpha.term()
    beta.term()


@test
def cluster_settings_are_checked():
    conf = TWO.replace("lease: 1500ms", "lease: 500ms")
    pb = Patchbay(conf % {"state": state_url("lint"), "node": "x", "sink": "http://127.0.0.1:9"},
                  start=False)
    r = run_cli("lint", pb.config_path, env=dict(os.environ, NODE="x"))
    check_eq(r.returncode, 1, f"lint: {r.stdout} {r.stderr}")
    check("cluster.lease must be at least three heartbeats" in r.stderr, r.stderr)


@test
def api_nodes_on_sqlite_is_this_process():
    sink = start_sink()
    pb = Patchbay(CONF % {"state": "sqlite:@DIR@/state.db", "sink": sink.url})
    st, doc = pb.admin("GET", "/api/nodes")
    check_eq(st, 200, f"GET /api/nodes: {doc}")
    check(not doc["clustered"], f"/api/nodes: {doc}")
    check_eq(len(doc["nodes"]), 1, "one node")
    n = doc["nodes"][0]
    check(n["self"] and n["state"] == "ready" and n["id"], f"{n}")
    pb.term()


if __name__ == "__main__":
    run()
