// Formatting for people, and building DOM nodes: text is only ever set as textContent.

export const SEVERITY = ["unhealthy", "gave_up", "config_error", "restarting", "starting", "paused",
  "healthy", "disabled"];

export const PROBLEMS = new Set(["unhealthy", "gave_up", "config_error", "restarting"]);

export const LABELS = { gave_up: "gave up", config_error: "config error" };

export const $ = (id) => document.getElementById(id);

const NEVER = "0001-01-01T00:00:00Z";

export function when(text) {
  if (!text || text === NEVER) return null;
  const t = Date.parse(text);
  return Number.isNaN(t) ? null : t;
}

export function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
}

export function ago(text) {
  const t = when(text);
  return t === null ? "never" : `${span((Date.now() - t) / 1000)} ago`;
}

export function took(seconds) {
  if (seconds === undefined || seconds === null) return "";
  return seconds < 1 ? `${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 0)} ms` : `${seconds.toFixed(2)} s`;
}

export function clock(text) {
  const t = when(text);
  return t === null ? "" : new Date(t).toLocaleTimeString([], { hour12: false });
}

export function el(tag, attrs = {}, ...children) {
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

export function badge(status) {
  const s = status ? status.state : "starting";
  const node = el("span", { class: "badge", "data-state": s, text: LABELS[s] || s });
  if (status && status.flapping) {
    node.classList.add("flap");
    node.title = "flapping: restarts are held";
  }
  return node;
}
