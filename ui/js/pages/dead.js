// dead.js - the dead-letter queue: filter, page through (a page at a time,
// by id: 100,000 of them are no heavier than 50), replay or purge one, and
// replay or purge the whole filtered set after a confirmation.

import { api, qs } from "../api.js";
import { h, replace, time, num, localInput, fromLocalInput, field, select } from "../dom.js";
import { announce } from "../status.js";

const PAGE = 50;
const FILTERS = ["pipeline", "output", "error", "status", "since", "until"];

function confirmDialog(title, text, action, danger) {
  return new Promise((resolve) => {
    const ok = h("button", { class: danger ? "danger" : "primary", type: "button", value: "ok" }, action);
    const cancel = h("button", { type: "button", value: "cancel" }, "Cancel");
    const dlg = h("dialog", { "aria-labelledby": "confirm-h" },
      h("h2", { id: "confirm-h" }, title), h("p", {}, text), h("div", { class: "actions" }, ok, cancel));
    const done = (v) => {
      dlg.close();
      dlg.remove();
      resolve(v);
    };
    ok.addEventListener("click", () => done(true));
    cancel.addEventListener("click", () => done(false));
    dlg.addEventListener("cancel", (ev) => {
      ev.preventDefault();
      done(false);
    });
    document.body.appendChild(dlg);
    dlg.showModal();
    cancel.focus();
  });
}
export { confirmDialog };

function filterText(f) {
  const parts = [];
  if (f.pipeline) parts.push(`pipeline ${f.pipeline}`);
  if (f.output) parts.push(`output ${f.output}`);
  if (f.error) parts.push(`error containing “${f.error}”`);
  if (f.status) parts.push(`last status ${f.status}`);
  if (f.since) parts.push(`dead since ${time(Number(f.since))}`);
  if (f.until) parts.push(`dead before ${time(Number(f.until))}`);
  return parts.length ? parts.join(", ") : "every pipeline and output";
}

export async function mount(main, route, ctx) {
  const q = route.query;
  const filt = {};
  for (const k of FILTERS) if (q.get(k)) filt[k] = q.get(k);
  const order = q.get("order") === "oldest" ? "oldest" : "newest";
  const cursor = q.get("cursor");

  const pl = await api("/api/pipelines?counts=open", { signal: ctx.signal });
  const outputs = [];
  let total = 0;
  for (const p of pl.pipelines)
    for (const o of p.outputs) {
      outputs.push(o.name);
      if ((!filt.pipeline || filt.pipeline === p.name) && (!filt.output || filt.output === o.name)) total += o.dead;
    }

  const f = {
    pipeline: select([["", "any"], ...pl.pipelines.map((p) => p.name)], filt.pipeline || "", { name: "pipeline" }),
    output: select([["", "any"], ...new Set(outputs)], filt.output || "", { name: "output" }),
    error: h("input", { name: "error", value: filt.error || "", spellcheck: "false", placeholder: "e.g. 503 or timeout" }),
    status: h("input", { name: "status", value: filt.status || "", inputmode: "numeric", size: 5 }),
    since: h("input", { type: "datetime-local", name: "since", value: localInput(Number(filt.since) || 0) }),
    until: h("input", { type: "datetime-local", name: "until", value: localInput(Number(filt.until) || 0) }),
    order: select([["newest", "newest first"], ["oldest", "oldest first"]], order, { name: "order" }),
  };
  if (filt.output && !outputs.includes(filt.output))
    f.output.appendChild(h("option", { value: filt.output, selected: true }, filt.output));
  const form = h("form", {
    class: "filters panel", role: "search", "aria-label": "Filter dead letters",
    onsubmit: (ev) => {
      ev.preventDefault();
      ctx.navigate("#/dead-letters" + qs({
        pipeline: f.pipeline.value, output: f.output.value, error: f.error.value.trim(),
        status: f.status.value.trim(), since: fromLocalInput(f.since.value), until: fromLocalInput(f.until.value),
        order: f.order.value === "newest" ? null : f.order.value,
      }));
    },
  },
  field("Pipeline", f.pipeline), field("Output", f.output), field("Error contains", f.error),
  field("Last status", f.status), field("Dead since", f.since), field("until", f.until), field("Order", f.order),
  h("div", { class: "actions" },
    h("button", { class: "primary", type: "submit" }, "Filter"),
    h("a", { class: "button", href: "#/dead-letters" }, "Clear")));

  const filtered = filt.error || filt.status || filt.since || filt.until;
  const replayAll = h("button", { type: "button", "data-test": "replay-all" }, "Replay all matching…");
  const purgeAll = h("button", { type: "button", class: "danger", "data-test": "purge-all" }, "Purge all matching…");
  const list = h("div");
  main.append(h("h1", {}, "Dead letters"),
    h("p", { class: "muted", "data-test": "dead-total" },
      `${num(total)} dead letter${total === 1 ? "" : "s"} ${filt.pipeline || filt.output ? "for this pipeline and output" : "in all"}` +
      (filtered ? "; the filters below narrow the list" : "") + "."),
    form,
    h("div", { class: "toolbar" }, replayAll, purgeAll),
    list);

  const bulk = async (purge) => {
    const what = filterText(filt);
    const yes = await confirmDialog(purge ? "Purge dead letters" : "Replay dead letters",
      purge ? `Delete every dead letter matching: ${what}. This cannot be undone.`
        : `Send every dead letter matching (${what}) again, each as a new delivery to its output.`,
      purge ? "Purge them" : "Replay them", purge);
    if (!yes) return;
    try {
      const params = { ...filt };
      if (purge && !Object.keys(params).length) params.all = "true";
      const r = await api(`/api/dead-letters/${purge ? "purge" : "replay"}` + qs(params), { method: "POST", signal: ctx.signal });
      announce(purge ? `${num(r.purged)} purged.` : `${num(r.replayed)} replayed` +
        (r.refused ? `, ${num(r.refused)} could not be (their output is gone).` : "."), "ok");
      ctx.navigate(location.hash);
    } catch (e) {
      announce(e.message, "error");
    }
  };
  replayAll.addEventListener("click", () => bulk(false));
  purgeAll.addEventListener("click", () => bulk(true));

  const params = { ...filt, limit: PAGE, order };
  if (cursor) params[order === "newest" ? "before" : "after"] = cursor;
  const t0 = performance.now();
  const doc = await api("/api/dead-letters" + qs(params), { signal: ctx.signal });
  const next = order === "newest" ? doc.next_before : doc.next_after;
  // Nothing matches: nothing to replay or purge.
  if (!cursor && !doc.items.length) replayAll.disabled = purgeAll.disabled = true;

  const rowFor = (d) => {
    const replay = h("button", { type: "button", class: "small", "aria-label": `Replay dead letter ${d.id}` }, "Replay");
    const purge = h("button", { type: "button", class: "small danger", "aria-label": `Purge dead letter ${d.id}` }, "Purge");
    const tr = h("tr", { "data-dead": d.id },
      h("td", { class: "nowrap" }, time(d.dead_at)),
      h("th", { scope: "row" }, h("a", { href: `#/dead-letters/${d.id}` }, `#${d.id}`),
        h("div", { class: "small" }, h("a", { href: `#/messages/${encodeURIComponent(d.message_id)}` }, d.message_id))),
      h("td", {}, d.pipeline), h("td", {}, d.output),
      h("td", { class: "num" }, num(d.attempts)),
      h("td", { class: "num" }, d.last_status ? d.last_status : "—"),
      h("td", { class: "excerpt", title: d.last_error || "" }, d.last_error || "—"),
      h("td", {}, h("div", { class: "actions" }, replay, purge)));
    replay.addEventListener("click", async () => {
      replay.disabled = purge.disabled = true;
      try {
        await api(`/api/dead-letters/${d.id}/replay`, { method: "POST", signal: ctx.signal });
        replace(tr.lastChild, h("span", { class: "small" }, "replayed: ",
          h("a", { href: `#/messages/${encodeURIComponent(d.message_id)}` }, "follow it")));
        announce(`Dead letter ${d.id} replayed.`, "ok");
      } catch (e) {
        replay.disabled = purge.disabled = false;
        announce(e.message, "error");
      }
    });
    purge.addEventListener("click", async () => {
      if (!(await confirmDialog("Purge a dead letter", `Delete dead letter ${d.id}? This cannot be undone.`, "Purge", true))) return;
      try {
        await api(`/api/dead-letters/${d.id}`, { method: "DELETE", signal: ctx.signal });
        replace(tr.lastChild, h("span", { class: "small muted" }, "purged"));
        announce(`Dead letter ${d.id} purged.`, "ok");
      } catch (e) {
        announce(e.message, "error");
      }
    });
    return tr;
  };

  const ms = Math.round(performance.now() - t0);
  replace(list,
    doc.items.length ? h("div", { class: "table-wrap panel" }, h("table", {},
      h("caption", { class: "sr-only" }, `Dead letters, ${order} first`),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, "Dead at"), h("th", { scope: "col" }, "Dead letter"),
        h("th", { scope: "col" }, "Pipeline"), h("th", { scope: "col" }, "Output"),
        h("th", { scope: "col", class: "num" }, "Attempts"), h("th", { scope: "col", class: "num" }, "Status"),
        h("th", { scope: "col" }, "Last error"), h("th", { scope: "col" }, "Actions"))),
      h("tbody", {}, doc.items.map(rowFor))))
      : h("p", { class: "note" }, cursor ? "No more dead letters." : "No dead letters match."),
    h("div", { class: "pager" },
      cursor ? h("a", { class: "button", href: "#/dead-letters" + qs({ ...filt, order: order === "newest" ? null : order }) }, "← First page") : null,
      next ? h("a", { class: "button", "data-test": "next-page", href: "#/dead-letters" + qs({ ...filt, order: order === "newest" ? null : order, cursor: next }) }, "Next page →") : null,
      h("span", { class: "small muted", "data-test": "page-ms" }, `${doc.items.length} shown · page read in ${ms} ms`)));
}
