// The header: host, uptime, scheduler, the counts per state (each a filter).

import { $, LABELS, SEVERITY, el, span } from "./format.js";
import { state } from "./state.js";
import { arrange } from "./table.js";

export function renderSummary(counts) {
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

export function tickUptime() {
  if (!state.about) return;
  const up = state.about.uptime_seconds + (performance.now() - state.aboutAt) / 1000;
  $("uptime").textContent = span(up);
}

export function setStateFilter(value) {
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
