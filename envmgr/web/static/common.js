// What both pages share: calling the API with the session cookie, formatting, small DOM help.

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    const d = err.details || {};
    // The API's words carry UTC times; the page shows every time in the user's own.
    const local = err.code === "locked" && d.expires_at
      ? `${d.holder} is editing this notebook until ${when(d.expires_at)}; open it in ` +
        "playground or preview mode"
      : null;
    super(local || err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "error";
    this.details = err.details || {};
  }
}

// Every call sends X-Requested-By: the server refuses changes made with the cookie alone.
export async function api(method, path, body, headers = {}) {
  const init = {
    method,
    credentials: "same-origin",
    headers: { "X-Requested-By": "envmgr", Accept: "application/json", ...headers },
  };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(`/api/v1${path}`, init);
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!r.ok) throw new ApiError(r.status, data);
  return { status: r.status, data };
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, "");
    else if (v !== false && v != null) node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c != null) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

export const $ = (id) => document.getElementById(id);

export function money(x, digits = 2) {
  return new Intl.NumberFormat("en-US", {
    style: "currency",
    currency: "USD",
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  }).format(x || 0);
}

export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (h > 0) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m > 0) return `${m} min ${String(sec).padStart(2, "0")} s`;
  return `${sec} s`;
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

// Shows a message in the page's status line; errors stay until the next message.
export function say(text, kind = "info") {
  const box = $("message");
  box.textContent = text;
  box.dataset.kind = kind;
}

export async function signOut() {
  await api("DELETE", "/session");
  location.href = "/";
}

// The header: who is signed in, and the costs link for admins.
export function showUser(me) {
  $("who").textContent = me.email;
  $("admin-link").hidden = !me.admin;
  $("sign-out").hidden = false;
}

// A <select> of the workspace's notebooks that keeps the choice across refreshes, and the
// button that needs one, disabled while there is none.
export function fillNotebooks(selectId, buttonId, items) {
  const select = $(selectId);
  const chosen = select.value;
  select.replaceChildren(...items.map((n) => el("option", { value: n.path }, n.path)));
  if (items.some((n) => n.path === chosen)) select.value = chosen;
  $(buttonId).disabled = items.length === 0;
}

// A parameters field's JSON object, or null after saying what is wrong.
export function parameters(id) {
  const raw = $(id).value.trim();
  if (!raw) return {};
  try {
    const value = JSON.parse(raw);
    if (value && typeof value === "object" && !Array.isArray(value)) return value;
  } catch {
    // fall through: the same message
  }
  say("Parameters must be a JSON object, like {\"alpha\": 0.1}", "error");
  return null;
}
