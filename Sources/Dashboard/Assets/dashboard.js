// The dashboard: signs in with an API token (kept in this browser's localStorage, or taken from the URL's fragment,
// `#token=…`, which browsers never send), then shows the jobs table (`#/`) or one job's page (`#/jobs/ID`), both kept
// live from the daemon's Server-Sent Events: `/v1/watch` (every job and the pool) and `/v1/jobs/ID/events?follow=1`
// (the job's events.jsonl, resumed after the last event id on reconnect). Read with fetch, so that the token goes in
// the Authorization header as for every API call, never in a URL.
"use strict";

const TOKEN_KEY = "trainerd.token";
const ENDED = ["completed", "failed", "cancelled"];
const $ = (id) => document.getElementById(id);

let token = null, me = null, overview = { jobs: [], pool: [] }, watching = null, following = null;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function headers(extra = {}) { return Object.assign({ Authorization: `Bearer ${token}` }, extra); }

// A JSON API call; a refused token signs out.
async function api(method, path, body) {
  const response = await fetch(path, { method, headers: headers(body ? { "Content-Type": "application/json" } : {}),
                                       body: body ? JSON.stringify(body) : undefined, cache: "no-store" });
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401) { signOut(answer.error || "the token was refused"); throw new Error(answer.error); }
  if (!response.ok) throw new Error(answer.error || `${response.status} ${response.statusText}`);
  return answer;
}

// Reads the Server-Sent Events at `path` until the server ends them or `signal` aborts; `onEvent(data, id)` for
// each. Returns the last event id seen.
async function readEvents(path, onEvent, signal, lastId) {
  const response = await fetch(path, { headers: headers(lastId ? { "Last-Event-ID": lastId } : {}), signal, cache: "no-store" });
  if (response.status === 401) { signOut("the token was refused"); return lastId; }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return lastId;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let data = null, id = null;
      for (const line of frame.split("\n")) {
        if (line.startsWith("data: ")) data = (data === null ? "" : data + "\n") + line.slice(6);
        else if (line.startsWith("id: ")) id = line.slice(4);
      }
      if (id !== null) lastId = id;
      if (data !== null) onEvent(data, id);
    }
  }
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Follows `path` for as long as `controller` is not aborted and `more()` says there is more to come, reconnecting
// after a dropped connection (a daemon restart) where it left off.
async function follow(path, onEvent, controller, more) {
  let lastId = null;
  while (!controller.signal.aborted) {
    try {
      lastId = await readEvents(path, onEvent, controller.signal, lastId);
      if (!more()) return;
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    await pause(1000);
  }
}

// --- Signing in and out ------------------------------------------------------------------------------------------

function tokenFromFragment() {
  const match = location.hash.match(/(?:^#|[&?])token=([^&]*)/);
  if (!match) return null;
  const rest = location.hash.replace(/([&?]|^#)token=[^&]*&?/, "$1").replace(/[&?]$/, "");
  history.replaceState(null, "", location.pathname + location.search + (rest === "#" ? "" : rest));
  return decodeURIComponent(match[1]);
}

async function signIn(candidate) {
  token = candidate;
  try {
    me = await api("GET", "/v1/whoami");
  } catch (error) {
    showLogin(error.message);
    return;
  }
  localStorage.setItem(TOKEN_KEY, token);
  $("login").classList.add("hidden");
  $("app").classList.remove("hidden");
  $("who").textContent = `${me.name} (${me.role})`;
  $("submit-section").classList.toggle("hidden", me.role === "read");
  watch();
  route();
}

function signOut(reason) {
  localStorage.removeItem(TOKEN_KEY);
  token = null;
  me = null;
  if (watching) watching.abort();
  if (following) following.controller.abort();
  watching = following = null;
  showLogin(reason);
}

function showLogin(message) {
  token = null;
  $("app").classList.add("hidden");
  $("jobs").textContent = "";
  $("job-run").textContent = "";
  $("login").classList.remove("hidden");
  $("login-error").textContent = message || "";
  $("token").focus();
}

// --- The jobs table ----------------------------------------------------------------------------------------------

function watch() {
  if (watching) watching.abort();
  watching = new AbortController();
  follow("/v1/watch", (data) => {
    overview = JSON.parse(data);
    renderJobs();
    renderJobHead();
  }, watching, () => true);
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor(s / 60) % 60).padStart(2, "0")} min`;
}

const number = (value, digits = 4) => (value === null || value === undefined ? "–" : value.toFixed(digits));

function mayCancel(job) {
  if (!me || ENDED.includes(job.state) || job.cancel_requested) return false;
  return me.role === "admin" || (me.role === "submit" && job.submitter === me.name);
}

function cancelButton(job) {
  const button = element("button", "danger", job.state === "queued" ? "cancel" : "stop");
  button.type = "button";
  button.title = "Finishes the step, writes a checkpoint and frees the workers";
  button.addEventListener("click", async (click) => {
    click.preventDefault();
    click.stopPropagation();
    button.disabled = true;
    try { await api("POST", `/v1/jobs/${job.id}/cancel`); } catch (error) { alert(error.message); button.disabled = false; }
  });
  return button;
}

function renderJobs() {
  const body = $("jobs");
  body.textContent = "";
  for (const job of overview.jobs) {
    const row = element("tr");
    row.dataset.jobId = String(job.id);
    row.dataset.state = job.state;
    const link = element("a", null, `#${job.id}`);
    link.href = `#/jobs/${job.id}`;
    const cells = [link, job.name, null, String(job.priority), null, formatDuration(job.eta_seconds), number(job.loss),
                   job.test_accuracy === null || job.test_accuracy === undefined ? "–" : `${(job.test_accuracy * 100).toFixed(2)} %`,
                   workersText(job), job.samples_per_second ? String(Math.round(job.samples_per_second)) : "–", job.submitter, null];
    cells.forEach((content, index) => {
      const cell = element("td", [3, 6, 7, 8, 9].includes(index) ? "number" : null);
      if (content instanceof Node) cell.append(content); else if (content !== null) cell.textContent = content;
      row.append(cell);
    });
    row.children[2].append(element("span", `state ${job.state}`, job.cancel_requested && !ENDED.includes(job.state) ? `${job.state}, stopping` : job.state));
    row.children[4].append(progressBar(job), element("span", null, job.total_steps ? `${job.step} / ${job.total_steps}` : String(job.step)));
    if (mayCancel(job)) row.children[11].append(cancelButton(job));
    row.addEventListener("click", () => { location.hash = `#/jobs/${job.id}`; });
    body.append(row);
  }
  const pool = overview.pool, busy = pool.filter((member) => member.state.startsWith("job")).length;
  $("pool").textContent = `Pool: ${pool.length} workers, ${busy} busy, ${pool.length - busy} idle` +
    (pool.length ? ` (${pool.map((member) => `${member.name}: ${member.state}`).join(", ")})` : "");
}

function workersText(job) {
  const bounds = `${job.min_workers}–${job.max_workers ?? "any"}`;
  return job.workers === null || job.workers === undefined ? bounds : `${job.workers} (${bounds})`;
}

function progressBar(job) {
  const bar = element("span", "progress"), fill = element("span");
  fill.style.width = job.total_steps ? `${Math.min(100, (100 * job.step) / job.total_steps)}%` : "0";
  bar.append(fill);
  return bar;
}

$("submit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = $("submit-result");
  const max = $("submit-max").value;
  result.className = "";
  result.textContent = "submitting…";
  try {
    const job = await api("POST", "/v1/jobs", {
      config: $("submit-config").value, source: "the dashboard's config",
      overrides: $("submit-overrides").value.split("\n").map((line) => line.trim()).filter((line) => line),
      name: $("submit-name").value || undefined, priority: Number($("submit-priority").value || 0),
      min_workers: Number($("submit-min").value || 1), max_workers: max ? Number(max) : undefined,
    });
    result.textContent = `job ${job.id} submitted`;
  } catch (error) {
    result.className = "error";
    result.textContent = error.message;
  }
});

// --- A job's page ------------------------------------------------------------------------------------------------

function showJob(id) {
  if (following && following.id === id) return;
  if (following) following.controller.abort();
  const root = $("job-run");
  root.textContent = "";
  const charts = new RunCharts(root), controller = new AbortController();
  following = { id, controller, charts };
  renderJobHead();
  follow(`/v1/jobs/${id}/events?follow=1`, (data) => charts.add(JSON.parse(data)), controller, () => {
    const job = overview.jobs.find((candidate) => candidate.id === id);
    return !job || !ENDED.includes(job.state);
  });
}

function renderJobHead() {
  if (!following) return;
  const head = $("job-head"), job = overview.jobs.find((candidate) => candidate.id === following.id);
  head.textContent = "";
  if (!job) { head.append(element("span", null, `job ${following.id}`)); return; }
  const field = (label, value, className) => {
    const span = element("span", `field ${className || ""}`);
    span.append(element("b", null, label), document.createTextNode(value));
    head.append(span);
  };
  head.append(element("strong", null, `#${job.id} ${job.name}`), element("span", `state ${job.state}`, job.state));
  field("step", job.total_steps ? `${job.step} / ${job.total_steps}` : String(job.step));
  field("ETA", formatDuration(job.eta_seconds));
  field("workers", workersText(job));
  field("priority", String(job.priority));
  field("submitter", job.submitter);
  if (job.weights_sha256) field("weights_sha256", job.weights_sha256, "hash");
  if (job.failure) field("failure", job.failure, "error");
  if (mayCancel(job)) head.append(cancelButton(job));
  $("crumb").textContent = `› job ${job.id}`;
}

// --- Routing -------------------------------------------------------------------------------------------------------

function route() {
  if (!token) return;
  const match = location.hash.match(/^#\/jobs\/(\d+)/);
  $("jobs-view").classList.toggle("hidden", !!match);
  $("job-view").classList.toggle("hidden", !match);
  if (match) {
    showJob(Number(match[1]));
  } else {
    if (following) following.controller.abort();
    following = null;
    $("crumb").textContent = "";
  }
}

window.addEventListener("hashchange", () => {
  const fromFragment = tokenFromFragment();
  if (fromFragment) signIn(fromFragment); else route();
});
$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("token").value.trim());
});
$("sign-out").addEventListener("click", () => signOut(""));

const initial = tokenFromFragment() || localStorage.getItem(TOKEN_KEY);
if (initial) signIn(initial); else showLogin("");
