"""Receiving webhooks: the `verify` block of http_server, end to end.

Requests are signed by the `standardwebhooks` npm package (the Standard
Webhooks reference client, pinned in tests/system/webhooks/package.json and
installed there with npm on first use) and posted to the real daemon: a valid
one is accepted, a tampered body, a wrong secret and a stale timestamp are
refused with 401, a resent webhook id is answered from the idempotency window
and delivered once, failures are counted by reason, and the secret never
reaches the log. GitHub's published test vector goes through a raw route."""

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pbtest  # noqa: E402
from pbtest import (  # noqa: E402
    Patchbay,
    TestFailure,
    check,
    check_eq,
    run,
    run_cli,
    scaled,
    start_sink,
    test,
    tmpdir,
    wait_until,
)

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "webhooks")


def ensure_client():
    pbtest.ensure_node_client(NODE_DIR)


def npm_sign(requests):
    """Signatures ("v1,...") made by the npm client, one per request dict
    {secret, id, timestamp, payload}."""
    ensure_client()
    r = subprocess.run(["node", os.path.join(NODE_DIR, "sign.js")], input=json.dumps(requests),
                       capture_output=True, text=True, timeout=scaled(60))
    check(r.returncode == 0, f"sign.js failed: {r.stderr}")
    out = json.loads(r.stdout)
    check_eq(len(out), len(requests), "signatures from sign.js")
    return out


def new_secret():
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 10s
pipelines:
  shop:
    input:
      http_server:
        path: /hooks/shop
        verify: { scheme: standard-webhooks, secret: "${SHOP_SECRET}" }
    outputs:
      out: { http: { url: "SINK/shop", timeout: 2s } }
  rotating:
    input:
      http_server:
        path: /hooks/rotating
        verify: { scheme: standard-webhooks, secrets: ["${OLD_SECRET}", "${SHOP_SECRET}"] }
    outputs:
      out: { http: { url: "SINK/rotating", timeout: 2s } }
"""


def stays(pred, seconds, what):
    """pred() holds for the whole (scaled) period: nothing extra shows up."""
    end = time.monotonic() + scaled(seconds)
    while time.monotonic() < end:
        check(pred(), what)
        time.sleep(0.05)


def unauthorized(resp, what):
    """resp is (status, headers, body) as Patchbay.post returns it."""
    st, _, data = resp
    check_eq(st, 401, f"{what}: status")
    check_eq(json.loads(data), {"error": "unauthorized"}, f"{what}: body")


@test
def standard_webhooks_signed_by_the_npm_client():
    shop, old, wrong = new_secret(), new_secret(), new_secret()
    sink = start_sink()
    pb = Patchbay(CONFIG.replace("SINK", sink.url), env={"SHOP_SECRET": shop, "OLD_SECRET": old})

    now = int(time.time())
    body = json.dumps({"order": "A-1", "total_cents": 1250})
    reqs = [
        dict(secret=shop, id="msg_valid", timestamp=now, payload=body),
        dict(secret=shop, id="msg_tampered", timestamp=now, payload=body),
        dict(secret=wrong, id="msg_wrong", timestamp=now, payload=body),
        dict(secret=shop, id="msg_stale", timestamp=now - 600, payload=body),
        dict(secret=old, id="msg_rot_old", timestamp=now, payload=body),
        dict(secret=shop, id="msg_rot_new", timestamp=now, payload=body),
    ]
    sigs = npm_sign(reqs)

    def post(path, i, payload=None, sig=None):
        r = reqs[i]
        return pb.post(path, payload if payload is not None else r["payload"], {
            "webhook-id": r["id"],
            "webhook-timestamp": str(r["timestamp"]),
            "webhook-signature": sig or sigs[i],
        })

    st, h, data = post("/hooks/shop", 0)
    check_eq(st, 202, f"valid webhook: {data!r}")
    first_id = json.loads(data)["id"]
    check(h.get("idempotent-replayed") is None, "first answer is not a replay")

    tampered = body.replace("1250", "1")
    unauthorized(post("/hooks/shop", 1, payload=tampered), "tampered body")
    unauthorized(post("/hooks/shop", 2), "wrong secret")
    unauthorized(post("/hooks/shop", 3), "stale timestamp")
    unauthorized(pb.post("/hooks/shop", body), "no signature headers")
    # The same webhook id again: the first answer, nothing new. The first
    # resend also carries several signatures, as during a sender's rotation.
    st, h, data = post("/hooks/shop", 0, sig=f"{sigs[2]} {sigs[0]}")
    check_eq(st, 202, "one good signature among several")
    check_eq(json.loads(data)["id"], first_id, "several signatures: replayed id")
    check_eq((h.get("idempotent-replayed") or "").lower(), "true", "several signatures: replay")
    for _ in range(2):
        st, h, data = post("/hooks/shop", 0)
        check_eq(st, 202, "replayed webhook status")
        check_eq(json.loads(data)["id"], first_id, "replayed webhook answered with the first id")
        check_eq((h.get("idempotent-replayed") or "").lower(), "true", "Idempotent-Replayed")

    # Rotation: both secrets verify on the rotating route.
    for i in (4, 5):
        st, _, data = post("/hooks/rotating", i)
        check_eq(st, 202, f"rotating route, {reqs[i]['id']}: {data!r}")
    # ... and only the current one on the other.
    unauthorized(post("/hooks/shop", 4), "old secret on the route that dropped it")

    wait_until(lambda: sink.ok_count() == 3, 20, "three deliveries")
    stays(lambda: sink.requests() == 3, 1.0, "no delivery beyond the three")
    paths = sorted(r["path"] for r in sink.records())
    check_eq(paths, ["/rotating", "/rotating", "/shop"], "deliveries per route")
    shop_rec = [r for r in sink.records() if r["path"] == "/shop"][0]
    check_eq(shop_rec["body"], body, "the delivered body is the signed body, untouched")
    check_eq(shop_rec["headers"].get("x-patchbay-message-id"), first_id, "delivered message id")

    m = pb.metrics()
    fails = "patchbay_webhook_verify_failures_total"
    check_eq(m.value(fails, pipeline="shop", reason="signature"), 3, "signature failures")
    check_eq(m.value(fails, pipeline="shop", reason="timestamp"), 1, "timestamp failures")
    check_eq(m.value(fails, pipeline="shop", reason="missing"), 1, "missing-header failures")
    check_eq(m.value(fails, pipeline="rotating"), 0, "no failures on the rotating route")
    check_eq(m.value("patchbay_messages_rejected_total", pipeline="shop", reason="unauthorized"),
             5, "rejected{reason=unauthorized}")
    check_eq(m.value("patchbay_messages_duplicate_total", pipeline="shop"), 3, "duplicates")

    check_eq(pb.term(), 0, "exit code")
    text = pb.log() + pb.stdout()
    check("webhook verification failed" in text, "failures are logged")
    for s in (shop, old):
        for part in (s, s[len("whsec_"):]):
            check(part not in text, "the log shows a secret")


GH_SECRET = "It's a Secret to Everybody"
GH_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

GH_CONFIG = """
server: { listen: "@LISTEN@", admin_token: "@TOKEN@" }
state: "sqlite:@DIR@/state.db"
outbound: { allow: [127.0.0.0/8] }
shutdown_timeout: 10s
pipelines:
  gh:
    input:
      http_server:
        path: /hooks/github
        format: raw
        verify: { scheme: github, secret: "${GH_SECRET}" }
    outputs:
      out: { http: { url: "SINK/gh", timeout: 2s } }
"""


@test
def github_published_vector_end_to_end():
    sink = start_sink()
    pb = Patchbay(GH_CONFIG.replace("SINK", sink.url), env={"GH_SECRET": GH_SECRET})
    hdrs = {"Content-Type": "text/plain", "X-Hub-Signature-256": GH_SIG,
            "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
    st, h, data = pb.post("/hooks/github", b"Hello, World!", hdrs)
    check_eq(st, 202, f"GitHub's vector: {data!r}")
    mid = json.loads(data)["id"]

    unauthorized(pb.post("/hooks/github", b"Hello, World ", hdrs), "one bit changed in the body")
    bad = dict(hdrs, **{"X-Hub-Signature-256": GH_SIG[:-1] + "6"})
    unauthorized(pb.post("/hooks/github", b"Hello, World!", bad), "one bit changed in the signature")

    st, h, data = pb.post("/hooks/github", b"Hello, World!", hdrs)  # GitHub's redelivery
    check_eq((st, json.loads(data)["id"]), (202, mid), "redelivery answered with the first id")
    check_eq((h.get("idempotent-replayed") or "").lower(), "true", "Idempotent-Replayed")

    wait_until(lambda: sink.ok_count() == 1, 20, "one delivery")
    stays(lambda: sink.requests() == 1, 1.0, "no delivery beyond the first")
    recs = sink.records()
    check_eq(len(recs), 1, "delivered once")
    check_eq(recs[0]["body"], "Hello, World!", "raw body passed on untouched")
    m = pb.metrics()
    check_eq(m.value("patchbay_webhook_verify_failures_total", pipeline="gh", reason="signature"),
             2, "signature failures")
    check_eq(pb.term(), 0, "exit code")
    check(GH_SECRET not in pb.log() + pb.stdout(), "the log shows the secret")


@test
def bad_keys_stop_startup_with_the_field_named():
    d = tmpdir("lint")
    path = os.path.join(d, "patchbay.yaml")
    hidden = "whsec_NOT-base64-hunter2"
    with open(path, "w") as f:
        f.write(GH_CONFIG.replace("SINK", "http://127.0.0.1:9").replace("@LISTEN@", "127.0.0.1:1")
                .replace("@DIR@", d).replace("@TOKEN@", "t")
                .replace("scheme: github", "scheme: standard-webhooks"))
    env = dict(os.environ, GH_SECRET=hidden)
    r = run_cli("lint", path, env=env)
    check_eq(r.returncode, 1, f"lint exit code ({r.stderr!r})")
    check(re.search(re.escape(path) + r":\d+:\d+: verify\.secret: not a whsec_ base64 key",
                    r.stderr), f"lint names the field with a position: {r.stderr!r}")
    check("hunter2" not in r.stdout + r.stderr, "lint shows the secret")

    with open(path, "w") as f:
        f.write(GH_CONFIG.replace("SINK", "http://127.0.0.1:9").replace("@LISTEN@", "127.0.0.1:1")
                .replace("@DIR@", d).replace("@TOKEN@", "t")
                .replace("secret: \"${GH_SECRET}\"", "secret: \"${GH_SECRET}\", tolerance: 1m"))
    r = run_cli("lint", path, env=dict(os.environ, GH_SECRET="x"))
    check_eq(r.returncode, 1, "lint exit code for an option of another scheme")
    check("verify.tolerance does not apply to scheme github" in r.stderr, f"message: {r.stderr!r}")


run()
