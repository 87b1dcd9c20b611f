// overview.js - what is flowing and what is failing: per pipeline and
// output, rates and backlog over the last hour (the daemon's metric
// history), input and output connection states, and the nodes.
//
// The page is built once and its values updated in place every few
// seconds, so keyboard focus stays where it is.

import { api, qs } from "../api.js";
import { h, replace, num, rate, badge, ago, time } from "../dom.js";
import { History, lineChart, chartBox } from "../chart.js";

const REFRESH_MS = 5000;

function text(el, v) {
  if (el.textContent !== v) el.textContent = v;
}

function outputKey(p, o) {
  return `${p}/${o}`;
}

// One pipeline's card, with slots updated in place.
function pipelineCard(p) {
  const slots = {
    inputState: h("span"),
    inputDetail: h("span", { class: "muted" }),
    received: h("div", { class: "v", "data-metric": "received_rate" }),
    accepted: h("div", { class: "v", "data-metric": "accepted_total" }),
    duplicates: h("div", { class: "v" }),
    doa: h("div", { class: "v" }),
    lag: h("div", { class: "v" }),
    chart: h("div"),
    rows: new Map(),
    tbody: h("tbody"),
    charts: h("div", { class: "charts" }),
  };
  const id = "pl-" + p.name.replace(/[^a-zA-Z0-9_-]/g, "_");
  const el = h("section", { class: "panel", "aria-labelledby": id, "data-pipeline": p.name },
    h("div", { class: "panel-head" },
      h("h2", { id }, "Pipeline ", h("a", { href: "#/pipelines" + qs({ name: p.name }) }, p.name)),
      h("span", {}, "input ", h("code", {}, p.input ? p.input.type : "?"), " ", slots.inputState),
      slots.inputDetail),
    h("div", { class: "stats" },
      h("div", { class: "stat" }, slots.received, h("div", { class: "k" }, "received now")),
      h("div", { class: "stat" }, slots.accepted, h("div", { class: "k" }, "taken in, total")),
      h("div", { class: "stat" }, slots.duplicates, h("div", { class: "k" }, "duplicates")),
      h("div", { class: "stat" }, slots.doa, h("div", { class: "k" }, "dead on arrival")),
      h("div", { class: "stat" }, slots.lag, h("div", { class: "k" }, "waiting at source"))),
    h("div", { class: "charts" }, slots.chart),
    h("h3", {}, "Outputs"),
    h("div", { class: "table-wrap" },
      h("table", {},
        h("caption", { class: "sr-only" }, `Outputs of pipeline ${p.name}`),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Output"),
          h("th", { scope: "col" }, "Type"),
          h("th", { scope: "col" }, "Connection"),
          h("th", { scope: "col" }, "Breaker"),
          h("th", { scope: "col", class: "num" }, "Delivered/s"),
          h("th", { scope: "col", class: "num" }, "Failed/s"),
          h("th", { scope: "col", class: "num" }, "Backlog"),
          h("th", { scope: "col", class: "num" }, "In flight"),
          h("th", { scope: "col", class: "num" }, "Delivered"),
          h("th", { scope: "col", class: "num" }, "Dead letters"))),
        slots.tbody)),
    slots.charts);
  return { el, slots };
}

function outputRow(p, o, sub) {
  const cells = {
    state: h("td"),
    breaker: h("td", { "data-metric": "breaker" }),
    delivered: h("td", { class: "num", "data-metric": "delivered_rate" }),
    failed: h("td", { class: "num", "data-metric": "failed_rate" }),
    backlog: h("td", { class: "num", "data-metric": "backlog" }),
    inflight: h("td", { class: "num" }),
    total: h("td", { class: "num", "data-metric": "delivered_total" }),
    dead: h("td", { class: "num", "data-metric": "dead" }),
    chartRate: h("div"),
    chartBacklog: h("div"),
  };
  const name = sub ? sub : o.name;
  // Named with its pipeline: outputs of one name in two pipelines are two links.
  const label = h("a", { href: "#/messages" + qs({ pipeline: p, output: name }), "aria-label": `${name} of pipeline ${p}` },
    sub ? "↳ " + sub.split("/").slice(1).join("/") : name);
  const deadLink = h("a", { href: "#/dead-letters" + qs({ pipeline: p, output: name }) });
  cells.dead.appendChild(deadLink);
  cells.deadLink = deadLink;
  const row = h("tr", { "data-output": outputKey(p, name) },
    h("th", { scope: "row" }, label),
    h("td", {}, sub ? "endpoint" : h("code", {}, o.type)),
    cells.state, cells.breaker, cells.delivered, cells.failed, cells.backlog, cells.inflight,
    cells.total, cells.dead);
  const charts = [
    h("div", { class: "chart-box-wrap", "data-chart": outputKey(p, name) }, cells.chartRate),
    h("div", {}, cells.chartBacklog),
  ];
  return { row, cells, charts };
}

export async function mount(main, route, ctx) {
  const hist = new History();
  const nodesPanel = h("section", { class: "panel", "aria-labelledby": "nodes-h", "data-test": "nodes" },
    h("h2", { id: "nodes-h" }, "Nodes"));
  const nodesBody = h("div");
  nodesPanel.appendChild(nodesBody);
  const cards = new Map();
  const list = h("div");
  const updated = h("p", { class: "small muted", "aria-live": "off" });
  main.append(
    h("h1", {}, "Overview"),
    updated,
    nodesPanel,
    list);

  // Clustered (a PostgreSQL store more than one node has joined): a row
  // per node with its heartbeat, the deliveries it holds (leases) and the
  // singleton work it has (holds). Otherwise one line for this node.
  let nodesShape = "";
  const refreshNodes = async () => {
    const doc = await api("/api/nodes", { signal: ctx.signal });
    const cluster = doc.clustered && doc.nodes.length > 1;
    nodesPanel.dataset.clustered = cluster ? "true" : "false";
    if (!cluster) {
      const n = doc.nodes[0] || {};
      nodesShape = "single";
      replace(nodesBody, h("p", { class: "small", "data-node": n.id || "" },
        "One node: ", h("code", {}, n.name || n.id || "?"), ` · version ${n.version || "?"} · `,
        badge(n.state === "ready" || n.state === "live" ? "ready" : "starting", n.state || "unknown"),
        ` · started ${ago(n.started_at)}`,
        h("span", { class: "muted" }, doc.clustered
          ? " · the only node of the cluster so far."
          : " · its own state store (SQLite); with a shared PostgreSQL store every node shows here.")));
      return;
    }
    const rows = doc.nodes.map((n) => h("tr", { "data-node": n.name || n.id, "data-state": n.state },
      h("th", { scope: "row" }, h("code", {}, n.name || n.id), n.self ? h("span", { class: "muted" }, " (this node)") : null),
      h("td", {}, n.version),
      h("td", {}, badge(n.state === "live" ? "ready" : n.state === "left" ? "stopped" : "dead", n.state)),
      h("td", { class: "nowrap", "data-test": "heartbeat", title: time(n.heartbeat_at) }, ago(n.heartbeat_at)),
      h("td", { class: "num", "data-test": "leases" }, num(n.leases)),
      h("td", { "data-test": "holds" }, n.holds && n.holds.length
        ? n.holds.map((x, i) => [i ? ", " : "", h("code", {}, x)]) : h("span", { class: "muted" }, "—"))));
    if (nodesShape !== "cluster") {
      nodesShape = "cluster";
      replace(nodesBody,
        h("p", { class: "small muted", "data-test": "nodes-summary" }),
        h("div", { class: "table-wrap" },
          h("table", {},
            h("caption", { class: "sr-only" }, "Nodes of the cluster"),
            h("thead", {}, h("tr", {},
              h("th", { scope: "col" }, "Node"), h("th", { scope: "col" }, "Version"),
              h("th", { scope: "col" }, "State"), h("th", { scope: "col" }, "Last heartbeat"),
              h("th", { scope: "col", class: "num" }, "Leases"), h("th", { scope: "col" }, "Holds"))),
            h("tbody"))));
    }
    text(nodesBody.querySelector('[data-test="nodes-summary"]'),
      `${num(doc.live)} of ${num(doc.nodes.length)} nodes live, sharing one PostgreSQL state store; ` +
      "leases are the pending deliveries a node holds, holds the work only one node does at a time.");
    replace(nodesBody.querySelector("tbody"), rows);
  };

  const refresh = async () => {
    const [pl, inputs] = await Promise.all([
      api("/api/pipelines?counts=open", { signal: ctx.signal }),
      api("/api/inputs", { signal: ctx.signal }),
      hist.refresh(ctx.signal),
    ]);
    const inputBy = new Map(inputs.inputs.map((i) => [i.pipeline, i]));
    if (!pl.pipelines.length && !list.firstChild)
      list.appendChild(h("p", { class: "note" }, "This configuration has no pipelines."));
    for (const p of pl.pipelines) {
      let card = cards.get(p.name);
      if (!card) {
        card = pipelineCard(p);
        cards.set(p.name, card);
        list.appendChild(card.el);
      }
      const sl = card.slots;
      const inp = inputBy.get(p.name) || {};
      replace(sl.inputState, badge(inp.state || "unknown"));
      text(sl.inputDetail, inp.detail ? inp.detail : "");
      text(sl.received, rate(hist.latest(p.name, null, "accepted")));
      text(sl.accepted, num(p.accepted));
      text(sl.duplicates, num(p.duplicates));
      text(sl.doa, num(inp.dead_on_arrival));
      text(sl.lag, inp.lag === null || inp.lag === undefined ? "—" : num(inp.lag));
      replace(sl.chart, chartBox("Messages taken in per second", null,
        lineChart(hist.times, [{ label: "received", cls: "received", values: hist.values(p.name, null, "accepted") }],
          { title: `${p.name} received` })));
      // Outputs, then their endpoints (sub-outputs) as the history knows them.
      const names = [];
      for (const o of p.outputs) {
        names.push([o.name, o, null]);
        for (const k of hist.series.keys()) {
          const [kp, ko, km] = k.split("\u0000");
          if (kp === p.name && km === "delivered" && ko.startsWith(o.name + "/")) names.push([ko, o, ko]);
        }
      }
      for (const [name, o, sub] of names) {
        let r = sl.rows.get(name);
        if (!r) {
          r = outputRow(p.name, o, sub);
          sl.rows.set(name, r);
          sl.tbody.appendChild(r.row);
          sl.charts.append(...r.charts);
        }
        const c = r.cells;
        const st = sub ? null : o.state;
        replace(c.state, sub ? h("span", { class: "muted" }, "—") : badge(st),
          !sub && o.detail ? h("div", { class: "small muted" }, o.detail) : null);
        // The circuit breaker, on an output that has one; and a hold the
        // partner asked for (429, Retry-After) while it lasts.
        const flow = sub ? null : o.flow;
        const cb = flow && flow.circuit_breaker;
        replace(c.breaker,
          cb ? badge(cb.state) : h("span", { class: "muted", title: "no circuit breaker on this output" }, "—"),
          cb && cb.opened_total ? h("div", { class: "small muted" }, `opened ${num(cb.opened_total)}×`) : null,
          flow && flow.held_for_ms > 0 ? h("div", { class: "small muted" }, `held ${Math.ceil(flow.held_for_ms / 1000)} s more`) : null);
        text(c.delivered, rate(hist.latest(p.name, name, "delivered")));
        text(c.failed, rate(hist.latest(p.name, name, "failed")));
        const backlog = sub ? hist.latest(p.name, name, "backlog") : o.pending;
        text(c.backlog, num(backlog));
        text(c.inflight, num(sub ? hist.latest(p.name, name, "inflight") : o.inflight));
        text(c.total, sub ? "—" : num(o.delivered_total));
        text(c.deadLink, sub ? "see list" : num(o.dead));
        c.deadLink.setAttribute("aria-label", sub ? `dead letters of ${name}` : `${num(o.dead)} dead letters of ${p.name}/${name}`);
        replace(c.chartRate, chartBox(`${name}: delivered and failed per second`,
          [["delivered", "delivered"], ["failed", "failed"]],
          lineChart(hist.times, [
            { label: "delivered", cls: "delivered", values: hist.values(p.name, name, "delivered") },
            { label: "failed", cls: "failed", values: hist.values(p.name, name, "failed") },
          ], { title: `${name} delivered and failed` })));
        replace(c.chartBacklog, chartBox(`${name}: backlog`, null,
          lineChart(hist.times, [{ label: "backlog", cls: "backlog", values: hist.values(p.name, name, "backlog") }],
            { title: `${name} backlog`, unit: "count" })));
      }
    }
    text(updated, `Updated ${new Date().toLocaleTimeString()} · samples every ${hist.interval / 1000} s, last hour`);
  };

  await Promise.all([ctx.every(REFRESH_MS, refreshNodes), ctx.every(REFRESH_MS, refresh)]);
}
