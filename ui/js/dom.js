// dom.js - building the page from data without HTML strings: every text goes
// in through textContent, so nothing a message carries can become markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function apply(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.setAttribute("class", Array.isArray(v) ? v.filter(Boolean).join(" ") : v);
    else if (k === "text") el.textContent = String(v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value") el.value = v;
    else if (k === "checked" || k === "selected" || k === "disabled" || k === "hidden") el[k] = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

// h("a", {href: "#/x", class: "y"}, "text", child, [more])
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

// ---- formatting ----

const nf = new Intl.NumberFormat("en-US");
export function num(n) {
  return n === null || n === undefined ? "—" : nf.format(n);
}

export function rate(r) {
  if (r === null || r === undefined) return "—";
  if (r === 0) return "0/s";
  if (r < 0.1) return r.toFixed(3) + "/s";
  if (r < 10) return r.toFixed(2) + "/s";
  return nf.format(Math.round(r)) + "/s";
}

function pad(n, w = 2) {
  return String(n).padStart(w, "0");
}

export function time(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function shortTime(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function duration(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  const hh = Math.floor(m / 60);
  if (hh < 48) return `${hh} h ${m % 60} min`;
  return `${Math.floor(hh / 24)} d ${hh % 24} h`;
}

export function ago(ms) {
  if (!ms) return "—";
  const d = Date.now() - ms;
  return d < 0 ? "just now" : `${duration(d)} ago`;
}

// A <input type="datetime-local"> value and unix ms, both ways.
export function localInput(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
export function fromLocalInput(v) {
  if (!v) return null;
  const t = new Date(v).getTime();
  return Number.isFinite(t) ? t : null;
}

export function badge(state, text) {
  const st = String(state || "unknown").replace(/[^a-z_]/gi, "");
  return h("span", { class: `badge st-${st}` }, text || String(state || "unknown").replace("_", " "));
}

// Re-indent JSON text without parsing it: strings and numbers are kept
// byte for byte (JSON.parse would round 9007199254740993 and drop 1.10's 0),
// only the whitespace between tokens changes. Text that is not JSON comes
// back as it was.
export function reindent(text, step = 2) {
  let out = "", depth = 0, i = 0;
  const n = text.length;
  const nl = () => "\n" + " ".repeat(depth * step);
  let empty = false; // just opened a bracket
  while (i < n) {
    const c = text[i];
    if (c === " " || c === "\t" || c === "\n" || c === "\r") { i++; continue; }
    if (c === '"') {
      let j = i + 1;
      while (j < n && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      if (j >= n) return text;
      if (empty) { out += nl(); empty = false; }
      out += text.slice(i, j + 1);
      i = j + 1;
      continue;
    }
    if (c === "{" || c === "[") {
      if (empty) out += nl();
      out += c;
      depth++;
      empty = true;
      i++;
      continue;
    }
    if (c === "}" || c === "]") {
      depth--;
      if (depth < 0) return text;
      if (!empty) out += nl();
      out += c;
      empty = false;
      i++;
      continue;
    }
    if (c === ",") { out += "," + nl(); i++; continue; }
    if (c === ":") { out += ": "; i++; continue; }
    let j = i;
    while (j < n && !" \t\n\r,:{}[]\"".includes(text[j])) j++;
    if (j === i) return text;
    if (empty) { out += nl(); empty = false; }
    out += text.slice(i, j);
    i = j;
  }
  return depth === 0 ? out : text;
}

// A body as the API shows it: the raw text when the caller has it, else the
// embedded JSON, else base64 decoded as UTF-8 text when it is text.
export function bodyText(obj, raw) {
  if (typeof raw === "string") return raw;
  if (obj && "body" in obj) return JSON.stringify(obj.body, null, 2);
  if (obj && obj.body_base64) {
    try {
      const bytes = Uint8Array.from(atob(obj.body_base64), (ch) => ch.charCodeAt(0));
      return new TextDecoder("utf-8", { fatal: false }).decode(bytes);
    } catch (e) {
      return obj.body_base64;
    }
  }
  return "";
}

export function field(labelText, control, hint) {
  const id = control.id || "f-" + Math.random().toString(36).slice(2, 9);
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, labelText), control,
    hint ? h("span", { class: "small muted" }, hint) : null);
}

export function select(options, value, attrs) {
  const el = h("select", attrs);
  for (const o of options) {
    const [v, label] = Array.isArray(o) ? o : [o, o];
    el.appendChild(h("option", { value: v, selected: v === value }, label));
  }
  return el;
}
