// tail.js - the live tail: messages as they are taken in and as their
// deliveries end, from /api/tail (server-sent events, read with fetch so the
// token goes in a header). The daemon samples each pipeline (at most 50
// events a second) and says how many it left out; the page keeps the newest
// MAX_ROWS.

import { apiText, api, qs, isAbort } from "../api.js";
import { h, replace, badge, shortTime, num, select } from "../dom.js";

const MAX_ROWS = 300;
const KINDS = ["received", "delivered", "retry", "dead", "filtered"];

// Server-sent events text into [{event, id, data}].
export function parseSSE(text) {
  const out = [];
  for (const block of text.split(/\n\n+/)) {
    let event = "message", id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const k = i < 0 ? line : line.slice(0, i);
      let v = i < 0 ? "" : line.slice(i + 1);
      if (v.startsWith(" ")) v = v.slice(1);
      if (k === "event") event = v;
      else if (k === "id") id = v;
      else if (k === "data") data.push(v);
    }
    if (data.length) out.push({ event, id, data: data.join("\n") });
  }
  return out;
}

export async function mount(main, route, ctx) {
  const q = route.query;
  const pl = await api("/api/pipelines?counts=open", { signal: ctx.signal });
  const pipeline = select([["", "every pipeline"], ...pl.pipelines.map((p) => p.name)], q.get("pipeline") || "", {});
  const output = h("input", { value: q.get("output") || "", size: 16, placeholder: "any" });
  const kindBoxes = KINDS.map((k) => h("input", { type: "checkbox", value: k, checked: true }));
  const pause = h("button", { type: "button", "aria-pressed": "false", "data-test": "pause" }, "Pause");
  const clearBtn = h("button", { type: "button" }, "Clear");
  const dot = h("span", { class: "live-dot on", "aria-hidden": "true" });
  const stateText = h("span", { "data-test": "tail-state" }, "connecting…");
  const counts = h("span", { class: "tail-state", "data-test": "tail-counts" });
  const tbody = h("tbody");
  main.append(
    h("h1", {}, "Live tail"),
    h("form", { class: "filters panel", "aria-label": "What to follow", onsubmit: (ev) => { ev.preventDefault(); restart(); } },
      h("div", { class: "field" }, h("label", { for: "tail-pl" }, "Pipeline"), Object.assign(pipeline, { id: "tail-pl" })),
      h("div", { class: "field" }, h("label", { for: "tail-out" }, "Output"), Object.assign(output, { id: "tail-out" })),
      h("fieldset", {}, h("legend", {}, "Events"),
        kindBoxes.map((b, i) => h("label", {}, b, " ", KINDS[i]))),
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Follow"), pause, clearBtn)),
    h("p", { class: "tail-state" }, dot, stateText, " · ", counts),
    h("div", { class: "table-wrap panel" }, h("table", {},
      h("caption", { class: "sr-only" }, "Events, newest first"),
      h("thead", {}, h("tr", {}, ["Time", "Event", "Pipeline", "Output", "Message", "Status", "Detail"].map((t) => h("th", { scope: "col" }, t)))),
      tbody)));

  let cursor = null, paused = false, shown = 0, skipped = 0, lost = 0, gen = 0;
  let inner = null;
  const updateCounts = () => {
    counts.textContent = `${num(shown)} shown` + (skipped ? ` · ${num(skipped)} left out by sampling` : "") +
      (lost ? ` · ${num(lost)} missed while away` : "");
  };
  updateCounts();

  const row = (ev) => h("tr", { "data-kind": ev.kind, "data-msg": ev.msg_id },
    h("td", { class: "nowrap" }, shortTime(ev.at)),
    h("td", {}, badge(ev.kind)),
    h("td", {}, ev.pipeline),
    h("td", {}, ev.output || "—"),
    h("td", {}, h("a", { href: `#/messages/${encodeURIComponent(ev.msg_id)}` }, ev.msg_id)),
    h("td", { class: "nowrap" }, ev.kind === "received" ? `${num(ev.size)} B`
      : `${ev.status ? ev.status : "—"} · ${ev.latency_ms} ms`),
    h("td", { class: "excerpt mono", title: ev.excerpt || ev.error || "" },
      ev.kind === "received" ? (ev.excerpt || "") + (ev.truncated ? "…" : "") : ev.error || ""));

  async function loop(myGen) {
    while (!ctx.signal.aborted && myGen === gen) {
      if (paused) {
        await new Promise((res) => setTimeout(res, 300));
        continue;
      }
      const kinds = kindBoxes.filter((b) => b.checked).map((b) => b.value);
      const params = {
        pipeline: pipeline.value, output: output.value.trim(),
        kind: kinds.length === KINDS.length ? null : kinds.join(",") || "received",
        after: cursor, wait: 15000, max: 100,
      };
      inner = new AbortController();
      const abortInner = () => inner.abort();
      ctx.signal.addEventListener("abort", abortInner, { once: true });
      let text;
      try {
        text = await apiText("/api/tail" + qs(params), { signal: inner.signal });
        dot.classList.add("on");
        stateText.textContent = paused ? "paused" : "following";
      } catch (e) {
        ctx.signal.removeEventListener("abort", abortInner);
        if (isAbort(e)) {
          if (ctx.signal.aborted || myGen !== gen) return;
          continue;
        }
        dot.classList.remove("on");
        stateText.textContent = `disconnected (${e.message}); retrying`;
        await new Promise((res) => setTimeout(res, 2000));
        continue;
      }
      ctx.signal.removeEventListener("abort", abortInner);
      if (myGen !== gen) return;
      for (const ev of parseSSE(text)) {
        const data = JSON.parse(ev.data);
        if (ev.event === "cursor") {
          cursor = data.next;
        } else if (ev.event === "gap") {
          lost += data.lost;
        } else {
          skipped += data.skipped_before || 0;
          tbody.insertBefore(row(data), tbody.firstChild);
          shown++;
          while (tbody.childNodes.length > MAX_ROWS) tbody.removeChild(tbody.lastChild);
        }
      }
      updateCounts();
    }
  }

  function restart() {
    gen++;
    if (inner) inner.abort();
    cursor = null;
    replace(tbody);
    shown = skipped = lost = 0;
    updateCounts();
    loop(gen).catch((e) => {
      if (!isAbort(e)) ctx.showError(e);
    });
  }

  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    stateText.textContent = paused ? "paused" : "following";
    dot.classList.toggle("on", !paused);
    if (paused && inner) inner.abort();
  });
  clearBtn.addEventListener("click", () => {
    replace(tbody);
    shown = skipped = lost = 0;
    updateCounts();
  });
  ctx.onLeave(() => {
    gen++;
    if (inner) inner.abort();
  });
  restart();
}
