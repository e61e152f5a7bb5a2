// The gateway's API from the page: the caller's credentials and JSON requests.
//
// Credentials live in sessionStorage: this tab only, gone when it closes, never in a URL or in
// localStorage (which every tab and every later visit would share). A login keeps its refresh
// token there too, to renew the short-lived access token once when it expires.

const STORE = "dim.credentials";

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || null;
  }
}

export function credentials() {
  try {
    return JSON.parse(sessionStorage.getItem(STORE) || "null");
  } catch {
    return null;
  }
}

function remember(creds) {
  if (creds) sessionStorage.setItem(STORE, JSON.stringify(creds));
  else sessionStorage.removeItem(STORE);
}

async function send(method, path, body, token) {
  const headers = { accept: "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

async function refresh(creds) {
  const pair = await send("POST", "/v1/auth/refresh", { refresh_token: creds.refresh });
  remember({ kind: "session", token: pair.access_token, refresh: pair.refresh_token });
  return pair.access_token;
}

/** A request as the signed-in caller; a login's expired access token is refreshed once. */
export async function api(method, path, body) {
  const creds = credentials();
  if (!creds) throw new ApiError(401, { error: { message: "not signed in" } });
  try {
    return await send(method, path, body, creds.token);
  } catch (err) {
    if (err.status === 401 && creds.kind === "session" && creds.refresh) {
      return send(method, path, body, await refresh(creds));
    }
    throw err;
  }
}

export async function signInWithKey(key) {
  remember({ kind: "key", token: key.trim() });
  try {
    return await api("GET", "/v1/me");
  } catch (err) {
    remember(null);
    throw err;
  }
}

export async function logIn(email, password) {
  const pair = await send("POST", "/v1/auth/login", { email, password });
  remember({ kind: "session", token: pair.access_token, refresh: pair.refresh_token });
  return api("GET", "/v1/me");
}

export async function signOut() {
  const creds = credentials();
  if (creds && creds.kind === "session") {
    try {
      await api("POST", "/v1/auth/logout");
    } catch {
      // the session may have ended already; forgetting it here is what matters
    }
  }
  remember(null);
}

/** A WebSocket to `path`, opened with a single-use ticket (never the key itself). */
export async function openSocket(path) {
  const { ticket, protocol } = await api("POST", "/v1/ws-tickets");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return new WebSocket(`${scheme}//${location.host}${path}`, [protocol, ticket]);
}
