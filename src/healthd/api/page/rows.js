// One row's derived values (restarts used, next restart, ...), its order and its filter.

import { PROBLEMS, SEVERITY, span, when } from "./format.js";
import { state } from "./state.js";

export function checkText(row) {
  if (row.config) return row.config.checks || row.config.type;
  return (row.status && row.status.type) || "";
}

export function restarts(row) {
  const s = row.status;
  if (!s) return { text: "", order: 0 };
  const max = row.config ? row.config.max_restarts : 0;
  const left = s.restart_budget_left;
  if (max > 0 && left !== null && left !== undefined) {
    return { text: `${max - left} / ${max}`, order: (max - left) / max };
  }
  return { text: `${s.restart_count} / ∞`, order: 0 };
}

export function nextRestart(row) {
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

export const COMPARE = {
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

export function errorText(name) {
  const s = state.rows.get(name).status;
  return (s && s.last_error) || "";
}

function duration(name) {
  const s = state.rows.get(name).status;
  return (s && s.last_check_duration_seconds) || 0;
}

export function matches(name) {
  const row = state.rows.get(name);
  const shown = row.status ? row.status.state : "starting";
  if (state.stateFilter === "problem" && !PROBLEMS.has(shown)) return false;
  if (state.stateFilter && state.stateFilter !== "problem" && shown !== state.stateFilter) return false;
  if (!state.filter) return true;
  const hay = `${name} ${checkText(row)} ${errorText(name)}`.toLowerCase();
  return hay.includes(state.filter);
}

export function countStates() {
  const counts = {};
  for (const row of state.rows.values()) {
    const s = row.status ? row.status.state : "starting";
    counts[s] = (counts[s] || 0) + 1;
  }
  return counts;
}
