"""envmgr's JupyterLab extension, in Debian's Chromium against the real service and real
runtimes: the mode banner (`data-envmgr-mode`), the conflict notice and its single copy,
the autopause countdown with "I'm still here", the pause message, Resume and the kernel
reconnected after it."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlmodel import select

from envmgr.core.db import read_session
from envmgr.core.models import Workspace
from envmgr.notebooks.rules import NOTEBOOKS
from tests.conftest import BROWSER_TIMEOUT_MS, Service, wait_until
from tests.test_browser import screenshot

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
expect.set_options(timeout=30_000)  # JupyterLab's first load takes seconds on 2 cores
pytestmark = pytest.mark.slow

NB = {"cells": [{"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {},
                 "outputs": [], "source": "print(6 * 7)"}],
      "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                  "language": "python"}},
      "nbformat": 4, "nbformat_minor": 5}


def _setup(svc: Service, autopause: float = 30) -> tuple[Any, dict[str, Any]]:
    ann = svc.user("ann@example.org")
    svc.workspace("geo", ann)
    assert ann.put("/api/v1/workspaces/geo/notebooks/content", params={"path": "maps.ipynb"},
                   json=NB).status_code == 201
    rt = ann.post("/api/v1/workspaces/geo/runtimes",
                  json={"autopause_minutes": autopause}).json()
    wait_until(lambda: ann.get(f"/api/v1/runtimes/{rt['id']}").json()["status"] == "running",
               120, what="runtime running")
    return ann, rt


def _open(ann: Any, page: Any, mode: str) -> None:
    r = ann.post("/api/v1/workspaces/geo/notebooks/open", json={"path": "maps.ipynb",
                                                                "mode": mode})
    assert r.status_code == 200, r.text
    page.goto(r.json()["url"])
    page.wait_for_url(f"**/lab/tree/geo/{mode}/maps.ipynb*")


def _bucket_copies(svc: Service) -> list[str]:
    bucket = svc.ctx.storage
    ws_bucket = _bucket(svc)
    return sorted(o.name for o in bucket.list(ws_bucket, NOTEBOOKS) if "(conflict" in o.name)


def _bucket(svc: Service) -> str:
    with read_session(svc.ctx.engine) as s:
        ws = s.exec(select(Workspace).where(Workspace.name == "geo")).one()
        return str(ws.bucket)


def _run_first_cell(page: Any) -> None:
    page.locator(".jp-Cell .cm-content").first.click()
    page.keyboard.press("Shift+Enter")


def test_banner_says_edit_with_the_lock_and_playground_with_nothing_saved(
        sqlite_service: Service, page: Any) -> None:
    ann, _ = _setup(sqlite_service)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    _open(ann, page, "edit")
    banner = page.locator("#envmgr-banner")
    expect(banner).to_have_attribute("data-envmgr-mode", "edit", timeout=BROWSER_TIMEOUT_MS)
    expect(banner).to_contain_text("Edit mode")
    expect(banner).to_contain_text("lock held by ann@example.org until")
    expect(banner).to_contain_text("saved to workspace geo")
    # No news prompt, no kernel question: the notebook says its kernel, and news are off.
    expect(page.locator(".jp-Notebook")).to_be_visible()
    expect(page.get_by_text("official Jupyter news")).to_have_count(0)
    expect(page.locator(".jp-Dialog")).to_have_count(0)
    # No build check (no Node on a runtime; it cost the server a CPU-second per load).
    assert [u for u in asked if "/lab/api/build" in u] == []
    screenshot(page, "lab-edit-banner")

    _open(ann, page, "playground")
    expect(banner).to_have_attribute("data-envmgr-mode", "playground",
                                     timeout=BROWSER_TIMEOUT_MS)
    expect(banner).to_contain_text("nothing here is saved to workspace geo")
    screenshot(page, "lab-playground-banner")


def test_a_conflict_save_is_announced_and_keeps_one_copy(sqlite_service: Service,
                                                          page: Any) -> None:
    svc = sqlite_service
    ann, _ = _setup(svc)
    _open(ann, page, "edit")
    expect(page.locator("#envmgr-banner")).to_have_attribute("data-envmgr-mode", "edit")
    # Someone saves a newer version to the bucket behind the open notebook's back.
    newer = {**NB, "cells": [{**NB["cells"][0], "source": "print('newer')"}]}
    bucket = _bucket(svc)
    info = svc.ctx.storage.stat(bucket, NOTEBOOKS + "maps.ipynb")
    svc.ctx.storage.write(bucket, NOTEBOOKS + "maps.ipynb", json.dumps(newer).encode(),
                          if_generation_match=info.generation)

    def saved(n: int) -> bool:
        """The edit is in the (first) conflict copy; if not yet, save again (a key press
        that landed while JupyterLab was busy, on a loaded machine, is a lost save)."""
        c = _bucket_copies(svc)
        if c and f"edit {n}" in svc.ctx.storage.read(bucket, c[0])[0].decode():
            return True
        page.locator(".jp-Cell .cm-content").first.click()
        page.keyboard.press("Control+s")
        return False

    for n in range(3):  # three saves while the conflict stands
        page.locator(".jp-Cell .cm-content").first.click()
        page.keyboard.press("End")
        page.keyboard.type(f"  # edit {n}")
        page.keyboard.press("Control+s")
        if n == 0:
            toast = page.locator(".Toastify__toast").filter(has_text="conflict copy")
            expect(toast).to_be_visible(timeout=BROWSER_TIMEOUT_MS)
            expect(toast.get_by_role("button", name="Open the conflict copy")).to_be_visible()
            screenshot(page, "lab-conflict")
        wait_until(lambda n=n: saved(n), 90, interval=3, what=f"save {n}")
    copies = _bucket_copies(svc)
    assert len(copies) == 1, copies  # one copy, updated by each save
    assert copies[0].startswith("notebooks/maps (conflict ann@example.org ")
    assert "print('newer')" in svc.ctx.storage.read(bucket, NOTEBOOKS + "maps.ipynb")[0].decode()
    expect(page.locator("#envmgr-banner")).to_contain_text("conflict")
    expect(page.locator(".envmgr-conflict-link")).to_have_text(copies[0].removeprefix(NOTEBOOKS))
    # One notice for the conflict, not one per save.
    expect(page.locator(".Toastify__toast").filter(has_text="conflict copy")).to_have_count(1)


def test_the_first_kernel_starts_at_open_and_jupyterlab_takes_it(sqlite_service: Service,
                                                                 page: Any) -> None:
    """Opening starts the notebook's kernel on the runtime (it boots while the page loads);
    JupyterLab connects to that one rather than starting a second; opening again starts
    none; playground's private copy gets its own."""
    ann, rt = _setup(sqlite_service)
    sessions = f"/proxy/{rt['id']}/api/sessions"
    r = ann.post("/api/v1/workspaces/geo/notebooks/open", json={"path": "maps.ipynb",
                                                                "mode": "edit"})
    assert r.status_code == 200, r.text
    started = ann.get(sessions).json()
    assert [(s["path"], s["kernel"]["name"]) for s in started] == \
        [("geo/edit/maps.ipynb", "python3")]
    # Ready with no page yet ("starting" would count as busy for autopause).
    kernels = f"/proxy/{rt['id']}/api/kernels"
    wait_until(lambda: [k["execution_state"] for k in ann.get(kernels).json()] == ["idle"],
               60, what="the kernel started at open to be idle")
    page.goto(r.json()["url"])
    page.wait_for_url("**/lab/tree/geo/edit/maps.ipynb*")
    _run_first_cell(page)
    expect(page.locator(".jp-OutputArea-output").first).to_have_text("42",
                                                                     timeout=BROWSER_TIMEOUT_MS)
    now = ann.get(sessions).json()
    assert [s["kernel"]["id"] for s in now] == [started[0]["kernel"]["id"]], now
    assert len(ann.get(kernels).json()) == 1
    _open(ann, page, "edit")  # again: the same kernel
    assert [s["kernel"]["id"] for s in ann.get(sessions).json()] == [started[0]["kernel"]["id"]]
    assert ann.post("/api/v1/workspaces/geo/notebooks/open", json={
        "path": "maps.ipynb", "mode": "playground"}).status_code == 200
    assert sorted(s["path"] for s in ann.get(sessions).json()) == \
        ["geo/edit/maps.ipynb", "geo/playground/maps.ipynb"]


def test_pause_says_why_and_resume_reconnects_the_kernel(sqlite_service: Service,
                                                         page: Any) -> None:
    ann, rt = _setup(sqlite_service)
    _open(ann, page, "edit")
    _run_first_cell(page)
    expect(page.locator(".jp-OutputArea-output").first).to_have_text("42",
                                                                     timeout=BROWSER_TIMEOUT_MS)
    # JupyterLab asks for its export formats once a notebook opens and leaves a failure of
    # that request uncaught: a pause that cuts it off is a script error of JupyterLab's own
    # (a user pausing this early sees the same in the console). Pause once it has answered.
    wait_until(lambda: page.evaluate("performance.getEntriesByType('resource')"
                                     ".some(e => e.name.includes('/api/nbconvert'))"),
               60, what="JupyterLab's export formats loaded")
    assert ann.post(f"/api/v1/runtimes/{rt['id']}/pause").status_code == 202
    notice = page.locator("#envmgr-runtime")
    expect(notice).to_have_attribute("data-envmgr-status", "paused", timeout=BROWSER_TIMEOUT_MS)
    expect(notice).to_contain_text("This runtime is paused (by ann@example.org)")
    expect(page.locator(".jp-Dialog")).to_have_count(0)  # not JupyterLab's connection dialog
    screenshot(page, "lab-paused")

    page.locator("#envmgr-runtime button.envmgr-resume").click()
    expect(notice).to_be_hidden(timeout=BROWSER_TIMEOUT_MS)
    assert ann.get(f"/api/v1/runtimes/{rt['id']}").json()["status"] == "running"
    expect(page.get_by_text("kernels reconnected")).to_be_visible(timeout=BROWSER_TIMEOUT_MS)
    page.locator(".jp-Cell .cm-content").first.click()
    page.keyboard.press("Control+a")
    page.keyboard.type("print(6 * 8)")
    page.keyboard.press("Shift+Enter")
    expect(page.locator(".jp-OutputArea-output").first).to_have_text("48",
                                                                     timeout=BROWSER_TIMEOUT_MS)
    screenshot(page, "lab-resumed")


def test_autopause_countdown_and_i_am_still_here(make_service: Any, page: Any) -> None:
    svc = make_service(autopause_min_minutes=1, autopause_warn_seconds=50,
                       autopause_interval_seconds=3600)  # the sweep is not this test's subject
    ann, rt = _setup(svc, autopause=1)
    _open(ann, page, "edit")
    expect(page.locator("#envmgr-banner")).to_have_attribute("data-envmgr-mode", "edit")
    # The user switches to another tab: JupyterLab's own polls stand by, activity stops.
    page.evaluate("""() => {
      Object.defineProperty(document, 'hidden', {value: true, configurable: true});
      Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});
      document.dispatchEvent(new Event('visibilitychange'));
    }""")
    notice = page.locator("#envmgr-runtime")
    expect(notice).to_have_attribute("data-envmgr-status", "autopause-soon",
                                     timeout=BROWSER_TIMEOUT_MS)
    expect(notice).to_contain_text("Autopause in 0:")
    screenshot(page, "lab-autopause-countdown")
    # Compared as times, not as strings: the API says seconds ("...:37Z"), memory has more.
    clicked = datetime.now(UTC)
    page.locator("#envmgr-runtime button.envmgr-still-here").click()
    expect(notice).to_be_hidden()
    wait_until(lambda: (a := svc.ctx.activity.get(rt["id"])) is not None and a.at > clicked
               and a.kind == "still here", timeout=10)
    assert ann.get(f"/api/v1/runtimes/{rt['id']}").json()["status"] == "running"


def test_a_kernel_killed_for_its_memory_is_said_in_jupyterlab(make_service: Any,
                                                               page: Any) -> None:
    """A 2 GiB allocation in a 1 GiB runtime: its kernel alone is killed, and JupyterLab
    says why (not only that the kernel died), until the user dismisses it."""
    from envmgr.costs.catalog import load_catalog
    cat = load_catalog()
    memory_gb = float(cat.machine_types[cat.default_machine_type]["memory_gb"])
    svc = make_service(local_memory_scale=1 / memory_gb, reconcile_interval_seconds=0.5)
    if svc.ctx.backend.limits_for(cat.default_machine_type) is None:
        pytest.skip("no memory limits here (they need root)")
    ann, rt = _setup(svc)
    _open(ann, page, "edit")
    _run_first_cell(page)
    expect(page.locator(".jp-OutputArea-output").first).to_have_text("42",
                                                                     timeout=BROWSER_TIMEOUT_MS)
    page.locator(".jp-Cell .cm-content").first.click()
    page.keyboard.press("Control+a")
    page.keyboard.type("x = bytearray(2 * 2**30)")
    page.keyboard.press("Shift+Enter")
    # JupyterLab's own word: the kernel died and restarts (a dialog, closed here)...
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("appears to have died", timeout=BROWSER_TIMEOUT_MS)
    dialog.locator("button.jp-mod-accept").click()
    # ...and envmgr's: why.
    notice = page.locator("#envmgr-runtime")
    expect(notice).to_have_attribute("data-envmgr-status", "notice", timeout=BROWSER_TIMEOUT_MS)
    expect(notice).to_contain_text("kernel killed: out of memory (limit 1 GiB)")
    screenshot(page, "lab-kernel-out-of-memory")
    assert ann.get(f"/api/v1/runtimes/{rt['id']}").json()["status"] == "running"
    notice.locator("button.envmgr-dismiss").click()
    expect(notice).to_be_hidden()


def _runtime(api: Any, rid: str) -> dict[str, Any]:
    return api.get(f"/api/v1/runtimes/{rid}").json()


def _stays_up(api: Any, page: Any, rid: str, seconds: float, act: Any, every: float) -> None:
    """Do `act` every `every` seconds, as a person would, for longer than the autopause
    threshold: the runtime must stay up all along. (The pauses here are the user's pace,
    not a wait for an effect.)"""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        act()
        assert _runtime(api, rid)["status"] == "running"
        page.wait_for_timeout(every * 1000)
    assert _runtime(api, rid)["status"] == "running"


def test_an_untouched_tab_lets_the_runtime_pause_and_a_person_or_a_kernel_keeps_it_up(
        make_service: Any, page: Any) -> None:
    """#27 in Chromium: JupyterLab open and untouched is not a person, so the runtime
    pauses on time and the tab says why; typing, a cell run every few seconds and a kernel
    busy in time.sleep each keep it up well past its threshold."""
    threshold = 0.25  # minutes: 15 s
    svc = make_service(autopause_min_minutes=0.01, autopause_interval_seconds=0.5,
                       autopause_warn_seconds=1, autopause_probe_timeout_seconds=2)
    ann, rt = _setup(svc, autopause=threshold)
    rid = rt["id"]
    seen = svc.ctx.activity = _Recorded(svc.ctx.activity)  # what is recorded, in order
    _open(ann, page, "edit")
    expect(page.locator("#envmgr-banner")).to_have_attribute("data-envmgr-mode", "edit")
    # Untouched: JupyterLab polls kernels, sessions, contents and more all along.
    notice = page.locator("#envmgr-runtime")
    last: list[Any] = []

    def paused() -> bool:
        now = _runtime(ann, rid)
        if now["last_activity"]:
            last.append(now["last_activity"])
        return now["status"] != "running"
    wait_until(paused, 120, interval=0.2, what="autopause of an untouched tab")
    expect(notice).to_have_attribute("data-envmgr-status", "paused", timeout=BROWSER_TIMEOUT_MS)
    pausing = [e for e in ann.get(f"/api/v1/runtimes/{rid}/events").json()["items"]
               if e["to"] == "pausing"][-1]
    assert pausing["reason"] == f"autopause: idle 0.2 min since {last[-1]['kind']}", pausing
    idle = (datetime.fromisoformat(pausing["at"].replace("Z", "+00:00")) -
            datetime.fromisoformat(last[-1]["at"].replace("Z", "+00:00"))).total_seconds()
    assert threshold * 60 - 1 <= idle <= threshold * 60 + 2, idle  # on time: sweeps of 0.5 s
    print(f"\nuntouched tab: paused {idle:.1f} s after its last activity "
          f"({last[-1]['kind']}), threshold {threshold * 60:g} s")
    expect(notice).to_contain_text(f"This runtime is paused ({pausing['reason']})")
    screenshot(page, "lab-autopaused-untouched")
    page.locator("#envmgr-runtime button.envmgr-resume").click()
    expect(notice).to_be_hidden(timeout=BROWSER_TIMEOUT_MS)
    expect(page.get_by_text("kernels reconnected")).to_be_visible(timeout=BROWSER_TIMEOUT_MS)
    page.locator(".jp-Cell .cm-content").first.click()
    # Typing in the notebook (reported a few times a minute for so short a threshold).
    seen.kinds.clear()
    _stays_up(ann, page, rid, 30, lambda: page.keyboard.type("#"), every=3)
    # (and JupyterLab's autosave of the changed notebook, perhaps)
    assert seen.kinds.count("page input") >= 3, seen.kinds
    assert set(seen.kinds) <= {"page input", "file saved"}, seen.kinds
    page.keyboard.press("Control+a")
    page.keyboard.type("print(6 * 7)")
    # A cell run every 5 s, by the keyboard shortcut (its page input is reported at most
    # every quarter threshold; the runs count each time).
    seen.kinds.clear()
    _stays_up(ann, page, rid, 30, lambda: page.keyboard.press("Control+Enter"), every=5)
    expect(page.locator(".jp-OutputArea-output").first).to_have_text("42")
    assert seen.kinds.count("cell run") >= 5, seen.kinds  # each run, seen by the proxy
    # A kernel busy in time.sleep, nobody touching anything.
    page.locator(".jp-Cell .cm-content").first.click()  # (a run leaves the editor)
    page.keyboard.press("Control+a")
    page.keyboard.type("import time; time.sleep(45)")
    page.keyboard.press("Control+Enter")
    wait_until(lambda: _runtime(ann, rid)["busy_since"] is not None, 30, what="kernel busy")
    _stays_up(ann, page, rid, 30, lambda: None, every=2)
    expect(page.locator("#envmgr-banner .envmgr-activity")).to_contain_text("kernel busy since")
    screenshot(page, "lab-kernel-busy-keeps-it-up")


class _Recorded(dict):  # type: ignore[type-arg]
    """The service's record of activity, also kept as a list of kinds as they come (the
    test reads what the proxy and the origin saw, in order)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.kinds: list[str] = []

    def __setitem__(self, key: Any, value: Any) -> None:
        self.kinds.append(value.kind.value)
        super().__setitem__(key, value)


def test_closing_the_editors_tab_frees_the_lock_and_the_other_page_enables_edit(
        make_service: Any, browser: Any, page: Any) -> None:
    """The lock follows its editor's tab: Ann edits and saves, closes her tab, and Bob's
    workspace page enables Edit by itself; her save is in the bucket. A tab that crashes
    (its heartbeats stop) frees the lock too, within three renew periods."""
    from tests.test_browser import sign_in, token_of
    renew = 2.0
    svc = make_service(lock_renew_seconds=renew, lock_ttl_seconds=3 * renew)
    ann, _ = _setup(svc)
    bob = svc.user("bob@example.org")
    assert svc.admin.put("/api/v1/workspaces/geo/members/bob@example.org",
                         json={"role": "writer"}).status_code == 200
    sign_in(page, svc.base, token_of(bob))
    edit = page.locator("#notebooks tbody tr button[data-mode=edit]")
    expect(edit).to_be_enabled()
    lab = browser.new_page()
    lab.set_default_timeout(BROWSER_TIMEOUT_MS)
    errors: list[str] = []
    lab.on("pageerror", lambda exc: errors.append(str(exc)))
    _open(ann, lab, "edit")
    expect(lab.locator("#envmgr-banner")).to_have_attribute("data-envmgr-mode", "edit")
    expect(edit).to_be_disabled(timeout=30_000)  # Bob's page polls every 10 s
    lab.locator(".jp-Cell .cm-content").first.click()
    lab.keyboard.press("Control+a")
    lab.keyboard.type("print('saved just before closing')")
    lab.keyboard.press("Control+s")
    expect(lab.locator(".jp-mod-dirty")).to_have_count(0)
    closed = time.monotonic()
    lab.close()
    wait_until(lambda: _lock(ann) is None, 30, interval=0.1, what="lock free after close")
    freed = time.monotonic() - closed
    expect(edit).to_be_enabled(timeout=30_000)
    enabled = time.monotonic() - closed
    assert freed <= 3 * renew, freed  # at once, in fact: the closing tab says it goes
    source = ann.get("/api/v1/workspaces/geo/notebooks/content",
                     params={"path": "maps.ipynb"}).json()["cells"][0]["source"]
    assert "".join(source) == "print('saved just before closing')"
    # A crash: the tab's heartbeats stop and it never says goodbye.
    crashed_tab = browser.new_page()
    _open(ann, crashed_tab, "edit")
    expect(crashed_tab.locator("#envmgr-banner")).to_have_attribute("data-envmgr-mode", "edit")
    wait_until(lambda: _lock(ann) is not None, 30, what="lock taken again")
    crashed_tab.route("**/envmgr/presence*", lambda route: route.abort())
    crashed = time.monotonic()
    wait_until(lambda: _lock(ann) is None, 30, interval=0.1, what="lock free after a crash")
    after_crash = time.monotonic() - crashed
    assert after_crash <= 3 * renew + 1, after_crash
    crashed_tab.close()
    expect(edit).to_be_enabled(timeout=30_000)
    assert not errors, errors
    print(f"\nlock free after the tab closed: {freed:.2f} s (Bob's Edit enabled after "
          f"{enabled:.1f} s); after a crash: {after_crash:.2f} s (renew period {renew:g} s)")


def _lock(api: Any) -> Any:
    return api.get("/api/v1/workspaces/geo/notebooks").json()[0]["lock"]
