/**
 * envmgr inside JupyterLab: a banner that says which mode the current notebook is in
 * (edit: who holds the lock and until when; playground: nothing goes to the workspace),
 * a notification when a save lands in a conflict copy, a countdown before autopause with
 * "I'm still here", and after a pause a message saying why with a Resume button that
 * reconnects the notebooks' kernels once the runtime is back.
 *
 * Two sources: this runtime's Jupyter extension (`envmgr/info`: the file's mode, lock and
 * conflict) and the control plane on this runtime's origin (`/_envmgr/state`: status,
 * reason, autopause, last activity; it answers while the runtime is paused, when Jupyter
 * cannot).
 *
 * Two reports: input in this tab while it is visible (keys, pointer, focus) goes to the
 * control plane as activity, at most once a minute (an open tab nobody touches is not a
 * person, and lets the runtime pause); and every renew period a heartbeat tells the
 * runtime which edit-mode notebooks this tab has open and how long since it was used, so
 * their locks last as long as this tab does (and go when it closes, crashes or idles).
 */
import {
  IConnectionLost,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection, ServiceManager } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

const POLL_MS = 5000;
const INPUT_EVENTS = ['keydown', 'pointerdown', 'wheel', 'focus'];
const LOCAL = /^([^/]+)\/(edit|playground)\/(.+)$/;

interface IState {
  id: string;
  status: string;
  status_reason: string | null;
  autopause_minutes: number;
  autopause_at: string | null;
  warn_seconds: number;
  now: string;
  workspace: string;
  workspace_url: string;
  preview_url: string;
  // What happened inside lately (a kernel killed for its memory), newest first.
  notices?: { at: string; reason: string }[];
  last_activity?: { at: string; kind: string } | null;
  busy_since?: string | null;
  input_report_seconds?: number;
}

interface IPresence {
  renew_seconds: number;
  idle_limit_seconds: number;
}

interface IInfo {
  local_path: string;
  tracked: boolean;
  mode: 'edit' | 'playground' | null;
  workspace: string | null;
  path?: string;
  lock?: { holder: string; expires_at: string; lost: boolean } | null;
  conflict?: { path: string; message: string; at: string } | null;
}

function el(tag: string, attrs: Record<string, string>, ...kids: (Node | string)[]): HTMLElement {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...kids);
  return node;
}

function clock(iso: string): string {
  return new Date(iso).toLocaleString([], {
    hour: '2-digit', minute: '2-digit', month: 'short', day: 'numeric', timeZoneName: 'short'
  });
}

function ago(iso: string, skew: number): string {
  const s = Math.max(0, (Date.now() + skew - new Date(iso).getTime()) / 1000);
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min ago`;
}

function hhmm(iso: string): string {
  return new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function mmss(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

class Envmgr {
  readonly banner = new Widget({ node: el('div', { class: 'envmgr-banner', 'data-envmgr-mode': 'none' }) });
  readonly runtime = new Widget({ node: el('div', { class: 'envmgr-runtime', 'data-envmgr-status': 'unknown' }) });
  private state: IState | null = null;
  private skew = 0; // server clock minus this browser's
  private info: IInfo | null = null;
  private seenConflicts = new Map<string, string>();
  private wasDown = false;
  private resuming = false;
  private dismissed = new Set<string>(); // notices (by time) the user closed
  // (getRandomValues, not randomUUID: the latter needs a secure context)
  private readonly tab = Array.from(crypto.getRandomValues(new Uint8Array(12)),
    b => b.toString(16).padStart(2, '0')).join('');
  private lastInput = Date.now(); // opening the page is a person's doing
  private lastReport = 0;
  private presence: IPresence = { renew_seconds: 60, idle_limit_seconds: 3600 };
  private presenceTimer = 0;
  private savedForIdle = false;

  constructor(private app: JupyterFrontEnd, private tracker: INotebookTracker) {
    this.banner.id = 'envmgr-banner';
    this.runtime.id = 'envmgr-runtime';
  }

  private get settings(): ServerConnection.ISettings {
    return this.app.serviceManager.serverSettings;
  }

  start(): void {
    this.app.shell.currentChanged?.connect(() => void this.refreshInfo());
    this.tracker.widgetAdded.connect((_, panel) => this.watchSaves(panel.context));
    this.tracker.forEach(panel => this.watchSaves(panel.context));
    // setInterval, not a Poll: it keeps asking while the tab is hidden (JupyterLab's own
    // polls stop then, which is when an autopause comes).
    window.setInterval(() => void this.refresh(), POLL_MS);
    window.setInterval(() => this.renderRuntime(), 1000);
    void this.refresh();
    for (const type of INPUT_EVENTS) {
      window.addEventListener(type, () => this.input(), { capture: true, passive: true });
    }
    // Open and closed notebooks are said at once; the tab's end too (a crash says
    // nothing: its locks go when its heartbeats stop).
    this.tracker.widgetAdded.connect((_, panel) => {
      panel.context.ready.then(() => void this.beat());
      panel.disposed.connect(() => void this.beat());
    });
    window.addEventListener('pagehide', () => void this.beat(true));
    void this.beat();
  }

  /** A person did something in this tab. */
  private input(): void {
    if (document.visibilityState !== 'visible') return;
    this.lastInput = Date.now();
    if (this.savedForIdle) {
      this.savedForIdle = false;
      void this.beat(); // back: take the locks again now
    }
    // at most once a minute (less for a short autopause: the control plane says)
    if (Date.now() - this.lastReport < (this.state?.input_report_seconds ?? 60) * 1000) return;
    this.lastReport = Date.now();
    void this.origin('POST', '/_envmgr/activity').then(s => this.setState(s), () => undefined);
  }

  /** The edit-mode notebooks open in this tab (their local paths). */
  private openEdits(): NotebookPanel[] {
    const panels: NotebookPanel[] = [];
    this.tracker.forEach(p => {
      const m = LOCAL.exec(p.context.path);
      if (m && m[2] === 'edit' && !p.isDisposed) panels.push(p);
    });
    return panels;
  }

  /** The heartbeat: which edit-mode notebooks this tab holds, and how idle it is. */
  async beat(closing = false): Promise<void> {
    window.clearTimeout(this.presenceTimer);
    const idle = (Date.now() - this.lastInput) / 1000;
    const panels = this.openEdits();
    if (!closing && idle >= this.presence.idle_limit_seconds && !this.savedForIdle) {
      // Idle past the limit: the locks go, so what is unsaved here is saved first.
      this.savedForIdle = true;
      await Promise.all(panels.filter(p => p.context.model.dirty)
        .map(p => p.context.save().catch(() => undefined)));
    }
    const url = URLExt.join(this.settings.baseUrl, 'envmgr/presence');
    const body = JSON.stringify({
      tab: this.tab, open: closing ? [] : panels.map(p => p.context.path),
      idle_seconds: idle, closing
    });
    try {
      // keepalive: the request outlives a closing tab
      const r = await ServerConnection.makeRequest(url, { method: 'POST', body, keepalive: true },
        this.settings);
      if (r.ok) this.presence = (await r.json()) as IPresence;
    } catch {
      // the runtime is down: nothing to hold
    }
    if (!closing) {
      this.presenceTimer = window.setTimeout(() => void this.beat(),
        this.presence.renew_seconds * 1000);
    }
  }

  async refresh(): Promise<void> {
    await Promise.all([this.refreshState(), this.refreshInfo()]);
  }

  private async origin(method: string, path: string): Promise<IState | null> {
    const r = await fetch(path, {
      method, credentials: 'same-origin',
      headers: { 'content-type': 'application/json' }, cache: 'no-store'
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error(body?.error?.message ?? r.statusText);
    }
    return (await r.json()) as IState;
  }

  async refreshState(): Promise<void> {
    try {
      this.setState(await this.origin('GET', '/_envmgr/state'));
    } catch (e) {
      // the control plane itself did not answer: say so, keep the last state
      this.runtime.node.dataset.envmgrError = String(e);
    }
  }

  private setState(state: IState | null): void {
    if (!state) return;
    this.state = state;
    this.skew = new Date(state.now).getTime() - Date.now();
    const up = state.status === 'running';
    if (!up && !this.wasDown) {
      this.wasDown = true;
      this.dropSessions();
    } else if (up && this.wasDown) {
      this.wasDown = false;
      void this.reconnect();
    }
    this.renderRuntime();
  }

  /**
   * The server is gone, and its kernels with it. Let go of their connections now: left
   * alone, JupyterLab finds them missing later, marks them dead, and its debugger then
   * sends a request to a dead kernel (an uncaught "Kernel is dead").
   */
  private dropSessions(): void {
    this.tracker.forEach(panel => {
      const session = panel.sessionContext.session;
      if (session && !session.isDisposed) session.dispose();
    });
  }

  /** After a resume: the server is new, so every notebook gets a kernel again. */
  private async reconnect(): Promise<void> {
    const services = this.app.serviceManager as ServiceManager.IManager;
    await services.sessions.refreshRunning();
    await services.kernels.refreshRunning();
    const kernels = new Set([...services.kernels.running()].map(k => k.id));
    const sessions = new Set([...services.sessions.running()].map(x => x.id));
    const panels: NotebookPanel[] = [];
    this.tracker.forEach(p => panels.push(p));
    for (const panel of panels) {
      const ctx = panel.sessionContext;
      const kernel = ctx.session?.kernel;
      if (kernel && !kernel.isDisposed && kernel.connectionStatus === 'connected' &&
          kernels.has(kernel.id)) continue;
      const spec = panel.model?.getMetadata('kernelspec') as { name?: string } | undefined;
      const name = spec?.name ?? ctx.kernelPreference.name ?? 'python3';
      if (ctx.session && !sessions.has(ctx.session.id)) ctx.session.dispose();
      try {
        await ctx.changeKernel({ name });
      } catch (e) {
        Notification.error(`Could not start a kernel for ${panel.context.path}: ${e}`);
      }
    }
    Notification.success('Your runtime is back: kernels reconnected.', { autoClose: 5000 });
    await this.refreshInfo();
  }

  async resume(): Promise<void> {
    if (this.resuming) return;
    this.resuming = true;
    this.renderRuntime();
    try {
      this.setState(await this.origin('POST', '/_envmgr/resume'));
    } catch (e) {
      Notification.error(`Resume failed: ${(e as Error).message}`);
    } finally {
      this.resuming = false;
      this.renderRuntime();
    }
  }

  async stillHere(): Promise<void> {
    try {
      this.setState(await this.origin('POST', '/_envmgr/still-here'));
    } catch (e) {
      Notification.error(`Could not keep the runtime up: ${(e as Error).message}`);
    }
  }

  private renderRuntime(): void {
    const s = this.state;
    const node = this.runtime.node;
    if (!s) return;
    node.dataset.envmgrStatus = s.status;
    if (s.status !== 'running') {
      const why = s.status_reason ? ` (${s.status_reason})` : '';
      const what = s.status === 'paused' || s.status === 'pausing'
        ? `This runtime is ${s.status}${why}. Your edit-mode notebooks were saved to the ` +
          'workspace before it stopped; resume it to go on.'
        : `This runtime is ${s.status}${why}.`;
      const kids: (Node | string)[] = [el('span', { class: 'envmgr-why' }, what)];
      if (s.status === 'paused') {
        const b = el('button', { class: 'envmgr-resume jp-mod-styled jp-mod-accept' },
          this.resuming ? 'Resuming…' : 'Resume');
        b.onclick = () => void this.resume();
        kids.push(b);
      } else if (s.status === 'resuming' || s.status === 'creating') {
        kids.push(el('span', { class: 'envmgr-muted' }, ' starting…'));
      }
      node.replaceChildren(...kids);
      node.hidden = false;
      return;
    }
    const left = s.autopause_at
      ? (new Date(s.autopause_at).getTime() - (Date.now() + this.skew)) / 1000 : Infinity;
    if (left <= s.warn_seconds) {
      const b = el('button', { class: 'envmgr-still-here jp-mod-styled jp-mod-accept' },
        "I'm still here");
      b.onclick = () => void this.stillHere();
      node.dataset.envmgrStatus = 'autopause-soon';
      node.replaceChildren(el('span', { class: 'envmgr-countdown' },
        `Autopause in ${mmss(left)}: nothing has happened here for a while. `), b);
      node.hidden = false;
      return;
    }
    const notice = (s.notices ?? []).find(n => !this.dismissed.has(n.at));
    if (notice) {
      const b = el('button', { class: 'envmgr-dismiss jp-mod-styled' }, 'Dismiss');
      b.onclick = () => {
        this.dismissed.add(notice.at);
        this.renderRuntime();
      };
      node.dataset.envmgrStatus = 'notice';
      node.replaceChildren(el('span', { class: 'envmgr-notice' },
        `${notice.reason}, at ${new Date(notice.at).toLocaleTimeString()}.`), b);
      node.hidden = false;
      return;
    }
    node.replaceChildren();
    node.hidden = true;
  }

  private currentLocalPath(): string | null {
    const w = this.app.shell.currentWidget as unknown as { context?: DocumentRegistry.Context } | null;
    return w?.context?.path ?? null;
  }

  async refreshInfo(): Promise<void> {
    const local = this.currentLocalPath();
    if (!local || !LOCAL.test(local)) {
      this.info = null;
      this.renderBanner();
      return;
    }
    try {
      const url = URLExt.join(this.settings.baseUrl, 'envmgr/info') +
        `?path=${encodeURIComponent(local)}&no_track_activity=1`;
      const r = await ServerConnection.makeRequest(url, {}, this.settings);
      if (r.ok) this.info = (await r.json()) as IInfo;
    } catch {
      // the runtime is down: the runtime part of the banner says so
    }
    this.renderBanner();
  }

  private renderBanner(): void {
    const node = this.banner.node;
    const info = this.info;
    const ws = info?.workspace ?? this.state?.workspace ?? '';
    if (!info || !info.mode) {
      node.dataset.envmgrMode = 'none';
      node.replaceChildren(el('span', { class: 'envmgr-muted' },
        `envmgr · ${ws ? `workspace ${ws} · ` : ''}notebooks opened from the workspace page ` +
        'live in <workspace>/edit (saved back) and <workspace>/playground (private)'),
        ...this.activityLine());
      return;
    }
    node.dataset.envmgrMode = info.mode;
    const name = info.path ?? info.local_path;
    if (info.mode === 'playground') {
      node.replaceChildren(el('strong', {}, 'Playground'),
        ` · ${name} · a private copy: nothing here is saved to workspace ${ws}`,
        ...this.activityLine());
      return;
    }
    const kids: (Node | string)[] = [el('strong', {}, 'Edit mode'), ` · ${name} · saved to workspace ${ws}`];
    const lock = info.lock;
    if (lock?.lost) {
      kids.push(el('span', { class: 'envmgr-warn' },
        ' · your edit lock was lost: saves go to a conflict copy'));
    } else if (lock?.holder) {
      kids.push(el('span', { class: 'envmgr-lock' },
        ` · lock held by ${lock.holder} until ${clock(lock.expires_at)}`));
    }
    if (info.conflict) {
      const a = el('a', { href: '#', class: 'envmgr-conflict-link' }, info.conflict.path);
      a.onclick = (ev) => { ev.preventDefault(); this.openCopy(info.conflict!.path); };
      kids.push(el('span', { class: 'envmgr-warn' },
        ' · conflict: the workspace has a newer version; your saves go to '), a);
    }
    node.replaceChildren(...kids, ...this.activityLine());
  }

  /** When it pauses and why it has not yet: the last activity, a busy kernel. */
  private activityLine(): (Node | string)[] {
    const s = this.state;
    if (!s || s.status !== 'running' || !s.last_activity) return [];
    const what = s.busy_since
      ? `kernel busy since ${hhmm(s.busy_since)}`
      : `${s.last_activity.kind} ${ago(s.last_activity.at, this.skew)}`;
    const when = s.autopause_at ? ` · autopause at ${hhmm(s.autopause_at)}` : '';
    return [el('span', { class: 'envmgr-activity' }, ` · last activity: ${what}${when}`)];
  }

  private openCopy(path: string): void {
    if (this.state) window.open(this.state.preview_url + encodeURIComponent(path), '_blank', 'noopener');
  }

  private watchSaves(context: DocumentRegistry.Context): void {
    context.saveState.connect(async (_, state) => {
      if (state !== 'completed') return;
      await this.refreshInfo();
      const info = this.info;
      if (!info || info.local_path !== context.path || !info.conflict) return;
      const c = info.conflict;
      if (this.seenConflicts.get(context.path) === c.at) return;
      const first = !this.seenConflicts.has(context.path);
      this.seenConflicts.set(context.path, c.at);
      if (!first) return; // one notice per conflict; the banner keeps saying it
      Notification.warning(`Saved as a conflict copy, not to the notebook: ${c.message}`, {
        autoClose: false,
        actions: [{ label: 'Open the conflict copy', callback: () => this.openCopy(c.path) }]
      });
    });
  }
}

const plugin: JupyterFrontEndPlugin<IConnectionLost> = {
  id: 'envmgr-lab:plugin',
  description: 'envmgr: mode, lock, conflicts, autopause, pause and resume.',
  autoStart: true,
  requires: [INotebookTracker],
  provides: IConnectionLost,
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker): IConnectionLost => {
    const envmgr = new Envmgr(app, tracker);
    app.shell.add(envmgr.banner, 'top', { rank: 1000 });
    // Over the page, not in its layout: it comes and goes, and must be clickable over
    // anything JupyterLab shows when its server is gone.
    Widget.attach(envmgr.runtime, document.body);
    envmgr.runtime.node.hidden = true;
    app.restored.then(() => envmgr.start());
    // Instead of JupyterLab's "Server Connection Error" dialog: our own message (the
    // runtime was paused, say why, offer Resume), from the control plane's answer.
    return async () => {
      await envmgr.refreshState();
    };
  }
};

export default plugin;
