// endpoints.js - the webhook outputs' endpoints: list, create, rotate a
// secret (shown once), disable and enable, re-send what failed since a time,
// and send a test event whose delivery is followed until it ends.

import { api, qs } from "../api.js";
import { h, replace, badge, time, ago, field, select, fromLocalInput, localInput } from "../dom.js";
import { announce } from "../status.js";
import { confirmDialog } from "./dead.js";

function dialog(title, body, onSubmit, submitText) {
  return new Promise((resolve) => {
    const err = h("p", { class: "error-box hidden", role: "alert" });
    const submit = h("button", { class: "primary", type: "submit" }, submitText || "OK");
    const cancel = h("button", { type: "button" }, onSubmit ? "Cancel" : "Close");
    const form = h("form", {
      onsubmit: async (ev) => {
        ev.preventDefault();
        if (!onSubmit) return finish(true);
        submit.disabled = true;
        try {
          const r = await onSubmit();
          finish(r === undefined ? true : r);
        } catch (e) {
          err.textContent = e.message;
          err.classList.remove("hidden");
          submit.disabled = false;
        }
      },
    }, body, err, h("div", { class: "actions" }, onSubmit ? submit : null, cancel));
    const dlg = h("dialog", { "aria-label": title }, h("h2", {}, title), form);
    function finish(v) {
      dlg.close();
      dlg.remove();
      resolve(v);
    }
    cancel.addEventListener("click", () => finish(null));
    dlg.addEventListener("cancel", (ev) => {
      ev.preventDefault();
      finish(null);
    });
    document.body.appendChild(dlg);
    dlg.showModal();
    const first = dlg.querySelector("input, select, textarea") || (onSubmit ? submit : cancel);
    first.focus();
  });
}

async function showSecret(title, secret, note) {
  const copy = h("button", { type: "button", class: "small" }, "Copy");
  const msg = h("span", { class: "small muted", role: "status" });
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(secret);
      msg.textContent = "Copied.";
    } catch (e) {
      msg.textContent = "Copying is not allowed here: select the text instead.";
    }
  });
  await dialog(title, [
    h("p", {}, note),
    h("p", { class: "secret", "data-test": "secret", tabindex: "0" }, secret),
    h("div", { class: "actions" }, copy, msg),
  ], null);
}

export async function mount(main, route, ctx) {
  const pl = await api("/api/pipelines?counts=open", { signal: ctx.signal });
  const webhookOutputs = [];
  for (const p of pl.pipelines)
    for (const o of p.outputs) if (o.type === "webhook") webhookOutputs.push([p.name, o.name]);
  const results = h("div", { "aria-live": "polite" });
  const tableBox = h("div");
  const create = h("button", { class: "primary", type: "button", "data-test": "create" }, "New endpoint…");
  main.append(h("h1", {}, "Webhook endpoints"),
    webhookOutputs.length ? h("div", { class: "toolbar" }, create) : h("p", { class: "note" },
      "No output of this configuration is a webhook output: endpoints belong to webhook outputs."),
    results, tableBox);

  const follow = async (msgId, output) => {
    const line = h("p", { class: "note", "data-test": "test-result" }, "Test event ",
      h("a", { href: `#/messages/${encodeURIComponent(msgId)}` }, msgId), " sent to ", output, ": ",
      h("span", { "data-test": "test-state" }, "waiting for the attempt…"));
    results.prepend(line);
    const state = line.querySelector("[data-test=test-state]");
    for (let i = 0; i < 60 && !ctx.signal.aborted; i++) {
      await new Promise((res) => setTimeout(res, 1000));
      const found = await api("/api/messages" + qs({ id: msgId, limit: 1 }), { signal: ctx.signal });
      const m = found.items[0];
      const d = m && m.deliveries.find((x) => x.output === output);
      if (!d) continue;
      if (d.state === "delivered") {
        replace(state, badge("delivered"), ` HTTP ${d.last_status}`);
        return;
      }
      if (d.state === "dead") {
        replace(state, badge("dead"), ` ${d.last_status ? "HTTP " + d.last_status : ""} `,
          h("a", { href: `#/dead-letters/${d.id}` }, "see why"));
        return;
      }
      if (d.attempts > 0)
        replace(state, badge("retry"), ` attempt ${d.attempts} failed (HTTP ${d.last_status || "—"}), retrying`);
    }
  };

  const act = async (fn) => {
    try {
      await fn();
    } catch (e) {
      announce(e.message, "error");
    }
  };

  const render = async () => {
    const doc = await api("/api/endpoints", { signal: ctx.signal });
    if (!doc.items.length) {
      replace(tableBox, h("p", { class: "muted" }, "No endpoints yet."));
      return;
    }
    const rows = doc.items.map((ep) => {
      const path = `/api/endpoints/${encodeURIComponent(ep.id)}`;
      // Named with the endpoint: a screen reader lists many rows' buttons.
      const named = (text, extra = {}) =>
        h("button", { type: "button", class: "small", "aria-label": `${text.replace("…", "")} ${ep.id}`, ...extra }, text);
      const test = named("Send test event", { disabled: ep.disabled, title: ep.disabled ? "enable it first" : "" });
      const rotate = ep.static ? null : named("Rotate secret");
      const toggle = named(ep.disabled ? "Enable" : "Disable");
      const recover = named("Recover…");
      const del = ep.static ? null : named("Delete", { class: "small danger" });
      test.addEventListener("click", () => act(async () => {
        const r = await api(path + "/test", { method: "POST", body: {}, signal: ctx.signal });
        announce(`Test event sent to ${ep.id}.`, "ok");
        follow(r.message_id, r.output).catch(() => {});
      }));
      if (rotate)
        rotate.addEventListener("click", () => act(async () => {
          const yes = await confirmDialog("Rotate the signing secret",
            `A new secret signs every delivery to ${ep.id} from now on; the current one keeps signing too until the overlap ends, so ${ep.url} can switch without failing a signature.`,
            "Rotate", false);
          if (!yes) return;
          const r = await api(path + "/rotate", { method: "POST", body: {}, signal: ctx.signal });
          await render();
          await showSecret("New signing secret", r.secret,
            `Give this secret to the owner of ${ep.url}. It is shown once. The previous one signs too until ${time(r.previous_expires_at)}.`);
        }));
      toggle.addEventListener("click", () => act(async () => {
        await api(path + (ep.disabled ? "/enable" : "/disable"), { method: "POST", signal: ctx.signal });
        announce(`Endpoint ${ep.id} ${ep.disabled ? "enabled" : "disabled"}.`, "ok");
        await render();
      }));
      recover.addEventListener("click", () => act(async () => {
        const since = h("input", { type: "datetime-local", required: true, value: localInput(Date.now() - 24 * 3600 * 1000) });
        const r = await dialog(`Recover ${ep.id}`, [
          h("p", {}, "Send again every delivery to this endpoint that failed into the dead-letter queue since:"),
          field("Since", since)],
        async () => api(path + "/recover" + qs({ since: fromLocalInput(since.value) }), { method: "POST", signal: ctx.signal }),
        "Recover");
        if (r) announce(`${r.replayed} dead letter${r.replayed === 1 ? "" : "s"} sent again to ${ep.id}.`, "ok");
      }));
      if (del)
        del.addEventListener("click", () => act(async () => {
          if (!(await confirmDialog("Delete an endpoint", `Delete endpoint ${ep.id}? Its pending deliveries go to the dead-letter queue.`, "Delete", true))) return;
          await api(path, { method: "DELETE", signal: ctx.signal });
          announce(`Endpoint ${ep.id} deleted.`, "ok");
          await render();
        }));
      return h("tr", { "data-endpoint": ep.id },
        h("th", { scope: "row" }, h("code", {}, ep.id), ep.description ? h("div", { class: "small muted" }, ep.description) : null),
        h("td", {}, `${ep.pipeline} / ${ep.output}`),
        h("td", { class: "excerpt", title: ep.url }, ep.url),
        h("td", {}, ep.events && ep.events.length ? ep.events.join(", ") : h("span", { class: "muted" }, "all")),
        h("td", {}, ep.disabled ? badge("disabled") : badge("enabled"),
          ep.disabled_reason ? h("div", { class: "small muted" }, ep.disabled_reason) : null,
          ep.failing_since ? h("div", { class: "small" }, `failing since ${ago(ep.failing_since)}`) : null),
        h("td", {}, ep.static ? "configuration" : "managed"),
        h("td", {}, h("div", { class: "actions" }, test, rotate, toggle, recover, del)));
    });
    replace(tableBox, h("div", { class: "table-wrap panel" }, h("table", {},
      h("caption", { class: "sr-only" }, "Webhook endpoints"),
      h("thead", {}, h("tr", {}, ["Endpoint", "Output", "URL", "Events", "State", "Kind", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows))));
  };

  create.addEventListener("click", () => act(async () => {
    const out = select(webhookOutputs.map(([p, o]) => [`${p}\u0000${o}`, `${p} / ${o}`]), "", {});
    const url = h("input", { type: "url", required: true, placeholder: "https://partner.example/webhooks" });
    const events = h("input", { placeholder: "order.*, invoice.paid (empty: all)" });
    const desc = h("input", {});
    const rateLimit = h("input", { placeholder: "e.g. 10/s" });
    const r = await dialog("New endpoint", [
      field("Output", out), field("URL", url), field("Events", events, "Comma-separated; exact, prefix.* or *"),
      field("Description", desc), field("Rate limit", rateLimit)],
    async () => {
      const [pipeline, output] = out.value.split("\u0000");
      const body = { pipeline, output, url: url.value.trim() };
      const ev = events.value.split(",").map((x) => x.trim()).filter(Boolean);
      if (ev.length) body.events = ev;
      if (desc.value.trim()) body.description = desc.value.trim();
      if (rateLimit.value.trim()) body.rate_limit = rateLimit.value.trim();
      return api("/api/endpoints", { method: "POST", body, signal: ctx.signal });
    }, "Create");
    if (!r) return;
    await render();
    await showSecret(`Endpoint ${r.id} created`, r.secret,
      `Give this signing secret to the owner of ${r.url}: it verifies our signatures with it. It is shown once.`);
  }));

  await render();
}
