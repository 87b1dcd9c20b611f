"""patchbay test and patchbay eval as a user meets them: every example
configuration's own tests pass; a wrong expectation fails with exit 1 and a
diff; every processor can be tested; mocked answers of outputs play out with
the output's retry policy; nothing connects anywhere and no state is left
behind; --watch runs again when a file changes; eval runs a mapping with the
engine's fidelity rules (exact numbers, duplicate keys, NaN)."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    PB_BIN,
    check,
    check_eq,
    log,
    run,
    run_cli,
    scaled,
    start_sink,
    test,
    tmpdir,
    wait_until,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAN_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")


def pbtest(*args, cwd=None, timeout=120):
    r = subprocess.run([PB_BIN, "test", "--no-color", *args], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=scaled(timeout), cwd=cwd)
    for mark in SAN_MARKS:
        check(mark not in r.stderr, f"sanitizer report:\n{r.stderr[-4000:]}")
    return r


def write(d, name, text):
    path = os.path.join(d, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def summary(out):
    last = out.strip().splitlines()[-1]
    p, f = last.split(" passed, ")
    return int(p), int(f.split(" failed")[0])


# ---- the examples ----------------------------------------------------------------------


@test
def every_example_ships_tests_and_they_pass():
    configs = sorted(glob.glob(os.path.join(ROOT, "examples", "*", "patchbay.yaml")))
    check(len(configs) >= 2, f"examples: {configs}")
    for cfg in configs:
        # From the repository root, as each example's README runs it (its
        # paths, such as shop-sync's schema, are relative to it).
        r = pbtest(cfg, cwd=ROOT)
        log(r.stdout)
        check_eq(r.returncode, 0, f"{cfg}:\n{r.stdout}{r.stderr}")
        passed, failed = summary(r.stdout)
        check(passed >= 3 and failed == 0, f"{cfg}: {passed} passed, {failed} failed")
        check_eq(len([l for l in r.stdout.splitlines() if l.startswith("ok ")]), passed,
                 "one line per case")
    # The ones that reach out are tested with mocked answers, and pass.
    r = pbtest(os.path.join(ROOT, "examples", "shop-sync", "patchbay.yaml"), "--verbose",
               "--run", "tier from the CRM", cwd=ROOT)
    check(r.returncode == 0 and '"tier":"gold"' in r.stdout, r.stdout)


# ---- every processor -------------------------------------------------------------------

PROCESSORS = """
server: { listen: "127.0.0.1:0" }
state: "sqlite:STATE/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input: { http_server: { path: /in } }
    ordering: { key: '.customer | ascii_downcase' }
    process:
      - filter: '.test != true'
      - map: '{id, customer, cents: .total, lines: .lines}'
      - switch:
          - { when: '.cents >= 100000', to: [payments, review] }
          - { when: '$meta.headers["x-channel"] == "pos"', to: [store] }
          - { otherwise: [payments] }
      - split: '.lines[]? // . | {id: .id, sku: (.sku // null), cents: (.cents // null)}'
    outputs:
      payments:
        http:
          url: "SINK/charges"
          map: '{amount: .cents, ref: .id}'
          retry: { max_attempts: 4, initial: 1s, max: 10s, max_age: 1h }
      review:
        http: { url: "SINK/review", map: 'select(.cents > 200000)' }
      store:
        amqp:
          url: "amqp://127.0.0.1:1/%2f"
          exchange: pos
          routing_key: 'sale.{{ .sku }}'
          map: '{sku, id}'
"""

PROCESSOR_TESTS = r"""
cases:
  - name: map and switch send a small order to payments only
    input: { body: { id: 1, customer: c1, total: 500 } }
    expect:
      payments: [ { amount: 500, ref: 1 } ]
      review: routed_away
      store: routed_away
  - name: filter drops test orders at step 1
    input: { body: { id: 2, customer: c1, total: 500, test: true } }
    expect:
      payments: [ filtered ]
      review: filtered
  - name: a big order goes to review too, whose own map filters below 200000
    input:
      - { body: { id: 3, customer: c2, total: 150000 } }
      - { body: { id: 4, customer: c2, total: 250000 } }
    expect:
      payments: [ { amount: 150000, ref: 3 }, { amount: 250000, ref: 4 } ]
      review: [ filtered, { id: 4, sku: null, cents: 250000 } ]
  - name: switch on $meta headers, split per line, template fields rendered per part
    input:
      body: { id: 5, customer: c3, total: 9, lines: [ { id: 5, sku: A, cents: 4 }, { id: 5, sku: B, cents: 5 } ] }
      headers: { X-Channel: pos }
    expect:
      store:
        - { equals: { sku: A, id: 5 }, fields: { routing_key: sale.A } }
        - { equals: { sku: B, id: 5 }, fields: { routing_key: sale.B } }
      payments: [ routed_away, routed_away ]
  - name: a template part that gives null dead-letters that delivery only
    input:
      body: { id: 6, customer: c3, total: 9 }
      headers: { X-Channel: pos }
    expect:
      store: { dead_letter: "template field 1 of output store" }
  - name: an ordering key that fails dead-letters the message in the route stage
    input: { body: { id: 7, customer: { a: [1] }, total: 1 } }
    dead_letter: "ordering key: jq:"
    expect:
      payments: nothing
  - name: a step that fails is a dead letter with the step and jq's reason
    input: { raw: '{"id": 8, "customer": "c", "total": 1, "lines": ["a"]}' }
    dead_letter: "process step 4 (split): jq: Cannot index string"
  - name: payments answer 503 until max_attempts
    input: { body: { id: 9, customer: c9, total: 1 } }
    mock: { outputs: { payments: 503 } }
    expect:
      payments: { dead_letter: "HTTP 503 (gave up: max_attempts reached)" }
  - name: Retry-After beyond max_age gives up early
    input: { body: { id: 10, customer: c9, total: 1 } }
    mock: { outputs: { payments: [ { status: 429, retry_after: 2h } ] } }
    expect:
      payments: { dead_letter: "gave up: max_age exceeded" }
  - name: a value jq cannot carry is dead-lettered, never rounded
    input: { raw: '{"id": 11, "customer": "c", "total": 9007199254740993}' }
    dead_letter: "integer beyond 2^53"
"""


@test
def every_processor_tested_without_any_connection():
    sink = start_sink()
    d = tmpdir("procs")
    state = os.path.join(d, "state")
    cfg = write(d, "patchbay.yaml", PROCESSORS.replace("SINK", sink.url).replace("STATE", state))
    write(d, "patchbay.test.yaml", PROCESSOR_TESTS)
    r = pbtest(cfg)
    log(r.stdout)
    check_eq(r.returncode, 0, f"{r.stdout}{r.stderr}")
    check_eq(summary(r.stdout), (10, 0), "cases")
    # Outputs were recorders: the partner saw nothing, no state was written.
    check_eq(sink.records(), [], "requests reaching the partner")
    check(not os.path.exists(state), "no state directory left behind")
    check_eq(sorted(os.listdir(d)), ["patchbay.test.yaml", "patchbay.yaml"], "files in the folder")


# ---- failing cases ----------------------------------------------------------------------

WRONG = r"""
cases:
  - name: exact body wrong
    input: { body: { id: 1, customer: c1, total: 500 } }
    expect:
      payments: [ { amount: 501, ref: 1 } ]
  - name: subset wrong and jq false
    input: { body: { id: 3, customer: c2, total: 250000 } }
    expect:
      payments: [ { subset: { amount: 250000, ref: 4 } } ]
      review: [ { jq: '.cents < 10' } ]
  - name: wrong count
    input: { body: { id: 1, customer: c1, total: 500 } }
    expect:
      payments: [ { amount: 500, ref: 1 }, { amount: 500, ref: 1 } ]
  - name: a dead letter nobody expected
    input: { body: { id: 1, customer: c1, total: 500 } }
    mock: { outputs: { payments: 400 } }
  - name: right
    input: { body: { id: 1, customer: c1, total: 500 } }
    expect:
      payments: [ { amount: 500, ref: 1 } ]
"""


@test
def a_wrong_expectation_exits_1_with_a_diff():
    d = tmpdir("wrong")
    cfg = write(d, "patchbay.yaml", PROCESSORS.replace("SINK", "http://127.0.0.1:9")
                .replace("STATE", d))
    tf = write(d, "tests/wrong.yaml", WRONG)
    r = pbtest(cfg)
    log(r.stdout)
    check_eq(r.returncode, 1, "exit status")
    check_eq(summary(r.stdout), (1, 4), "cases")
    out = r.stdout
    check(f"FAIL exact body wrong ({tf}:3" in out, "one line per case with file:line")
    check("ok   right" in out, "the passing case")
    check('-   "amount": 501,' in out and '+   "amount": 500,' in out, "a diff of the body")
    check("at .ref: expected 4, got 3" in out, "the subset mismatch")
    check("condition `.cents < 10` is false for" in out, "the jq condition")
    check("payments: expected 2 outcomes, got 1" in out, "the count")
    check("payments[1]: unexpected dead letter: HTTP 400 (gave up: permanent)" in out,
          "an unexpected dead letter fails the case")
    # --run picks cases by name.
    r = pbtest("--run", "right", cfg)
    check_eq((r.returncode, summary(r.stdout)), (0, (1, 0)), "--run")


@test
def mistakes_in_test_files_name_file_line_col():
    d = tmpdir("bad")
    cfg = write(d, "patchbay.yaml", PROCESSORS.replace("SINK", "http://127.0.0.1:9")
                .replace("STATE", d))
    bad = write(d, "patchbay.test.yaml", """
cases:
  - name: typo
    inptu: { body: {} }
  - name: unknown output
    input: { body: { id: 1 } }
    expect: { paymnets: [] }
  - name: unknown pipeline
    pipeline: nope
    input: { body: {} }
  - name: missing fixture
    input: { file: fixtures/none.json }
  - name: bad mock
    input: { body: { id: 1, customer: c, total: 1 } }
    mock: { outputs: { payments: [ { status: 999 } ] } }
  - name: a big number in an expectation
    input: { body: { id: 1, customer: c, total: 1 } }
    expect: { payments: [ { amount: 12345678901234567890 } ] }
""")
    r = pbtest(cfg)
    log(r.stdout)
    check_eq(r.returncode, 1, "exit")
    for want in (f'{bad}:4:5: unknown key "inptu"', f'{bad}:7:15: expect: pipeline has no output',
                 f'{bad}:9:15: no pipeline "nope"', f"{bad}:12:20: cannot read",
                 f"{bad}:15:46: status is an HTTP status",
                 f"{bad}:18:27: not a value jq can carry exactly: integer beyond 2^53"):
        check(want in r.stdout, f"missing {want!r}")
    # A configuration without tests is a failure, not a silent pass.
    lonely = write(tmpdir("lonely"), "other.yaml", "pipelines: {}\n")
    r = pbtest(lonely)
    check(r.returncode == 1 and "no test cases" in r.stdout, r.stdout)
    # A configuration that does not load fails its test files with lint's errors.
    write(d, "broken.yaml", "server: { listen: 1 }\npipelines: { p: { input: { nope: {} } } }\n")
    write(d, "broken.test.yaml", "cases: []\n")
    r = pbtest(os.path.join(d, "broken.yaml"))
    check(r.returncode == 1 and "broken.test.yaml: the configuration does not load" in r.stdout
          and f'{d}/broken.yaml:2:17: missing required key "outputs"' in r.stdout, r.stdout)


# ---- mocked answers of a processor -------------------------------------------------------

@test
def mocked_answers_for_processors_are_refused_for_unknown_ones():
    d = tmpdir("mockproc")
    cfg = write(d, "patchbay.yaml", PROCESSORS.replace("SINK", "http://127.0.0.1:9")
                .replace("STATE", d))
    bad = write(d, "patchbay.test.yaml", """
cases:
  - name: a mock for a processor that does not exist
    input: { body: { id: 1, customer: c, total: 1 } }
    mock: { lookup: [ { status: 200 } ] }
""")
    r = pbtest(cfg)
    check(r.returncode == 1 and f'{bad}:5:13: mock: "lookup" is neither outputs nor a processor'
          in r.stdout, r.stdout)


ENRICH = """
server: { listen: "127.0.0.1:0" }
state: "sqlite:STATE/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  rest:
    input: { http_server: { path: /in } }
    process:
      - enrich:
          url: 'SINK/customers/{{ .customer }}'
          key: .customer
          auth: { bearer: crm-secret-token }
          into: '.tier = $answer.tier'
          on_missing: dead_letter
    outputs:
      erp: { http: { url: "SINK/erp" } }
  graph:
    input: { http_server: { path: /g } }
    process:
      - enrich:
          url: 'SINK/graphql'
          graphql:
            query: 'query($id: ID!) { customer(id: $id) { tier } }'
            variables: '{id: .customer}'
          answer: .data.customer
          into: '.tier = $answer.tier'
          on_missing: keep
    outputs:
      erp: { http: { url: "SINK/erp" } }
"""

ENRICH_TESTS = r"""
cases:
  - name: the mocked answer to the very request is merged in
    pipeline: rest
    input:
      - { body: { id: 1, customer: c1 } }
      - { body: { id: 2, customer: c1 } }
    mock:
      enrich:
        - match: { method: GET, url: SINK/customers/c1, key: c1,
                   headers: { authorization: Bearer crm-secret-token, accept: application/json } }
          body: { tier: gold }
        - { when: '.key == "c1"', body: { tier: wrong } }
    expect:
      erp: [ { id: 1, customer: c1, tier: gold }, { id: 2, customer: c1, tier: gold } ]
  - name: a customer nobody mocked
    pipeline: rest
    input: { body: { id: 3, customer: c2 } }
    mock:
      enrich: [ { match: { key: c1 }, body: { tier: gold } } ]
    expect:
      erp: [ { id: 3, customer: c2, tier: gold } ]
  - name: 404 and a null answer follow on_missing; no case sees another's answers
    pipeline: rest
    input:
      - { body: { id: 4, customer: gone } }
      - { body: { id: 5, customer: nul } }
      - { body: { id: 13, customer: c1 } }
    mock:
      enrich:
        - { match: { key: gone }, status: 404 }
        - { match: { key: nul }, raw: 'null' }
        - { match: { key: c1 }, status: 410 }
    dead_letter:
      - "nothing found (HTTP 404 from SINK/customers/gone)"
      - "nothing found (the answer from SINK/customers/nul is null)"
      - "nothing found (HTTP 410 from SINK/customers/c1)"
    expect:
      erp: nothing
  - name: an outage, no answer and a broken answer fail the message with the reason
    pipeline: rest
    input:
      - { body: { id: 6, customer: a } }
      - { body: { id: 7, customer: b } }
      - { body: { id: 8, customer: c } }
      - { body: { id: 9, customer: d } }
    mock:
      enrich:
        - { match: { key: a }, status: 503, body: { error: maintenance } }
        - { match: { key: b }, error: timeout }
        - { match: { key: c }, raw: '<html>' }
        - { match: { key: d }, status: 400 }
    dead_letter:
      - "process step 1 (enrich): lookup failed: HTTP 503 from SINK/customers/a"
      - "lookup failed: timeout (SINK/customers/b)"
      - "lookup answer is not JSON"
      - "lookup failed: HTTP 400 from SINK/customers/d"
  - name: GraphQL lookups are mocked on their request body; errors fail, null keeps
    pipeline: graph
    input:
      - { body: { id: 10, customer: g1 } }
      - { body: { id: 11, customer: g2 } }
      - { body: { id: 12, customer: g3 } }
    mock:
      enrich:
        - match: { method: POST, body: { variables: { id: g1 } }, headers: { content-type: application/json } }
          body: { data: { customer: { tier: silver } } }
        - match: { body: { variables: { id: g2 } } }
          body: { data: null, errors: [ { message: "customer g2 is locked" } ] }
        - match: { body: { variables: { id: g3 } } }
          body: { data: { customer: null } }
    dead_letter: "GraphQL error: customer g2 is locked"
    expect:
      erp: [ { id: 10, customer: g1, tier: silver }, { id: 12, customer: g3 } ]
"""


@test
def mocked_enrich_answers_are_used_and_a_missing_one_fails_the_case():
    sink = start_sink()
    d = tmpdir("enrich")
    state = os.path.join(d, "state")
    cfg = write(d, "patchbay.yaml", ENRICH.replace("SINK", sink.url).replace("STATE", state))
    tf = write(d, "patchbay.test.yaml", ENRICH_TESTS.replace("SINK", sink.url))
    r = pbtest(cfg)
    log(r.stdout)
    check_eq(r.returncode, 1, f"exit status: {r.stdout}{r.stderr}")
    check_eq(summary(r.stdout), (4, 1), "cases")
    for name in ("the mocked answer to the very request", "404 and a null answer",
                 "an outage, no answer", "GraphQL lookups are mocked"):
        check(f"ok   {name}" in r.stdout, f"case {name!r} passes")
    # The unmocked lookup fails its case, saying which request had no answer.
    check(f"FAIL a customer nobody mocked ({tf}:" in r.stdout, "the failing case")
    want = (f"unexpected dead letter (item 1): process step 1 (enrich): no mocked answer for "
            f"enrich GET {sink.url}/customers/c2 (key c2)")
    check(want in r.stdout, f"missing {want!r}")
    check(f"mocked requests:\n      enrich GET {sink.url}/customers/c2 (key c2)" in r.stdout,
          "the requests the case made")
    check("crm-secret-token" not in r.stdout + r.stderr, "the bearer token is never shown")
    # Nothing reached the partner, no state was written.
    check_eq(sink.records(), [], "requests reaching the partner")
    check(not os.path.exists(state), "no state directory left behind")


# ---- --watch -----------------------------------------------------------------------------

@test
def watch_runs_again_when_a_file_changes():
    d = tmpdir("watch")
    cfg = write(d, "patchbay.yaml", PROCESSORS.replace("SINK", "http://127.0.0.1:9")
                .replace("STATE", d))
    tf = write(d, "patchbay.test.yaml", WRONG.split("  - name: right")[0].split("  - name: subset")[0])
    out_path = os.path.join(d, "watch.out")
    out = open(out_path, "w")
    p = subprocess.Popen([PB_BIN, "test", "--no-color", "--watch", cfg], stdout=out,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def text():
            with open(out_path) as f:
                return f.read()
        wait_until(lambda: "0 passed, 1 failed" in text() and "watching" in text(), 60,
                   "the first run")
        # Fix the expectation: an editor writes a new file and renames it over.
        fixed = WRONG.split("  - name: subset")[0].replace("amount: 501", "amount: 500")
        write(d, ".patchbay.test.yaml.swp", fixed)
        os.rename(os.path.join(d, ".patchbay.test.yaml.swp"), tf)
        wait_until(lambda: "1 passed, 0 failed" in text(), 60, "a run after the change")
        check("patchbay.test.yaml changed: running again" in text(), text())
        # A change to a file nobody reads does not matter; state files are ignored.
        n = text().count("passed,")
        write(d, "state.db-wal", "x")
        write(d, "fixtures/extra.json", "{}")
        wait_until(lambda: text().count("passed,") == n + 1, 60, "a run after a fixture")
    finally:
        p.send_signal(signal.SIGINT)
        try:
            rc = p.wait(timeout=scaled(20))
        except subprocess.TimeoutExpired:
            p.kill()
            raise
        out.close()
    check_eq(rc, 0, "exit status of the last run")
    for mark in SAN_MARKS:
        check(mark not in text(), f"sanitizer report:\n{text()[-3000:]}")


# ---- eval ----------------------------------------------------------------------------------

def pbeval(program, sample, *args):
    r = subprocess.run([PB_BIN, "eval", *args, program], input=sample, capture_output=True,
                       text=True, timeout=scaled(60))
    for mark in SAN_MARKS:
        check(mark not in r.stderr, f"sanitizer report:\n{r.stderr[-4000:]}")
    return r


@test
def eval_runs_a_mapping_as_the_engine_would():
    big = "9007199254740992"  # 2^53: exact
    r = pbeval("{amount: .cents, id}", '{"id": "o-1", "cents": %s, "x": 1.10}' % big)
    check_eq((r.returncode, r.stdout), (0, '{"amount":%s,"id":"o-1"}\n' % big), r.stderr)
    # 2^53 + 1 would be rounded by a double: refused, like the route stage would.
    r = pbeval(".", '{"cents": 9007199254740993}')
    check(r.returncode == 1 and "not JSON jq can carry exactly" in r.stderr, r.stderr)
    r = pbeval(".", '{"price": 0.12345678901234567890}')
    check(r.returncode == 1 and "exactly" in r.stderr, r.stderr)
    r = pbeval(".a", '{"a": 1, "a": 2}')
    check(r.returncode == 1 and "same key twice" in r.stderr, r.stderr)
    # Arithmetic that leaves what JSON can carry is refused on the way out.
    r = pbeval(".a * 1e308", '{"a": 10}')
    check(r.returncode == 1 and "infinity" in r.stderr, r.stderr)
    r = pbeval("{a: (.a / 3)}", '{"a": 1}')
    check_eq(r.stdout, '{"a":0.3333333333333333}\n', r.stderr)
    # A map gives one value; none drops the message; several are an error.
    r = pbeval("select(.paid)", '{"paid": false}')
    check(r.returncode == 0 and r.stdout == "" and "dropped" in r.stderr, r.stderr)
    r = pbeval(".[]", "[1,2]")
    check(r.returncode == 1 and "map produced 2 values" in r.stderr, r.stderr)
    r = pbeval(".[]", "[1,2]", "--as", "split")
    check_eq(r.stdout, "1\n2\n", r.stderr)
    r = pbeval(".cents > 100", '{"cents": 200}', "--as", "filter")
    check_eq((r.returncode, r.stdout), (0, "true\n"), r.stderr)
    r = pbeval("order.{{ .id }}.{{ .n }}", '{"id": "x", "n": 7}', "--as", "template")
    check_eq(r.stdout, "order.x.7\n", r.stderr)
    r = pbeval("order.{{ .missing }}", '{"id": "x"}', "--as", "template")
    check(r.returncode == 1 and "null" in r.stderr, r.stderr)
    # $meta: from a file, checked the same way; a default one otherwise.
    d = tmpdir("eval")
    meta = write(d, "meta.json", '{"routing_key": "order.created", "headers": {"x-id": "7"}}')
    r = pbeval('{rk: $meta.routing_key, id: $meta.headers["x-id"]}', "{}", "--meta", meta)
    check_eq(r.stdout, '{"rk":"order.created","id":"7"}\n', r.stderr)
    r = pbeval("$meta | {input, pipeline, t: (.traceparent | length)}", "{}")
    check_eq(json.loads(r.stdout), {"input": "eval", "pipeline": "eval", "t": 55}, r.stderr)
    bad = write(d, "bad.json", '{"n": 123456789012345678901234}')
    r = pbeval("$meta.n", "{}", "--meta", bad)
    check(r.returncode == 1 and "bad.json" in r.stderr, r.stderr)
    r = pbeval("{a: .a", "{}")
    check(r.returncode == 1 and "jq:" in r.stderr, r.stderr)
    r = pbeval(".a", "{}", "--pretty")
    check_eq(r.stdout, "null\n", r.stderr)


if __name__ == "__main__":
    run()
