// The workloads table: only the rows in view (plus OVERSCAN) are in the DOM, so 5,000
// workloads cost what 40 do; the sparklines of those rows, read in one request per 100.

import { api } from "./api.js";
import { $, ago, badge, el, took } from "./format.js";
import { COMPARE, checkText, errorText, matches, nextRestart, restarts } from "./rows.js";
import { REFRESH_MIN_MS, state } from "./state.js";

const OVERSCAN = 8;

const SPARK_POINTS = 30;

export function arrange() {
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

export function visibleRange() {
  const wrap = $("table-wrap");
  const head = $("workloads").tHead.offsetHeight;
  const h = state.rowHeight;
  const first = Math.max(0, Math.floor((wrap.scrollTop - head) / h) - OVERSCAN);
  const count = Math.ceil(wrap.clientHeight / h) + 2 * OVERSCAN;
  return [first, Math.min(state.shown.length, first + count)];
}

export function renderRows() {
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
const sparkAsked = new Map(); // name -> when its history was last asked for

function askSparks(names) {
  clearTimeout(sparkTimer);
  sparkTimer = setTimeout(() => fetchSparks(names), 120);
}

export async function fetchSparks(names, force = false) {
  const now = Date.now();
  const want = names.filter((n) => force || now - (sparkAsked.get(n) || 0) > REFRESH_MIN_MS);
  if (want.length === 0) return;
  for (let i = 0; i < want.length; i += 100) {
    const part = want.slice(i, i + 100);
    part.forEach((n) => sparkAsked.set(n, now));
    const query = part.map((n) => `workload=${encodeURIComponent(n)}`).join("&");
    try {
      const got = await api(`/v1/history?limit=${SPARK_POINTS}&${query}`);
      for (const h of got.histories) state.sparks.set(h.workload, h.results.slice().reverse());
    } catch {
      part.forEach((n) => sparkAsked.delete(n));
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

export function moveFocus(from, step) {
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
