// chart.js - small SVG line charts over the last hour, and the store of
// metric samples the pages fill from /api/metrics/history.

import { api, qs } from "./api.js";
import { h, s, rate, num } from "./dom.js";

const HOUR = 3600 * 1000;

// The samples seen so far: times and, per "pipeline\u0000output\u0000metric",
// values aligned with them. refresh() asks only for newer samples.
export class History {
  constructor() {
    this.times = [];
    this.series = new Map();
    this.kinds = new Map();
    this.interval = 5000;
  }

  key(pipeline, output, metric) {
    return `${pipeline}\u0000${output || ""}\u0000${metric}`;
  }

  async refresh(signal) {
    const last = this.times.length ? this.times[this.times.length - 1] : null;
    const doc = await api("/api/metrics/history" + qs({ since: last }), { signal });
    this.interval = doc.interval_ms || this.interval;
    const start = this.times.length;
    for (const t of doc.times) this.times.push(t);
    for (const se of doc.series) {
      const k = this.key(se.pipeline, se.output, se.metric);
      let vals = this.series.get(k);
      if (!vals) {
        vals = new Array(start).fill(null);
        this.series.set(k, vals);
        this.kinds.set(k, se.kind);
      }
      for (const v of se.values) vals.push(v);
    }
    // Series absent from this answer keep their length with gaps.
    for (const vals of this.series.values()) while (vals.length < this.times.length) vals.push(null);
    // Keep an hour.
    const cut = this.times.length ? this.times[this.times.length - 1] - HOUR : 0;
    let drop = 0;
    while (drop < this.times.length && this.times[drop] < cut) drop++;
    if (drop) {
      this.times.splice(0, drop);
      for (const vals of this.series.values()) vals.splice(0, drop);
    }
    return doc.times.length;
  }

  values(pipeline, output, metric) {
    return this.series.get(this.key(pipeline, output, metric)) || [];
  }

  latest(pipeline, output, metric) {
    const v = this.values(pipeline, output, metric);
    for (let i = v.length - 1; i >= 0; i--) if (v[i] !== null && v[i] !== undefined) return v[i];
    return null;
  }
}

// A line chart of series [{label, cls, values}] over times, the last hour.
export function lineChart(times, series, { title, unit = "rate", width = 320, height = 90 } = {}) {
  const padL = 4, padR = 4, padT = 14, padB = 14;
  const w = width - padL - padR, hgt = height - padT - padB;
  const end = times.length ? times[times.length - 1] : Date.now();
  const startT = end - HOUR;
  let max = 0;
  for (const se of series) for (const v of se.values) if (v !== null && v > max) max = v;
  const top = max > 0 ? max * 1.15 : 1;
  const x = (t) => padL + ((t - startT) / HOUR) * w;
  const y = (v) => padT + hgt - (v / top) * hgt;
  const fmt = (v) => (unit === "rate" ? rate(v) : num(Math.round(v)));
  const latest = series.map((se) => {
    for (let i = se.values.length - 1; i >= 0; i--) if (se.values[i] !== null) return se.values[i];
    return null;
  });
  const summary = `${title || "chart"}, last hour: ` +
    series.map((se, i) => `${se.label} now ${latest[i] === null ? "no data" : fmt(latest[i])}`).join(", ") +
    `, peak ${fmt(max)}`;
  const svg = s("svg", {
    class: "chart",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": summary,
    "data-points": String(times.length),
  });
  svg.appendChild(s("title", {}, summary));
  svg.appendChild(s("line", { class: "grid", x1: padL, x2: width - padR, y1: padT, y2: padT }));
  svg.appendChild(s("line", { class: "axis", x1: padL, x2: width - padR, y1: padT + hgt, y2: padT + hgt }));
  svg.appendChild(s("text", { x: padL, y: padT - 3 }, fmt(max)));
  svg.appendChild(s("text", { x: padL, y: height - 2 }, "−60 min"));
  svg.appendChild(s("text", { x: width - padR, y: height - 2, "text-anchor": "end" }, "now"));
  series.forEach((se) => {
    let d = "";
    let pen = false;
    se.values.forEach((v, i) => {
      if (v === null || v === undefined || times[i] < startT) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    // One sample alone still shows, as a short tick.
    if (d && !d.includes("L")) d += `h1.5`;
    if (d) svg.appendChild(s("path", { class: `series ${se.cls}`, d }));
  });
  return svg;
}

export function chartBox(label, legend, svg) {
  return h("div", { class: "chart-box" },
    h("h4", {}, label),
    legend && legend.length ? h("div", { class: "legend", "aria-hidden": "true" },
      legend.map(([cls, text]) => h("span", { class: cls }, text))) : null,
    svg);
}
