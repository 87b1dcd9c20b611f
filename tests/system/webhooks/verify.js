// verify.js - checks webhook deliveries with the `standardwebhooks` npm package
// (the Standard Webhooks reference client, which nobody here wrote), for
// tests/system/test_webhook_send.py.
//
// stdin:  {"secret": "whsec_...", "payload": "<body text>", "headers": {...}}
//         or a JSON array of such objects
// stdout: {"ok": true} or {"ok": false, "error": "<why>"} for each, from
//         new Webhook(secret).verify(payload, headers); an array in, an array out
//         (same order).
//
// verify() also refuses timestamps more than 5 minutes away from this clock;
// the tests verify what was delivered moments earlier.
"use strict";

const { Webhook } = require("standardwebhooks");

function check(r) {
    try {
        new Webhook(r.secret).verify(r.payload, r.headers);
        return { ok: true };
    } catch (e) {
        return { ok: false, error: String((e && e.message) || e) };
    }
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
    input += chunk;
});
process.stdin.on("end", () => {
    const req = JSON.parse(input);
    const out = Array.isArray(req) ? req.map(check) : check(req);
    process.stdout.write(JSON.stringify(out));
});
