// message.js - one message: its body and metadata as stored, what the route
// stage decided, and each delivery's attempts on a timeline with status,
// latency and the partner's answer excerpt.

import { api, apiText, qs } from "../api.js";
import { h, s, replace, badge, time, duration, num, reindent } from "../dom.js";

function link(id) {
  return h("a", { href: `#/messages/${encodeURIComponent(id)}` }, id);
}

function ptClass(state) {
  return state === "delivered" ? "pt-delivered" : state === "pending" ? "pt-pending" : state === "dead" ? "pt-dead" : "pt-other";
}

// The attempts of a delivery on a time axis from the message's receipt.
export function timeline(receivedAt, attempts, nextAt) {
  const width = 640, height = 58, padL = 8, padR = 8, axisY = 34;
  const ends = attempts.map((a) => a.started_at + Math.max(a.latency_ms, 0));
  let end = Math.max(receivedAt + 1, ...ends);
  if (nextAt && nextAt > end) end = nextAt;
  const span = end - receivedAt;
  const x = (t) => padL + ((t - receivedAt) / span) * (width - padL - padR);
  const summary = attempts.length
    ? `${attempts.length} attempt${attempts.length === 1 ? "" : "s"} over ${duration(span)} from receipt`
    : "no attempt yet";
  const svg = s("svg", { class: "timeline", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `Attempt timeline: ${summary}` });
  svg.appendChild(s("title", {}, `Attempt timeline: ${summary}`));
  svg.appendChild(s("line", { class: "axis", x1: padL, x2: width - padR, y1: axisY, y2: axisY }));
  svg.appendChild(s("text", { x: padL, y: height - 4 }, "received"));
  svg.appendChild(s("text", { x: width - padR, y: height - 4, "text-anchor": "end" }, `+${duration(span)}`));
  attempts.forEach((a) => {
    const x1 = x(a.started_at), x2 = x(a.started_at + Math.max(a.latency_ms, 0));
    if (x2 - x1 >= 2) svg.appendChild(s("line", { class: "span", x1, x2, y1: axisY, y2: axisY }));
    const c = s("circle", { cx: x1, cy: axisY, r: 5, class: ptClass(a.state) });
    c.appendChild(s("title", {}, `attempt ${a.n}: ${a.state}, status ${a.status || "—"}, ${a.latency_ms} ms${a.error ? ", " + a.error : ""}${a.answer ? ", answered: " + a.answer : ""}`));
    svg.appendChild(c);
    svg.appendChild(s("text", { x: x1, y: axisY - 10, "text-anchor": "middle" }, `#${a.n}`));
  });
  if (nextAt && attempts.length)
    svg.appendChild(s("text", { x: x(nextAt), y: axisY + 14, "text-anchor": "middle" }, "next"));
  return svg;
}

// What the partner answered (the first 256 bytes the store keeps), as text:
// a box of its own that scrolls, reachable with the keyboard.
function answerCell(a) {
  if (!a.answer) return h("span", { class: "muted" }, "—");
  return h("pre", { class: "answer", tabindex: "0", "aria-label": `Attempt ${a.n}: the partner's answer` }, a.answer);
}

export function attemptsTable(receivedAt, attempts) {
  if (!attempts.length) return h("p", { class: "small muted" }, "No attempt yet.");
  return h("div", { class: "table-wrap" }, h("table", { "data-test": "attempts" },
    h("thead", {}, h("tr", {},
      h("th", { scope: "col", class: "num" }, "#"), h("th", { scope: "col" }, "Started"),
      h("th", { scope: "col", class: "num" }, "After receipt"), h("th", { scope: "col", class: "num" }, "Latency"),
      h("th", { scope: "col", class: "num" }, "Status"), h("th", { scope: "col" }, "Result"),
      h("th", { scope: "col" }, "Partner's answer"), h("th", { scope: "col" }, "Error or note"))),
    h("tbody", {}, attempts.map((a) => h("tr", { "data-attempt": a.n },
      h("td", { class: "num" }, a.n),
      h("td", { class: "nowrap" }, time(a.started_at)),
      h("td", { class: "num nowrap" }, duration(a.started_at - receivedAt)),
      h("td", { class: "num nowrap" }, `${a.latency_ms} ms`),
      h("td", { class: "num", "data-test": "status" }, a.status ? a.status : "—"),
      h("td", {}, badge(a.state === "pending" ? "retry" : a.state, a.state === "pending" ? "retry" : a.state)),
      h("td", { "data-test": "answer" }, answerCell(a)),
      h("td", { "data-test": "error" }, a.error ? h("code", {}, a.error) : h("span", { class: "muted" }, "—")))))));
}

function deliverySection(m, d) {
  const isRoute = d.output === "(route)";
  return h("section", { class: "delivery", "data-delivery": d.id, "data-output": d.output, "aria-label": `Delivery to ${d.output}` },
    h("div", { class: "delivery-head" },
      h("h3", {}, isRoute ? "Route stage" : d.output),
      badge(d.state),
      h("span", { class: "small muted" }, `delivery ${d.id} · ${num(d.attempts)} attempt${d.attempts === 1 ? "" : "s"}`),
      d.state === "pending" && d.next_at ? h("span", { class: "small muted" }, `next attempt ${time(d.next_at)}`) : null,
      d.replay_of ? h("span", { class: "small muted" }, `replay of delivery ${d.replay_of}`) : null,
      d.state === "dead" ? h("a", { href: `#/dead-letters/${d.id}` }, "Open the dead letter") : null),
    d.last_error && (d.state === "routed_away" || d.state === "filtered")
      ? h("p", { class: "small" }, d.last_error) : null,
    d.attempt_log.length ? timeline(m.received_at, d.attempt_log, d.state === "pending" ? d.next_at : 0) : null,
    d.state === "routed_away" || d.state === "filtered" ? null : attemptsTable(m.received_at, d.attempt_log));
}

function routeSection(m) {
  const route = m.deliveries.find((d) => d.output === "(route)");
  const chosen = m.deliveries.filter((d) => d.output !== "(route)" && d.state !== "routed_away" && d.state !== "filtered");
  const away = m.deliveries.filter((d) => d.state === "routed_away");
  const filtered = m.deliveries.filter((d) => d.state === "filtered" && d.attempts === 0);
  if (!route && !away.length && !filtered.length) return null;
  const note = route && route.attempt_log.length ? route.attempt_log[route.attempt_log.length - 1].error : null;
  return h("section", { class: "panel", "aria-labelledby": "route-h" },
    h("h2", { id: "route-h" }, "Route decisions"),
    route ? h("p", {}, "Process steps ran once: ", badge(route.state), note ? h("span", {}, " ", note) : null) : null,
    h("dl", { class: "kv" },
      h("dt", {}, "Sent to"), h("dd", {}, chosen.length ? chosen.map((d) => d.output).join(", ") : "none"),
      away.length ? [h("dt", {}, "Routed away from"), h("dd", {}, away.map((d) => d.output).join(", "))] : null,
      filtered.length ? [h("dt", {}, "Filtered for"), h("dd", {}, filtered.map((d) => d.output).join(", "))] : null,
      m.children && m.children.length ? [h("dt", {}, "Split into"), h("dd", {}, m.children.map((c, i) => [i ? ", " : "", link(c)]))] : null));
}

export async function mount(main, route, ctx) {
  const id = route.parts[1];
  main.append(h("h1", {}, "Message ", h("code", {}, id)));
  // Looked up through the search first, so a message gone (retention,
  // purge) is said plainly instead of failing a request.
  const found = await api("/api/messages" + qs({ id, limit: 1 }), { signal: ctx.signal });
  if (!found.items.length) {
    main.append(h("p", { class: "note", role: "status" },
      "There is no such message: it never existed, or it was purged or expired after the retention period."));
    return;
  }
  const m = await api(`/api/messages/${encodeURIComponent(id)}`, { signal: ctx.signal });
  const raw = await apiText(`/api/messages/${encodeURIComponent(id)}/body`, { signal: ctx.signal });
  const routedRaw = m.routed ? await apiText(`/api/messages/${encodeURIComponent(id)}/body?routed=true`, { signal: ctx.signal }) : null;
  const json = !m.content_type || /json/i.test(m.content_type);
  const shown = (t) => (json ? reindent(t) : t);
  const dlBody = h("div", { "aria-live": "polite" });
  const dlSection = h("section", { class: "panel", "aria-labelledby": "dl-h" },
    h("h2", { id: "dl-h" }, "Deliveries"), dlBody);
  const renderDeliveries = (msg) => {
    const deliveries = msg.deliveries.filter((d) => d.output !== "(route)");
    const routeDl = msg.deliveries.find((d) => d.output === "(route)");
    replace(dlBody,
      deliveries.length ? deliveries.map((d) => deliverySection(msg, d)) : h("p", { class: "muted" }, "None."),
      routeDl ? deliverySection(msg, routeDl) : null);
  };
  renderDeliveries(m);
  main.append(...[
    h("section", { class: "panel", "aria-labelledby": "sum-h" },
      h("h2", { id: "sum-h", class: "sr-only" }, "Summary"),
      h("dl", { class: "kv" },
        h("dt", {}, "Pipeline"), h("dd", {}, h("a", { href: "#/pipelines" + qs({ name: m.pipeline }) }, m.pipeline)),
        h("dt", {}, "Received"), h("dd", {}, time(m.received_at)),
        h("dt", {}, "Content type"), h("dd", {}, m.content_type || "application/json"),
        h("dt", {}, "Idempotency key"), h("dd", { "data-test": "idempotency-key" }, m.idempotency_key ? h("code", {}, m.idempotency_key) : "—"),
        m.parent ? [h("dt", {}, "Split from"), h("dd", {}, link(m.parent))] : null,
        m.edit_of ? [h("dt", {}, "Edited from"), h("dd", {}, link(m.edit_of), " (a dead letter's corrected body)")] : null,
        m.edits ? [h("dt", {}, "Edited into"), h("dd", {}, m.edits.map((e, i) => [i ? ", " : "", link(e)]))] : null,
        m.body_damaged ? [h("dt", {}, "Body"), h("dd", { class: "error-box" }, "does not match the checksum taken at ingest")] : null)),
    routeSection(m),
    dlSection,
    h("section", { class: "panel", "aria-labelledby": "body-h" },
      h("h2", { id: "body-h" }, "Body as received"),
      h("pre", { class: "code", tabindex: "0", "data-test": "body" }, shown(raw)),
      routedRaw !== null ? [h("h3", {}, "Body as the route stage made it"), h("pre", { class: "code", tabindex: "0" }, shown(routedRaw))] : null,
      h("h3", {}, "$meta"),
      h("pre", { class: "code", tabindex: "0" }, m.meta ? JSON.stringify(m.meta, null, 2) : "null")),
  ].filter(Boolean));
  // While something is still on its way, follow it.
  const pending = (msg) => msg.deliveries.some((d) => d.state === "pending");
  if (pending(m)) {
    let last = JSON.stringify(m.deliveries);
    let done = false;
    ctx.every(2000, async () => {
      if (done) return;
      const now = await api(`/api/messages/${encodeURIComponent(id)}`, { signal: ctx.signal });
      const text = JSON.stringify(now.deliveries);
      if (text !== last) {
        last = text;
        renderDeliveries(now);
      }
      done = !pending(now);
    });
  }
}
