// dead_one.js - one dead letter: why it died, its attempts, its body; replay
// it, purge it, or correct its body and send that as a new message linked to
// the old one (edit-and-replay). The editor starts from the body exactly as
// stored and sends exactly what is typed: nothing is re-encoded on the way.

import { api, apiText, qs } from "../api.js";
import { h, replace, time, num, reindent } from "../dom.js";
import { announce } from "../status.js";
import { timeline, attemptsTable } from "./message.js";
import { confirmDialog } from "./dead.js";

export async function mount(main, route, ctx) {
  const id = Number(route.parts[1]);
  main.append(h("h1", {}, `Dead letter #${route.parts[1]}`));
  if (!Number.isInteger(id) || id < 1) {
    main.append(h("p", { class: "note" }, "That is not a dead letter id."));
    return;
  }
  // Is it (still) dead? The list answers without failing a request.
  const probe = await api("/api/dead-letters" + qs({ after: id - 1, limit: 1 }), { signal: ctx.signal });
  if (!probe.items.length || probe.items[0].id !== id) {
    main.append(h("p", { class: "note", role: "status" },
      "This is not a dead letter any more: it was replayed or purged. ",
      h("a", { href: "#/dead-letters" }, "Back to the dead letters")));
    return;
  }
  const d = await api(`/api/dead-letters/${id}`, { signal: ctx.signal });
  // What this output gets: the body the process steps made, when they ran
  // and changed it (the route stage and the input get the body as received).
  const routed = d.output !== "(route)" && d.output !== "(input)";
  const raw = await apiText(`/api/messages/${encodeURIComponent(d.message_id)}/body` + qs({ routed: routed ? "true" : null }),
    { signal: ctx.signal });
  const json = !d.content_type || /json/i.test(d.content_type);
  const received = d.created_at;

  const replayBtn = h("button", { class: "primary", type: "button", "data-test": "replay" }, "Replay");
  const editBtn = h("button", { type: "button", "data-test": "edit" }, "Edit and replay…");
  const purgeBtn = h("button", { class: "danger", type: "button", "data-test": "purge" }, "Purge");
  const editor = h("div", { class: "panel hidden", "data-test": "editor" });
  const actions = h("div", { class: "actions" }, replayBtn, editBtn, purgeBtn);

  main.append(
    h("section", { class: "panel", "aria-labelledby": "why-h" },
      h("h2", { id: "why-h" }, "Why it is here"),
      h("p", { class: "error-box", "data-test": "last-error" }, d.last_error || "no reason recorded"),
      h("dl", { class: "kv" },
        h("dt", {}, "Message"), h("dd", {}, h("a", { href: `#/messages/${encodeURIComponent(d.message_id)}` }, d.message_id)),
        h("dt", {}, "Pipeline"), h("dd", {}, d.pipeline),
        h("dt", {}, "Output"), h("dd", {}, d.output),
        h("dt", {}, "Attempts"), h("dd", {}, num(d.attempts)),
        h("dt", {}, "Last status"), h("dd", {}, d.last_status || "—"),
        h("dt", {}, "Delivery made"), h("dd", {}, time(d.created_at)),
        h("dt", {}, "Dead since"), h("dd", {}, time(d.dead_at))),
      actions),
    editor,
    h("section", { class: "panel", "aria-labelledby": "att-h" },
      h("h2", { id: "att-h" }, "Attempts"),
      d.attempt_log.length ? timeline(received, d.attempt_log, 0) : null,
      attemptsTable(received, d.attempt_log)),
    h("section", { class: "panel", "aria-labelledby": "body-h" },
      h("h2", { id: "body-h" }, routed ? "Body as this output gets it" : "Body as received"),
      h("pre", { class: "code", tabindex: "0" }, json ? reindent(raw) : raw)));

  const busy = (on) => {
    for (const b of [replayBtn, editBtn, purgeBtn]) b.disabled = on;
  };

  replayBtn.addEventListener("click", async () => {
    busy(true);
    try {
      const r = await api(`/api/dead-letters/${id}/replay`, { method: "POST", signal: ctx.signal });
      announce(`Replayed as delivery ${r.delivery_id}.`, "ok");
      ctx.navigate(`#/messages/${encodeURIComponent(d.message_id)}`);
    } catch (e) {
      busy(false);
      announce(e.message, "error");
    }
  });

  purgeBtn.addEventListener("click", async () => {
    if (!(await confirmDialog("Purge this dead letter", `Delete dead letter ${id}? This cannot be undone.`, "Purge", true))) return;
    busy(true);
    try {
      await api(`/api/dead-letters/${id}`, { method: "DELETE", signal: ctx.signal });
      announce(`Dead letter ${id} purged.`, "ok");
      ctx.navigate("#/dead-letters");
    } catch (e) {
      busy(false);
      announce(e.message, "error");
    }
  });

  editBtn.addEventListener("click", () => {
    const area = h("textarea", { id: "edit-body", spellcheck: "false", "aria-describedby": "edit-help" });
    area.value = json ? reindent(raw) : raw;
    const msg = h("p", { class: "hidden", role: "alert" });
    const send = h("button", { class: "primary", type: "submit" }, "Replay with this body");
    const check = h("button", { type: "button" }, "Check JSON");
    const cancel = h("button", { type: "button" }, "Cancel");
    const show = (text, ok) => {
      msg.textContent = text;
      msg.className = ok ? "note" : "error-box";
    };
    check.addEventListener("click", () => {
      try {
        JSON.parse(area.value);
        show("The body is valid JSON.", true);
      } catch (e) {
        show(`Not valid JSON: ${e.message}`, false);
      }
    });
    cancel.addEventListener("click", () => {
      editor.classList.add("hidden");
      replace(editor);
      editBtn.focus();
    });
    const form = h("form", {
      onsubmit: async (ev) => {
        ev.preventDefault();
        if (json) {
          try {
            JSON.parse(area.value);
          } catch (e) {
            show(`Not valid JSON: ${e.message}`, false);
            area.focus();
            return;
          }
        }
        send.disabled = true;
        try {
          const r = await api(`/api/dead-letters/${id}/edit-and-replay`, {
            method: "POST", body: area.value, contentType: d.content_type || "application/json", signal: ctx.signal,
          });
          announce(`Sent as new message ${r.message_id}.`, "ok");
          ctx.navigate(`#/messages/${encodeURIComponent(r.message_id)}`);
        } catch (e) {
          send.disabled = false;
          show(e.message, false);
        }
      },
    },
    h("label", { for: "edit-body" }, "Corrected body"),
    h("p", { id: "edit-help", class: "small muted" },
      "Sent exactly as typed, as a new message linked to this one, to ", d.output === "(input)" ? "the pipeline" : d.output,
      ". This dead letter is kept, marked replayed."),
    area, msg, h("div", { class: "actions" }, send, check, cancel));
    replace(editor, h("h2", {}, "Edit and replay"), form);
    editor.classList.remove("hidden");
    area.focus();
  });
}
