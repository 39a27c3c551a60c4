"""The dashboard on a phone and under a double click, in real chromium: at 375 px each issue
row is a card whose buttons are in sight (no sideways scrolling, axe-core light and dark);
a form goes once, its button disabled and saying so, enabled again after Back."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.models import BounceNotice, BouncePolicy
from newsletter.pipeline import control, sending
from newsletter.pipeline.issues import BuildResult
from newsletter.store.database import Store
from tests.helpers.admin import TOKEN, Admin, admin_settings, serve
from tests.helpers.browser import ARGS, AXE, CHROMIUM, axe_run, sync_api_or_skip
from tests.helpers.sending import seed

pytestmark = pytest.mark.browser

sync_api = sync_api_or_skip(axe=True)

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
AXE_RUN = axe_run(iframes=False)  # the preview frame is the email, sandboxed: not the page's
PHONE = {"width": 375, "height": 812}
TAP = 44  # px: the smallest target a finger hits reliably (WCAG 2.5.5)


class Builds:
    """The dashboard's build_issue, counted; each one held until `go` is set, so a test
    sees the page while the form is on its way."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store, self.calls, self.go = settings, store, 0, threading.Event()
        self.go.set()

    def __call__(self, force: bool, actor: str = "api") -> BuildResult:
        self.calls += 1
        assert self.go.wait(30)
        return pipeline.build_issue(self.settings, self.store, force=force, actor=actor)


@pytest.fixture
def site(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Admin]:
    """Issue 1 sent (two bounces came back, two readers joined since), 2 scheduled, 3 a
    draft: every kind of row the dashboard draws, each with its buttons."""
    settings = admin_settings(make_settings, tmp_path)
    store = pipeline.open_store(settings)
    try:
        seed(store, 4)
        pipeline.collect(settings, store)
        issue = pipeline.build_issue(settings, store, actor="test").issue
        assert issue is not None and issue.id is not None
        sending.start_sending(settings, store, issue)
        sending.run_worker(settings, store, issue)
        a, b = store.list_subscribers(status="active", limit=2)
        store.record_bounces([
            BounceNotice(a.id, issue.id, "hard", "5.1.1", "550 5.1.1 <reader0@example.org>: "
                         "user unknown in virtual mailbox table", "imap", a.email, "k1"),
            BounceNotice(b.id, issue.id, "complaint", "", "feedback-type: abuse", "ses",
                         b.email, "k2")], datetime.now(UTC), BouncePolicy())
        for _ in (2, 3):
            built = pipeline.build_issue(settings, store, force=True, actor="test").issue
            assert built is not None
            if built.number == 2:
                control.schedule_issue(store, 2, datetime.now(UTC) + timedelta(days=1),
                                       actor="test")
        with serve(settings, store, tmp_path, newcomers=lambda number: 2,
                   build_issue=Builds(settings, store)) as admin:
            yield admin
    finally:
        store.close()


def logged_in(browser: Any, site: Admin, **context: Any) -> Any:
    ctx = browser.new_context(**context)
    ctx.add_init_script(path=str(AXE))  # the page's CSP refuses a script tag: see axe()
    page = ctx.new_page()
    page.goto(f"{site.base}/admin/login")
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{site.base}/admin/")
    return page


def axe(page: Any, what: str) -> list[str]:
    """axe-core's WCAG 2 A/AA violations, and sideways scrolling of the page."""
    found = [f"{what}: {v}" for v in page.evaluate(AXE_RUN)]
    if page.evaluate("() => document.documentElement.scrollWidth > window.innerWidth + 1"):
        found.append(f"{what}: wider than the {page.viewport_size['width']} px window")
    return found


def out_of_reach(page: Any) -> list[str]:
    """The issue rows' buttons, fields and links that are not wholly inside the window's
    width, or smaller than a finger; and any box on the way to them scrolled sideways."""
    found: list[str] = page.evaluate("""(tap) => {
      const bad = [], reachable = "td.actions :is(button, input:not([type=hidden]), a)";
      for (const row of document.querySelectorAll("tr[data-issue]")) {
        for (const el of row.querySelectorAll(reachable)) {
          const r = el.getBoundingClientRect(), what = `issue ${row.dataset.issue}: ` +
            (el.textContent.trim() || el.getAttribute("aria-label"));
          if (r.left < 0 || r.right > window.innerWidth) {
            bad.push(`${what} at ${r.left}-${r.right}`);
          }
          if (r.height < tap || (el.tagName !== "A" && r.width < tap)) {
            bad.push(`${what} is ${r.width}x${r.height}`);
          }
        }
      }
      for (const box of document.querySelectorAll(".scroll")) {
        if (box.scrollWidth > box.clientWidth + 1) {
          bad.push(`a .scroll box is ${box.scrollWidth} px wide`);
        }
      }
      return bad;
    }""", TAP)
    return found


def shoot(page: Any, tmp_path: Path, name: str) -> None:
    """The README's copies are refreshed only when asked (UPDATE_SCREENSHOTS=1)."""
    folder = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=True)
    assert (folder / name).stat().st_size > 10_000


def test_issue_rows_are_cards_on_a_phone(site: Admin, tmp_path: Path) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = logged_in(browser, site, viewport=PHONE)
            statuses = page.locator("tr[data-issue]").evaluate_all(
                "rows => rows.map(r => r.dataset.status)")
            assert statuses == ["draft", "scheduled", "sent"]
            for scheme in ("light", "dark"):
                page.emulate_media(color_scheme=scheme)
                assert out_of_reach(page) == []
                assert axe(page, f"dashboard, 375 px, {scheme}") == []
                shoot(page, tmp_path, f"dashboard-375-{scheme}.png")
            # Each cell says what it is, to the eye (to a screen reader, the column headers
            # say it, still there: the label's alternative text is empty).
            row = page.locator("tr[data-issue='1']")
            assert row.locator("td[data-label]").evaluate_all(
                "cells => cells.map(c => getComputedStyle(c, '::before').content)")[:3] == [
                '"Issue" / ""', '"Subject" / ""', '"Status" / ""']
            assert page.get_by_role("columnheader", name="Actions").count() == 1
            assert page.get_by_role("cell", name="Send to the 2 who joined since").count() == 1
            assert row.get_by_role("button", name="Send to the 2 who joined since").is_visible()

            complained = site.store.list_subscribers(status="complained", limit=1)[0]
            for path in ("/admin/bounces", f"/admin/subscribers/{complained.id}"):
                page.goto(site.base + path)
                assert page.locator("table.stack tr[role=row] td").count() > 0
                assert axe(page, f"{path}, 375 px, dark") == []
            shoot(page, tmp_path, "subscriber-375-dark.png")

            # A desk's width is as it was: one table, its header row in sight, no cards.
            page.set_viewport_size({"width": 1280, "height": 900})
            page.emulate_media(color_scheme="light")
            page.goto(f"{site.base}/admin/")
            assert page.locator("table.stack thead").is_visible()
            assert page.locator("tr[data-issue='1']").evaluate(
                "r => getComputedStyle(r).display") == "table-row"
            assert axe(page, "dashboard, 1280 px") == []
        finally:
            browser.close()


def test_a_double_click_builds_once(site: Admin) -> None:
    builds: Builds = site.deps.build_issue  # type: ignore[assignment]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = logged_in(browser, site, viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            asked: list[str] = []

            def answer(dialog: Any) -> None:
                asked.append(dialog.message)
                dialog.accept()

            page.on("dialog", answer)

            # What the form's button is as the form goes, told on the console (the page
            # cannot be asked while its form is on the way); the build waits meanwhile.
            told: list[str] = []

            def tell(message: Any) -> None:
                if message.text.startswith("submit "):
                    told.append(message.text)

            page.on("console", tell)
            page.locator("form[action='/admin/build']").evaluate("""f => f.addEventListener(
              "submit", e => console.log("submit " + JSON.stringify([e.defaultPrevented,
                f.querySelector("button").disabled, f.querySelector("button").textContent])))""")
            box = page.locator("form[action='/admin/build'] button").bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            builds.go.clear()
            page.mouse.dblclick(x, y)  # a quick double click
            site.wait_until(lambda: builds.calls == 1)
            page.mouse.click(x, y)  # a slow one's second click, the first build under way
            builds.go.set()
            page.get_by_text("Nothing new since issue 2: no issue built.").wait_for()
            assert builds.calls == 1
            assert told == ['submit [false,true,"Building…"]']  # the later clicks did nothing
            assert page.locator("form[action='/admin/build'] button").is_enabled()

            # Send asks once, and goes once: the row turns "sending", then "sent".
            send = page.locator("tr[data-issue='3'] form[action='/admin/issues/3/send'] button")
            send.dblclick(no_wait_after=True)
            page.get_by_text("Issue 3: sending started.").wait_for()
            assert asked == ["Send issue 3 to every active subscriber now?"]
            sends = [e for e in site.store.issue_history(3) if e.action == "send"]
            assert len(sends) == 1

            # A refusal is a page of its own: Back brings the dashboard as it was, its button
            # pressed; from the browser's cache it is enabled again.
            collect = page.locator("form[action='/admin/collect']")
            collect.evaluate("f => f.querySelector('[name=csrf]').value = 'forged'")
            collect.locator("button").click()
            page.get_by_text("not sent from the dashboard").wait_for()
            page.go_back()
            page.wait_for_url(f"{site.base}/admin/")
            again = page.locator("form[action='/admin/collect'] button")
            assert again.evaluate("b => [b.disabled, b.textContent]") == [False, "Collect now"]
            # Whether this chromium kept the page in its cache (no-store) or loaded it anew:
            # the cached page's pageshow enables a pressed button.
            assert again.evaluate("""b => {
              b.form.addEventListener("submit", e => e.preventDefault());  // stays here
              b.form.requestSubmit();
              const pressed = [b.disabled, b.textContent];
              window.dispatchEvent(new PageTransitionEvent("pageshow", {persisted: true}));
              return [pressed, [b.disabled, b.textContent]];
            }""") == [[True, "Collecting…"], [False, "Collect now"]]
            assert problems == []
        finally:
            browser.close()
