// The event feed: the latest events, then the SSE stream, read with fetch() rather than
// EventSource because EventSource cannot send the Authorization header a non-loopback
// listener wants. After a drop it resumes from the last id it saw (Last-Event-ID), so no
// event is lost or shown twice.

import { api, askToken, errorOf, headers } from "./api.js";
import { openDetail } from "./detail.js";
import { $, clock, el } from "./format.js";
import { countStates } from "./rows.js";
import { state } from "./state.js";
import { refreshRow, refreshSoon } from "./status.js";
import { renderSummary } from "./summary.js";
import { arrange } from "./table.js";

const FEED_MAX = 300; // of check failures, and as many of every other event

// Every event type but check_fail, asked for by name: a failing workload's checks would
// otherwise fill the latest events and hide the state changes. Kept equal to the daemon's
// list by tests/integration/test_api_page.py.
const EVENT_TYPES = [
  "healthy", "unhealthy", "restart", "check_fail", "restart_failed", "restart_exhausted",
  "paused", "resumed", "config_error", "daemon_started", "daemon_stopping", "cert_expiring",
  "restart_held", "flapping", "flapping_stopped", "reset",
];
const NOT_CHECKS = EVENT_TYPES.filter((t) => t !== "check_fail");
const SHOW_CHECKS_KEY = "healthd.feed.checks";

export function eventNode(event, fresh) {
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

// Newest first, by id: events loaded after the stream started still go where they belong.
function showEvent(event, fresh) {
  const feed = $("feed");
  if (feed.querySelector(`li[data-event-id="${event.id}"]`)) return;
  const node = eventNode(event, fresh);
  const older = [...feed.children].find((li) => Number(li.dataset.eventId) < event.id);
  feed.insertBefore(node, older || null);
  // Check failures and the rest are kept apart: a flood of one does not push out the other.
  const checks = event.type === "check_fail";
  const kin = [...feed.children].filter((li) => (li.dataset.type === "check_fail") === checks);
  for (const li of kin.slice(FEED_MAX)) li.remove();
  showFeedEmpty();
  if (fresh && state.detail && event.workload === state.detail) {
    $("detail-events").prepend(eventNode(event, false));
  }
}

function showFeedEmpty() {
  const feed = $("feed");
  const hiding = feed.dataset.hideChecks === "true";
  const shown = hiding ? feed.querySelector('li:not([data-type="check_fail"])') : feed.firstElementChild;
  const empty = $("feed-empty");
  empty.hidden = Boolean(shown);
  empty.textContent = hiding && feed.firstElementChild ? "No events but check failures (hidden)." : "No events yet.";
}

// The "check failures" box: remembered in this browser, since it is a way of reading.
export function wireFeedFilter() {
  const box = $("feed-checks");
  box.checked = localStorage.getItem(SHOW_CHECKS_KEY) !== "hide";
  const apply = () => {
    $("feed").dataset.hideChecks = String(!box.checked);
    showFeedEmpty();
  };
  box.addEventListener("change", () => {
    localStorage.setItem(SHOW_CHECKS_KEY, box.checked ? "show" : "hide");
    apply();
  });
  apply();
}

// The latest events of every type and, apart, of every type but check_fail. The stream
// resumes from the lower of the two ends, so nothing falls between them; what both hold is
// shown once.
export async function loadRecentEvents() {
  const [all, changes] = await Promise.all([
    api("/v1/events?order=newest&limit=100"),
    api(`/v1/events?order=newest&limit=100&type=${NOT_CHECKS.join(",")}`),
  ]);
  for (const event of [...all.events, ...changes.events]) showEvent(event, false);
  state.lastEventId = Math.min(all.last_id, changes.last_id);
}

// The SSE stream, parsed by hand (see the top of this file for why not EventSource).
export async function follow() {
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

export function setLive(status, why = "") {
  const live = $("live");
  live.dataset.status = status;
  live.textContent = status === "live" ? "live" : status === "connecting" ? "connecting…" : "disconnected";
  live.title = why;
}
