// healthd status page: reads the daemon's JSON API and its event stream, nothing else.
// ES modules, served as they are (no build step), one concern each:
//   app.js      this: wiring the controls, and the start
//   state.js    what the page knows, shared
//   api.js      calls to the API, and the token
//   status.js   reading the status: all of it every few seconds, one row after an event
//   rows.js     one row's derived values, order and filter
//   table.js    the table: only the rows in view, and their sparklines
//   summary.js  the header
//   feed.js     the event feed over SSE, resumed after a drop
//   detail.js   one workload's detail and its actions
//   format.js   formatting, and DOM nodes built with textContent only (a workload's error is
//               text, never markup)

import { act, openDetail } from "./detail.js";
import { follow, loadRecentEvents, setLive, wireFeedFilter } from "./feed.js";
import { $, LABELS, SEVERITY, ago, el } from "./format.js";
import { state } from "./state.js";
import { refresh } from "./status.js";
import { setStateFilter, tickUptime } from "./summary.js";
import { arrange, moveFocus, renderRows } from "./table.js";

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
  wireFeedFilter();
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
