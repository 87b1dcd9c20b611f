// status.js - short messages for everyone, screen readers included: the
// shell gives the live region, pages announce into it.

import { h } from "./dom.js";

let region = null;

export function setStatusRegion(el) {
  region = el;
}

export function announce(text, kind = "info") {
  if (!region) return;
  const t = h("div", { class: `toast ${kind}` }, text);
  region.appendChild(t);
  setTimeout(() => t.remove(), kind === "error" ? 9000 : 5000);
}
