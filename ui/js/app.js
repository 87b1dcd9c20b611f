// app.js - the dashboard's shell: sign-in, the navigation, and a router over
// the location hash (#/overview, #/messages/ID, ...). Each page is a module
// whose mount(main, route, ctx) fills <main>; leaving a page aborts its
// requests and stops its timers through ctx.

import { api, auth, ApiError, isAbort, setUnauthorizedHandler } from "./api.js";
import { h, replace } from "./dom.js";
import { announce, setStatusRegion } from "./status.js";
import * as overview from "./pages/overview.js";
import * as pipelines from "./pages/pipelines.js";
import * as messages from "./pages/messages.js";
import * as message from "./pages/message.js";
import * as dead from "./pages/dead.js";
import * as deadOne from "./pages/dead_one.js";
import * as endpoints from "./pages/endpoints.js";
import * as tail from "./pages/tail.js";

const NAV = [
  ["#/overview", "Overview", "overview"],
  ["#/pipelines", "Pipelines", "pipelines"],
  ["#/messages", "Messages", "messages"],
  ["#/dead-letters", "Dead letters", "dead-letters"],
  ["#/endpoints", "Endpoints", "endpoints"],
  ["#/tail", "Live tail", "tail"],
];

const root = document.getElementById("app");
let current = null; // {ctx} of the page shown

// ---- routes ----

function parse(hash) {
  const raw = (hash || "").replace(/^#/, "") || "/overview";
  const [path, query] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map((p) => decodeURIComponent(p));
  return { parts, query: new URLSearchParams(query || ""), raw };
}

function pick(route) {
  const [a, b] = route.parts;
  switch (a) {
    case "overview":
      return [overview, "overview"];
    case "pipelines":
      return [pipelines, "pipelines"];
    case "messages":
      return b ? [message, "messages"] : [messages, "messages"];
    case "dead-letters":
      return b ? [deadOne, "dead-letters"] : [dead, "dead-letters"];
    case "endpoints":
      return [endpoints, "endpoints"];
    case "tail":
      return [tail, "tail"];
    default:
      return [null, null];
  }
}

// ---- page context ----

function makeCtx(main) {
  const ctl = new AbortController();
  const timers = [];
  const cleanups = [];
  const ctx = {
    signal: ctl.signal,
    main,
    // Run fn now and every ms while the page is shown; failures show once
    // and are retried on the next tick.
    every(ms, fn) {
      let busy = false;
      const tick = async () => {
        if (busy || ctl.signal.aborted) return;
        busy = true;
        try {
          await fn();
          ctx.clearError();
        } catch (e) {
          if (!isAbort(e)) ctx.showError(e);
        } finally {
          busy = false;
        }
      };
      timers.push(setInterval(tick, ms));
      return tick();
    },
    onLeave(fn) {
      cleanups.push(fn);
    },
    leave() {
      ctl.abort();
      timers.forEach(clearInterval);
      cleanups.forEach((fn) => {
        try {
          fn();
        } catch (e) {
          /* a page's cleanup must not keep the next one from showing */
        }
      });
    },
    errorBox: null,
    showError(e) {
      const msg = e instanceof ApiError || e instanceof Error ? e.message : String(e);
      if (!ctx.errorBox) {
        ctx.errorBox = h("div", { class: "error-box", role: "alert" });
        main.insertBefore(ctx.errorBox, main.firstChild ? main.firstChild.nextSibling : null);
      }
      ctx.errorBox.textContent = msg;
    },
    clearError() {
      if (ctx.errorBox) {
        ctx.errorBox.remove();
        ctx.errorBox = null;
      }
    },
    announce,
    navigate(hash) {
      if (location.hash === hash) route();
      else location.hash = hash;
    },
  };
  return ctx;
}

// ---- shell ----

function shell() {
  const nav = h("ul", { class: "nav" },
    NAV.map(([href, label, key]) => h("li", {}, h("a", { href, "data-nav": key }, label))));
  const main = h("main", { id: "main", tabindex: "-1" });
  const statusRegion = h("div", { class: "status-region", role: "status", "aria-live": "polite" });
  setStatusRegion(statusRegion);
  replace(root,
    h("header", { class: "topbar" },
      h("a", { class: "brand", href: "#/overview" },
        h("img", { src: "/ui/favicon.svg", alt: "" }), "patchbay"),
      h("nav", { "aria-label": "Main" }, nav),
      h("span", { class: "spacer" }),
      h("button", { type: "button", onclick: signOut, "data-test": "sign-out" }, "Sign out")),
    main,
    statusRegion);
  return main;
}

function signOut() {
  auth.clear();
  if (current) current.leave();
  current = null;
  login("Signed out.");
}

async function route() {
  if (!auth.token) return login();
  let main = root.querySelector(".topbar") ? document.getElementById("main") : null;
  if (!main) main = shell();
  if (current) current.leave();
  const r = parse(location.hash);
  const [page, navKey] = pick(r);
  for (const a of root.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === navKey) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  replace(main);
  const ctx = makeCtx(main);
  current = ctx;
  if (!page) {
    replace(main, h("h1", { tabindex: "-1" }, "Not found"),
      h("p", {}, "There is no such page. ", h("a", { href: "#/overview" }, "Back to the overview")));
    main.querySelector("h1").focus();
    return;
  }
  try {
    await page.mount(main, r, ctx);
  } catch (e) {
    if (isAbort(e)) return;
    ctx.showError(e);
  }
  // Keyboard and screen-reader users land on the page's heading.
  if (current === ctx && !ctx.signal.aborted) {
    const h1 = main.querySelector("h1");
    if (h1 && !main.contains(document.activeElement)) {
      h1.setAttribute("tabindex", "-1");
      h1.focus({ preventScroll: true });
    }
  }
}

// ---- sign-in ----

function login(message) {
  setStatusRegion(null);
  const input = h("input", {
    id: "token",
    type: "password",
    autocomplete: "current-password",
    required: true,
    spellcheck: "false",
    "aria-describedby": "token-help",
  });
  const err = h("p", { class: "error-box hidden", role: "alert", id: "login-error" });
  const button = h("button", { class: "primary", type: "submit" }, "Sign in");
  const form = h("form", {
    onsubmit: async (ev) => {
      ev.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      button.disabled = true;
      err.classList.add("hidden");
      try {
        await api("/api/nodes", { token });
        auth.set(token);
        input.value = "";
        const want = !location.hash || location.hash === "#/" || location.hash === "#"
          ? "#/overview" : location.hash;
        if (location.hash !== want) location.hash = want; // the hashchange routes
        else route();
      } catch (e) {
        err.textContent = e.status === 401 ? "That token was refused."
          : e.status === 403 ? "The admin API is disabled: set server.admin_token in the configuration."
          : `Cannot sign in: ${e.message}`;
        err.classList.remove("hidden");
        input.focus();
      } finally {
        button.disabled = false;
      }
    },
  },
  h("div", { class: "field" },
    h("label", { for: "token" }, "Admin token"),
    input,
    h("span", { id: "token-help", class: "small muted" },
      "server.admin_token of this daemon. Kept in this tab only (session storage).")),
  err,
  button);
  replace(root, h("main", { id: "main", class: "login" },
    h("h1", {}, h("img", { src: "/ui/favicon.svg", alt: "" }), "patchbay"),
    message ? h("p", { class: "note", role: "status" }, message) : null,
    form));
  input.focus();
}

setUnauthorizedHandler(() => {
  auth.clear();
  if (current) current.leave();
  current = null;
  login("Your session ended: the admin token was refused. Sign in again.");
});

document.getElementById("skip").addEventListener("click", (ev) => {
  ev.preventDefault();
  const main = document.getElementById("main");
  if (main) main.focus();
});

window.addEventListener("hashchange", () => route());
route();
