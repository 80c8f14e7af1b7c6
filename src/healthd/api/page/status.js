// Reading the status: all of it every few seconds (the pause grows with the size of the
// answer), and one row at once after an event about it.

import { api } from "./api.js";
import { renderConfig, renderDetailStatus } from "./detail.js";
import { $ } from "./format.js";
import { countStates } from "./rows.js";
import { REFRESH_MIN_MS, state } from "./state.js";
import { renderSummary, tickUptime } from "./summary.js";
import { arrange, fetchSparks, visibleRange } from "./table.js";

function notice(message, kind = "error") {
  const box = $("notice");
  box.hidden = !message;
  box.textContent = message || "";
  box.className = kind;
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
export function refreshSoon() {
  const next = refreshStarted + Math.max(1000, refreshSpent * 3);
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, Math.max(0, next - performance.now()));
}

export async function refresh() {
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
const pendingRows = new Set(); // workloads whose row is read again at the next tick

export function refreshRow(name) {
  if (!name) return;
  pendingRows.add(name);
  if (rowTimer) return;
  rowTimer = setTimeout(async () => {
    rowTimer = null;
    const names = [...pendingRows];
    pendingRows.clear();
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
