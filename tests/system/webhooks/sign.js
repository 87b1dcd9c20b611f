// sign.js - signs webhook requests with the `standardwebhooks` npm package
// (the Standard Webhooks reference client, which nobody here wrote), for
// tests/system/test_webhook_receive.py.
//
// stdin:  [{"secret": "whsec_...", "id": "msg_...", "timestamp": <unix s>,
//           "payload": "<body text>"}, ...]
// stdout: ["v1,<base64>", ...] in the same order, from
//         new Webhook(secret).sign(id, new Date(timestamp * 1000), payload)
"use strict";

const { Webhook } = require("standardwebhooks");

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
    input += chunk;
});
process.stdin.on("end", () => {
    const requests = JSON.parse(input);
    const out = requests.map((r) =>
        new Webhook(r.secret).sign(r.id, new Date(r.timestamp * 1000), r.payload),
    );
    process.stdout.write(JSON.stringify(out));
});
