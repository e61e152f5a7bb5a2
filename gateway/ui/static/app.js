// The dashboard: sign in, then poll nodes, jobs and stats, and stream one job over a WebSocket.
import { api, ApiError, credentials, logIn, openSocket, signInWithKey, signOut } from "./api.js";
import { drawChart } from "./charts.js";

const $ = (id) => document.getElementById(id);
const WINDOW_MS = 5 * 60 * 1000; // what the charts show; the page keeps this much
const POLL = { stats: 2000, nodes: 3000, jobs: 3000, models: 15000 };
const TERMINAL = new Set(["completed", "failed", "cancelled"]);

// skew: the gateway's clock less this browser's (from /v1/stats), so ages are the gateway's
const state = { me: null, timers: [], stats: [], socket: null, jobId: null, texts: new Map(), skew: 0 };

function message(err) {
  if (err instanceof ApiError && err.code) return `${err.message} (${err.code})`;
  return err.message || String(err);
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function ago(iso) {
  const s = Math.max(0, (Date.now() + state.skew - Date.parse(iso)) / 1000);
  return s < 60 ? `${s.toFixed(1)} s ago` : `${Math.round(s / 60)} min ago`;
}

// ---- sign in / out ----

async function start(me) {
  state.me = me;
  $("who").textContent = `${me.principal_id} · ${me.tenant} · ${me.roles.join(", ")} · ${me.authenticated_by.replace("_", " ")}`;
  $("signin").hidden = true;
  $("dash").hidden = false;
  $("signout").hidden = false;
  const every = (fn, ms) => { fn(); state.timers.push(setInterval(fn, ms)); };
  every(pollStats, POLL.stats);
  every(pollNodes, POLL.nodes);
  every(pollJobs, POLL.jobs);
  every(pollModels, POLL.models);
}

function stop() {
  state.timers.forEach(clearInterval);
  state.timers = [];
  if (state.socket) state.socket.close();
  state.socket = null;
  state.stats = [];
  $("dash").hidden = true;
  $("signout").hidden = true;
  $("signin").hidden = false;
  $("who").textContent = "";
}

async function signedIn(promise) {
  $("signin-error").textContent = "";
  try {
    await start(await promise);
  } catch (err) {
    if (err.status === 401) await signOut(); // a key revoked or a session ended meanwhile
    $("signin-error").textContent = message(err);
  }
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  signedIn(signInWithKey($("key-input").value));
  $("key-input").value = "";
});
$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  signedIn(logIn($("login-email").value, $("login-password").value));
  $("login-password").value = "";
});
$("signout").addEventListener("click", async () => {
  await signOut();
  stop();
});

// ---- stats and charts ----

async function pollStats() {
  try {
    const snap = await api("GET", "/v1/stats");
    state.stats.push({ t: Date.now(), ...snap });
    state.skew = snap.at * 1000 - Date.now();
    const oldest = Date.now() - WINDOW_MS - POLL.stats;
    while (state.stats.length && state.stats[0].t < oldest) state.stats.shift();
    $("stats-note").textContent = `· ${snap.nodes_live} live node(s) · ${snap.in_flight} completion(s) in flight`;
  } catch (err) {
    $("stats-note").textContent = message(err);
  }
  drawCharts();
}

function drawCharts() {
  const now = Date.now(), rps = [], ttft = [], queue = {};
  // the last WINDOW_MS, or since the page began to poll (at least a minute) until it has that much
  const first = state.stats.length ? state.stats[0].t : now;
  const span = Math.min(WINDOW_MS, Math.max(60000, now - first));
  for (let i = 1; i < state.stats.length; i++) {
    const a = state.stats[i - 1], b = state.stats[i];
    const dt = (b.at - a.at) || (b.t - a.t) / 1000;
    if (dt <= 0 || b.requests_total < a.requests_total) continue; // the gateway restarted
    rps.push([b.t, (b.requests_total - a.requests_total) / dt]);
    const n = b.ttft.count - a.ttft.count;
    ttft.push([b.t, n > 0 ? ((b.ttft.sum_s - a.ttft.sum_s) / n) * 1000 : null]);
  }
  for (const s of state.stats) {
    for (const [model, waiting] of Object.entries(s.queue)) (queue[model] ||= []).push([s.t, waiting]);
  }
  drawChart($("chart-rps"), rps.length ? { "req/s": rps } : {}, now, span);
  drawChart($("chart-ttft"), ttft.some(([, v]) => v !== null) ? { ttft: ttft } : {}, now, span);
  drawChart($("chart-queue"), queue, now, span);
}

// ---- nodes ----

async function pollNodes() {
  const body = $("nodes-table").tBodies[0];
  try {
    const nodes = await api("GET", "/v1/nodes");
    $("nodes-error").textContent = "";
    $("nodes-table").hidden = false;
    $("nodes-note").textContent = `· ${nodes.filter((n) => n.live).length} of ${nodes.length} live`;
    body.replaceChildren();
    for (const n of nodes) {
      const row = body.insertRow();
      row.dataset.node = n.node_id;
      cell(row, n.node_id, "mono");
      cell(row, n.models.join(", "));
      cell(row, `${Math.round(n.load * 100)}%`);
      cell(row, `${n.in_flight}/${n.capacity}`);
      cell(row, n.live ? "live" : n.draining ? "draining" : "stale", n.live ? "ok" : "warn");
      cell(row, n.verified ? "signed ✓" : n.signature ? "signature unverified" : "unsigned", n.verified ? "ok" : "warn");
      cell(row, ago(n.heartbeat_at));
      cell(row, n.engine);
    }
  } catch (err) {
    body.replaceChildren();
    $("nodes-table").hidden = true;
    $("nodes-error").textContent = err.status === 403
      ? `Nodes are for admins: this ${state.me.authenticated_by.replace("_", " ")} has the roles ${state.me.roles.join(", ")}. Sign in with an admin's key to see them.`
      : message(err);
  }
}

// ---- models and the job form ----

async function pollModels() {
  try {
    const { data } = await api("GET", "/v1/models");
    const select = $("job-model"), was = select.value;
    select.replaceChildren(...data.map((m) => new Option(m.id, m.id)));
    if (data.some((m) => m.id === was)) select.value = was;
  } catch (err) {
    $("job-form-error").textContent = message(err);
  }
}

$("job-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("job-form-error").textContent = "";
  try {
    const job = await api("POST", "/v1/jobs", {
      model: $("job-model").value,
      prompt: $("job-prompt").value,
      max_tokens: Number($("job-max-tokens").value) || 64,
    });
    await watch(job.job_id);
    pollJobs();
  } catch (err) {
    $("job-form-error").textContent = message(err);
  }
});

// ---- jobs ----

$("filters").addEventListener("input", () => pollJobs());
$("filters").addEventListener("submit", (e) => e.preventDefault());

async function pollJobs() {
  const status = $("filter-status").value;
  const model = $("filter-model").value.trim().toLowerCase();
  const pattern = $("filter-pattern").value;
  const id = $("filter-id").value.trim().toLowerCase();
  const query = new URLSearchParams({ limit: "100" });
  if (status) query.set("status", status);
  try {
    const page = await api("GET", `/v1/jobs?${query}`);
    $("jobs-error").textContent = "";
    const body = $("jobs-table").tBodies[0];
    body.replaceChildren();
    for (const j of page.data) {
      if (model && !j.model.toLowerCase().includes(model)) continue;
      if (pattern && j.pattern !== pattern) continue;
      if (id && !j.job_id.toLowerCase().includes(id)) continue;
      const row = body.insertRow();
      row.dataset.job = j.job_id;
      if (j.job_id === state.jobId) row.className = "selected";
      cell(row, j.job_id.slice(-10), "mono");
      cell(row, j.status, `status ${j.status}`);
      cell(row, j.pattern);
      cell(row, j.model);
      cell(row, new Date(j.created_at).toLocaleTimeString());
      cell(row, String(j.usage.total_tokens));
      row.addEventListener("click", () => watch(j.job_id));
    }
  } catch (err) {
    $("jobs-error").textContent = message(err);
  }
}

// ---- one job: its timeline, and its tokens live over a WebSocket ----

function addEvent(seq, type, status, at, detail) {
  const list = $("timeline");
  if (list.querySelector(`[data-seq="${seq}"]`)) return;
  const item = document.createElement("li");
  item.dataset.seq = seq;
  item.textContent = `${at ? new Date(at).toLocaleTimeString() + " " : ""}${type}${status ? ` → ${status}` : ""}${detail ? ` · ${detail}` : ""}`;
  list.append(item);
}

function setStatus(status) {
  $("job-status").textContent = status;
  $("job-status").className = `status ${status}`;
  $("job-cancel").disabled = TERMINAL.has(status);
}

function showText() {
  const parts = [...state.texts.entries()];
  $("job-output").textContent = parts.length > 1
    ? parts.map(([task, text]) => `[${task}]\n${text}`).join("\n\n")
    : (parts[0] || ["", ""])[1];
}

async function watch(jobId) {
  if (state.socket) state.socket.close();
  state.socket = null;
  state.jobId = jobId;
  state.texts = new Map();
  for (const row of $("jobs-table").tBodies[0].rows) row.classList.toggle("selected", row.dataset.job === jobId);
  $("job-panel").hidden = false;
  $("job-id").textContent = jobId;
  $("job-output").textContent = "";
  $("timeline").replaceChildren();
  $("job-stream-note").textContent = "";
  let after = 0;
  try {
    const [job, events] = await Promise.all([
      api("GET", `/v1/jobs/${jobId}`),
      api("GET", `/v1/jobs/${jobId}/events`),
    ]);
    setStatus(job.status);
    for (const e of events) {
      addEvent(e.seq, e.type, null, e.at, e.data.reason || e.data.node_id || "");
      after = Math.max(after, e.seq);
    }
  } catch (err) {
    $("job-stream-note").textContent = message(err);
    return;
  }
  if (state.jobId !== jobId) return;
  let socket;
  try {
    socket = await openSocket(`/v1/jobs/${jobId}/stream?after_event=${after}`);
  } catch (err) {
    $("job-stream-note").textContent = message(err);
    return;
  }
  if (state.jobId !== jobId) { socket.close(); return; } // another job was chosen meanwhile
  state.socket = socket;
  $("job-stream-note").textContent = "streaming over a WebSocket…";
  socket.onmessage = (msg) => {
    if (state.jobId !== jobId) return;
    const frame = JSON.parse(msg.data);
    if (frame.type === "text") {
      state.texts.set(frame.task_id, (state.texts.get(frame.task_id) || "") + frame.text);
      showText();
    } else if (frame.type === "event") {
      addEvent(frame.event_seq, frame.event, frame.status, null, frame.data.reason || frame.data.node_id || "");
      if (frame.status) setStatus(frame.status);
    } else if (frame.type === "end") {
      setStatus(frame.status);
      if (frame.output && !state.texts.size) state.texts.set("output", frame.output);
      showText();
      const u = frame.usage;
      const usage = u ? ` · ${u.completion_tokens} tokens out, ${u.prompt_tokens} in` : "";
      $("job-stream-note").textContent = `ended: ${frame.status}${usage}${frame.error ? ` · ${frame.error}` : ""}`;
    } else if (frame.type === "error") {
      $("job-stream-note").textContent = `${frame.error.message} (${frame.error.code})`;
    }
  };
  socket.onclose = (e) => {
    if (state.jobId === jobId && e.code !== 1000 && !$("job-stream-note").textContent.startsWith("ended")) {
      $("job-stream-note").textContent += ` (socket closed: ${e.code})`;
    }
  };
}

$("job-cancel").addEventListener("click", async () => {
  if (!state.jobId) return;
  try {
    await api("DELETE", `/v1/jobs/${state.jobId}`);
    if (!TERMINAL.has($("job-status").textContent)) $("job-stream-note").textContent = "cancelling…";
  } catch (err) {
    $("job-stream-note").textContent = message(err);
  }
});

const creds = credentials();
if (creds) signedIn(api("GET", "/v1/me")).catch(() => {});
