// Talking to the daemon's JSON API, and the API token (kept in this tab's sessionStorage).

import { $ } from "./format.js";

const TOKEN_KEY = "healthd.token";

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  if (token()) h.Authorization = `Bearer ${token()}`;
  return h;
}

export async function errorOf(response) {
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
export async function api(path, { method = "GET", body, asked = false } = {}) {
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

export function askToken(why) {
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

// A change always needs the token but over the Unix socket: ask for it before the first one.
export async function postWithToken(path, body) {
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
