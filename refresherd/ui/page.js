// The operator's page of refresherd (docs/admin.md, "The operator's page").
//
// Everything it shows comes from the admin API, and everything that came from
// an origin, a caller or the store is put in the page as text (textContent,
// createTextNode): never as HTML.  No inline script or style: the
// Content-Security-Policy forbids both.

const POLL_MS = 2000;
const HISTORY = 150; // samples kept for the charts: 5 minutes at one every 2 s
const CUT = 64 * 1024; // characters of a value shown before "Show all"
const TOKEN_KEY = "refresherd.admin_token";
const SVG = "http://www.w3.org/2000/svg";

// -- small helpers ---------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with a class and text (as text, never HTML), and children. */
function el(tag, { cls, text, attrs } = {}, ...children) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) {
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmt = {
  rate: (v) => (v === null || v === undefined ? "–" : v.toFixed(v < 10 ? 2 : 1)),
  share: (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %"),
  int: (v) => (v === null || v === undefined ? "–" : String(v)),
  seconds(v) {
    if (v === null || v === undefined) return "–";
    if (v < 1) return (v * 1000).toFixed(v < 0.01 ? 2 : 1) + " ms";
    return v.toFixed(2) + " s";
  },
  duration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60), sec = s % 60;
    const two = (n) => String(n).padStart(2, "0");
    return (d ? d + "d " : "") + two(h) + ":" + two(m) + ":" + two(sec);
  },
  span(s) {
    // A signed span of seconds, for "in 20 s" / "3 m ago".
    const a = Math.abs(s);
    const text = a < 120 ? a.toFixed(0) + " s" : a < 7200 ? (a / 60).toFixed(0) + " min"
      : a < 172800 ? (a / 3600).toFixed(1) + " h" : (a / 86400).toFixed(1) + " d";
    return s >= 0 ? "in " + text : text + " ago";
  },
  bytes(v) {
    if (v === null || v === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(1) : String(v)) + " " + units[i];
  },
  time: (t) => new Date(t * 1000).toLocaleTimeString(),
  datetime: (t) => new Date(t * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC"),
};

// -- the admin API ---------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  toString() {
    return (this.code ? this.code + ": " : "HTTP " + this.status + ": ") + this.message;
  }
}

let token = sessionStorage.getItem(TOKEN_KEY);
let waitingForToken = false;

/** One call of the admin API: its JSON, or an ApiError; 401/403 ask for the token. */
async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json"; // the admin API's rule for POSTs
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "unreachable", "refresherd does not answer (" + e.message + ")");
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (response.ok) return data;
  const error = new ApiError(
    response.status,
    data && data.error ? data.error.code : null,
    data && data.error ? data.error.message : response.statusText,
  );
  if (response.status === 401 || response.status === 403) askForToken(error);
  throw error;
}

function askForToken(error) {
  waitingForToken = true;
  const message = $("token-message");
  if (token) {
    message.textContent = error.status === 401
      ? "This token was refused (" + error + "). Type the admin token again."
      : "This token may not use the admin API (" + error + "): an admin token is needed.";
  } else {
    message.textContent = "The admin API needs a token (" + error + ").";
  }
  $("token").hidden = false;
  setConnection("Waiting for the admin token", true);
  if (document.activeElement !== $("token-input")) $("token-input").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token-input").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("token-input").value = "";
  $("token-message").textContent = "Checking the token…";
  waitingForToken = false;
  start();
});

function tokenAccepted() {
  if (!$("token").hidden) {
    $("token").hidden = true;
    $("token-message").textContent = "";
  }
}

function setConnection(text, bad = false) {
  const node = $("connection");
  node.textContent = text;
  node.classList.toggle("error", bad);
}

/** A query string of a job's arguments. */
function argsQuery(args) {
  return new URLSearchParams(args).toString();
}

// -- overview --------------------------------------------------------------------

const history = [];
const CHARTS = [
  { id: "rps", title: "Requests/s", lines: [["rps", ""]], format: fmt.rate },
  { id: "answers", title: "Stale / error share", lines: [["stale", "stale"], ["error", "bad"]], format: fmt.share, max: 1 },
  { id: "work", title: "In flight / queued", lines: [["in_flight", ""], ["queued", "bad"]], format: fmt.int },
];
const charts = {};

function buildCharts() {
  for (const chart of CHARTS) {
    const value = el("span", { cls: "num", text: "–" });
    const caption = el("figcaption", {}, el("span", { text: chart.title }), value);
    const box = svg("svg", {
      viewBox: "0 0 300 60", preserveAspectRatio: "none", role: "img",
      "aria-label": chart.title + " over the last minutes",
    });
    box.append(svg("line", { x1: 0, y1: 59.5, x2: 300, y2: 59.5, class: "axis" }));
    const lines = chart.lines.map(([, cls]) => {
      const line = svg("polyline", { points: "", "vector-effect": "non-scaling-stroke" });
      if (cls) line.setAttribute("class", cls);
      box.append(line);
      return line;
    });
    $("charts").append(el("figure", { cls: "chart" }, caption, box));
    charts[chart.id] = { chart, value, lines };
  }
}

function drawCharts() {
  for (const { chart, value, lines } of Object.values(charts)) {
    const values = chart.lines.map(([field]) => history.map((sample) => sample[field]));
    const top = chart.max || Math.max(1e-9, ...values.flat()) * 1.1;
    chart.lines.forEach((_, i) => {
      const points = values[i].map((v, j) => {
        const x = (300 * (j + HISTORY - history.length)) / (HISTORY - 1);
        const y = 59 - (58 * v) / top;
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      lines[i].setAttribute("points", points.join(" "));
    });
    const last = history[history.length - 1];
    value.textContent = chart.lines.map(([field]) => chart.format(last[field])).join(" / ");
  }
}

function showOverview(status) {
  const totals = status.totals;
  $("o-rps").textContent = fmt.rate(totals.requests_per_second);
  for (const answer of ["hit", "stale", "miss", "error"]) {
    $("o-" + answer).textContent = fmt.share(totals.answers[answer]);
  }
  $("o-in-flight").textContent = fmt.int(totals.in_flight);
  $("o-queued").textContent = fmt.int(totals.queued);
  const store = status.store;
  $("o-store").textContent = store.kind;
  $("o-ready").textContent = store.ready ? "yes" : "no";
  $("o-ready").classList.toggle("bad", !store.ready);
  $("o-bytes").textContent = fmt.bytes(store.bytes);
  $("o-entries").textContent = fmt.int(store.entries);
  $("o-uptime").textContent = fmt.duration(status.uptime_seconds);
  $("o-version").textContent = status.version;
  history.push({
    rps: totals.requests_per_second,
    stale: totals.answers.stale,
    error: totals.answers.error,
    in_flight: totals.in_flight,
    queued: totals.queued,
  });
  if (history.length > HISTORY) history.shift();
  drawCharts();
}

// -- jobs ------------------------------------------------------------------------

let jobs = []; // GET /v1/jobs: the configured jobs, secrets redacted
const rows = new Map(); // job name -> its row's cells

function configSummary(job) {
  const parts = [job.fetch];
  if (job.args.length) parts.push("args " + job.args.join(", "));
  parts.push("fresh " + job.fresh + " s", "stale " + job.stale + " s");
  if (job.stale_if_error) parts.push("stale_if_error " + job.stale_if_error + " s");
  parts.push("on_miss " + job.on_miss, "concurrency " + job.concurrency);
  if (job.keep_hot) parts.push("keep_hot " + job.keep_hot);
  if (job.tags.length) parts.push("tags " + job.tags.join(", "));
  return parts.join(" · ");
}

/** A job's rows: its configuration and figures, then its last errors and hot keys. */
function jobRow(job) {
  const cells = {};
  const tr = el("tr", { cls: "job" });
  tr.append(el("th", { attrs: { scope: "row" } }, el("code", { text: job.name })));
  const where = job.fetch === "http" ? job.method + " " + job.url : job.callable;
  tr.append(el("td", { cls: "config" }, el("div", { text: configSummary(job) }),
    el("code", { cls: "muted", text: where })));
  const labels = {
    rps: "Requests/s", hit: "Hit", p50: "Fetch p50", p99: "Fetch p99", eps: "Errors/s",
    ratio: "Error ratio", in_flight: "In flight", queued: "Queued",
  };
  for (const [name, label] of Object.entries(labels)) {
    // The label is shown beside the figure when the table is laid out as cards (narrow screens).
    cells[name] = el("td", { cls: "n", text: "–", attrs: { "data-label": label } });
    tr.append(cells[name]);
  }
  cells.errors = el("div", { cls: "errors" }, el("span", { cls: "muted", text: "none" }));
  cells.hot = el("div", { cls: "hot" }, el("span", { cls: "muted", text: "none yet" }));
  const details = el("tr", { cls: "details" }, el("td", { attrs: { colspan: "10" } },
    el("div", { cls: "split" },
      el("div", {}, el("h3", { text: "Last errors" }), cells.errors),
      el("div", {}, el("h3", { text: "Hot keys" }), cells.hot))));
  const group = el("tbody", {}, tr, details);
  group.dataset.job = job.name;
  return { group, cells };
}

let jobsShown = "";

/** The configured jobs: their rows and the job choices, rebuilt only when they change. */
function setJobs(list) {
  jobs = list;
  const shown = JSON.stringify(list);
  if (shown === jobsShown) return;
  jobsShown = shown;
  showJobs();
}

function showJobs() {
  const table = $("jobs-table");
  for (const group of table.querySelectorAll("tbody")) group.remove();
  rows.clear();
  for (const job of jobs) {
    const row = jobRow(job);
    rows.set(job.name, row);
    table.append(row.group);
  }
  $("jobs-message").textContent = jobs.length ? "" : "No job is configured.";
  for (const select of [$("inspect-job"), $("refresh-job")]) {
    const chosen = select.value;
    select.replaceChildren(...jobs.map((job) => el("option", { text: job.name, attrs: { value: job.name } })));
    if (jobs.some((job) => job.name === chosen)) select.value = chosen;
  }
  buildArgs($("inspect-job"), $("inspect-args"), "inspect");
  buildArgs($("refresh-job"), $("refresh-args"), "refresh");
}

function showJobFigures(status) {
  for (const figures of status.jobs) {
    const row = rows.get(figures.name);
    if (!row) continue;
    const c = row.cells;
    c.rps.textContent = fmt.rate(figures.requests_per_second);
    c.hit.textContent = fmt.share(figures.answers.hit);
    c.p50.textContent = fmt.seconds(figures.fetch_p50_seconds);
    c.p99.textContent = fmt.seconds(figures.fetch_p99_seconds);
    c.eps.textContent = fmt.rate(figures.errors_per_second);
    c.ratio.textContent = fmt.share(figures.error_ratio);
    c.ratio.classList.toggle("bad", figures.error_ratio > 0);
    c.in_flight.textContent = fmt.int(figures.in_flight);
    c.queued.textContent = fmt.int(figures.queued);
    const errors = figures.last_errors || [];
    if (errors.length) {
      c.errors.replaceChildren(el("ul", {}, ...errors.map((e) => el("li", {},
        el("time", { text: fmt.time(e.time), attrs: { datetime: new Date(e.time * 1000).toISOString() } }),
        el("span", { cls: "error", text: e.message })))));
    } else {
      c.errors.replaceChildren(el("span", { cls: "muted", text: "none" }));
    }
  }
}

function showHot(hot) {
  for (const [name, keys] of Object.entries(hot.jobs)) {
    const row = rows.get(name);
    if (!row) continue;
    if (!keys.length) {
      row.cells.hot.replaceChildren(el("span", { cls: "muted", text: "none yet" }));
      continue;
    }
    row.cells.hot.replaceChildren(el("ul", {}, ...keys.map((hotKey) => {
      const button = el("button", { cls: "link", text: hotKey.key, attrs: { type: "button", title: "Inspect this entry" } });
      button.addEventListener("click", () => inspect(hotKey.key, true));
      return el("li", {}, button, " ", el("span", { cls: "num muted", text: fmt.rate(hotKey.rate) + "/s" }));
    })));
  }
}

/** The argument fields of the job chosen in C{select}, in C{box}. */
function buildArgs(select, box, prefix) {
  const job = jobs.find((j) => j.name === select.value);
  box.replaceChildren();
  if (!job) return;
  for (const arg of job.args) {
    const id = prefix + "-arg-" + arg;
    const label = el("label", { attrs: { for: id } }, el("code", { text: arg }));
    const pattern = job.arg_patterns[arg];
    if (pattern) label.append(" ", el("small", { text: "(" + pattern + ")" }));
    const input = el("input", { attrs: { id, type: "text", autocomplete: "off", spellcheck: "false" } });
    input.dataset.arg = arg;
    box.append(label, input);
  }
}

function argsOf(box) {
  const args = {};
  for (const input of box.querySelectorAll("input[data-arg]")) args[input.dataset.arg] = input.value;
  return args;
}

$("inspect-job").addEventListener("change", () => buildArgs($("inspect-job"), $("inspect-args"), "inspect"));
$("refresh-job").addEventListener("change", () => buildArgs($("refresh-job"), $("refresh-args"), "refresh"));

// -- entry inspector -------------------------------------------------------------

let shownEntry = null;

$("args-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const job = $("inspect-job").value;
  const message = $("inspect-message");
  try {
    const answer = await api("v1/jobs/" + encodeURIComponent(job) + "/key?" + argsQuery(argsOf($("inspect-args"))));
    $("inspect-key").value = answer.key;
    await inspect(answer.key);
  } catch (e) {
    message.textContent = String(e);
  }
});

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  inspect($("inspect-key").value.trim());
});

async function inspect(key, scroll = false) {
  const message = $("inspect-message");
  $("inspect-key").value = key;
  message.textContent = "Looking up " + key + "…";
  try {
    const entry = await api("v1/entries/" + encodeURIComponent(key) + "?value=1");
    message.textContent = "";
    showEntry(entry);
  } catch (e) {
    $("entry").hidden = true;
    shownEntry = null;
    message.textContent = e.status === 404 ? "No entry for " + key + " (" + e + ")" : String(e);
  }
  if (scroll) $("inspector").scrollIntoView();
}

function showEntry(entry) {
  shownEntry = entry;
  $("entry").hidden = false;
  $("entry-key").textContent = entry.key;
  const now = Date.now() / 1000;
  const when = (t) => (t ? fmt.datetime(t) + " (" + fmt.span(t - now) + ")" : "–");
  const fields = [
    ["job", entry.job],
    ["args", JSON.stringify(entry.args)],
    ["fetched at", when(entry.fetched_at)],
    ["fresh until", when(entry.fresh_until)],
    ["stale until", when(entry.stale_until)],
    ["purged", entry.purged || "no"],
    ["size", fmt.bytes(entry.size)],
    ["content type", entry.content_type],
    ["tags", entry.tags.length ? entry.tags.join(", ") : "none"],
    ["ETag", entry.etag || "–"],
    ["last error", entry.last_error || "none"],
    ["failures", entry.failures],
    ["has value", entry.has_value ? "yes" : "no (a remembered failure)"],
    ["error until", when(entry.error_until)],
    ["retry at", when(entry.retry_at)],
    ["validators", JSON.stringify(entry.validators)],
  ];
  for (const [name, why] of Object.entries(entry.lifetimes || {})) fields.push([name + " from", why]);
  $("entry-meta").replaceChildren(...fields.flatMap(([name, value]) => [
    el("dt", { text: name }),
    el("dd", { text: value }),
  ]));
  drawTimeline(entry, now);
  let text;
  if ("value" in entry) text = typeof entry.value === "string" ? entry.value : JSON.stringify(entry.value, null, 2);
  else if ("value_b64" in entry) text = entry.value_b64;
  else text = "";
  $("entry-value").textContent = text.length > CUT ? text.slice(0, CUT) : text;
  $("entry-cut").hidden = text.length <= CUT;
  $("entry-cut-text").textContent = "Showing " + CUT + " of " + text.length + " characters"
    + ("value_b64" in entry ? " (base64)." : ".");
  $("entry-value").dataset.full = text.length > CUT ? "no" : "yes";
}

$("entry-show-all").addEventListener("click", () => {
  const entry = shownEntry;
  if (!entry) return;
  const text = "value" in entry ? (typeof entry.value === "string" ? entry.value : JSON.stringify(entry.value, null, 2)) : entry.value_b64 || "";
  $("entry-value").textContent = text;
  $("entry-value").dataset.full = "yes";
  $("entry-cut").hidden = true;
  $("entry-value").focus();
});

/** fetched, fresh until, stale until and now on one axis, in SVG. */
function drawTimeline(entry, now) {
  const width = Math.max(280, Math.round($("timeline").clientWidth || 600));
  const start = Math.min(entry.fetched_at, now);
  const end = Math.max(entry.stale_until, entry.fresh_until, now);
  const span = Math.max(end - start, 1);
  const x = (t) => 10 + ((width - 20) * (t - start)) / span;
  const box = svg("svg", {
    viewBox: "0 0 " + width + " 88", width, height: 88, role: "img",
    "aria-label": "Freshness: fetched " + fmt.datetime(entry.fetched_at) + ", fresh until "
      + fmt.datetime(entry.fresh_until) + ", stale until " + fmt.datetime(entry.stale_until),
  });
  const bar = (from, to, cls) => {
    if (to > from) box.append(svg("rect", { x: x(from), y: 20, width: x(to) - x(from), height: 16, class: cls }));
  };
  bar(entry.fetched_at, entry.fresh_until, "fresh");
  bar(Math.max(entry.fresh_until, entry.fetched_at), entry.stale_until, "stale");
  const label = (t, row, text, cls) => {
    const at = x(t);
    const anchor = at < width * 0.2 ? "start" : at > width * 0.8 ? "end" : "middle";
    box.append(svg("line", { x1: at, x2: at, y1: 16, y2: 40 + row * 14, class: cls === "now" ? "now" : "tick" }));
    box.append(svg("text", { x: at, y: 50 + row * 14, "text-anchor": anchor, class: cls || "" }, text));
  };
  label(entry.fetched_at, 0, "fetched " + fmt.time(entry.fetched_at));
  label(entry.fresh_until, 1, "fresh until " + fmt.time(entry.fresh_until));
  label(entry.stale_until, 2, "stale until " + fmt.time(entry.stale_until));
  box.append(svg("line", { x1: x(now), x2: x(now), y1: 4, y2: 40, class: "now" }));
  box.append(svg("text", { x: x(now), y: 12, "text-anchor": x(now) > width * 0.8 ? "end" : x(now) < width * 0.2 ? "start" : "middle", class: "now" }, "now"));
  $("timeline").replaceChildren(box);
}

let resized = null;
window.addEventListener("resize", () => {
  clearTimeout(resized);
  resized = setTimeout(() => shownEntry && drawTimeline(shownEntry, Date.now() / 1000), 100);
});

$("entry-reload").addEventListener("click", () => shownEntry && inspect(shownEntry.key));
$("entry-refresh").addEventListener("click", () => shownEntry && refresh(shownEntry.job, shownEntry.args));
$("entry-purge-soft").addEventListener("click", () => shownEntry && confirmPurge("key", shownEntry.key, true));
$("entry-purge-hard").addEventListener("click", () => shownEntry && confirmPurge("key", shownEntry.key, false));

// -- purge and refresh -----------------------------------------------------------

$("purge-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = $("purge-form");
  const kind = form.querySelector("input[name=purge-kind]:checked").value;
  const soft = form.querySelector("input[name=purge-how]:checked").value === "soft";
  confirmPurge(kind, $("purge-name").value.trim(), soft);
});

let pendingPurge = null;

/** The confirmation dialog, naming exactly what will be purged. */
function confirmPurge(kind, name, soft) {
  if (!name) return;
  pendingPurge = { kind, name, soft };
  const what = { key: "the entry of key", job: "every entry of job", tag: "every entry tagged" }[kind];
  const how = soft
    ? "Soft purge: served stale while one refresh regenerates each."
    : "Hard purge: gone; the next request waits for a new fetch.";
  $("confirm-text").replaceChildren(
    (soft ? "Soft" : "Hard") + " purge " + what + " ",
    el("code", { cls: "key", text: name }),
    "? " + how,
  );
  $("confirm-ok").textContent = soft ? "Soft purge" : "Hard purge";
  $("confirm").showModal();
  $("confirm-cancel").focus();
}

$("confirm-cancel").addEventListener("click", () => $("confirm").close("cancel"));
$("confirm-ok").addEventListener("click", () => $("confirm").close("ok"));
$("confirm").addEventListener("close", async () => {
  const wanted = pendingPurge;
  pendingPurge = null;
  if ($("confirm").returnValue !== "ok" || !wanted) return;
  const answer = $("purge-answer");
  const body = { [wanted.kind + "s"]: [wanted.name], soft: wanted.soft };
  answer.textContent = "Purging…";
  try {
    const result = await api("v1/purge", { method: "POST", body });
    answer.textContent = (wanted.soft ? "Soft" : "Hard") + " purge of " + wanted.kind + " "
      + wanted.name + ": purged " + result.purged;
    if (shownEntry) inspect(shownEntry.key);
  } catch (e) {
    answer.textContent = "Purge failed: " + e;
  }
});

$("refresh-form").addEventListener("submit", (event) => {
  event.preventDefault();
  refresh($("refresh-job").value, argsOf($("refresh-args")));
});

async function refresh(job, args) {
  const answer = $("purge-answer");
  answer.textContent = "Starting a refresh…";
  try {
    const result = await api("v1/jobs/" + encodeURIComponent(job) + "/refresh?" + argsQuery(args), { method: "POST", body: {} });
    answer.textContent = "Refreshing " + result.key + " (" + result.status + ")";
  } catch (e) {
    answer.textContent = "Refresh failed: " + e;
  }
}

// -- polling ---------------------------------------------------------------------

let timer = null;
let polls = 0;
let generation = 0; // a poll of an older start() schedules no other

/** Every 2 s: the status; every 30 s (and until it answers) the jobs; the hot keys. */
async function poll() {
  const mine = generation;
  timer = null;
  if (waitingForToken) return;
  if (document.hidden) { // a tab in the background asks nothing
    timer = setTimeout(poll, POLL_MS);
    return;
  }
  const problems = [];
  const step = async (what, work) => {
    if (waitingForToken) return;
    try {
      await work();
      tokenAccepted();
    } catch (e) {
      if (!waitingForToken) problems.push(what + ": " + e);
    }
  };
  let status = null;
  await step("jobs", async () => {
    if (polls % 15 === 0 || !jobs.length) setJobs((await api("v1/jobs")).jobs);
  });
  await step("status", async () => {
    status = await api("v1/status");
    showOverview(status);
    showJobFigures(status);
  });
  await step("hot keys", async () => showHot(await api("v1/hot?n=5")));
  if (waitingForToken || mine !== generation) return;
  polls++;
  if (problems.length) setConnection("Cannot update " + problems.join("; "), true);
  else setConnection("Updated " + new Date().toLocaleTimeString());
  timer = setTimeout(poll, POLL_MS);
}

function start() {
  if (timer !== null) clearTimeout(timer);
  timer = null;
  polls = 0;
  generation++;
  poll();
}

buildCharts();
start();
