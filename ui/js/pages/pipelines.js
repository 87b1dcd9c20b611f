// pipelines.js - each pipeline as a graph: its input, its process steps in
// order, and its outputs, with live counts (refreshed in place every few
// seconds); a switch's conditions label the edges to the outputs they
// choose. A table under each graph says the same for screen readers.

import { api, qs } from "../api.js";
import { h, s, replace, num, badge } from "../dom.js";

const REFRESH_MS = 3000;
const BW = 180, BH = 62, GAP_X = 70, GAP_Y = 18, PAD = 10;

function cut(t, n) {
  t = String(t || "");
  return t.length > n ? t.slice(0, n - 1) + "…" : t;
}

function box(x, y, cls, lines, href, label) {
  const g = s("g", { class: `node ${cls}`, transform: `translate(${x},${y})` });
  g.appendChild(s("rect", { width: BW, height: BH, rx: 8 }));
  const texts = lines.map((ln, i) => {
    const t = s("text", { x: 10, y: 18 + i * 16, class: i === 0 ? "title" : "sub" }, ln);
    g.appendChild(t);
    return t;
  });
  if (!href) return { el: g, texts };
  const a = s("a", { href, "aria-label": label });
  a.appendChild(g);
  return { el: a, texts, g };
}

function edge(x1, y1, x2, y2, marker) {
  const mx = (x1 + x2) / 2;
  return s("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "marker-end": `url(#${marker})` });
}

// The conditions of the switches that send messages to output `name`.
function routesTo(steps, name) {
  const labels = [];
  for (const st of steps || [])
    if (st.kind === "switch")
      for (const c of st.cases || [])
        if ((c.to || []).includes(name)) labels.push(c.otherwise ? "otherwise" : cut(c.when, 28));
  return labels;
}

function buildGraph(p) {
  const steps = p.steps || [];
  const outs = p.outputs || [];
  const cols = 2 + steps.length;
  const rows = Math.max(outs.length, 1);
  const height = PAD * 2 + rows * BH + (rows - 1) * GAP_Y;
  const width = PAD * 2 + cols * BW + (cols - 1) * GAP_X + 40;
  const mid = height / 2 - BH / 2;
  const svg = s("svg", {
    width, height, viewBox: `0 0 ${width} ${height}`, role: "group",
    "aria-label": `Graph of pipeline ${p.name}: input, ${steps.length} process steps, ${outs.length} outputs`,
  });
  const marker = "arrow-" + p.name.replace(/[^a-zA-Z0-9_-]/g, "_");
  svg.appendChild(s("defs", {}, s("marker", { id: marker, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
    s("path", { d: "M0,0 L10,5 L0,10 z", class: "edge-head" }))));
  const refs = { outputs: new Map() };
  const input = box(PAD, mid, "input", [`input: ${p.input ? p.input.type : "?"}`, "", ""]);
  refs.input = input.texts;
  svg.appendChild(input.el);
  let prevX = PAD + BW, prevY = mid + BH / 2;
  steps.forEach((st, i) => {
    const x = PAD + (i + 1) * (BW + GAP_X);
    const detail = st.kind === "switch" ? `${(st.cases || []).length} cases` : cut(st.program, 26);
    const b = box(x, mid, "step", [`${i + 1}. ${st.kind}`, detail, ""]);
    svg.appendChild(edge(prevX, prevY, x, mid + BH / 2, marker));
    svg.appendChild(b.el);
    if (i === steps.length - 1) refs.route = b.texts;
    prevX = x + BW;
  });
  const ox = PAD + (steps.length + 1) * (BW + GAP_X);
  outs.forEach((o, j) => {
    const y = PAD + j * (BH + GAP_Y);
    svg.appendChild(edge(prevX, prevY, ox, y + BH / 2, marker));
    const labels = routesTo(steps, o.name);
    if (labels.length)
      svg.appendChild(s("text", { class: "edge-label", x: ox - 6, y: y + BH / 2 - 5, "text-anchor": "end" }, cut(labels.join(" | "), 34)));
    const b = box(ox, y, "output", [o.name, "", ""], "#/messages" + qs({ pipeline: p.name, output: o.name }),
      `Output ${o.name}: its messages`);
    refs.outputs.set(o.name, b);
    svg.appendChild(b.el);
  });
  return { svg, refs };
}

function setText(t, v) {
  if (t && t.textContent !== v) t.textContent = v;
}

function update(view, p) {
  const r = view.refs;
  setText(r.input[1], p.input ? `state: ${p.input.state}` : "");
  setText(r.input[2], `taken in ${num(p.accepted)} · dup ${num(p.duplicates)}`);
  if (r.route && p.route)
    setText(r.route[2], `routed ${num(p.route.routed)} · filtered ${num(p.route.filtered)} · dead ${num(p.route.dead)}`);
  for (const o of p.outputs) {
    const b = r.outputs.get(o.name);
    if (!b) continue;
    setText(b.texts[1], `${o.type} · ${o.state}`);
    setText(b.texts[2], `${num(o.delivered_total)} sent · ${num(o.pending)} waiting · ${num(o.dead)} dead`);
    const cls = o.state === "connected" ? "" : o.state === "reconnecting" || o.state === "starting" ? "warn" : "bad";
    b.g.setAttribute("class", `node output ${cls}`.trim());
  }
  // The table.
  for (const o of p.outputs) {
    const row = view.rows.get(o.name);
    if (!row) continue;
    replace(row.state, badge(o.state));
    setText(row.delivered, num(o.delivered_total));
    setText(row.pending, num(o.pending));
    setText(row.inflight, num(o.inflight));
    setText(row.dead, num(o.dead));
    setText(row.away, num(o.routed_away_total));
    setText(row.filtered, num(o.filtered_total));
  }
}

function card(p) {
  const { svg, refs } = buildGraph(p);
  const rows = new Map();
  const tbody = h("tbody");
  for (const o of p.outputs) {
    const row = {
      state: h("td"), delivered: h("td", { class: "num", "data-metric": "delivered_total" }),
      pending: h("td", { class: "num", "data-metric": "pending" }), inflight: h("td", { class: "num" }),
      dead: h("td", { class: "num", "data-metric": "dead" }), away: h("td", { class: "num" }), filtered: h("td", { class: "num" }),
    };
    rows.set(o.name, row);
    tbody.appendChild(h("tr", { "data-output": o.name },
      h("th", { scope: "row" }, h("a", { href: "#/messages" + qs({ pipeline: p.name, output: o.name }) }, o.name)),
      h("td", {}, h("code", {}, o.type)), row.state, row.delivered, row.pending, row.inflight, row.away, row.filtered,
      h("td", { class: "num" }, h("a", { href: "#/dead-letters" + qs({ pipeline: p.name, output: o.name }), "aria-label": `dead letters of ${o.name}` }, row.dead))));
  }
  const id = "g-" + p.name.replace(/[^a-zA-Z0-9_-]/g, "_");
  const stepsList = (p.steps || []).length ? h("ol", { class: "small" }, p.steps.map((st) => h("li", {},
    h("strong", {}, st.kind), " ",
    st.program ? h("code", {}, st.program) : null,
    st.cases ? h("ul", {}, st.cases.map((c) => h("li", {},
      c.otherwise ? "otherwise" : h("code", {}, c.when), " → ", (c.to || []).join(", ") || "(nothing)"))) : null)))
    : h("p", { class: "small muted" }, "No process steps: every message goes to every output.");
  const el = h("section", { class: "panel", "aria-labelledby": id, "data-pipeline": p.name },
    h("h2", { id }, "Pipeline ", p.name),
    h("div", { class: "graph" }, svg),
    h("h3", {}, "Process steps"),
    stepsList,
    h("h3", {}, "Outputs"),
    h("div", { class: "table-wrap" }, h("table", {},
      h("caption", { class: "small muted caption-below" }, "Delivered, routed away and filtered: since the daemon started. Pending and dead: now."),
      h("thead", {}, h("tr", {},
        ["Output", "Type", "Connection"].map((t) => h("th", { scope: "col" }, t)),
        ["Delivered", "Pending", "In flight", "Routed away", "Filtered", "Dead"].map((t) => h("th", { scope: "col", class: "num" }, t)))),
      tbody)));
  return { el, refs, rows, shape: JSON.stringify([p.steps, p.outputs.map((o) => o.name), p.input && p.input.type]) };
}

export async function mount(main, route, ctx) {
  const only = route.query.get("name");
  const list = h("div");
  main.append(h("h1", {}, only ? `Pipeline ${only}` : "Pipelines"));
  if (only) main.append(h("p", {}, h("a", { href: "#/pipelines" }, "All pipelines")));
  main.append(list);
  const views = new Map();
  await ctx.every(REFRESH_MS, async () => {
    const doc = await api("/api/pipelines?counts=open", { signal: ctx.signal });
    const pls = doc.pipelines.filter((p) => !only || p.name === only);
    if (!pls.length) {
      replace(list, h("p", { class: "note" }, only ? `There is no pipeline ${only}.` : "No pipelines."));
      return;
    }
    for (const p of pls) {
      let v = views.get(p.name);
      if (!v) {
        v = card(p);
        views.set(p.name, v);
        list.appendChild(v.el);
      }
      update(v, p);
    }
  });
}
