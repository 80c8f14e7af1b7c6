// healthd status page: reads the daemon's JSON API and its event stream, nothing else.
//
// - The table renders only the rows in view (plus a few), so 5,000 workloads cost what 40 do.
// - Events arrive over the SSE stream, read with fetch() rather than EventSource because
//   EventSource cannot send the Authorization header a non-loopback listener wants; it
//   resumes after a drop from the last id it saw (Last-Event-ID), so none is lost or shown
//   twice. An event also refreshes its workload's row at once.
// - The whole status is re-read every few seconds for what events do not carry (the time of
//   the last check, check durations); the pause grows with the size of the answer.
// - Text from the daemon is only ever set as textContent: a workload's error is not markup.

const TOKEN_KEY = "healthd.token";
const SEVERITY = ["unhealthy", "gave_up", "config_error", "restarting", "starting", "paused",
  "healthy", "disabled"];
const PROBLEMS = new Set(["unhealthy", "gave_up", "config_error", "restarting"]);
const LABELS = { gave_up: "gave up", config_error: "config error" };
const OVERSCAN = 8;
const SPARK_POINTS = 30;
const FEED_MAX = 300;
const REFRESH_MIN_MS = 5000;

const $ = (id) => document.getElementById(id);
const state = {
  rows: new Map(), // name -> {status, config}
  shown: [], // names, filtered and sorted
  sort: { key: "state", dir: 1 },
  filter: "",
  stateFilter: "",
  sparks: new Map(), // name -> [{ok, duration_seconds}], oldest first
  sparkAsked: new Map(), // name -> time the history was last asked for
  about: null,
  aboutAt: 0,
  lastEventId: null,
  detail: null, // the workload in the detail view
  rowHeight: 36,
  pendingRows: new Set(),
  configNames: "",
  configErrors: new Map(), // workload -> messages of its file's problems
};

// -- talking to the daemon -----------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  if (token()) h.Authorization = `Bearer ${token()}`;
  return h;
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch {
    // not JSON: the status line says what there is to say
  }
  return new ApiError(response.status, message);
}

// A call to the API. A 401 asks for the token and tries again with it, and again while the
// token given is wrong, until one works or the person cancels (asked: do not ask at all).
async function api(path, { method = "GET", body, asked = false } = {}) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  const sentToken = token();
  if (body) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, `cannot reach healthd (${err.message})`);
  }
  if (response.status === 401 && !asked) {
    const why = (await errorOf(response)).message;
    if (sentToken && sentToken === token()) sessionStorage.removeItem(TOKEN_KEY);
    if (await askToken(why)) return api(path, { method, body });
    throw new ApiError(401, why);
  }
  if (!response.ok) throw await errorOf(response);
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(response.status, `healthd answered something that is not JSON: ${text.slice(0, 120)}`);
  }
}

let tokenAsk = null;
function askToken(why) {
  if (tokenAsk) return tokenAsk;
  const dialog = $("token-dialog");
  $("token-why").textContent = `${why}. The token is the contents of api.token_file; it is `
    + "kept in this tab only, until the tab is closed.";
  $("token-input").value = "";
  dialog.returnValue = ""; // Escape keeps the last value: "ok" from the time before
  tokenAsk = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const value = $("token-input").value.trim();
      const ok = dialog.returnValue === "ok" && value !== "";
      if (ok) sessionStorage.setItem(TOKEN_KEY, value);
      tokenAsk = null;
      resolve(ok);
    }, { once: true });
  });
  dialog.showModal();
  return tokenAsk;
}

function notice(message, kind = "error") {
  const box = $("notice");
  box.hidden = !message;
  box.textContent = message || "";
  box.className = kind;
}

// -- formatting ----------------------------------------------------------------------------

const NEVER = "0001-01-01T00:00:00Z";
function when(text) {
  if (!text || text === NEVER) return null;
  const t = Date.parse(text);
  return Number.isNaN(t) ? null : t;
}

function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
}

function ago(text) {
  const t = when(text);
  return t === null ? "never" : `${span((Date.now() - t) / 1000)} ago`;
}

function took(seconds) {
  if (seconds === undefined || seconds === null) return "";
  return seconds < 1 ? `${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 0)} ms` : `${seconds.toFixed(2)} s`;
}

function clock(text) {
  const t = when(text);
  return t === null ? "" : new Date(t).toLocaleTimeString([], { hour12: false });
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function badge(status) {
  const s = status ? status.state : "starting";
  const node = el("span", { class: "badge", "data-state": s, text: LABELS[s] || s });
  if (status && status.flapping) {
    node.classList.add("flap");
    node.title = "flapping: restarts are held";
  }
  return node;
}

// -- one row's derived values --------------------------------------------------------------

function checkText(row) {
  if (row.config) return row.config.checks || row.config.type;
  return (row.status && row.status.type) || "";
}

function restarts(row) {
  const s = row.status;
  if (!s) return { text: "", order: 0 };
  const max = row.config ? row.config.max_restarts : 0;
  const left = s.restart_budget_left;
  if (max > 0 && left !== null && left !== undefined) {
    return { text: `${max - left} / ${max}`, order: (max - left) / max };
  }
  return { text: `${s.restart_count} / ∞`, order: 0 };
}

function nextRestart(row) {
  const s = row.status;
  if (!s || !s.auto_restart) return { text: "—", at: Infinity };
  if (s.restart_held) return { text: "held", at: Infinity, title: s.restart_held };
  if (s.restart_budget_left === 0) {
    const frees = when(s.restart_budget_frees_at);
    return frees ? { text: `in ${span((frees - Date.now()) / 1000)}`, at: frees } : { text: "no budget", at: Infinity };
  }
  const at = when(s.next_restart_at);
  if (at === null || at <= Date.now()) return { text: PROBLEMS.has(s.state) ? "now" : "ready", at: 0 };
  return { text: `in ${span((at - Date.now()) / 1000)}`, at };
}

const COMPARE = {
  name: (a, b) => a.localeCompare(b),
  check: (a, b) => checkText(state.rows.get(a)).localeCompare(checkText(state.rows.get(b))),
  state: (a, b) => severity(a) - severity(b),
  ago: (a, b) => (lastCheck(b) - lastCheck(a)),
  error: (a, b) => errorText(a).localeCompare(errorText(b)),
  restarts: (a, b) => restarts(state.rows.get(a)).order - restarts(state.rows.get(b)).order,
  next: (a, b) => nextRestart(state.rows.get(a)).at - nextRestart(state.rows.get(b)).at,
  duration: (a, b) => duration(a) - duration(b),
};

function severity(name) {
  const s = state.rows.get(name).status;
  const i = SEVERITY.indexOf(s ? s.state : "starting");
  return i < 0 ? SEVERITY.length : i;
}
function lastCheck(name) {
  const s = state.rows.get(name).status;
  return (s && when(s.last_check)) || 0;
}
function errorText(name) {
  const s = state.rows.get(name).status;
  return (s && s.last_error) || "";
}
function duration(name) {
  const s = state.rows.get(name).status;
  return (s && s.last_check_duration_seconds) || 0;
}

// -- filtering and sorting -----------------------------------------------------------------

function matches(name) {
  const row = state.rows.get(name);
  const shown = row.status ? row.status.state : "starting";
  if (state.stateFilter === "problem" && !PROBLEMS.has(shown)) return false;
  if (state.stateFilter && state.stateFilter !== "problem" && shown !== state.stateFilter) return false;
  if (!state.filter) return true;
  const hay = `${name} ${checkText(row)} ${errorText(name)}`.toLowerCase();
  return hay.includes(state.filter);
}

function arrange() {
  const compare = COMPARE[state.sort.key];
  const dir = state.sort.dir;
  state.shown = [...state.rows.keys()].filter(matches).sort(
    (a, b) => dir * compare(a, b) || a.localeCompare(b),
  );
  $("workloads").setAttribute("aria-rowcount", String(state.shown.length + 1));
  $("shown-count").textContent = state.shown.length === state.rows.size
    ? `(${state.rows.size})` : `(${state.shown.length} of ${state.rows.size})`;
  renderEmpty();
  renderRows();
}

function renderEmpty() {
  const empty = $("empty");
  if (state.rows.size === 0) {
    empty.textContent = "No workloads are configured. Add one with `healthd add`, or put a "
      + "<workload>.yaml file in the config directory; it shows here once the daemon reloads.";
  } else if (state.shown.length === 0) {
    empty.textContent = "No workload matches this filter.";
  }
  empty.hidden = state.shown.length > 0;
}

// -- the table: only what is in view -------------------------------------------------------

function visibleRange() {
  const wrap = $("table-wrap");
  const head = $("workloads").tHead.offsetHeight;
  const h = state.rowHeight;
  const first = Math.max(0, Math.floor((wrap.scrollTop - head) / h) - OVERSCAN);
  const count = Math.ceil(wrap.clientHeight / h) + 2 * OVERSCAN;
  return [first, Math.min(state.shown.length, first + count)];
}

function renderRows() {
  const body = $("rows");
  const [first, last] = visibleRange();
  const h = state.rowHeight;
  const focused = document.activeElement && document.activeElement.closest("tr[data-workload]");
  const focusName = focused ? focused.dataset.workload : null;
  const rows = [spacer(first * h)];
  for (let i = first; i < last; i++) rows.push(rowNode(state.shown[i], i));
  rows.push(spacer((state.shown.length - last) * h));
  body.replaceChildren(...rows);
  if (focusName) {
    const again = body.querySelector(`tr[data-workload="${CSS.escape(focusName)}"] .open`);
    if (again) again.focus({ preventScroll: true });
  }
  askSparks(state.shown.slice(first, last));
}

function spacer(height) {
  const td = el("td", { colspan: "8" });
  td.style.height = `${height}px`;
  return el("tr", { class: "spacer", "aria-hidden": "true" }, td);
}

function rowNode(name, index) {
  const row = state.rows.get(name);
  const s = row.status;
  const r = restarts(row);
  const next = nextRestart(row);
  const check = checkText(row);
  return el(
    "tr",
    { "data-workload": name, "data-state": s ? s.state : "starting", "aria-rowindex": String(index + 2) },
    el("td", { class: "col-name" }, el("button", { type: "button", class: "open", text: name, title: name })),
    el("td", { class: "col-check", text: check, title: check }),
    el("td", { class: "col-state" }, badge(s)),
    el("td", { class: "col-ago", "data-since": s ? s.last_check : "", text: s ? ago(s.last_check) : "" }),
    el("td", { class: "col-error", text: errorText(name), title: errorText(name) }),
    el("td", { class: "col-restarts", text: r.text }),
    el("td", { class: "col-next", text: next.text, title: next.title }),
    el("td", { class: "col-spark" }, sparkline(name)),
  );
}

// A line of the last check durations, oldest left; a failure is a red dot on it.
function sparkline(name) {
  const points = state.sparks.get(name);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 90 22");
  if (!points || points.length === 0) {
    svg.setAttribute("aria-hidden", "true");
    return svg;
  }
  const top = Math.max(...points.map((p) => p.duration_seconds), 1e-6);
  const x = (i) => (points.length === 1 ? 45 : 2 + (i * 86) / (points.length - 1));
  const y = (p) => 20 - (p.duration_seconds / top) * 18;
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map((p, i) => `${x(i).toFixed(1)},${y(p).toFixed(1)}`).join(" "));
  svg.append(line);
  let failed = 0;
  points.forEach((p, i) => {
    if (p.ok) return;
    failed += 1;
    const dot = document.createElementNS(ns, "circle");
    dot.setAttribute("cx", x(i).toFixed(1));
    dot.setAttribute("cy", y(p).toFixed(1));
    dot.setAttribute("r", "2.2");
    svg.append(dot);
  });
  const label = `last ${points.length} checks: ${failed} failed, slowest ${took(top)}`;
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const title = document.createElementNS(ns, "title");
  title.textContent = label;
  svg.prepend(title);
  return svg;
}

// Durations for the rows in view, a page of names at a time; a name asked for recently
// waits for the next refresh.
let sparkTimer = null;
function askSparks(names) {
  clearTimeout(sparkTimer);
  sparkTimer = setTimeout(() => fetchSparks(names), 120);
}

async function fetchSparks(names, force = false) {
  const now = Date.now();
  const want = names.filter((n) => force || now - (state.sparkAsked.get(n) || 0) > REFRESH_MIN_MS);
  if (want.length === 0) return;
  for (let i = 0; i < want.length; i += 100) {
    const part = want.slice(i, i + 100);
    part.forEach((n) => state.sparkAsked.set(n, now));
    const query = part.map((n) => `workload=${encodeURIComponent(n)}`).join("&");
    try {
      const got = await api(`/v1/history?limit=${SPARK_POINTS}&${query}`);
      for (const h of got.histories) state.sparks.set(h.workload, h.results.slice().reverse());
    } catch {
      part.forEach((n) => state.sparkAsked.delete(n));
      return; // the status refresh reports what is wrong
    }
  }
  redrawSparks(want);
}

function redrawSparks(names) {
  for (const name of names) {
    const cell = $("rows").querySelector(`tr[data-workload="${CSS.escape(name)}"] .col-spark`);
    if (cell) cell.replaceChildren(sparkline(name));
  }
}

// -- the header ----------------------------------------------------------------------------

function renderSummary(counts) {
  const about = state.about;
  if (about) {
    $("host").textContent = about.host;
    document.title = `healthd · ${about.host}`;
    const sched = $("sched");
    sched.dataset.onTime = String(about.on_time);
    sched.textContent = about.on_time ? "on time"
      : `${about.status}${about.overdue_seconds ? `, ${about.overdue_seconds.toFixed(1)} s late` : ""}`;
  }
  const list = $("counts");
  const items = SEVERITY.filter((s) => counts[s]).map((s) => el(
    "li", {},
    el("button", {
      type: "button",
      class: "badge",
      "data-state": s,
      "aria-pressed": String(state.stateFilter === s),
      title: `show only ${LABELS[s] || s}`,
      text: `${counts[s]} ${LABELS[s] || s}`,
      onclick: () => setStateFilter(state.stateFilter === s ? "" : s),
    }),
  ));
  list.replaceChildren(...items);
}

function tickUptime() {
  if (!state.about) return;
  const up = state.about.uptime_seconds + (performance.now() - state.aboutAt) / 1000;
  $("uptime").textContent = span(up);
}

function setStateFilter(value) {
  state.stateFilter = value;
  const select = $("state-filter");
  if (![...select.options].some((o) => o.value === value)) {
    select.append(el("option", { value, text: LABELS[value] || value }));
  }
  select.value = value;
  for (const b of $("counts").querySelectorAll("button")) {
    b.setAttribute("aria-pressed", String(b.dataset.state === value));
  }
  arrange();
}

// -- reading the status --------------------------------------------------------------------

function countStates() {
  const counts = {};
  for (const row of state.rows.values()) {
    const s = row.status ? row.status.state : "starting";
    counts[s] = (counts[s] || 0) + 1;
  }
  return counts;
}

async function loadConfigs() {
  const got = await api("/v1/workloads");
  const configs = new Map(got.workloads.map((w) => [w.workload, w]));
  for (const [name, row] of state.rows) row.config = configs.get(name) || null;
  // A file that does not load is named after its workload: <name>.yaml or <name>.yml.
  state.configErrors = new Map();
  for (const problem of got.config_errors) {
    const stem = problem.file.split("/").pop().replace(/\.ya?ml$/, "");
    const known = state.configErrors.get(stem) || [];
    state.configErrors.set(stem, [...known, problem.message]);
  }
}

let refreshTimer = null;
let refreshStarted = -Infinity;
let refreshSpent = 0;

// A flood of events (a whole host failing) reads the whole status at most once per pause.
function refreshSoon() {
  const next = refreshStarted + Math.max(1000, refreshSpent * 3);
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, Math.max(0, next - performance.now()));
}

async function refresh() {
  clearTimeout(refreshTimer);
  const started = performance.now();
  refreshStarted = started;
  try {
    const got = await api("/v1/status");
    const names = new Set();
    for (const status of got.workloads) {
      names.add(status.workload);
      const row = state.rows.get(status.workload);
      if (row) row.status = status;
      else state.rows.set(status.workload, { status, config: null });
    }
    // A reload changed the set of workloads, or which files load: their configs too, then.
    // While some file does not load, every time: fixing or removing it sends no event.
    const broken = got.workloads.filter((w) => w.state === "config_error").map((w) => w.workload);
    const key = `${[...names].sort().join("\n")}|${broken.sort().join("\n")}`;
    if (key !== state.configNames || state.configErrors.size > 0) {
      await loadConfigs();
      state.configNames = key;
    }
    // A new file that never loaded has no status: it is a row all the same.
    for (const [name, messages] of state.configErrors) {
      if (names.has(name)) continue;
      names.add(name);
      const status = { workload: name, state: "config_error", monitored: false, paused: false,
        last_error: messages.join("; "), restart_count: 0, auto_restart: false };
      const row = state.rows.get(name);
      if (row) row.status = status;
      else state.rows.set(name, { status, config: null });
    }
    for (const name of [...state.rows.keys()]) if (!names.has(name)) state.rows.delete(name);
    state.about = got.daemon;
    state.aboutAt = performance.now();
    notice(storageProblem(got.storage), "info");
    renderSummary(countStates());
    tickUptime();
    arrange();
    const [first, last] = visibleRange();
    fetchSparks(state.shown.slice(first, last), true);
    if (state.detail) {
      renderDetailStatus();
      renderConfig();
    }
  } catch (err) {
    notice(err.status === 0 ? `${err.message}; trying again…` : `healthd answered: ${err.message}`);
  }
  // A big answer is re-read less often: the daemon builds it on its event loop.
  refreshSpent = performance.now() - started;
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, Math.max(REFRESH_MIN_MS, refreshSpent * 20));
}

function storageProblem(storage) {
  if (!storage || storage.ok) return "";
  const bad = storage.files.filter((f) => !f.ok).map((f) => `${f.file}: ${f.error}`);
  return `healthd cannot write its files (monitoring goes on): ${bad.join("; ")}`;
}

// One workload's row again, after an event about it; many at once read the whole status.
let rowTimer = null;
function refreshRow(name) {
  if (!name) return;
  state.pendingRows.add(name);
  if (rowTimer) return;
  rowTimer = setTimeout(async () => {
    rowTimer = null;
    const names = [...state.pendingRows];
    state.pendingRows.clear();
    if (names.length > 20) {
      refreshSoon();
      return;
    }
    await Promise.all(names.map(async (n) => {
      try {
        const status = await api(`/v1/status/${encodeURIComponent(n)}`);
        const row = state.rows.get(n);
        if (row) row.status = status;
      } catch {
        // removed meanwhile: the next full refresh drops it
      }
    }));
    renderSummary(countStates());
    arrange();
    fetchSparks(names, true);
    if (state.detail && names.includes(state.detail)) renderDetailStatus();
  }, 150);
}

// -- the event feed ------------------------------------------------------------------------

function eventNode(event, fresh) {
  const who = event.workload
    ? el("button", { type: "button", class: "ev-who", text: event.workload, onclick: () => openDetail(event.workload) })
    : el("span", { class: "ev-who", text: "healthd" });
  return el(
    "li",
    { "data-event-id": String(event.id), "data-type": event.type, "data-workload": event.workload, class: fresh ? "fresh" : null },
    el("span", {}, el("span", { class: "ev-type", "data-type": event.type, text: event.type }), " ", who),
    el("time", { class: "ev-time", datetime: event.timestamp, text: clock(event.timestamp) }),
    el("span", { class: "ev-msg", text: event.message }),
  );
}

function showEvent(event, fresh) {
  const feed = $("feed");
  if (feed.querySelector(`li[data-event-id="${event.id}"]`)) return;
  feed.prepend(eventNode(event, fresh));
  while (feed.childElementCount > FEED_MAX) feed.lastElementChild.remove();
  $("feed-empty").hidden = true;
  if (state.detail && event.workload === state.detail) {
    $("detail-events").prepend(eventNode(event, false));
  }
}

async function loadRecentEvents() {
  const got = await api("/v1/events?order=newest&limit=100");
  for (const event of got.events) showEvent(event, false);
  state.lastEventId = got.last_id;
}

// The SSE stream, parsed by hand (see the top of this file for why not EventSource).
async function follow() {
  let wait = 1000;
  for (;;) {
    setLive("connecting");
    try {
      const extra = { Accept: "text/event-stream" };
      if (state.lastEventId !== null) extra["Last-Event-ID"] = String(state.lastEventId);
      const response = await fetch("/v1/events/stream", { headers: headers(extra), cache: "no-store" });
      if (response.status === 401) {
        setLive("down", "needs the API token");
        if (!(await askToken((await errorOf(response)).message))) return;
        continue;
      }
      if (!response.ok) throw await errorOf(response);
      setLive("live");
      wait = 1000;
      const resumed = state.lastEventId !== null;
      if (resumed) refreshSoon(); // what changed while away, beyond the events themselves
      wait = await readStream(response.body) || wait;
    } catch (err) {
      setLive("down", err.message);
    }
    setLive("down", "reconnecting");
    await new Promise((r) => setTimeout(r, wait));
    wait = Math.min(wait * 2, 30000);
  }
}

async function readStream(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let retry = 0;
  let message = { id: null, event: "message", data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return retry;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
      if (line === "") {
        if (message.data.length) dispatch(message);
        message = { id: null, event: "message", data: [] };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "data") message.data.push(text);
      else if (field === "event") message.event = text;
      else if (field === "id") message.id = text;
      else if (field === "retry" && /^\d+$/.test(text)) retry = Number(text);
    }
  }
}

function dispatch(message) {
  let event;
  try {
    event = JSON.parse(message.data.join("\n"));
  } catch {
    return;
  }
  if (message.id !== null) state.lastEventId = Number(message.id);
  showEvent(event, true);
  if (applyEvent(event)) redrawSoon();
  if (event.type === "config_error") {
    state.configNames = ""; // a file broke: read the configs and their errors again
    refreshSoon();
  }
  refreshRow(event.workload);
}

// The event says where the workload went: its badge and the counts change at once, before
// (and whether or not) its row is read again. Paused is shown over the machine's state.
function applyEvent(event) {
  const row = state.rows.get(event.workload);
  if (!row || !row.status || !event.state_to) return false;
  const was = row.status.paused;
  const paused = event.type === "paused" ? true : event.type === "resumed" ? false : was;
  row.status = { ...row.status, paused, state: paused ? "paused" : event.state_to };
  return true;
}

let redrawFrame = 0;
function redrawSoon() {
  if (redrawFrame) return;
  redrawFrame = requestAnimationFrame(() => {
    redrawFrame = 0;
    renderSummary(countStates());
    arrange();
  });
}

function setLive(status, why = "") {
  const live = $("live");
  live.dataset.status = status;
  live.textContent = status === "live" ? "live" : status === "connecting" ? "connecting…" : "disconnected";
  live.title = why;
}

// -- the detail view -----------------------------------------------------------------------

async function openDetail(name) {
  state.detail = name;
  $("detail-title").textContent = name;
  $("detail-msg").textContent = "";
  $("detail-results").replaceChildren();
  $("detail-events").replaceChildren();
  renderDetailStatus();
  renderConfig();
  const dialog = $("detail");
  if (!dialog.open) dialog.showModal();
  await loadDetail(name);
}

// The workload's last results and events, read again (after an action, too).
async function loadDetail(name) {
  const path = encodeURIComponent(name);
  try {
    const [history, events] = await Promise.all([
      api(`/v1/workloads/${path}/history?limit=20`),
      api(`/v1/events?order=newest&limit=50&workload=${path}`),
    ]);
    if (state.detail !== name) return;
    $("detail-results").replaceChildren(...history.results.map((r) => el(
      "tr", {},
      el("td", { text: clock(r.time) }),
      el("td", { class: r.ok ? "" : "bad", text: r.ok ? "ok" : "failed" }),
      el("td", { text: took(r.duration_seconds) }),
      el("td", { class: "bad", text: r.error }),
    )));
    $("detail-events").replaceChildren(...events.events.reverse().map((e) => eventNode(e, false)));
  } catch (err) {
    detailMessage(err.message, true);
  }
}

function renderDetailStatus() {
  const row = state.rows.get(state.detail);
  const s = row && row.status;
  $("detail-badge").replaceWith(Object.assign(badge(s), { id: "detail-badge" }));
  const monitored = Boolean(s && s.monitored);
  $("act-check").disabled = !monitored;
  $("act-pause").disabled = !monitored || s.paused;
  $("act-resume").disabled = !monitored || !s.paused;
  $("act-reset").disabled = !monitored;
  if (!s) {
    $("detail-status").replaceChildren(el("dt", { text: "status" }), el("dd", { text: "not known yet" }));
    return;
  }
  const r = restarts(row);
  const items = [
    ["state", LABELS[s.state] || s.state],
    ["last check", s.last_check && when(s.last_check) ? `${ago(s.last_check)} (${took(s.last_check_duration_seconds)})` : "never"],
    ["last healthy", ago(s.last_healthy)],
    ["failing for", s.consecutive_fails ? `${s.consecutive_fails} checks` : null],
    ["last error", s.last_error],
    ["checks", `${s.total_checks} (${s.total_fails} failed)`],
    ["restarts", r.text],
    ["last restart", when(s.last_restart) ? ago(s.last_restart) : null],
    ["restart error", s.last_restart_error],
    ["next restart", nextRestart(row).text],
    ["restart held", s.restart_held],
    ["paused", s.paused ? `${ago(s.paused_at)}${s.paused_reason ? `: ${s.paused_reason}` : ""}` : null],
    ["flapping", s.flapping ? "yes: restarts are held" : null],
    ["address", s.address ? `${s.address} (${s.address_source})` : null],
  ];
  $("detail-status").replaceChildren(...items.filter(([, v]) => v).flatMap(([k, v]) => [
    el("dt", { text: k }), el("dd", { text: String(v) }),
  ]));
}

function renderConfig() {
  const row = state.rows.get(state.detail);
  const config = row && row.config;
  if (!config) {
    const errors = state.configErrors.get(state.detail) || ["its file is not loaded now"];
    $("detail-config").replaceChildren(...errors.flatMap((message) => [
      el("dt", { text: "config error" }), el("dd", { text: message }),
    ]));
    return;
  }
  // A file broken since it loaded: the workload runs on its last good config, shown below.
  const errors = (state.configErrors.get(state.detail) || []).flatMap((message) => [
    el("dt", { text: "config error" }), el("dd", { class: "bad", text: `${message} (running on the last good config)` }),
  ]);
  const items = Object.entries(config).filter(([k]) => k !== "workload");
  $("detail-config").replaceChildren(...errors, ...items.flatMap(([k, v]) => [
    el("dt", { text: k }),
    el("dd", { text: typeof v === "object" ? JSON.stringify(v) : String(v) }),
  ]));
}

function detailMessage(text, error = false) {
  const msg = $("detail-msg");
  msg.textContent = text;
  msg.classList.toggle("error", error);
}

async function act(what) {
  const name = state.detail;
  if (!name) return;
  const path = `/v1/workloads/${encodeURIComponent(name)}/${what}`;
  const button = $(`act-${what}`);
  button.disabled = true;
  detailMessage(what === "check" ? "checking…" : `${what}…`);
  try {
    const reason = $("pause-reason").value.trim();
    const got = await postWithToken(path, what === "pause" && reason ? { reason } : undefined);
    if (what === "pause") $("pause-reason").value = "";
    if (what === "check") {
      detailMessage(got.ok ? `check passed in ${took(got.duration_seconds)}` : `check failed: ${got.error}`, !got.ok);
    } else {
      detailMessage(`${what}: done`);
    }
    refreshRow(name);
    if (state.detail === name) loadDetail(name);
  } catch (err) {
    detailMessage(`${what} failed: ${err.message}`, true);
  } finally {
    renderDetailStatus();
  }
}

// A change always needs the token but over the Unix socket: ask for it before the first one.
async function postWithToken(path, body) {
  const call = () => api(path, { method: "POST", body, asked: true });
  if (!token()) {
    try {
      return await call();
    } catch (err) {
      if (err.status !== 401 && err.status !== 403) throw err;
      if (err.status === 403 && /none is configured/.test(err.message)) throw err;
      if (!(await askToken(err.message))) throw err;
    }
  }
  return call().catch(async (err) => {
    if (err.status !== 401) throw err;
    sessionStorage.removeItem(TOKEN_KEY); // a wrong or changed token: ask again
    if (!(await askToken(err.message))) throw err;
    return call();
  });
}

// -- wiring --------------------------------------------------------------------------------

function moveFocus(from, step) {
  const name = from.closest("tr").dataset.workload;
  let index = state.shown.indexOf(name);
  if (step === "home") index = 0;
  else if (step === "end") index = state.shown.length - 1;
  else index = Math.min(state.shown.length - 1, Math.max(0, index + step));
  const wrap = $("table-wrap");
  const h = state.rowHeight;
  const top = $("workloads").tHead.offsetHeight + index * h;
  if (top < wrap.scrollTop + $("workloads").tHead.offsetHeight) wrap.scrollTop = top - $("workloads").tHead.offsetHeight;
  else if (top + h > wrap.scrollTop + wrap.clientHeight) wrap.scrollTop = top + h - wrap.clientHeight;
  renderRows();
  const target = $("rows").querySelector(`tr[data-workload="${CSS.escape(state.shown[index])}"] .open`);
  if (target) target.focus({ preventScroll: true });
}

function wire() {
  const wrap = $("table-wrap");
  let frame = 0;
  wrap.addEventListener("scroll", () => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(renderRows);
  });
  new ResizeObserver(() => renderRows()).observe(wrap);
  $("rows").addEventListener("click", (e) => {
    const open = e.target.closest(".open");
    if (open) openDetail(open.closest("tr").dataset.workload);
  });
  $("rows").addEventListener("keydown", (e) => {
    if (!e.target.classList.contains("open")) return;
    const steps = { ArrowDown: 1, ArrowUp: -1, PageDown: 10, PageUp: -10, Home: "home", End: "end" };
    if (!(e.key in steps)) return;
    e.preventDefault();
    moveFocus(e.target, steps[e.key]);
  });
  for (const th of $("workloads").tHead.querySelectorAll("th")) {
    th.querySelector("button").addEventListener("click", () => {
      const key = th.dataset.key;
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
      for (const other of th.parentElement.children) other.setAttribute("aria-sort", "none");
      th.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
      arrange();
    });
  }
  let typing = 0;
  $("filter").addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.filter = e.target.value.trim().toLowerCase();
      arrange();
    }, 80);
  });
  $("state-filter").addEventListener("change", (e) => setStateFilter(e.target.value));
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && !e.target.closest("input, select, textarea, dialog")) {
      e.preventDefault();
      $("filter").focus();
    }
  });
  for (const what of ["check", "pause", "resume", "reset"]) {
    $(`act-${what}`).addEventListener("click", () => act(what));
  }
  $("detail").addEventListener("close", () => {
    const name = state.detail;
    state.detail = null;
    const back = name && $("rows").querySelector(`tr[data-workload="${CSS.escape(name)}"] .open`);
    if (back) back.focus();
  });
  for (const s of SEVERITY) $("state-filter").append(el("option", { value: s, text: LABELS[s] || s }));
  setInterval(() => {
    tickUptime();
    for (const cell of $("rows").querySelectorAll("td.col-ago")) {
      if (cell.dataset.since) cell.textContent = ago(cell.dataset.since);
    }
  }, 1000);
}

async function start() {
  wire();
  const probe = el("tr", {}, el("td", { text: "x" }));
  $("rows").append(probe);
  state.rowHeight = probe.getBoundingClientRect().height || state.rowHeight;
  probe.remove();
  await refresh();
  try {
    await loadRecentEvents();
  } catch (err) {
    $("feed-empty").textContent = `Events cannot be shown: ${err.message}`;
    setLive("down", err.message);
    if (err.status === 503) return; // no journal: no stream either
  }
  follow();
}

start();
