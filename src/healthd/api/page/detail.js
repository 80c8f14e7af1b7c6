// The detail view of one workload: status, last results, events, config, and actions.

import { api, postWithToken } from "./api.js";
import { eventNode } from "./feed.js";
import { $, LABELS, ago, badge, clock, el, took, when } from "./format.js";
import { nextRestart, restarts } from "./rows.js";
import { state } from "./state.js";
import { refreshRow } from "./status.js";

export async function openDetail(name) {
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

export function renderDetailStatus() {
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
    ["last check noted", s.last_check_note],
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

export function renderConfig() {
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

export async function act(what) {
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
