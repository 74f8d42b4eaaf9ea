// The cost dashboard: totals, cost over time stacked by a grouping, the top spenders, and
// the runtimes running now (idlest first) with a pause button.
import { $, api, duration, el, money, say, showUser, signOut } from "/static/common.js";

const COLORS = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2", "#db2777",
  "#65a30d", "#ea580c", "#475569"];
const MAX_SERIES = 8; // more groups than this are summed as "others" in the chart
const DAY = 86400000;
let chart = null;

function isoDay(d) {
  return d.toISOString().slice(0, 10);
}

function params() {
  const group = $("group-by").value === "label" ? `label:${$("label-key").value.trim()}`
    : $("group-by").value;
  return new URLSearchParams({ start: $("start").value, end: $("end").value, group_by: group,
    granularity: $("granularity").value });
}

// Every period of the range, so days without costs show as gaps rather than vanish.
function periods(start, end, granularity) {
  const out = [];
  const last = new Date(`${end}T00:00:00Z`);
  let d = new Date(`${start}T00:00:00Z`);
  if (granularity === "week") d = new Date(d - ((d.getUTCDay() + 6) % 7) * DAY);
  if (granularity === "month") {
    d = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1));
    while (d <= last) {
      out.push(isoDay(d).slice(0, 7));
      d = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1));
    }
    return out;
  }
  const step = granularity === "week" ? 7 * DAY : DAY;
  for (; d <= last; d = new Date(d.getTime() + step)) out.push(isoDay(d));
  return out;
}

async function load(event) {
  if (event) event.preventDefault();
  const q = params();
  history.replaceState(null, "", `${location.pathname}?${q}`);
  say("");
  let report, byUser;
  try {
    [report, byUser] = await Promise.all([
      api("GET", `/admin/costs?${q}`).then((r) => r.data),
      api("GET", `/admin/costs?${new URLSearchParams({ start: q.get("start"),
        end: q.get("end"), group_by: "user", granularity: "month" })}`).then((r) => r.data),
    ]);
  } catch (e) {
    return say(e.message, "error");
  }
  const sum = (k) => report.groups.reduce((a, g) => a + g[k], 0);
  $("total").textContent = money(report.total);
  $("total-compute").textContent = money(sum("compute"));
  $("total-disk").textContent = money(sum("disk"));
  $("total-jobs").textContent = money(sum("jobs"));
  drawChart(report);
  drawSpenders(byUser);
}

function drawChart(report) {
  const labels = periods(report.start, report.end, report.granularity);
  const shown = report.groups.slice(0, MAX_SERIES);
  const rest = report.groups.slice(MAX_SERIES);
  const series = (groups) => labels.map((p) => groups.reduce((a, g) => {
    const point = g.series.find((s) => s.period === p);
    return a + (point ? point.amount : 0);
  }, 0));
  const datasets = shown.map((g, i) => ({ label: g.key, data: series([g]),
    backgroundColor: COLORS[i % COLORS.length] }));
  if (rest.length) {
    datasets.push({ label: `${rest.length} others`, data: series(rest),
      backgroundColor: COLORS[COLORS.length - 1] });
  }
  const grouping = report.group_by.replace("_", " ");
  $("chart-title").textContent = `Cost per ${report.granularity} by ${grouping}`;
  $("chart-empty").hidden = report.groups.length > 0;
  const config = {
    type: "bar",
    data: { labels, datasets },
    options: {
      animation: false,
      maintainAspectRatio: false,
      scales: { x: { stacked: true }, y: { stacked: true, ticks: { callback: (v) => money(v) } } },
      plugins: { tooltip: { callbacks: {
        label: (c) => `${c.dataset.label}: ${money(c.parsed.y, 4)}` } } },
    },
  };
  if (chart) chart.destroy();
  chart = new window.Chart($("chart"), config);
  $("chart").dataset.groups = String(datasets.length);
}

function drawSpenders(byUser) {
  const rows = byUser.groups.slice(0, 10).map((g) => el("tr", {},
    el("td", {}, g.key), el("td", { class: "num" }, money(g.total)),
    el("td", { class: "num" }, money(g.compute)), el("td", { class: "num" }, money(g.disk)),
    el("td", { class: "num" }, money(g.jobs)),
    el("td", { class: "num" }, byUser.total ? `${((100 * g.total) / byUser.total).toFixed(1)} %` : "")));
  $("spenders").tBodies[0].replaceChildren(...rows);
}

async function loadRunning() {
  let items;
  try {
    items = (await api("GET", "/runtimes?status=running&limit=1000")).data.items;
  } catch (e) {
    return say(e.message, "error");
  }
  const idle = (r) => (Date.now() - new Date(r.last_activity_at || r.updated_at)) / 1000;
  items.sort((a, b) => idle(b) - idle(a));
  const rows = items.map((r) => el("tr", { "data-runtime": r.id },
    el("td", {}, r.owner), el("td", {}, r.workspace), el("td", {}, r.machine_type),
    el("td", { class: "num" }, duration(idle(r))),
    el("td", { class: "num" }, money(r.cost_per_hour, 3)),
    el("td", {}, el("button", { class: "small", onclick: (ev) => pause(r, ev.currentTarget) },
      "Pause"))));
  $("running").tBodies[0].replaceChildren(...rows);
  $("running-empty").hidden = items.length > 0;
  $("burn").textContent = `${money(items.reduce((a, r) => a + r.cost_per_hour, 0), 3)}/h`;
}

async function pause(runtime, button) {
  button.disabled = true;
  try {
    await api("POST", `/runtimes/${runtime.id}/pause`);
    say(`Pausing ${runtime.owner}'s runtime in ${runtime.workspace}.`);
  } catch (e) {
    say(e.message, "error");
  }
  await loadRunning();
}

async function downloadCsv() {
  const r = await fetch(`/api/v1/admin/costs?${params()}`, { credentials: "same-origin",
    headers: { Accept: "text/csv" } });
  if (!r.ok) return say((await r.json()).error.message, "error");
  const link = el("a", { href: URL.createObjectURL(await r.blob()),
    download: `envmgr-costs-${$("start").value}-${$("end").value}.csv` });
  link.click();
  URL.revokeObjectURL(link.href);
}

async function start() {
  $("sign-out").addEventListener("click", signOut);
  showUser((await api("GET", "/me")).data);
  // The address holds the choices, so a dashboard can be bookmarked or shared.
  const asked = new URLSearchParams(location.search);
  const today = new Date();
  const group = asked.get("group_by") || "user";
  $("end").value = asked.get("end") || isoDay(today);
  $("start").value = asked.get("start") || isoDay(new Date(today.getTime() - 29 * DAY));
  $("group-by").value = group.startsWith("label:") ? "label" : group;
  $("label-key").value = group.startsWith("label:") ? group.slice(6) : "";
  $("granularity").value = asked.get("granularity") || "day";
  const labelBox = () => {
    $("label-key-box").hidden = $("group-by").value !== "label";
    $("label-key").required = $("group-by").value === "label";
  };
  labelBox();
  $("period").addEventListener("submit", load);
  $("group-by").addEventListener("change", labelBox);
  $("csv").addEventListener("click", () => downloadCsv().catch((e) => say(e.message, "error")));
  await Promise.all([load(), loadRunning()]);
  setInterval(loadRunning, 10000);
}

start().catch((e) => say(e.message, "error"));
