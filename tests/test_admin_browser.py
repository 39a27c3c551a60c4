"""The dashboard in real chromium: log in, build, send, watch the counts; forged POSTs refused."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.web.admin import SESSION_COOKIE, Sessions
from tests.helpers.admin import TOKEN, Admin, admin_settings, serve
from tests.helpers.browser import ARGS, CHROMIUM, sync_api_or_skip
from tests.helpers.sending import seed

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
READERS = 25

sync_api = sync_api_or_skip()


def forged_posts_are_refused(site: Admin, session: str, page: Any) -> None:
    """With the real session cookie but no (or another form's) CSRF token: 403, no effect."""
    with httpx.Client(base_url=site.base, cookies={SESSION_COOKIE: session}) as client:
        assert client.get("/admin/").status_code == 200  # the cookie itself is good
        nonce = Sessions(site.deps).nonce_of(session)
        assert nonce is not None
        for data in ({}, {"csrf": "f" * 64},
                     {"csrf": Sessions(site.deps).csrf(nonce, "cancel:2")}):
            r = client.post("/admin/issues/1/cancel", data=data)
            assert r.status_code == 403 and "not sent from the dashboard" in r.text
    # In the browser: a page on another site (localhost is not 127.0.0.1) posts a form to the
    # dashboard. SameSite=Strict keeps the cookie home, so there is no session: refused.
    other = site.base.replace("127.0.0.1", "localhost")
    page.goto(f"{other}/healthz")
    with page.expect_navigation():
        page.evaluate("""(target) => {
          const f = document.createElement('form');
          f.method = 'post'; f.action = target;
          document.body.appendChild(f); f.submit();
        }""", f"{site.base}/admin/issues/1/cancel")
    assert "not sent from the dashboard" in page.content()
    issue = site.store.get_issue(1, with_articles=False)
    assert issue is not None and issue.status == "sent"


def test_build_send_and_watch(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = admin_settings(make_settings, tmp_path)
    store = pipeline.open_store(settings)
    seed(store, READERS, inactive=3)
    pipeline.collect(settings, store)
    try:
        jobs = [("collect and publish", datetime(2030, 1, 1, 6, tzinfo=UTC)),
                ("send scheduled issues", datetime(2030, 1, 1, 6, 1, tzinfo=UTC))]
        with serve(settings, store, tmp_path, jobs=lambda: jobs) as site, \
                sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                problems: list[str] = []
                # HTTP errors show up too (the wrong token's 401, on purpose): keep the rest.
                page.on("console", lambda m: m.type == "error" and not m.text.startswith(
                    "Failed to load resource") and problems.append(m.text))
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.on("dialog", lambda d: d.accept())  # "Send issue 1 …?" asks first

                page.goto(f"{site.base}/admin/")
                assert page.url.endswith("/admin/login")
                page.get_by_label("Admin token").fill("not-the-token-at-all")
                page.get_by_role("button", name="Log in").click()
                page.get_by_text("That is not the admin token.").wait_for()
                page.get_by_label("Admin token").fill(TOKEN)
                page.get_by_role("button", name="Log in").click()
                page.wait_for_url(f"{site.base}/admin/")

                page.get_by_text("send scheduled issues").wait_for()
                page.get_by_text("2030-01-01 06:01 UTC").wait_for()
                page.get_by_role("button", name="Build issue").click()
                page.get_by_text("Built issue 1").wait_for()
                page.get_by_text("0 / 0").wait_for()
                preview = page.frame_locator("iframe.preview")
                preview.get_by_text("Harbour cranes return").first.wait_for()

                page.get_by_role("button", name="Send", exact=True).click()
                page.get_by_text("Issue 1: sending started.").wait_for()
                page.get_by_text(f"{READERS} / {READERS}").wait_for(timeout=30_000)
                page.locator("tr[data-issue='1'] .badge.sent").wait_for(timeout=30_000)
                assert page.locator("tr[data-issue='1'] progress").evaluate(
                    "p => [p.value, p.max]") == [READERS, READERS]
                assert len(list(site.outbox.glob("*.eml"))) == READERS
                # The page reloads itself when the row turns "sent": what the Send said stays
                # (it showed for a second and was gone, with nothing to tell it was sent).
                page.wait_for_load_state()
                assert page.locator(".flash").inner_text() == "Issue 1: sending started."
                assert problems == []  # no CSP violation, no script error

                # The page shows today's times: refresh the README's copy only when asked.
                folder = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
                folder.mkdir(parents=True, exist_ok=True)
                shot = folder / "admin.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000

                session = next(c["value"] for c in context.cookies()
                               if c["name"] == SESSION_COOKIE)
                cookie = next(c for c in context.cookies() if c["name"] == SESSION_COOKIE)
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
                assert cookie["path"] == "/admin"
                forged_posts_are_refused(site, session, page)

                page.goto(f"{site.base}/admin/")
                page.get_by_role("button", name="Log out").click()
                page.wait_for_url(f"{site.base}/admin/login")
            finally:
                browser.close()
    finally:
        store.close()
