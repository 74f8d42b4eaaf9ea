"""The pages, driven in Debian's Chromium by Playwright against the real service on loopback.
Each test saves a screenshot of the page it checked in test-artifacts/."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from envmgr.api.proxy import forward_cookies
from envmgr.core.db import write_session
from envmgr.core.models import Event, Membership, Runtime, User, Workspace
from envmgr.costs.catalog import load_catalog
from tests.conftest import BROWSER_TIMEOUT_MS, Service

playwright_api = pytest.importorskip("playwright.sync_api")

CAT = load_catalog()
TIMEOUT_MS = BROWSER_TIMEOUT_MS
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def screenshot(tab: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def loaded(lab: Any) -> None:
    """JupyterLab has finished loading (its envmgr banner is up): a tab closed in the
    middle of loading JupyterLab's bundles once hung Chromium's close on a loaded machine."""
    playwright_api.expect(lab.locator("#envmgr-banner")).to_be_attached(timeout=TIMEOUT_MS)


def sign_in(tab: Any, base: str, token: str, path: str = "/") -> None:
    tab.goto(base + path)
    tab.fill("#token", token)
    tab.click("#signin-form button")


def sign_out_and_in(tab: Any, token: str) -> None:
    tab.click("#sign-out")
    playwright_api.expect(tab.locator("#signin")).to_be_visible()
    tab.fill("#token", token)
    tab.click("#signin-form button")


def token_of(api: Any) -> str:
    return api.http.headers["Authorization"].removeprefix("Bearer ")


def money(x: float) -> str:
    return f"${x:,.2f}"


def test_workspace_page_runs_a_runtime_and_opens_a_notebook(sqlite_service: Service,
                                                            page: Any) -> None:
    svc = sqlite_service
    ann = svc.user("ann@example.org")
    bob = svc.user("bob@example.org")
    svc.workspace("geo", ann, **{"bob@example.org": "writer"})
    nb = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    assert ann.put("/api/v1/workspaces/geo/notebooks/content",
                   params={"path": "maps.ipynb"}, json=nb).status_code == 201
    # The workspace's idle limits, set by its owner: the create form starts from them.
    assert ann.patch("/api/v1/workspaces/geo", json={"autopause": {
        "default_minutes": 40, "min_minutes": 10, "max_minutes": 120}}).status_code == 200

    sign_in(page, svc.base, "not-a-token")
    expect = playwright_api.expect
    expect(page.locator("#signin-error")).to_contain_text("unknown, expired or revoked token")
    page.fill("#token", token_of(ann))
    page.click("#signin-form button")
    expect(page.locator("#who")).to_have_text("ann@example.org")
    expect(page.locator("#admin-link")).to_be_hidden()
    expect(page.locator("#workspace")).to_have_value("geo")
    expect(page.locator("#notebooks tbody tr")).to_have_count(1)
    expect(page.locator("#notebooks tbody tr td").nth(3)).to_have_text("nobody")

    expect(page.locator("#autopause-minutes")).to_have_value("40")
    expect(page.locator("#autopause-minutes")).to_have_attribute("max", "120")
    expect(page.locator("#autopause-bounds")).to_contain_text("10 to 120 in this workspace")
    page.fill("#autopause-minutes", "45")
    page.click("#create-button")
    status = page.locator("#rt-status")
    expect(status).to_have_text("running", timeout=TIMEOUT_MS)
    rt = ann.get("/api/v1/runtimes", params={"workspace": "geo"}).json()["items"][0]
    assert rt["autopause_minutes"] == 45 and rt["status"] == "running"
    per_hour = float(CAT.machine_micros_per_hour(CAT.default_machine_type)
                     + CAT.disk_micros_per_hour(CAT.default_disk_type,
                                                CAT.default_disk_size_gb)) / 1e6
    expect(page.locator("#rt-cost")).to_have_text(f"${per_hour:.3f} per hour now")
    expect(page.locator("#rt-autopause")).to_contain_text("pauses in 4")  # 45 min minus a bit
    expect(page.locator("#rt-autopause")).to_contain_text("last activity: started")
    if rt["limits"]:  # as root: what its container may use, said beside the machine type
        gib = rt["limits"]["memory_bytes"] / 2**30
        expect(page.locator("#rt-machine")).to_contain_text(
            f"limited here to {gib:g} GiB memory, {rt['limits']['pids']} processes")
    expect(page.locator("#rt-open")).to_be_visible()
    expect(page.locator("#my-costs")).to_have_text(
        "This month: $0.00 here, $0.00 in all your workspaces.")  # under a cent so far

    # Edit: a new tab opens Jupyter through the proxy, and the page shows who holds the lock.
    with page.context.expect_page() as opened:
        page.click("#notebooks tbody tr button[data-mode=edit]")
    lab = opened.value
    lab.wait_for_url("**/proxy/**/lab/tree/geo/edit/maps.ipynb*", timeout=TIMEOUT_MS)
    loaded(lab)
    lab.close()
    with page.context.expect_page() as opened:  # a private copy: no lock of its own
        page.click("#notebooks tbody tr button[data-mode=playground]")
    opened.value.wait_for_url("**/lab/tree/geo/playground/maps.ipynb*", timeout=TIMEOUT_MS)
    loaded(opened.value)
    opened.value.close()
    expect(page.locator("#notebooks .lock")).to_contain_text("you")
    lock = ann.get("/api/v1/workspaces/geo/notebooks").json()[0]["lock"]
    assert lock["holder"] == "ann@example.org"
    screenshot(page, "workspace-running")

    # Bob sees Ann's lock: his edit button is off, playground stays available.
    sign_out_and_in(page, token_of(bob))
    expect(page.locator("#notebooks .lock")).to_contain_text("ann@example.org")
    expect(page.locator("button[data-mode=edit]")).to_be_disabled()
    expect(page.locator("button[data-mode=playground]")).to_be_enabled()
    expect(page.locator("#runtime-none")).to_be_visible()
    sign_out_and_in(page, token_of(ann))
    expect(status).to_have_text("running")
    page.click("#rt-pause")
    expect(status).to_have_text("paused", timeout=TIMEOUT_MS)
    expect(page.locator("#rt-pause")).to_be_disabled()
    expect(page.locator("#rt-resume")).to_be_enabled()
    expect(page.locator("#rt-open")).to_be_hidden()
    # The pause saved the notebook and gave the lock back.
    expect(page.locator("#notebooks tbody tr td").nth(3)).to_have_text("nobody")
    assert ann.runtime(rt["id"])["status"] == "paused"
    assert [e["reason"] for e in ann.events(rt["id"])][-1] == "by ann@example.org"
    screenshot(page, "workspace-paused")

    # Preview needs no runtime: the rendered notebook, with the session cookie.
    with page.context.expect_page() as opened:
        page.click("#notebooks tbody tr button[data-mode=readonly]")
    preview = opened.value
    preview.wait_for_url("**/notebooks/preview?path=maps.ipynb", timeout=TIMEOUT_MS)
    preview.wait_for_load_state()
    assert "<html" in preview.content().lower()
    preview.close()

    page.click("#rt-resume")
    expect(status).to_have_text("running", timeout=TIMEOUT_MS)

    # Delete, keeping the disk: the form then offers that disk for the next runtime.
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#rt-delete")
    expect(page.locator("#runtime-none")).to_be_visible(timeout=TIMEOUT_MS)
    kept = page.locator("#disk-choice option:checked")
    expect(kept).to_contain_text(f"kept disk {rt['disk_id']}")
    assert ann.get(f"/api/v1/disks/{rt['disk_id']}").json()["status"] == "ready"


def _seed_history(svc: Service) -> dict[str, float]:
    """Two workspaces with runtimes that ran known hours in March 2026 (their disks left
    out, so each total is hours x machine price). Returns the expected total per workspace."""
    spans = {  # workspace: (owner, machine type, day, hours)
        "geo": ("ann@example.org", "n2-standard-8", 3, 10),
        "ocean": ("bob@example.org", "e2-standard-2", 4, 6),
    }
    with write_session(svc.ctx.engine) as s:
        for ws, (email, machine, day, hours) in spans.items():
            uid = f"u-{ws}"
            s.add(User(id=uid, email=email))
            s.add(Workspace(id=f"ws-{ws}", name=ws, bucket=f"b-{ws}", created_by=uid))
            s.flush()
            s.add(Membership(workspace_id=f"ws-{ws}", user_id=uid, role="owner"))
            rid = f"rt-{ws}"
            s.add(Runtime(id=rid, workspace_id=f"ws-{ws}", owner_id=uid, status="deleted",
                          machine_type=machine))
            start = datetime(2026, 3, day, 8, tzinfo=UTC)
            stop = start.replace(hour=8 + hours)
            for frm, to, at in ((None, "creating", start), ("creating", "running", start),
                                ("running", "deleting", stop), ("deleting", "deleted", stop)):
                s.add(Event(resource="runtime", resource_id=rid, from_status=frm, to_status=to,
                            reason="seed", at=at, detail={"machine_type": machine}))
    return {ws: hours * float(CAT.machine_micros_per_hour(machine)) / 1e6
            for ws, (_, machine, _, hours) in spans.items()}


def _painted_pixels(tab: Any) -> int:
    return tab.evaluate("""() => {
        const c = document.getElementById('chart');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
        return n;
    }""")


def test_admin_dashboard_shows_totals_chart_and_running_runtimes(sqlite_service: Service,
                                                                 page: Any) -> None:
    svc = sqlite_service
    cid = svc.user("cid@example.org")
    svc.workspace("labs", cid)
    expected = _seed_history(svc)
    rid = cid.create_runtime("labs", autopause_minutes=0)["id"]
    cid.wait_status(rid, "running")

    # Signed out, a bookmarked view goes through the sign-in form and comes back.
    sign_in(page, svc.base, svc.admin_token,
            "/admin?start=2026-03-01&end=2026-03-31&group_by=workspace")
    page.wait_for_url("**/admin?start=2026-03-01&end=2026-03-31&group_by=workspace*")
    expect = playwright_api.expect
    total = sum(expected.values())
    expect(page.locator("#total")).to_have_text(money(total))
    expect(page.locator("#total-compute")).to_have_text(money(total))
    expect(page.locator("#total-disk")).to_have_text(money(0))
    expect(page.locator("#chart-title")).to_have_text("Cost per day by workspace")
    assert page.locator("#chart").get_attribute("data-groups") == "2"
    assert _painted_pixels(page) > 1000, "the chart drew nothing"
    spenders = page.locator("#spenders tbody tr")
    expect(spenders).to_have_count(2)
    expect(spenders.nth(0).locator("td").first).to_have_text("ann@example.org")
    expect(spenders.nth(0).locator("td").nth(1)).to_have_text(money(expected["geo"]))

    row = page.locator(f"#running tr[data-runtime={rid}]")
    expect(row.locator("td").first).to_have_text("cid@example.org")
    screenshot(page, "admin-dashboard")
    row.locator("button").click()
    cid.wait_status(rid, "paused")
    expect(row).to_have_count(0)

    # Another period and grouping, from the form: an empty month is an empty, valid answer.
    page.fill("#start", "2025-01-01")
    page.fill("#end", "2025-01-31")
    page.select_option("#granularity", "week")
    page.click("#period button[type=submit]")
    expect(page.locator("#total")).to_have_text(money(0))
    expect(page.locator("#chart-empty")).to_be_visible()
    page.fill("#end", "2024-12-01")
    page.click("#period button[type=submit]")
    expect(page.locator("#message")).to_contain_text("start: must not be after end")


def test_pages_are_gated_and_sessions_cannot_be_forged(sqlite_service: Service,
                                                       page: Any) -> None:
    svc = sqlite_service
    ann = svc.user("ann@example.org")
    token = token_of(ann)

    page.goto(f"{svc.base}/admin?group_by=workspace")
    assert page.url.endswith("/?next=/admin%3Fgroup_by%3Dworkspace"), page.url
    sign_in(page, svc.base, token)
    playwright_api.expect(page.locator("#who")).to_have_text("ann@example.org")
    denied = page.goto(f"{svc.base}/admin")
    assert denied is not None and denied.status == 403
    assert "Admins only" in page.content()
    screenshot(page, "admin-forbidden")

    with httpx.Client(base_url=svc.base) as web:
        r = web.post("/api/v1/session", json={"token": token})
        assert r.status_code == 200 and r.json() == {"email": "ann@example.org", "admin": False}
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert web.get("/api/v1/me").json()["email"] == "ann@example.org"
        assert web.get("/admin").status_code == 403
        assert web.get("/api/v1/admin/costs").status_code == 403
        # A change needs the page's header: a cross-site form cannot send it.
        r = web.post("/api/v1/workspaces", json={"name": "geo"})
        assert r.status_code == 403 and "X-Requested-By" in r.json()["error"]["message"]
        r = web.post("/api/v1/workspaces", json={"name": "geo"},
                     headers={"X-Requested-By": "envmgr"})
        assert r.status_code == 201
        # Jupyter, which runs the user's code, never receives the session.
        assert forward_cookies(f"envmgr_session={web.cookies['envmgr_session']}; "
                               "envmgr_runtime=p; _xsrf=x") == "_xsrf=x"
        web.cookies.set("envmgr_session", "forged." + web.cookies["envmgr_session"][8:])
        assert web.get("/api/v1/me").status_code == 401
        assert web.delete("/api/v1/session").status_code == 204
        assert web.get("/api/v1/me").status_code == 401
    with httpx.Client(base_url=svc.base) as web:
        for body, status in (({"token": "nope"}, 401), ({}, 422), ({"token": ""}, 422),
                             ({"token": token, "extra": 1}, 422)):
            assert web.post("/api/v1/session", json=body).status_code == status, body


def test_jobs_view_runs_a_notebook_and_shows_its_progress_live(
        make_service: Any, page: Any) -> None:
    from tests.jobs_helpers import notebook
    svc = make_service(job_poll_seconds=0.1)
    ann = svc.user("ann@example.org")
    svc.workspace("etl", ann)
    nb = notebook("import time\nfor i in range(n):\n    print('row', i, flush=True)\n"
                  "    time.sleep(0.4)", "print('total', n)", parameters="n = 1")
    assert ann.put("/api/v1/workspaces/etl/notebooks/content",
                   params={"path": "nightly.ipynb"}, json=nb).status_code == 201
    sign_in(page, svc.base, token_of(ann))
    expect = playwright_api.expect
    expect(page.locator("#jobs-panel")).to_be_visible()
    expect(page.locator("#job-notebook option")).to_have_text(["nightly.ipynb"])
    page.fill("#job-parameters", '{"n": 4}')
    page.click("#job-run")
    expect(page.locator("#job-watch")).to_be_visible()
    # Lines arrive while it runs: the first row shows before the job has finished.
    expect(page.locator("#job-log")).to_contain_text("row 0", timeout=TIMEOUT_MS)
    job_id = page.locator("#job-watch-id").inner_text()
    assert ann.get(f"/api/v1/jobs/{job_id}").json()["status"] == "running"
    expect(page.locator("#job-watch-status")).to_have_text("succeeded", timeout=TIMEOUT_MS)
    expect(page.locator("#job-log")).to_contain_text("total 4")
    expect(page.locator("#job-progress-text")).to_have_text("4 of 4 cells")  # with the injected one
    row = page.locator(f'#jobs tr[data-job="{job_id}"]')
    expect(row).to_contain_text("succeeded", timeout=TIMEOUT_MS)
    href = row.locator("a", has_text="HTML").get_attribute("href")
    assert href == f"/api/v1/jobs/{job_id}/output?format=html"
    screenshot(page, "jobs-view")
    # A long one is canceled from the page.
    page.fill("#job-parameters", '{"n": 1000}')
    page.click("#job-run")
    expect(page.locator("#job-watch-id")).not_to_have_text(job_id)
    expect(page.locator("#job-log")).to_contain_text("row 0", timeout=TIMEOUT_MS)
    long_id = page.locator("#job-watch-id").inner_text()
    page.locator(f'#jobs tr[data-job="{long_id}"] button[data-action="cancel"]').click()
    expect(page.locator("#job-watch-status")).to_have_text("canceled", timeout=TIMEOUT_MS)


def test_schedules_view_creates_pauses_resumes_runs_and_shows_history(
        make_service: Any, page: Any) -> None:
    from tests.jobs_helpers import notebook
    svc = make_service(job_poll_seconds=0.1)
    ann = svc.user("ann@example.org")
    svc.workspace("etl", ann)
    assert ann.put("/api/v1/workspaces/etl/notebooks/content", params={"path": "daily.ipynb"},
                   json=notebook("print('daily')")).status_code == 201
    sign_in(page, svc.base, token_of(ann))
    expect = playwright_api.expect
    expect(page.locator("#sched-notebook option")).to_have_text(["daily.ipynb"])
    assert page.locator("#sched-tz").input_value()  # the browser's own zone, preset
    page.fill("#sched-name", "nightly")
    # As you type: why a cron is refused, then its next five runs, in the zone and in UTC.
    page.fill("#sched-tz", "Europe/Paris")
    page.fill("#sched-cron", "0 6 * * 8")
    preview = page.locator("#sched-preview")
    expect(preview).to_have_attribute("data-state", "error")
    expect(preview).to_contain_text("day-of-week '8'")
    page.fill("#sched-cron", "0 6 * * 1-5")
    expect(preview).to_have_attribute("data-state", "ok")
    expect(preview.locator("li")).to_have_count(5)
    first = preview.locator("li").first  # (winter or summer time, by today's date)
    expect(first).to_contain_text(re.compile(r"06:00:00\+0[12]:00 \(Europe/Paris\)"))
    expect(first).to_contain_text(re.compile(r"0[45]:00 UTC"))
    page.click("#sched-create")
    row = page.locator("#schedules tbody tr", has_text="nightly")
    expect(row).to_contain_text("0 6 * * 1-5 (Europe/Paris)")
    expect(row.locator(".last-run")).to_have_text("never")
    [s] = ann.get("/api/v1/schedules").json()["items"]
    assert s["next_run_at"]
    row.locator('button[data-action="pause"]').click()
    expect(row.locator(".next-run")).to_have_text("paused")
    assert ann.get(f"/api/v1/schedules/{s['id']}").json()["active"] is False
    row.locator('button[data-action="resume"]').click()
    expect(row.locator('button[data-action="pause"]')).to_be_visible()
    row.locator('button[data-action="run"]').click()
    expect(page.locator("#message")).to_contain_text("started")
    expect(row.locator(".last-run .status")).to_have_text("succeeded", timeout=TIMEOUT_MS)
    row.locator('button[data-action="history"]').click()
    expect(page.locator("#sched-runs tbody")).to_contain_text("run now by ann@example.org")
    page.fill("#sched-cron", "* *")
    page.click("#sched-create")
    expect(page.locator("#message")).to_contain_text("5-field cron")
    screenshot(page, "schedules-view")


def test_api_docs_load_with_no_network(sqlite_service: Service, page: Any) -> None:
    """Swagger UI and ReDoc come from the service itself: every request outside it is
    refused here, and both still render the API."""
    svc = sqlite_service
    outside: list[str] = []

    def only_the_service(route: Any) -> None:
        if route.request.url.startswith(svc.base):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()
    page.route("**/*", only_the_service)
    expect = playwright_api.expect
    page.goto(svc.base + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("envmgr",
                                                                      timeout=TIMEOUT_MS)
    expect(page.locator(".opblock-summary-path").filter(has_text="/api/v1/workspaces")
           .first).to_be_visible()
    screenshot(page, "docs-swagger")
    page.goto(svc.base + "/redoc")
    expect(page.locator("h1").first).to_contain_text("envmgr", timeout=TIMEOUT_MS)
    expect(page.get_by_text("/api/v1/workspaces").first).to_be_attached()
    assert outside == [], outside
    screenshot(page, "docs-redoc")


def test_the_page_checks_names_and_makes_notebooks_that_name_their_kernel(
        sqlite_service: Service, page: Any) -> None:
    svc = sqlite_service
    ann = svc.user("ann@example.org")
    svc.workspace("geo", ann)
    sign_in(page, svc.base, token_of(ann))
    expect = playwright_api.expect
    expect(page.locator("#workspace")).to_have_value("geo")
    # The browser itself checks the workspace name (Chromium ignored the old pattern).
    name = page.locator("#new-workspace-name")
    name.fill("Bad Name!")
    assert name.evaluate("el => el.validity.patternMismatch") is True
    name.fill("good-name")
    assert name.evaluate("el => el.validity.valid") is True
    page.fill("#new-notebook-path", "fresh")
    page.click("#new-notebook button")
    expect(page.locator("#notebooks tbody tr[data-path='fresh.ipynb']")).to_be_visible()
    nb = ann.get("/api/v1/workspaces/geo/notebooks/content",
                 params={"path": "fresh.ipynb"}).json()
    assert nb["metadata"]["kernelspec"]["name"] == "python3"  # JupyterLab asks no kernel


def test_the_opening_tab_says_the_runtime_is_starting_and_keeps_no_opener(
        make_service: Any, page: Any) -> None:
    svc = make_service(open_wait_seconds=0.2)  # answer "starting" at once: the tab says so
    ann = svc.user("ann@example.org")
    svc.workspace("geo", ann)
    nb = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    assert ann.put("/api/v1/workspaces/geo/notebooks/content",
                   params={"path": "maps.ipynb"}, json=nb).status_code == 201
    sign_in(page, svc.base, token_of(ann))
    expect = playwright_api.expect
    expect(page.locator("#notebooks tbody tr")).to_have_count(1)
    with page.context.expect_page() as opened:
        page.click("#notebooks tbody tr button[data-mode=edit]")
    lab = opened.value
    expect(lab.locator("#envmgr-starting")).to_contain_text("Starting your runtime to open "
                                                            "maps.ipynb", timeout=TIMEOUT_MS)
    screenshot(lab, "opening-tab")
    lab.wait_for_url("**/lab/tree/geo/edit/maps.ipynb*", timeout=TIMEOUT_MS)
    loaded(lab)
    assert lab.evaluate("() => window.opener === null")  # user content cannot reach this page
    lab.close()
