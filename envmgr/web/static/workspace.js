// The workspace page: sign in, pick a workspace, open its notebooks, run your runtime.
import {
  $, ApiError, api, bytes, duration, el, money, say, showUser, signOut, when,
} from "/static/common.js";
import { initJobs, refreshJobs } from "/static/jobs.js";
import { initSchedules } from "/static/schedules.js";

const STABLE = new Set(["running", "paused", "deleted", "error"]);
const state = { me: null, catalog: null, ws: null, runtime: null, timer: null, ticks: 0 };

function enc(s) {
  return encodeURIComponent(s);
}

function show(id, visible) {
  $(id).hidden = !visible;
}

// ---- sign in ----------------------------------------------------------------------------

async function start() {
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  try {
    state.me = (await api("GET", "/me")).data;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return showSignIn();
    throw e;
  }
  await showApp();
}

function showSignIn() {
  show("workspaces-link", false);
  show("signin", true);
  show("app", false);
  $("token").focus();
}

// Where `next` may send a freshly signed-in browser: a path of this very origin, decided by
// parsing it as the browser will (`/\\evil.example` or `/%09/evil.example` are other sites).
function sameOriginPath(next) {
  if (!next) return null;
  let url;
  try {
    url = new URL(next, location.origin);
  } catch {
    return null;
  }
  return url.origin === location.origin ? url.pathname + url.search + url.hash : null;
}

async function signIn(event) {
  event.preventDefault();
  $("signin-error").textContent = "";
  try {
    state.me = (await api("POST", "/session", { token: $("token").value })).data;
  } catch (e) {
    $("signin-error").textContent = e.message;
    return;
  }
  $("token").value = "";
  const next = sameOriginPath(new URLSearchParams(location.search).get("next"));
  if (next) {
    location.href = next;
    return;
  }
  await showApp();
}

async function showApp() {
  show("signin", false);
  show("app", true);
  showUser(state.me);
  wireApp();
  state.catalog = (await api("GET", "/catalog")).data;
  fillMachineTypes();
  await loadWorkspaces();
}

function wireApp() {
  $("workspace").addEventListener("change", () => selectWorkspace($("workspace").value));
  $("new-workspace").addEventListener("submit", createWorkspace);
  $("new-notebook").addEventListener("submit", createNotebook);
  $("create-runtime").addEventListener("submit", createRuntime);
  $("rt-pause").addEventListener("click", () => act("pause"));
  $("rt-resume").addEventListener("click", () => act("resume"));
  $("rt-delete").addEventListener("click", () => act("delete"));
  initJobs();
  initSchedules();
}

// ---- workspaces -------------------------------------------------------------------------

async function loadWorkspaces(pick) {
  const items = (await api("GET", "/workspaces")).data.items;
  state.workspaces = Object.fromEntries(items.map((w) => [w.name, w]));
  const select = $("workspace");
  select.replaceChildren(...items.map((w) => el("option", { value: w.name }, w.name)));
  if (!items.length) {
    say("You belong to no workspace yet: create one, or ask an owner to add you.");
    show("runtime-panel", false);
    show("notebooks-panel", false);
    return;
  }
  const names = items.map((w) => w.name);
  const wanted = pick || location.hash.replace(/^#ws=/, "") || localStorage.getItem("envmgr.ws");
  await selectWorkspace(names.includes(wanted) ? wanted : names[0]);
}

async function selectWorkspace(name) {
  state.ws = name;
  state.runtime = null;
  $("workspace").value = name;
  localStorage.setItem("envmgr.ws", name);
  history.replaceState(null, "", `${location.pathname}${location.search}#ws=${enc(name)}`);
  show("runtime-panel", true);
  show("notebooks-panel", true);
  say("");
  fillAutopause(state.workspaces && state.workspaces[name]);
  await Promise.all([refreshRuntime(), refreshNotebooks(), refreshDisks(), refreshCosts(),
    refreshJobs(name)]);
  schedule();
}

// What you have spent this calendar month (UTC): here, and in all your workspaces.
async function refreshCosts() {
  const ws = state.ws;
  const first = `${new Date().toISOString().slice(0, 7)}-01`;
  const r = (await api("GET", `/me/costs?start=${first}&group_by=workspace&granularity=month`))
    .data;
  if (ws !== state.ws) return;
  const here = r.groups.find((g) => g.key === ws);
  $("my-costs").textContent =
    `This month: ${money(here ? here.total : 0)} here, ${money(r.total)} in all your workspaces.`;
}

async function createWorkspace(event) {
  event.preventDefault();
  const name = $("new-workspace-name").value.trim();
  try {
    await api("POST", "/workspaces", { name });
  } catch (e) {
    return say(e.message, "error");
  }
  $("new-workspace-name").value = "";
  await loadWorkspaces(name);
  say(`Created workspace ${name}.`);
}

// ---- notebooks --------------------------------------------------------------------------

async function refreshNotebooks() {
  const ws = state.ws;
  let items;
  try {
    items = (await api("GET", `/workspaces/${enc(ws)}/notebooks`)).data;
  } catch (e) {
    return say(e.message, "error");
  }
  if (ws !== state.ws) return;
  const rows = items.map((nb) => {
    const lock = nb.lock;
    const mine = lock && lock.holder === state.me.email;
    const held = lock && !mine;
    const holder = lock
      ? el("span", { class: mine ? "lock mine" : "lock" }, mine ? "you" : lock.holder,
        el("span", { class: "muted" }, ` until ${when(lock.expires_at)}`))
      : el("span", { class: "muted" }, "nobody");
    const button = (mode, label, disabled) =>
      el("button", { class: "small", "data-mode": mode, disabled,
        title: disabled ? `${lock.holder} is editing it; open a playground copy instead` : null,
        onclick: (ev) => openNotebook(nb.path, mode, ev.currentTarget) }, label);
    return el("tr", { "data-path": nb.path },
      el("td", {}, nb.path), el("td", {}, bytes(nb.size)), el("td", {}, when(nb.updated_at)),
      el("td", {}, holder),
      el("td", { class: "actions" }, button("edit", "Edit", held),
        button("playground", "Playground", false), button("readonly", "Preview", false)));
  });
  $("notebooks").tBodies[0].replaceChildren(...rows);
  show("notebooks-empty", !items.length);
}

// Opens the window at once (a popup opened after a slow await would be blocked), says in
// it what is happening while the runtime starts, then points it at the notebook. The new
// tab never keeps a handle on this page (`opener`): what it loads is user content.
async function openNotebook(path, mode, button) {
  const win = window.open("about:blank", "_blank");
  if (win) {
    win.opener = null;
    startingTab(win, path);
  }
  button.disabled = true;
  try {
    const url = await openWhenReady(path, mode, win);
    if (win) win.location.href = url;
    say(`Opened ${path} (${mode === "readonly" ? "preview" : mode}).`);
  } catch (e) {
    if (win) win.close();
    say(e.message, "error");
  } finally {
    button.disabled = false;
    refreshNotebooks();
    refreshRuntime();
  }
}

// The opening tab (same origin as this page until it goes to the runtime): a title and
// a line of status instead of a blank page.
function startingTab(win, path) {
  const d = win.document;
  d.title = `Opening ${path}`;
  const line = d.createElement("p");
  line.id = "envmgr-starting";
  line.style.font = "16px system-ui, sans-serif";
  line.style.margin = "3em";
  line.textContent = `Opening ${path}…`;
  d.body.replaceChildren(line);
}

function tellTab(win, text) {
  const line = win && !win.closed && win.document.getElementById("envmgr-starting");
  if (line) line.textContent = text;
}

async function openWhenReady(path, mode, win) {
  const started = Date.now();
  const deadline = started + 15 * 60 * 1000;
  for (;;) {
    const r = await api("POST", `/workspaces/${enc(state.ws)}/notebooks/open`, { path, mode });
    if (r.status === 200) return r.data.url;
    say(`Starting your runtime to open ${path}…`);
    await refreshRuntime();
    const status = state.runtime ? state.runtime.status : "creating";
    tellTab(win, `Starting your runtime to open ${path}: ${status} ` +
      `(${Math.round((Date.now() - started) / 1000)} s). JupyterLab opens here when it is ready.`);
    if (Date.now() > deadline) throw new Error("your runtime did not start in 15 minutes");
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function createNotebook(event) {
  event.preventDefault();
  let path = $("new-notebook-path").value.trim();
  if (!path.endsWith(".ipynb")) path += ".ipynb";
  // A kernel named, as JupyterLab writes it: opening it starts Python, asks nothing.
  const empty = {
    cells: [{ cell_type: "code", execution_count: null, id: "first", metadata: {}, outputs: [],
      source: "" }],
    metadata: {
      kernelspec: { name: "python3", display_name: "Python 3 (ipykernel)", language: "python" },
      language_info: { name: "python" },
    },
    nbformat: 4,
    nbformat_minor: 5,
  };
  try {
    // If-Match 0: only if no notebook has that path yet, never replace one.
    await api("PUT", `/workspaces/${enc(state.ws)}/notebooks/content?path=${enc(path)}`, empty,
      { "If-Match": "0" });
  } catch (e) {
    const why = e.code === "generation_mismatch" ? `${path} already exists` : e.message;
    return say(why, "error");
  }
  $("new-notebook-path").value = "";
  say(`Created ${path}.`);
  await refreshNotebooks();
}

// ---- the runtime ------------------------------------------------------------------------

function fillMachineTypes() {
  const cat = state.catalog;
  $("machine-type").replaceChildren(...Object.entries(cat.machine_types).map(([name, m]) =>
    el("option", { value: name, selected: name === cat.defaults.machine_type },
      `${name} (${m.vcpus} vCPU, ${m.memory_gb} GB, ${money(m.usd_per_hour, 3)}/h)`)));
  $("disk-size").value = cat.defaults.disk_size_gb;
  $("autopause-minutes").value = cat.defaults.autopause_minutes;
}

// The workspace's idle limits (its owner or an admin sets them): the form's default,
// bounds and the words beside it.
function fillAutopause(ws) {
  const a = ws && ws.autopause;
  if (!a) return;
  const input = $("autopause-minutes");
  input.value = a.default_minutes;
  input.min = a.may_turn_off ? 0 : a.min_minutes;
  input.max = a.max_minutes;
  $("autopause-bounds").textContent = (a.may_turn_off ? "0 (never) or " : "") +
    `${a.min_minutes} to ${a.max_minutes} in this workspace; it pauses after this long ` +
    "with no cell run, terminal input, save or use of its page (an open tab alone is " +
    "not use); a busy kernel keeps it up";
}

async function refreshDisks() {
  const ws = state.ws;
  const disks = (await api("GET", "/disks?limit=1000")).data.items.filter((d) =>
    d.workspace === ws && d.status === "ready" && !d.attached_to &&
    d.owner === state.me.email);
  if (ws !== state.ws) return;
  $("disk-choice").replaceChildren(el("option", { value: "" }, "a new disk"),
    ...disks.map((d) => el("option", { value: d.id, selected: true },
      `kept disk ${d.id} (${d.size_gb} GB, ${money(d.cost_per_month)}/month)`)));
}

async function refreshRuntime() {
  const ws = state.ws;
  let items;
  try {
    items = (await api("GET",
      `/runtimes?workspace=${enc(ws)}&owner=${enc(state.me.email)}`)).data.items;
  } catch (e) {
    return say(e.message, "error");
  }
  if (ws !== state.ws) return;
  state.runtime = items.find((r) => r.status !== "deleted") || null;
  renderRuntime();
}

function renderRuntime() {
  const rt = state.runtime;
  show("runtime-none", !rt);
  show("runtime-some", !!rt);
  if (!rt) return;
  const badge = $("rt-status");
  badge.textContent = rt.status;
  badge.dataset.status = rt.status;
  $("rt-reason").textContent = rt.status_reason ? `(${rt.status_reason})` : "";
  $("rt-machine").textContent = rt.machine_type + (rt.limits
    ? ` (limited here to ${+(rt.limits.memory_bytes / 2 ** 30).toFixed(2)} GiB memory, ` +
      (rt.limits.vcpus ? `${rt.limits.vcpus} vCPU, ` : "") +
      `${rt.limits.pids} processes)` : "");
  $("rt-cost").textContent = `${money(rt.cost_per_hour, 3)} per hour now`;
  $("rt-disk").textContent = rt.disk_id || "none";
  $("rt-errors").textContent = rt.status === "error" && rt.errors.length
    ? rt.errors[0].message : "";
  // The API says what this caller may do now: buttons that would only earn a 409 or 403
  // are disabled, with no copy of the state machine here.
  $("rt-pause").disabled = !rt.actions.includes("pause");
  $("rt-resume").disabled = !rt.actions.includes("resume");
  $("rt-delete").disabled = !rt.actions.includes("delete");
  show("rt-open", !!rt.url);
  if (rt.url) $("rt-open").href = rt.url;
  renderCountdown();
}

function renderCountdown() {
  const rt = state.runtime;
  if (!rt) return;
  let text;
  if (rt.autopause_minutes === 0) text = "off";
  else if (!rt.autopause_at) text = `after ${rt.autopause_minutes} idle minutes`;
  else {
    const left = (new Date(rt.autopause_at) - Date.now()) / 1000;
    const last = rt.last_activity || { at: rt.last_activity_at, kind: "activity" };
    const why = rt.busy_since
      ? `kernel busy since ${new Date(rt.busy_since).toLocaleTimeString()}`
      : `last activity: ${last.kind} ${duration((Date.now() - new Date(last.at)) / 1000)} ago`;
    text = left > 0
      ? `pauses in ${duration(left)} if nothing happens (${why})`
      : `pausing at the next check (${why})`;
  }
  $("rt-autopause").textContent = text;
}

async function createRuntime(event) {
  event.preventDefault();
  const disk = $("disk-choice").value
    ? { id: $("disk-choice").value }
    : { size_gb: Number($("disk-size").value) };
  const body = {
    machine_type: $("machine-type").value,
    disk,
    autopause_minutes: Number($("autopause-minutes").value),
  };
  try {
    state.runtime = (await api("POST", `/workspaces/${enc(state.ws)}/runtimes`, body)).data;
  } catch (e) {
    return say(e.message, "error");
  }
  say("Creating your runtime…");
  renderRuntime();
  schedule();
}

async function act(action) {
  const rt = state.runtime;
  if (!rt) return;
  try {
    if (action === "delete") {
      const keep = $("rt-keep-disk").checked;
      const what = keep ? "Its disk is kept for a later runtime." : "Its disk and files go too.";
      if (!confirm(`Delete your runtime in ${rt.workspace}? ${what}`)) return;
      state.runtime = (await api("DELETE", `/runtimes/${rt.id}?keep_disk=${keep}`)).data;
    } else {
      state.runtime = (await api("POST", `/runtimes/${rt.id}/${action}`)).data;
    }
  } catch (e) {
    return say(e.message, "error");
  }
  say("");
  renderRuntime();
  schedule();
}

// ---- live updates -----------------------------------------------------------------------

// One loop: the runtime every second while it changes, every 5 s when it is stable;
// notebooks (locks come and go) every 10 s; the countdown every second.
function schedule() {
  clearTimeout(state.timer);
  state.timer = setTimeout(tick, 1000);
}

async function tick() {
  state.ticks += 1;
  const rt = state.runtime;
  const busy = rt && !STABLE.has(rt.status);
  try {
    if (busy || state.ticks % 5 === 0) {
      const before = rt && rt.status;
      await refreshRuntime();
      // A status change moves disks (delete keeps one) and locks (a pause releases them).
      if (before && (!state.runtime || state.runtime.status !== before)) {
        await Promise.all([refreshDisks(), refreshNotebooks()]);
      }
    }
    if (state.ticks % 10 === 0) await Promise.all([refreshNotebooks(), refreshJobs(state.ws)]);
    if (state.ticks % 60 === 0) await refreshCosts();
  } catch (e) {
    say(e.message, "error");
  } finally {
    renderCountdown();
    schedule();
  }
}

start().catch((e) => say(e.message, "error"));
