// The workspace page's Jobs view: run a notebook now, watch its progress and log live (the
// job's server-sent event stream), cancel it, open its HTML output (served sandboxed).
import { $, ApiError, api, el, fillNotebooks, parameters, money, say, when } from "/static/common.js";
import { refreshSchedules } from "/static/schedules.js";

const STABLE = new Set(["succeeded", "failed", "timed_out", "canceled"]);
const jobs = { ws: null, watching: null, source: null };

function enc(s) {
  return encodeURIComponent(s);
}

export function initJobs() {
  $("run-job").addEventListener("submit", runJob);
}

// Called when the workspace changes and on the page's slow tick.
export async function refreshJobs(ws) {
  if (ws !== jobs.ws) {
    jobs.ws = ws;
    stopWatching();
    $("job-watch").hidden = true;
  }
  const [list, notebooks] = await Promise.all([
    api("GET", `/jobs?workspace=${enc(ws)}&limit=20`),
    api("GET", `/workspaces/${enc(ws)}/notebooks`),
  ]);
  if (ws !== jobs.ws) return;
  fillNotebooks("job-notebook", "job-run", notebooks.data);
  renderJobs(list.data.items);
  await refreshSchedules(ws, notebooks.data);
}

function renderJobs(items) {
  $("jobs-empty").hidden = items.length > 0;
  $("jobs").querySelector("tbody").replaceChildren(...items.map((j) => {
    const p = j.progress;
    const actions = el("td", { class: "actions" },
      el("button", { class: "small", onclick: () => watch(j) }, "Watch"));
    if (!STABLE.has(j.status)) {
      actions.append(el("button", { class: "small danger", "data-action": "cancel",
        onclick: () => cancel(j.id) }, "Cancel"));
    }
    if (j.outputs.html) {
      actions.append(" ", el("a", { href: `/api/v1/jobs/${enc(j.id)}/output?format=html`,
        target: "_blank", rel: "noopener", class: "button small" }, "HTML"));
    }
    return el("tr", { "data-job": j.id },
      el("td", {}, el("code", {}, j.id)),
      el("td", {}, j.notebook || "(inline)"),
      el("td", {}, el("span", { class: "status", "data-status": j.status }, j.status),
        j.error ? el("span", { class: "muted" }, ` ${j.error.message}`) : null),
      el("td", {}, p.cells_total ? `${p.cells_done}/${p.cells_total}` : ""),
      el("td", {}, when(j.started_at)),
      el("td", { class: "num" }, money(j.cost, 4)),
      actions);
  }));
}

async function runJob(event) {
  event.preventDefault();
  const body = { notebook: $("job-notebook").value, network: $("job-network").value };
  const params = parameters("job-parameters");
  if (params === null) return;
  body.parameters = params;
  const limit = $("job-time-limit").value;
  if (limit) body.time_limit_seconds = Number(limit);
  try {
    const job = (await api("POST", `/workspaces/${enc(jobs.ws)}/jobs`, body)).data;
    say(`Job ${job.id} submitted.`);
    watch(job);
    await refreshJobs(jobs.ws);
  } catch (e) {
    say(e.message, "error");
  }
}

async function cancel(id) {
  try {
    await api("POST", `/jobs/${enc(id)}/cancel`);
    await refreshJobs(jobs.ws);
  } catch (e) {
    say(e instanceof ApiError ? e.message : String(e), "error");
  }
}

function stopWatching() {
  if (jobs.source) jobs.source.close();
  jobs.source = null;
}

function showStatus(status, p) {
  const badge = $("job-watch-status");
  badge.textContent = status;
  badge.dataset.status = status;
  if (p) {
    $("job-progress").max = p.cells_total || 1;
    $("job-progress").value = p.cells_done;
    $("job-progress-text").textContent = p.cells_total
      ? `${p.cells_done} of ${p.cells_total} cells` : "";
  }
}

// Follows one job's stream: progress events move the bar, log events append lines, the end
// event shows the result and refreshes the list.
function watch(job) {
  stopWatching();
  jobs.watching = job.id;
  $("job-watch").hidden = false;
  $("job-watch-id").textContent = job.id;
  $("job-watch-error").textContent = "";
  $("job-log").replaceChildren();
  showStatus(job.status, job.progress);
  const source = new EventSource(`/api/v1/jobs/${enc(job.id)}/stream`);
  jobs.source = source;
  source.addEventListener("progress", (e) => {
    const d = JSON.parse(e.data);
    showStatus(d.status, d);
  });
  source.addEventListener("log", (e) => {
    const d = JSON.parse(e.data);
    const log = $("job-log");
    log.append(el("span", { class: d.stream }, `${d.line}\n`));
    log.scrollTop = log.scrollHeight;
  });
  source.addEventListener("end", (e) => {
    const done = JSON.parse(e.data);
    stopWatching();
    showStatus(done.status, done.progress);
    $("job-watch-error").textContent = done.error ? done.error.message : "";
    refreshJobs(jobs.ws).catch((err) => say(err.message, "error"));
  });
  source.onerror = () => {
    if (jobs.source === source && source.readyState === EventSource.CLOSED) stopWatching();
  };
}
