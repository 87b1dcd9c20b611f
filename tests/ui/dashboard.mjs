// dashboard.mjs - browser tests of the dashboard: Playwright (playwright-core)
// driving Debian's Chromium, headless, against a running daemon that
// tests/system/test_ui.py started with real partners (pb_sink).
//
//   node dashboard.mjs probe                 can Chromium start here? (exit 3 if not)
//   node dashboard.mjs walkthrough           sign in, watch, search, replay, edit, rotate...
//   node dashboard.mjs operations            search by jq, filtered replay and purge, endpoints
//   node dashboard.mjs deadletters100k       paging stays fast with 100,000 dead letters
//   node dashboard.mjs cluster               the overview's nodes panel lists a cluster's nodes
//
// Environment: PB_URL, PB_TOKEN, SHOT_DIR (screenshots), CHROMIUM (default
// /usr/bin/chromium), and per scenario the names test_ui.py passes. Any
// console error, page error or failed check ends the run with exit 1.

import { chromium } from "playwright-core";

const env = process.env;
const BASE = env.PB_URL;
const TOKEN = env.PB_TOKEN;
const SHOTS = env.SHOT_DIR || ".";
const SCALE = Number(env.PB_SCALE || "1");
let shotN = 0;

class Failure extends Error {}
function expect(cond, what) {
  if (!cond) throw new Failure(what);
}
async function waitFor(fn, seconds, what) {
  const deadline = Date.now() + seconds * 1000 * SCALE;
  let last;
  for (let wait = 50; ; wait = Math.min(wait * 1.5, 500)) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Failure(`timed out waiting for ${what}${last ? ` (${last.message})` : ""}`);
    await new Promise((r) => setTimeout(r, wait));
  }
}
function log(...a) {
  console.log(...a);
}

async function launch() {
  return chromium.launch({
    executablePath: env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    timeout: 60000 * SCALE,
  });
}

async function openPage(browser) {
  const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  page.setDefaultTimeout(20000 * SCALE);
  const problems = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("response", (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.url()}`);
  });
  return { page, problems };
}

async function shot(page, name) {
  const path = `${SHOTS}/${process.argv[2]}-${String(++shotN).padStart(2, "0")}-${name}.png`;
  await page.screenshot({ path, fullPage: true });
  log(`screenshot ${path}`);
}

async function api(path, opts = {}) {
  const r = await fetch(BASE + path, {
    ...opts,
    headers: { Authorization: `Bearer ${TOKEN}`, ...(opts.headers || {}) },
  });
  const text = await r.text();
  expect(r.ok, `${opts.method || "GET"} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function signIn(page) {
  await page.goto(BASE + "/ui/");
  await page.waitForSelector("#token");
  // The token field has the focus: a keyboard user types and presses Enter.
  expect(await page.evaluate(() => document.activeElement && document.activeElement.id === "token"),
    "the token field is focused");
  await page.keyboard.type(TOKEN);
  await page.keyboard.press("Enter");
  await page.waitForSelector("main h1:text-is('Overview')");
  expect(await page.evaluate(() => sessionStorage.getItem("patchbay.token")) === TOKEN,
    "the token is kept in session storage");
  expect(!page.url().includes(TOKEN), "the token is not in the URL");
}

async function intText(locator) {
  const t = (await locator.textContent()) || "";
  return Number(t.replace(/[^0-9]/g, "") || "NaN");
}

// Tab through a page from its top (the skip link): every stop is on screen (scrolled into
// view, not zero-sized) and shows where the focus is (an outline, or the
// graph's stroke); controls of one name do one thing; the Tab order
// reaches the page's content and, back at the top, goes round again (no
// trap). Returns how many stops it made.
async function keyboardSweep(page, name, max = 60) {
  // From the top: the skip link is the first stop.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.focus("#skip");
  await page.keyboard.press("Shift+Tab");
  const seen = [], labels = [], names = new Map();
  let inMain = 0, end = "the limit";
  for (let i = 0; i < max; i++) {
    await page.keyboard.press("Tab");
    const f = await page.evaluate(() => {
      const el = document.activeElement;
      if (!el || el === document.body) return null;
      const r = el.getBoundingClientRect();
      const cs = getComputedStyle(el);
      const svg = el instanceof SVGElement;
      const rect = svg ? el.querySelector("rect") : null;
      const marked = (cs.outlineStyle !== "none" && parseFloat(cs.outlineWidth) > 0) ||
        (rect && getComputedStyle(rect).strokeWidth === "3px") || cs.boxShadow !== "none";
      const tag = el.tagName.toLowerCase();
      const label = `${tag}${el.id ? "#" + el.id : ""}${el.getAttribute("name") ? "[name=" + el.getAttribute("name") + "]" : ""}` +
        ` “${(el.getAttribute("aria-label") || el.textContent || el.value || "").trim().slice(0, 30)}”`;
      const name = (el.getAttribute("aria-label") || el.textContent || "").trim().replace(/\s+/g, " ");
      return { name, href: el.getAttribute("href") || "", tag, label, w: r.width, h: r.height, top: r.top, bottom: r.bottom, vh: innerHeight, marked, inMain: !!el.closest("main"), key: el.dataset.sweep || (el.dataset.sweep = String(Math.random())) };
    });
    if (!f) {
      end = "the page's end";
      break;
    }
    if (seen.length && f.key === seen[0]) {
      end = "the top again";
      break;
    }
    seen.push(f.key);
    labels.push(f.label);
    expect(f.w > 0 && f.h > 0, `${name}: Tab stop ${f.label} is not zero-sized`);
    expect(f.bottom > 0 && f.top < f.vh, `${name}: Tab stop ${f.label} is on screen`);
    expect(f.marked, `${name}: Tab stop ${f.label} shows the focus`);
    inMain += f.inMain ? 1 : 0;
    // Two controls of the content with one name must do one thing: a
    // screen reader's list of links and buttons shows names alone.
    if (f.inMain && (f.tag === "a" || f.tag === "button")) {
      const other = names.get(f.name);
      expect(!other || (f.tag === "a" && other === f.href),
        `${name}: two controls named “${f.name}” do different things (${other} / ${f.href || f.tag})`);
      names.set(f.name, f.tag === "a" ? f.href : "button");
    }
  }
  log(`keyboard ${name}: ${labels.join(" → ")} → ${end}`);
  expect(inMain > 0, `${name}: the Tab order reaches the page's content`);
  return seen.length;
}

// ---- scenarios ----

async function walkthrough(page) {
  const key = env.KEY;
  const sweeps = {};
  await signIn(page);

  // The overview moves while messages flow.
  const total = page.locator('tr[data-output="ticks/sink"] [data-metric="delivered_total"]');
  await total.waitFor();
  const before = await intText(total);
  await waitFor(async () => (await intText(total)) > before, 20, "delivered total of ticks/sink to grow");
  await waitFor(async () => Number(await page.locator('[data-chart="ticks/sink"] svg.chart')
    .getAttribute("data-points")) >= 2, 30, "a second metric sample in the chart");
  await waitFor(async () => /[1-9]/.test(await page.locator('tr[data-output="ticks/sink"] [data-metric="delivered_rate"]').textContent()),
    30, "a delivery rate above zero");
  // One node (not clustered, or a cluster of one): one line, no table.
  await page.locator('[data-test="nodes"] [data-node]').first().waitFor();
  expect(await page.locator('[data-test="nodes"] [data-node]').count() === 1, "the node is listed, once");
  expect(await page.locator('[data-test="nodes"] table').count() === 0, "one node: no table of nodes");
  // A partner down: its output's circuit breaker shows open.
  await page.locator('tr[data-output="flaky/partner"] [data-metric="breaker"] .badge').filter({ hasText: /^open$/ }).waitFor();
  expect(/opened 1×/.test(await page.textContent('tr[data-output="flaky/partner"] [data-metric="breaker"]')), "how often it opened");
  expect((await page.textContent('tr[data-output="ticks/sink"] [data-metric="breaker"]')).trim() === "—", "no breaker on ticks/sink");
  await shot(page, "overview");
  sweeps.overview = await keyboardSweep(page, "overview");

  // Keyboard: Tab from the top reaches the navigation; Enter follows a link
  // and the page's heading takes the focus.
  // The skip link (first in the tab order) jumps to the content.
  await page.focus("#skip");
  await page.keyboard.press("Enter");
  expect(await page.evaluate(() => document.activeElement && document.activeElement.id === "main"),
    "the skip link moves the focus to the content");
  await page.focus("#skip");
  let onPipelines = false;
  for (let i = 0; i < 12 && !onPipelines; i++) {
    await page.keyboard.press("Tab");
    onPipelines = await page.evaluate(() => document.activeElement && document.activeElement.dataset.nav === "pipelines");
  }
  expect(onPipelines, "Tab reaches the Pipelines link");
  await page.keyboard.press("Enter");
  await page.waitForSelector("main h1:text-is('Pipelines')");
  await waitFor(() => page.evaluate(() => document.activeElement && document.activeElement.tagName === "H1"), 5,
    "the heading to take the focus");

  // The pipeline graph, with live counts.
  const graph = page.locator('section[data-pipeline="shop"] .graph svg');
  await graph.waitFor();
  expect(await graph.locator("a").count() === 3, "three outputs in the graph, as links");
  await waitFor(async () => (await graph.textContent()).includes("sent"), 10, "counts in the graph");
  expect(await intText(page.locator('section[data-pipeline="shop"] tr[data-output="payments"] [data-metric="delivered_total"]')) >= 3,
    "payments delivered count");
  await shot(page, "pipelines");
  sweeps.pipelines = await keyboardSweep(page, "pipelines");

  // Find a message by its idempotency key and open its attempt timeline.
  await page.click('a[data-nav="messages"]');
  await page.waitForSelector("main h1:text-is('Messages')");
  await page.fill('input[name="key"]', key);
  await page.keyboard.press("Enter");
  await page.waitForSelector("tbody tr[data-message]");
  await waitFor(async () => (await page.locator("tbody tr[data-message]").count()) === 1, 10, "one message found");
  await shot(page, "messages");
  sweeps.messages = await keyboardSweep(page, "messages");
  await page.click("tbody tr[data-message] th a");
  await page.waitForSelector("main h1:has-text('Message')");
  expect((await page.textContent('[data-test="idempotency-key"]')).includes(key), "the message shows its key");
  const pay = page.locator('section[data-output="payments"]');
  const fraud = page.locator('section[data-output="fraud"]');
  await pay.locator("svg.timeline").waitFor();
  expect((await pay.locator('td[data-test="status"]').allTextContents()).includes("200"), "payments answered 200");
  // The partner's answer, kept for a successful attempt too, shown as text.
  const payAnswers = await pay.locator('td[data-test="answer"] pre.answer').allTextContents();
  expect(payAnswers.includes('{"ok":true}'), `payments' answer excerpt shown (${payAnswers})`);
  const fraudAnswers = await fraud.locator('td[data-test="answer"] pre.answer').allTextContents();
  expect(fraudAnswers.length === 2 && fraudAnswers.every((a) => a === '{"ok":false}'),
    `fraud's answers on each failed attempt (${fraudAnswers})`);
  const statuses = await fraud.locator('td[data-test="status"]').allTextContents();
  expect(statuses.length === 2 && statuses.every((s) => s === "500"), `fraud: two attempts, 500 each (${statuses})`);
  expect((await fraud.locator("svg.timeline circle").count()) === 2, "two attempts on the timeline");
  await shot(page, "message-timeline");
  sweeps.message = await keyboardSweep(page, "message");

  // Replay a dead letter (the partner is back) and see it delivered.
  await fetch(env.FAIL_SINK + "/_sink/mode", { method: "POST", body: JSON.stringify({ status: 200 }) });
  await page.goto(BASE + "/ui/#/dead-letters?output=fraud");
  await page.waitForSelector("tbody tr[data-dead]");
  const rows = await page.locator("tbody tr[data-dead]").count();
  expect(rows >= 2, `dead letters of fraud listed (${rows})`);
  await shot(page, "dead-letters");
  sweeps.dead_letters = await keyboardSweep(page, "dead letters");
  await page.click("tbody tr[data-dead] th a >> nth=0");
  await page.waitForSelector("main h1:has-text('Dead letter')");
  await shot(page, "dead-letter");
  sweeps.dead_letter = await keyboardSweep(page, "dead letter");
  await page.click('[data-test="replay"]');
  await page.waitForSelector("main h1:has-text('Message')");
  // The old delivery stays, marked replayed; the new one is delivered.
  await waitFor(async () => {
    const st = await page.locator('section[data-output="fraud"] .delivery-head .badge').allTextContents();
    return st.length === 2 && st.includes("replayed") && st.includes("delivered");
  }, 30, "the replayed delivery to be delivered");
  await shot(page, "replayed");

  // Edit and replay another: the corrected body goes as a new message.
  await page.goto(BASE + "/ui/#/dead-letters?output=fraud");
  await page.waitForSelector("tbody tr[data-dead]");
  await page.click("tbody tr[data-dead] th a >> nth=0");
  await page.waitForSelector("main h1:has-text('Dead letter')");
  await page.click('[data-test="edit"]');
  await page.waitForSelector("#edit-body");
  expect(await page.evaluate(() => document.activeElement.id === "edit-body"), "the editor takes the focus");
  await page.fill("#edit-body", env.CORRECTED);
  await shot(page, "edit-and-replay");
  await page.click("button:text-is('Replay with this body')");
  await page.waitForSelector("dd:has-text('a dead letter\u2019s corrected body'), dd:has-text(\"a dead letter's corrected body\")");
  await waitFor(async () => (await page.locator('section[data-output="fraud"] .delivery-head .badge').allTextContents()).join() === "delivered",
    30, "the corrected message to be delivered");
  const edited = decodeURIComponent(page.url().split("#/messages/")[1]);
  log(`edited message ${edited}`);
  await shot(page, "edited-message");

  // Rotate an endpoint's secret; send a test event.
  await page.click('a[data-nav="endpoints"]');
  const managed = page.locator(`tr[data-endpoint="${env.MANAGED_EP}"]`);
  await managed.waitFor();
  await managed.locator("button:text-is('Rotate secret')").click();
  await page.click("dialog button:text-is('Rotate')");
  const secretEl = page.locator('dialog [data-test="secret"]');
  await secretEl.waitFor();
  const secret = (await secretEl.textContent()).trim();
  expect(secret.startsWith("whsec_"), `a new secret is shown (${secret.slice(0, 8)}…)`);
  await shot(page, "rotate-secret");
  await page.keyboard.press("Escape");
  await waitFor(async () => (await page.locator("dialog").count()) === 0, 5, "the dialog to close on Escape");
  const sec = await api(`/api/endpoints/${env.MANAGED_EP}/secret`);
  expect(sec.secret === secret, "the secret shown is the current one");
  expect(sec.secrets.length === 2, "the previous secret keeps signing during the overlap");
  const stat = page.locator(`tr[data-endpoint="${env.STATIC_EP}"]`);
  await stat.locator("button:text-is('Send test event')").click();
  await waitFor(async () => ((await page.locator('[data-test="test-state"]').first().textContent()) || "").includes("delivered"),
    30, "the test event to be delivered");
  await shot(page, "endpoints");
  sweeps.endpoints = await keyboardSweep(page, "endpoints");

  // The live tail shows messages flowing now.
  await page.click('a[data-nav="tail"]');
  await waitFor(async () => (await page.locator('tbody tr[data-kind="received"]').count()) >= 1, 30, "received events in the tail");
  await waitFor(async () => (await page.locator('tbody tr[data-kind="delivered"]').count()) >= 1, 30, "delivered events in the tail");
  sweeps.tail = await keyboardSweep(page, "live tail");
  await shot(page, "live-tail");
  await page.click('[data-test="pause"]');
  expect((await page.getAttribute('[data-test="pause"]', "aria-pressed")) === "true", "pause is a toggle button");

  // Sign out: the token is gone.
  await page.click('[data-test="sign-out"]');
  await page.waitForSelector("#token");
  expect(await page.evaluate(() => sessionStorage.getItem("patchbay.token")) === null, "signed out: no token kept");
  log(`keyboard: Tab stops per page ${JSON.stringify(sweeps)}`);
  return { edited, secret_rotated: true, sweeps };
}

async function deadletters100k(page) {
  const budget = Number(env.LOAD_BUDGET_MS || "3000") * SCALE;
  const timings = {};
  await signIn(page);
  await page.locator('[data-chart]').first().waitFor();
  const time = async (name, go, ready) => {
    const t0 = Date.now();
    await go();
    await ready();
    timings[name] = Date.now() - t0;
    expect(timings[name] <= budget, `${name} took ${timings[name]} ms (bound ${budget} ms)`);
  };
  await time("overview", () => page.goto(BASE + "/ui/#/overview"),
    () => page.locator('tr[data-output="bulk/partner"] [data-metric="dead"] a').filter({ hasText: "100,000" }).waitFor());
  // From the overview's count, the output's dead letters (pipeline and output filters).
  await time("dead_letters_of_output", () => page.click('tr[data-output="bulk/partner"] [data-metric="dead"] a'), async () => {
    await page.locator('[data-test="dead-total"]').filter({ hasText: "100,000" }).waitFor();
    await waitFor(async () => (await page.locator("tbody tr[data-dead]").count()) === 50, 10, "a page of 50");
  });
  await time("dead_letters_first_page", () => page.click('a[data-nav="dead-letters"]'), async () => {
    await page.locator('[data-test="dead-total"]').filter({ hasText: "100,000" }).waitFor();
    await waitFor(async () => (await page.locator("tbody tr[data-dead]").count()) === 50, 10, "a page of 50");
  });
  await shot(page, "dead-letters-100k");
  const firstId = await page.getAttribute("tbody tr[data-dead] >> nth=0", "data-dead");
  await time("dead_letters_next_page", () => page.click('[data-test="next-page"]'), async () => {
    await waitFor(async () => (await page.getAttribute("tbody tr[data-dead] >> nth=0", "data-dead")) !== firstId, 10, "the next page");
  });
  await time("dead_letters_filtered", async () => {
    await page.fill('input[name="error"]', "order o-99999:");
    await page.keyboard.press("Enter");
  }, async () => {
    await waitFor(async () => (await page.locator("tbody tr[data-dead]").count()) === 1, 10, "the one dead letter matching");
  });
  await time("dead_letter_open", () => page.click("tbody tr[data-dead] th a"),
    () => page.locator('[data-test="last-error"]').filter({ hasText: "o-99999" }).waitFor());
  // A filtered set among them: its 11 purged, the rest left.
  await page.goto(BASE + "/ui/#/dead-letters");
  await page.locator('[data-test="dead-total"]').filter({ hasText: "100,000" }).waitFor();
  await time("dead_letters_filtered_set", async () => {
    await page.fill('input[name="error"]', "order o-9999");
    await page.keyboard.press("Enter");
  }, async () => {
    await waitFor(async () => (await page.locator("tbody tr[data-dead]").count()) === 11, 10, "o-9999 and o-99990..o-99999");
  });
  await time("dead_letters_purge_set", async () => {
    await page.click('[data-test="purge-all"]');
    await page.click("dialog button:text-is('Purge them')");
  }, () => page.locator('[data-test="dead-total"]').filter({ hasText: "99,989" }).waitFor());
  const left = await api("/api/pipelines?counts=open");
  expect(left.pipelines[0].outputs[0].dead === 99989, `99,989 left (${left.pipelines[0].outputs[0].dead})`);
  await time("pipelines", () => page.click('a[data-nav="pipelines"]'),
    () => page.locator('section[data-pipeline="bulk"] tr[data-output="partner"]').filter({ hasText: "99,989" }).waitFor());
  await time("endpoints", () => page.click('a[data-nav="endpoints"]'),
    () => page.locator("main p.note").filter({ hasText: "No output of this configuration is a webhook output" }).waitFor());
  await time("live_tail", () => page.click('a[data-nav="tail"]'), () => page.locator('[data-test="pause"]').waitFor());
  await time("messages", () => page.click('a[data-nav="messages"]'),
    async () => { await waitFor(async () => (await page.locator("tbody tr[data-message]").count()) === 50, 10, "50 messages"); });
  await shot(page, "messages-100k");
  return timings;
}

// After the walkthrough, on the same daemon: test_ui.py has put the failing
// partner back to 503 and sent BULK_N orders of kind "bulk" that died there.
async function toast(page, re, what) {
  await waitFor(async () => (await page.locator(".status-region .toast.ok").allTextContents()).some((t) => re.test(t)),
    20, what);
}

async function deadIds(query) {
  const ids = [];
  let doc = await api("/api/dead-letters?limit=500&" + query);
  for (const d of doc.items) ids.push(d.id);
  return ids;
}

async function operations(page) {
  const n = Number(env.BULK_N);
  await signIn(page);

  // The explorer with a jq predicate over the body, and one that fails on some.
  await page.click('a[data-nav="messages"]');
  await page.waitForSelector("main h1:text-is('Messages')");
  await page.fill('input[name="where"]', '.kind == "bulk"');
  await page.keyboard.press("Enter");
  await waitFor(async () => (await page.locator("tbody tr[data-message]").count()) === n, 10, `${n} bulk orders found`);
  for (const row of await page.locator("tbody tr[data-message] .chips").allTextContents())
    expect(/fraud\s*dead/.test(row), `each bulk order is dead at fraud (${row})`);
  expect(page.url().includes("where="), "the search is in the address, so it can be shared and reloaded");
  await shot(page, "messages-predicate");
  await page.fill('input[name="where"]', '.cents | test("x")');
  await page.keyboard.press("Enter");
  await page.locator("main p.small.muted").filter({ hasText: "The predicate failed on" }).waitFor();
  expect(await page.locator("tbody tr[data-message]").count() === 0, "a failing predicate matches nothing");
  await page.fill('input[name="where"]', '$meta.query.batch == "b1" and .id == 100');
  await page.keyboard.press("Enter");
  await waitFor(async () => (await page.locator("tbody tr[data-message]").count()) === 1, 10, "one message by a predicate over $meta and the body");

  // Dead letters, filtered by the partner's status: purge one from its row
  // with the keyboard, replay the rest of the set, purge another set.
  const bulkIds = await deadIds("output=fraud&status=503");
  expect(bulkIds.length === n, `${n} dead letters with status 503 (${bulkIds.length})`);
  const others = await deadIds("output=fraud&status=500");
  expect(others.length >= 1, "dead letters with status 500 remain from the walkthrough");
  await page.click('a[data-nav="dead-letters"]');
  await page.waitForSelector("main h1:text-is('Dead letters')");
  await page.selectOption('select[name="output"]', "fraud");
  await page.fill('input[name="status"]', "503");
  await page.keyboard.press("Enter");
  await waitFor(async () => (await page.locator("tbody tr[data-dead]").count()) === n, 10, `${n} rows with status 503`);
  expect(page.url().includes("status=503"), "the filter is in the address");
  await shot(page, "dead-letters-filtered");
  const victim = await page.getAttribute("tbody tr[data-dead] >> nth=0", "data-dead");
  await page.focus(`button[aria-label="Purge dead letter ${victim}"]`);
  await page.keyboard.press("Enter");
  await page.waitForSelector("dialog[open]");
  expect(await page.evaluate(() => document.activeElement.textContent === "Cancel"),
    "a destructive confirmation starts on Cancel");
  await page.keyboard.press("Shift+Tab");
  await page.keyboard.press("Enter");
  await page.locator(`tr[data-dead="${victim}"]`).filter({ hasText: "purged" }).waitFor();
  await toast(page, new RegExp(`Dead letter ${victim} purged`), "the purge announced");
  const st = await fetch(`${BASE}/api/dead-letters/${victim}`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  expect(st.status === 404, `the purged dead letter is gone (${st.status})`);

  // The partner is back; replay the filtered set (the page reloads it).
  await fetch(env.FAIL_SINK + "/_sink/mode", { method: "POST", body: JSON.stringify({ status: 200 }) });
  await page.click('[data-test="replay-all"]');
  await page.locator("dialog[open]").filter({ hasText: "last status 503" }).waitFor();
  await page.click("dialog button:text-is('Replay them')");
  await toast(page, new RegExp(`^${n - 1} replayed`), `${n - 1} replayed`);
  await waitFor(async () => (await page.locator("tbody tr[data-dead]").count()) === 0, 10, "the set to leave the list");
  const left503 = await deadIds("output=fraud&status=503");
  expect(left503.length === 0, `no 503 dead letters left (${left503})`);
  const still500 = await deadIds("output=fraud&status=500");
  expect(still500.length === others.length, "the 500 ones were not in the set");
  await waitFor(async () => {
    const doc = await api('/api/messages?where=' + encodeURIComponent('.kind == "bulk"') + "&output=fraud&status=delivered");
    return doc.items.length === n - 1;
  }, 30, "the replayed set to be delivered");
  await shot(page, "dead-letters-replayed");

  await page.fill('input[name="status"]', "500");
  await page.keyboard.press("Enter");
  await waitFor(async () => (await page.locator("tbody tr[data-dead]").count()) === others.length, 10, "the 500 rows");
  await page.click('[data-test="purge-all"]');
  await page.click("dialog button:text-is('Purge them')");
  await toast(page, new RegExp(`^${others.length} purged`), "the set purged");
  await page.locator("main p.note").filter({ hasText: "No dead letters match" }).waitFor();
  expect(await page.locator('[data-test="purge-all"]').isDisabled() && await page.locator('[data-test="replay-all"]').isDisabled(),
    "nothing matches: nothing to replay or purge");
  expect((await deadIds("output=fraud")).length === 0, "fraud's queue is empty");
  await page.locator('[data-test="dead-total"]').filter({ hasText: /^0 dead letters/ }).waitFor();

  // Endpoints: create one, disable and enable it, recover since a time.
  await page.click('a[data-nav="endpoints"]');
  await page.click('[data-test="create"]');
  await page.waitForSelector("dialog[open]");
  await page.fill('dialog input[type="url"]', env.OK_SINK + "/created");
  await page.fill('dialog input[placeholder^="order.*"]', "order.*");
  await page.click("dialog button:text-is('Create')");
  const secretEl = page.locator('dialog [data-test="secret"]');
  await secretEl.waitFor();
  expect(((await secretEl.textContent()) || "").startsWith("whsec_"), "the new endpoint's secret is shown once");
  await shot(page, "endpoint-created");
  await page.keyboard.press("Escape");
  const eps = await api("/api/endpoints");
  const made = eps.items.find((e) => e.url === env.OK_SINK + "/created");
  expect(made && made.events.join() === "order.*", "the endpoint exists with its event filter");
  const row = page.locator(`tr[data-endpoint="${made.id}"]`);
  await row.locator("button:text-is('Disable')").click();
  await row.locator(".badge").filter({ hasText: "disabled" }).waitFor();
  expect(await row.locator("button:text-is('Send test event')").isDisabled(), "a disabled endpoint gets no test event");
  expect((await api(`/api/endpoints/${made.id}`)).disabled === true, "disabled in the API");
  await row.locator("button:text-is('Enable')").click();
  await row.locator(".badge").filter({ hasText: "enabled" }).waitFor();
  expect((await api(`/api/endpoints/${made.id}`)).disabled === false, "enabled again");
  await row.locator("button:text-is('Recover…')").click();
  await page.waitForSelector('dialog[open] input[type="datetime-local"]');
  await page.click("dialog button:text-is('Recover')");
  await toast(page, new RegExp(`sent again to ${made.id}`), "the recovery announced");
  await shot(page, "endpoints-after");
  return { purged_one: Number(victim), replayed: n - 1, purged_set: others.length, endpoint: made.id };
}

// Two nodes sharing a PostgreSQL state store (NODES: their names, the
// first the node the browser talks to): the overview lists both with
// version, state, last heartbeat, leases and holds, as /api/nodes says.
async function cluster(page) {
  const names = env.NODES.split(",");
  await signIn(page);
  const panel = page.locator('[data-test="nodes"][data-clustered="true"]');
  await panel.waitFor();
  await waitFor(async () => (await panel.locator("tbody tr[data-node]").count()) === names.length, 15,
    `${names.length} nodes listed`);
  // The page refreshes every few seconds: its rows agree with /api/nodes
  // (holds may move while the nodes share them out).
  let doc, why = "";
  const agree = async () => {
    doc = await api("/api/nodes");
    why = "";
    if (!doc.clustered || doc.nodes.length !== names.length) return !(why = `/api/nodes: ${JSON.stringify(doc)}`);
    for (const name of names) {
      const n = doc.nodes.find((x) => x.name === name);
      if (!n) return !(why = `${name} not in /api/nodes`);
      const cells = await panel.locator(`tbody tr[data-node="${name}"]`).locator("th, td").allTextContents();
      const bad =
        !cells[0].startsWith(name) ? "its name"
          : cells[0].includes("(this node)") !== (name === names[0]) ? "this node or not"
          : cells[1] !== n.version ? `version ${n.version}`
          : cells[2] !== "live" ? "live"
          : !/ ago$|^just now$/.test(cells[3]) ? "its last heartbeat"
          : !/^[0-9,]+$/.test(cells[4]) ? "its leases"
          : n.holds.some((x) => !cells[5].includes(x)) || (!n.holds.length && cells[5] !== "—") ? `holds ${n.holds}`
          : "";
      if (bad) return !(why = `${name}: ${bad} (${cells})`);
    }
    return true;
  };
  await waitFor(agree, 20, "the nodes panel to agree with /api/nodes")
    .catch((e) => { throw new Failure(`${e.message}: ${why}`); });
  // The heartbeat moves on while the page stays open.
  const first = panel.locator(`tbody tr[data-node="${names[1]}"] [data-test="heartbeat"]`);
  const hb = await first.getAttribute("title");
  await waitFor(async () => (await first.getAttribute("title")) !== hb, 20, "a newer heartbeat shown");
  const summary = await panel.locator('[data-test="nodes-summary"]').textContent();
  expect(summary.startsWith(`${names.length} of ${names.length} nodes live`), `the summary: ${summary}`);
  await shot(page, "overview-cluster");
  const stops = await keyboardSweep(page, "overview-cluster");
  const shown = (await panel.locator('tbody [data-test="holds"] code').allTextContents()).sort();
  expect(shown.join() === "input/feed,retention", `the holds shown: ${shown}`);
  return { nodes: names, holds: doc.nodes.map((n) => n.holds), stops };
}

// ---- main ----

const scenario = process.argv[2];
let browser;
try {
  browser = await launch();
} catch (e) {
  console.log(`Chromium cannot start: ${e.message.split("\n")[0]}`);
  process.exit(3);
}
if (scenario === "probe") {
  await browser.close();
  console.log("chromium ok");
  process.exit(0);
}
let code = 0;
const { page, problems } = await openPage(browser);
try {
  const fn = { walkthrough, operations, deadletters100k, cluster }[scenario];
  expect(fn, `no scenario ${scenario}`);
  const result = await fn(page);
  console.log("RESULT " + JSON.stringify(result));
} catch (e) {
  code = 1;
  console.log(`FAIL ${scenario}: ${e instanceof Failure ? e.message : e.stack}`);
  try {
    await shot(page, "failure");
  } catch (e2) {
    /* the page may be gone */
  }
}
if (problems.length) {
  code = 1;
  console.log("FAIL: the page reported errors:\n  " + problems.join("\n  "));
}
await browser.close();
process.exit(code);
