"""Ingest edge cases and configuration errors: malformed JSON, size limit,
unknown path, wrong method, idempotent replays; lint and run refuse a bad
config with file:line:col; a secret from ${VAR} never shows in output."""

import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pbtest import (  # noqa: E402
    Patchbay,
    Poster,
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

CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 10s
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop, max_body: 1KiB, format: json, idempotency: { header: Idempotency-Key, window: 24h } }
    outputs:
      payments:
        http:
          url: "SINK/charges"
          timeout: 2s
          retry: { max_attempts: 5, initial: 100ms, max: 1s, max_age: 1h }
"""

LAB = dict(pipeline="orders")


def error_of(data):
    doc = json.loads(data)
    check(isinstance(doc.get("error"), str), f"error body: {data!r}")
    return doc["error"]


@test
def refused_requests():
    sink = start_sink()
    pb = Patchbay(CONFIG.replace("SINK", sink.url))

    cases = [
        (b'{"id": "x", ', "truncated"),
        (b'{"id": tru}', "bad literal"),
        (b'{"id": "x"} trailing', "trailing garbage"),
        (b"", "empty body"),
        (b'{"id": "\xff\xfe"}', "invalid UTF-8"),
        (b'{"id": "x",}', "trailing comma"),
    ]
    for body, what in cases:
        st, h, data = pb.post("/hooks/shop", body)
        check_eq(st, 400, f"{what}: status")
        err = error_of(data)
        check(re.fullmatch(r"invalid JSON: .+ at byte \d+", err), f"{what}: error text {err!r}")
    st, _, data = pb.post("/hooks/shop", b'{"id": "x", ')
    n = int(re.search(r"at byte (\d+)", error_of(data)).group(1))
    check(9 <= n <= 12, f"truncated input: error position {n} near the end (12 bytes)")

    # Size limit: max_body 1KiB; exactly 1024 bytes is fine, 1025 is not.
    def sized(n):
        pad = n - len(json.dumps({"id": "s", "pad": ""}, separators=(",", ":")))
        return json.dumps({"id": "s", "pad": "p" * pad}, separators=(",", ":")).encode()

    check_eq(len(sized(1024)), 1024, "test body size")
    st, _, _ = pb.post("/hooks/shop", sized(1024))
    check_eq(st, 202, "body of exactly max_body")
    st, _, _ = pb.post("/hooks/shop", sized(1025))
    check_eq(st, 413, "body one byte over max_body")
    st, _, _ = pb.post("/hooks/shop", b"[" + b"1," * 200_000 + b"1]")
    check_eq(st, 413, "body far over max_body")

    st, _, _ = pb.post("/hooks/nope", {"id": "x"})
    check_eq(st, 404, "unknown path")
    st, _, _ = pb.post("/hooks/shop/extra", {"id": "x"})
    check_eq(st, 404, "path with a suffix")
    for method in ("GET", "PUT", "DELETE"):
        st, h, _ = pb.request(method, "/hooks/shop")
        check_eq(st, 405, f"{method} on the ingest path")
        check("POST" in (h.get("allow") or ""), f"{method}: Allow header {h.get('allow')!r}")

    check_eq(pb.get("/health")[0], 200, "/health")
    check_eq(pb.get("/ready")[0], 200, "/ready")

    m = pb.metrics()
    check_eq(m.value("patchbay_messages_accepted_total", **LAB), 1, "accepted")
    rejected = m.value("patchbay_messages_rejected_total", **LAB)
    check(rejected >= len(cases) + 1 + 2, f"rejections counted: {rejected}")
    reasons = {lab.get("reason") for lab, _ in m.series("patchbay_messages_rejected_total", **LAB)}
    check(len(reasons - {None}) >= 2, f"rejections carry a reason label: {reasons}")
    wait_until(lambda: sink.ok_count() == 1, 20, "the one accepted message delivered")
    check_eq(pb.term(), 0, "exit code")


@test
def idempotent_replay():
    sink = start_sink()
    pb = Patchbay(CONFIG.replace("SINK", sink.url))
    body = {"id": "ord-idem", "total_cents": 5}
    st1, h1, d1 = pb.post("/hooks/shop", body, {"Idempotency-Key": "key-1"})
    check_eq(st1, 202, "first post")
    check(h1.get("idempotent-replayed") is None, "first answer is not a replay")
    mid = json.loads(d1)["id"]
    wait_until(lambda: sink.ok_count() == 1, 20, "first delivery")

    for _ in range(3):
        st2, h2, d2 = pb.post("/hooks/shop", body, {"Idempotency-Key": "key-1"})
        check_eq(st2, st1, "replayed status")
        check_eq(d2, d1, "replayed body")
        check_eq((h2.get("idempotent-replayed") or "").lower(), "true", "Idempotent-Replayed")

    st3, _, d3 = pb.post("/hooks/shop", body, {"Idempotency-Key": "key-2"})
    check_eq(st3, 202, "other key")
    mid3 = json.loads(d3)["id"]
    check(mid3 != mid, "a different key makes a new message")
    st4, _, d4 = pb.post("/hooks/shop", body)
    check_eq(st4, 202, "no key")
    check(json.loads(d4)["id"] not in (mid, mid3), "no key makes a new message")

    wait_until(lambda: sink.ok_count() == 3, 20, "three deliveries")
    # Nothing more arrives for the replays.
    end = time.monotonic() + scaled(1.0)
    while time.monotonic() < end:
        check_eq(sink.requests(), 3, "deliveries after replays")
        time.sleep(0.05)
    ids = [r["headers"].get("x-patchbay-message-id") for r in sink.records()]
    check_eq(ids.count(mid), 1, "the replayed message delivered once")
    m = pb.metrics()
    check_eq(m.value("patchbay_messages_accepted_total", **LAB), 3, "accepted (replays are not new)")

    # The key survives a restart (it is in the state store).
    check_eq(pb.term(), 0, "exit code")
    pb.start()
    st5, h5, d5 = pb.post("/hooks/shop", body, {"Idempotency-Key": "key-1"})
    check_eq((st5, d5), (st1, d1), "replay after restart")
    check_eq((h5.get("idempotent-replayed") or "").lower(), "true", "replay header after restart")
    check_eq(pb.term(), 0, "exit code")


@test
def overload_answers_503_and_takes_nothing():
    # A one-message ingest queue: concurrent posts must be pushed back with
    # 503 + Retry-After, and a refused message is never delivered.
    sink = start_sink(threads=2)
    cfg = CONFIG.replace("SINK", sink.url) + "limits: { ingest_queue: 1 }\n"
    pb = Patchbay(cfg)
    bodies = [{"id": f"flood-{i}"} for i in range(3000)]
    poster = Poster(pb.port, "/hooks/shop", lambda i: bodies[i], concurrency=64, n=len(bodies))
    poster.start().join()
    statuses = {}
    for _, st, _ in poster.results:
        statuses[st] = statuses.get(st, 0) + 1
    acked = {mid for _, mid in poster.acked()}
    log(f"answers: {statuses}")
    check(set(statuses) <= {202, 503}, f"only 202 and 503 answers: {statuses}")
    check(statuses.get(503, 0) > 0, f"some posts pushed back with 503: {statuses}")
    check(all(v and v.isdigit() for v in poster.retry_after), f"503s carry Retry-After: {set(poster.retry_after)}")
    wait_until(lambda: sink.ok_count() >= len(acked), 60, f"{len(acked)} accepted messages delivered")
    m = pb.metrics()
    check_eq(m.value("patchbay_messages_accepted_total", **LAB), len(acked), "accepted counter")
    check_eq(m.value("patchbay_messages_rejected_total", reason="overload", **LAB), statuses[503],
             "rejected{reason=overload}")
    delivered = [r["headers"].get("x-patchbay-message-id") for r in sink.records()]
    check_eq(sorted(delivered), sorted(acked), "exactly the accepted messages were delivered")
    check_eq(pb.term(), 0, "exit code")


BAD_CONFIG = """server: { listen: "@LISTEN@", admin_token: "${ADMIN_TOKEN}" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
pipelines:
  orders:
    input:
      http_server: { path: /hooks/shop }
    outputs:
      payments:
        http:
          url: http://127.0.0.1:9/charges
          auth: { bearer: "${PAY_SECRET}" }
          timeout: 2x
"""
BAD_LINE = 13  # the line of `timeout: 2x`
BAD_COLS = (11, 20)  # key or value column


def check_position(text, path, what):
    m = re.search(re.escape(path) + r":(\d+):(\d+): (.+)", text)
    check(m, f"{what}: no {path}:line:col: message in {text!r}")
    check_eq(int(m.group(1)), BAD_LINE, f"{what}: line")
    check(int(m.group(2)) in BAD_COLS, f"{what}: column {m.group(2)} (want one of {BAD_COLS})")
    return m.group(0)


@test
def lint_and_run_refuse_bad_config():
    secret_env = {"PAY_SECRET": "s3cr3t-pay-VALUE-91", "ADMIN_TOKEN": "s3cr3t-admin-VALUE-17"}
    pb = Patchbay(BAD_CONFIG, env=secret_env, start=False)
    env = dict(pb.env)
    r = run_cli("lint", pb.config_path, env=env)
    check_eq(r.returncode, 1, f"lint exit code (stderr {r.stderr!r})")
    lint_msg = check_position(r.stderr, pb.config_path, "lint")
    check("timeout" in lint_msg or "duration" in lint_msg, f"lint names the problem: {lint_msg}")

    pb.start(wait_ready=False)
    code = pb.proc.wait(timeout=scaled(20))
    check(code != 0, "run refuses a bad config")
    run_msg = check_position(pb.log(), pb.config_path, "run")
    check_eq(run_msg, lint_msg, "run and lint print the same message")

    for where, text in [("lint", r.stdout + r.stderr), ("run", pb.log() + pb.stdout())]:
        for v in secret_env.values():
            check(v not in text, f"{where} output shows a secret")

    # An error inside the block that holds the secret, and a bad secret-bearing key.
    leaky = BAD_CONFIG.replace("timeout: 2x", "timeout: 2s").replace(
        'auth: { bearer: "${PAY_SECRET}" }', 'auth: { bearer: "${PAY_SECRET}", bearer2: "${PAY_SECRET}" }'
    )
    d = tmpdir("leaky")
    path = os.path.join(d, "leaky.yaml")
    with open(path, "w") as f:
        f.write(leaky.replace("@LISTEN@", "127.0.0.1:1").replace("@DIR@", d))
    r = run_cli("lint", path, env=env)
    check_eq(r.returncode, 1, f"lint exit for an unknown auth key ({r.stderr!r})")
    check(re.search(re.escape(path) + r":12:\d+: ", r.stderr), f"position of the auth error: {r.stderr!r}")
    for v in secret_env.values():
        check(v not in r.stdout + r.stderr, "lint output shows a secret")

    # A good config lints clean, and `version` works.
    good = BAD_CONFIG.replace("timeout: 2x", "timeout: 2s")
    with open(path, "w") as f:
        f.write(good.replace("@LISTEN@", "127.0.0.1:1").replace("@DIR@", d))
    r = run_cli("lint", path, env=env)
    check_eq(r.returncode, 0, f"lint of a good config ({r.stderr!r})")
    for v in secret_env.values():
        check(v not in r.stdout + r.stderr, "lint output shows a secret")
    r = run_cli("lint", os.path.join(d, "missing.yaml"), env=env)
    check_eq(r.returncode, 1, "lint of a missing file")
    r = run_cli("version")
    check_eq(r.returncode, 0, "version exit")
    check(re.search(r"\d+\.\d+\.\d+", r.stdout), f"version output {r.stdout!r}")


@test
def secrets_stay_out_of_logs_and_api():
    secret = "s3cr3t-bearer-VALUE-55"
    sink = start_sink(fail_every=2, fail_status=500)
    cfg = CONFIG.replace("SINK", sink.url).replace(
        "timeout: 2s", 'timeout: 2s\n          auth: { bearer: "${PAY_SECRET}" }'
    )
    pb = Patchbay(cfg, env={"PAY_SECRET": secret})
    mids = []
    for i in range(6):
        st, _, d = pb.post("/hooks/shop", {"id": f"o{i}"})
        check_eq(st, 202, "post")
        mids.append(json.loads(d)["id"])
    wait_until(lambda: sink.ok_count() >= 6, 30, "deliveries (some after a 500)")
    check(any(r["headers"].get("authorization") == f"Bearer {secret}" for r in sink.records()),
          "the secret is sent to the partner")
    texts = [pb.metrics().text, json.dumps(pb.admin("GET", "/api/pipelines")[1])]
    texts += [json.dumps(pb.message(m)) for m in mids]
    check_eq(pb.term(), 0, "exit code")
    texts += [pb.log(), pb.stdout()]
    for t in texts:
        check(secret not in t, "the secret leaked into logs, metrics or the admin API")


if __name__ == "__main__":
    run()
