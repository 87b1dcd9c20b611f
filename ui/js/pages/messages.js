// messages.js - the message explorer: search by id, idempotency key,
// pipeline, output, delivery state, time range and a jq predicate over the
// body or $meta. The daemon scans a bounded number of messages per request
// and says where to go on, so a search never holds it for long; the page
// shows how many it looked at.

import { api, qs } from "../api.js";
import { h, replace, badge, time, num, localInput, fromLocalInput, field, select } from "../dom.js";

const STATES = ["", "pending", "delivered", "dead", "filtered", "replayed", "routed_away"];
const KEYS = ["id", "key", "pipeline", "output", "status", "since", "until", "where", "limit"];

export async function mount(main, route, ctx) {
  const q = route.query;
  const pl = await api("/api/pipelines?counts=open", { signal: ctx.signal });
  const outputs = [];
  for (const p of pl.pipelines) for (const o of p.outputs) outputs.push(o.name);

  const f = {
    id: h("input", { name: "id", value: q.get("id") || "", placeholder: "msg_…", spellcheck: "false" }),
    key: h("input", { name: "key", value: q.get("key") || "", spellcheck: "false" }),
    pipeline: select([["", "any"], ...pl.pipelines.map((p) => p.name)], q.get("pipeline") || "", { name: "pipeline" }),
    output: select([["", "any"], ...[...new Set(outputs)]], q.get("output") || "", { name: "output" }),
    status: select(STATES.map((st) => [st, st ? st.replace("_", " ") : "any"]), q.get("status") || "", { name: "status" }),
    since: h("input", { type: "datetime-local", name: "since", value: localInput(Number(q.get("since")) || 0) }),
    until: h("input", { type: "datetime-local", name: "until", value: localInput(Number(q.get("until")) || 0) }),
    where: h("input", { name: "where", value: q.get("where") || "", spellcheck: "false", placeholder: ".customer.id == 42 or $meta.headers[\"x-event\"] == \"paid\"" }),
  };
  // An output given in the link but not among the configured (a sub-output).
  if (q.get("output") && !outputs.includes(q.get("output")))
    f.output.appendChild(h("option", { value: q.get("output"), selected: true }, q.get("output")));
  const whereField = field("jq predicate over the body and $meta", f.where);
  whereField.classList.add("wide");
  const form = h("form", {
    class: "filters panel", role: "search", "aria-label": "Search messages",
    onsubmit: (ev) => {
      ev.preventDefault();
      const params = {
        id: f.id.value.trim(), key: f.key.value.trim(), pipeline: f.pipeline.value, output: f.output.value,
        status: f.status.value, since: fromLocalInput(f.since.value), until: fromLocalInput(f.until.value),
        where: f.where.value.trim(),
      };
      ctx.navigate("#/messages" + qs(params));
    },
  },
  field("Message id", f.id), field("Idempotency key", f.key), field("Pipeline", f.pipeline),
  field("Output", f.output), field("Delivery state", f.status), field("Received from", f.since),
  field("until", f.until), whereField,
  h("div", { class: "actions" },
    h("button", { class: "primary", type: "submit" }, "Search"),
    h("a", { class: "button", href: "#/messages" }, "Clear")));

  const results = h("div", { "aria-live": "polite" });
  main.append(h("h1", {}, "Messages"), form, results);

  const params = {};
  for (const k of KEYS) if (q.get(k)) params[k] = q.get(k);
  if (q.get("before")) params.before = q.get("before");
  replace(results, h("p", { class: "muted" }, "Searching…"));
  const doc = await api("/api/messages" + qs(params), { signal: ctx.signal });

  const rows = doc.items.map((m) => h("tr", { "data-message": m.id },
    h("td", { class: "nowrap" }, time(m.received_at)),
    h("th", { scope: "row" }, h("a", { href: `#/messages/${encodeURIComponent(m.id)}` }, m.id),
      m.idempotency_key ? h("div", { class: "small muted" }, "key ", h("code", {}, m.idempotency_key)) : null,
      m.edit_of ? h("div", { class: "small muted" }, "edited from ", m.edit_of) : null),
    h("td", {}, m.pipeline),
    h("td", {}, h("div", { class: "chips" }, m.deliveries.map((d) =>
      h("span", { class: "nowrap" }, h("span", { class: "small" }, d.output, " "), badge(d.state))))),
    h("td", { class: "num" }, num(m.size))));
  const info = [`${num(doc.items.length)} message${doc.items.length === 1 ? "" : "s"} shown, ${num(doc.scanned)} looked at.`];
  if (doc.predicate_errors)
    info.push(` The predicate failed on ${num(doc.predicate_errors)} of them (counted as no match): ${doc.predicate_error}`);
  const more = doc.next_before
    ? h("a", { class: "button", href: "#/messages" + qs({ ...params, before: doc.next_before }), "data-test": "older" },
      doc.items.length ? "Older →" : "Search further back →")
    : null;
  replace(results,
    h("p", { class: "small muted" }, info.join("")),
    doc.items.length ? h("div", { class: "table-wrap panel" }, h("table", {},
      h("caption", { class: "sr-only" }, "Messages found, newest first"),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Received"), h("th", { scope: "col" }, "Message"),
        h("th", { scope: "col" }, "Pipeline"), h("th", { scope: "col" }, "Deliveries"),
        h("th", { scope: "col", class: "num" }, "Bytes"))),
      h("tbody", {}, rows)))
      : h("p", { class: "note" }, doc.next_before
        ? "Nothing matched among the messages looked at so far."
        : "No message matches."),
    h("div", { class: "pager" },
      params.before ? h("a", { class: "button", href: "#/messages" + qs({ ...params, before: null }) }, "← Newest") : null,
      more));
}
