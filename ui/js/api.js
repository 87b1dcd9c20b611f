// api.js - the admin API from the page. The admin token lives in session
// storage (gone when the tab closes) and goes in the Authorization header of
// each request; it is never put in a URL.

const KEY = "patchbay.token";

export const auth = {
  get token() {
    try {
      return sessionStorage.getItem(KEY);
    } catch (e) {
      return null;
    }
  },
  set(token) {
    sessionStorage.setItem(KEY, token);
  },
  clear() {
    try {
      sessionStorage.removeItem(KEY);
    } catch (e) {
      /* storage unavailable: nothing kept */
    }
  },
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

// "?a=1&b=x" from an object, leaving out empty values.
export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === "" || v === false) continue;
    u.set(k, String(v));
  }
  const t = u.toString();
  return t ? "?" + t : "";
}

async function request(path, { method = "GET", body, contentType, signal, token, as = "json" } = {}) {
  const headers = { Authorization: "Bearer " + (token || auth.token || "") };
  if (body !== undefined) {
    headers["Content-Type"] = contentType || "application/json";
    if (typeof body !== "string") body = JSON.stringify(body);
  }
  const resp = await fetch(path, { method, headers, body, signal, cache: "no-store", credentials: "omit" });
  if (resp.status === 401 && !token) {
    onUnauthorized();
    throw new ApiError(401, "the admin token was refused: sign in again");
  }
  const text = await resp.text();
  if (!resp.ok) {
    let msg = `HTTP ${resp.status}`;
    try {
      const j = JSON.parse(text);
      if (j && j.error) msg = j.error;
    } catch (e) {
      /* not JSON: keep the status */
    }
    throw new ApiError(resp.status, msg);
  }
  if (as === "text") return text;
  return text ? JSON.parse(text) : null;
}

export function api(path, opts) {
  return request(path, opts);
}

export function apiText(path, opts) {
  return request(path, { ...opts, as: "text" });
}

export function isAbort(e) {
  return !!e && e.name === "AbortError";
}
