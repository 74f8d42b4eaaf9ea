// The workspace page's Schedules view: create a schedule (cron in your time zone), see each
// one's next run and last run, pause, resume, run now, and its history of slots.
import { $, api, el, fillNotebooks, parameters, say, when } from "/static/common.js";

const sched = { ws: null, history: null, previewTimer: null, asked: null };

function enc(s) {
  return encodeURIComponent(s);
}

export function initSchedules() {
  $("sched-tz").value = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  $("new-schedule").addEventListener("submit", createSchedule);
  for (const id of ["sched-cron", "sched-tz"]) {
    $(id).addEventListener("input", () => {
      clearTimeout(sched.previewTimer);
      sched.previewTimer = setTimeout(previewRuns, 250);
    });
  }
}

// The next five runs as you type, in the schedule's zone and in UTC (the service computes
// them, with cron's own rules for daylight saving time), or why the cron is refused.
async function previewRuns() {
  const cron = $("sched-cron").value.trim();
  const tz = $("sched-tz").value.trim();
  const out = $("sched-preview");
  if (!cron) return out.replaceChildren();
  const asked = `${cron}|${tz}`;
  sched.asked = asked;
  try {
    const runs = (await api("GET",
      `/schedules/preview?cron=${enc(cron)}&timezone=${enc(tz)}&count=5`)).data.runs;
    if (sched.asked !== asked) return;
    out.dataset.state = "ok";
    out.replaceChildren(el("span", { class: "muted" }, "Next runs: "),
      el("ol", {}, ...runs.map((r) => el("li", {}, `${r.replace("T", " ")} (${tz}) · ` +
        `${new Date(r).toISOString().slice(0, 16).replace("T", " ")} UTC`))));
  } catch (e) {
    if (sched.asked !== asked) return;
    out.dataset.state = "error";
    out.replaceChildren(el("span", { class: "error" }, e.message));
  }
}

export async function refreshSchedules(ws, notebooks) {
  if (ws !== sched.ws) {
    sched.ws = ws;
    sched.history = null;
    $("sched-history").hidden = true;
  }
  const list = (await api("GET", `/schedules?workspace=${enc(ws)}`)).data.items;
  if (ws !== sched.ws) return;
  if (notebooks) fillNotebooks("sched-notebook", "sched-create", notebooks);
  renderSchedules(list);
  if (sched.history) await showHistory(sched.history);
}

function renderSchedules(items) {
  $("schedules-empty").hidden = items.length > 0;
  $("schedules").tBodies[0].replaceChildren(...items.map((s) => {
    const whenText = s.cron ? `${s.cron} (${s.timezone})`
      : `after ${s.after.schedule} ${s.after.on.join("/")}`;
    const last = s.last_job
      ? el("span", { class: "status", "data-status": s.last_job.status }, s.last_job.status)
      : el("span", { class: "muted" }, "never");
    return el("tr", { "data-schedule": s.id },
      el("td", {}, s.name),
      el("td", {}, el("code", {}, whenText)),
      el("td", { class: "next-run" }, s.active ? when(s.next_run_at) || "on its trigger" : "paused"),
      el("td", { class: "last-run" }, last),
      el("td", { class: "actions" },
        el("button", { class: "small", "data-action": s.active ? "pause" : "resume",
          onclick: () => setActive(s.id, !s.active) }, s.active ? "Pause" : "Resume"),
        el("button", { class: "small", "data-action": "run", onclick: () => runNow(s.id) },
          "Run now"),
        el("button", { class: "small", "data-action": "history",
          onclick: () => showHistory(s) }, "History")));
  }));
}

async function createSchedule(event) {
  event.preventDefault();
  const body = { name: $("sched-name").value, notebook: $("sched-notebook").value,
    cron: $("sched-cron").value, timezone: $("sched-tz").value };
  const params = parameters("sched-parameters");
  if (params === null) return;
  body.parameters = params;
  try {
    const s = (await api("POST", `/workspaces/${enc(sched.ws)}/schedules`, body)).data;
    say(`Schedule ${s.name} created; next run ${when(s.next_run_at)}.`);
    await refreshSchedules(sched.ws);
  } catch (e) {
    say(e.message, "error");
  }
}

async function setActive(id, active) {
  try {
    await api("PATCH", `/schedules/${enc(id)}`, { active });
    await refreshSchedules(sched.ws);
  } catch (e) {
    say(e.message, "error");
  }
}

async function runNow(id) {
  try {
    const job = (await api("POST", `/schedules/${enc(id)}/run`)).data;
    say(`Job ${job.id} started (see Jobs).`);
    await refreshSchedules(sched.ws);
  } catch (e) {
    say(e.message, "error");
  }
}

async function showHistory(s) {
  sched.history = s;
  const items = (await api("GET", `/schedules/${enc(s.id)}/runs?limit=50`)).data.items;
  $("sched-history").hidden = false;
  $("sched-history-name").textContent = s.name;
  $("sched-runs").tBodies[0].replaceChildren(...items.map((r) => el("tr", {},
    el("td", {}, when(r.scheduled_for)),
    el("td", {}, r.outcome),
    el("td", {}, r.job ? el("span", { class: "status", "data-status": r.job_status || "" },
      `${r.job} ${r.job_status || ""}`) : ""),
    el("td", { class: "muted" }, r.reason))));
}
