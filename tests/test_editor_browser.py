"""The issue editor page in real chromium: reorder by button, key and drag, remove, add, edit,
save, the preview follows; refusals shown and nothing saved; axe-core light and dark."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from newsletter.config import Settings
from newsletter.pipeline import review, sending
from tests.helpers.admin import TOKEN, Admin
from tests.helpers.browser import ARGS, AXE, CHROMIUM, axe_run, sync_api_or_skip
from tests.helpers.editor import issue_site
from tests.helpers.issues import piece

pytestmark = pytest.mark.browser

sync_api = sync_api_or_skip(axe=True)

# The preview iframe holds the email, sandboxed without scripts (axe cannot run in it): axe
# checks the page around it.
AXE_RUN = axe_run(iframes=False)
NOW = datetime.now(UTC)
SUBJECT = "Harbour week: the editor's pick"
INTRO = ("This week *the port* reopens after three years.\n\n"
         "Read [our guide to the quay](https://ledger.example.org/guide/) before you go.")


CRANES = piece("cranes", "Harbour cranes return", "World", 2, now=NOW)
FERRY = piece("ferry", "Night ferry resumes", "World", 3, now=NOW)
BREAD = piece("bread", "Bread prices fall", "Economy", 2.5, now=NOW)
RENTS = piece("rents", "Rents rise again", "Economy", 4, now=NOW)
# Stored after the build: not in it.
TRAM = piece("tram", "Tram line opens", "World", 30, now=NOW)


@pytest.fixture
def site(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Admin]:
    with issue_site(make_settings, tmp_path, [CRANES, FERRY, BREAD, RENTS], now=NOW,
                    later=[TRAM], scheduled=True) as admin:
        # Approved: the edit below withdraws the approval.
        review.approve_issue(admin.store, 1, actor="cli alice")
        yield admin


def axe(page: Any, what: str) -> list[str]:
    """axe-core's WCAG 2 A/AA violations, and sideways scrolling. axe comes in as the
    context's init script: the page's CSP (nonce'd scripts only) would refuse a script tag,
    and stays on for everything else the test does."""
    found = [f"{what}: {v}" for v in page.evaluate(AXE_RUN)]
    if page.evaluate("() => document.documentElement.scrollWidth > window.innerWidth + 1"):
        found.append(f"{what}: wider than the {page.viewport_size['width']} px window")
    return found


def shown_order(page: Any) -> list[str]:
    return page.locator("#sections li.article .title").all_inner_texts()  # type: ignore[no-any-return]


def focused(page: Any) -> str:
    return page.evaluate("() => document.activeElement.textContent.trim()")  # type: ignore[no-any-return]


def in_order(text: str, titles: list[str]) -> bool:
    places = [text.find(t) for t in titles]
    return -1 not in places and places == sorted(places)


def test_edit_an_issue_in_the_browser(site: Admin) -> None:
    store = site.store
    built = store.get_issue(1)
    assert built is not None
    assert [s.name for s in built.sections] == ["Economy", "World"]
    assert [a.title for a in built.articles] == [BREAD.title, RENTS.title, CRANES.title,
                                                  FERRY.title]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_init_script(path=str(AXE))
            page = context.new_page()
            problems: list[str] = []
            page.on("console", lambda m: m.type == "error" and not m.text.startswith(
                "Failed to load resource") and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("dialog", lambda d: d.accept())  # "leave with unsaved changes?"

            page.goto(f"{site.base}/admin/login")
            page.get_by_label("Admin token").fill(TOKEN)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(f"{site.base}/admin/")
            page.get_by_role("link", name="Edit issue 1").click()
            page.wait_for_url(f"{site.base}/admin/issues/1/edit")
            preview = page.frame_locator("#preview")
            preview.get_by_text(CRANES.title).first.wait_for()
            page.get_by_role("button", name=f"Add “{TRAM.title}”").wait_for()
            assert shown_order(page) == [a.title for a in built.articles]
            assert page.locator("#approval").inner_text().startswith("approved by cli alice")
            assert page.get_by_role("button", name="Approve and send").is_hidden()
            assert axe(page, "editor, light") == []

            # A section moves whole, by a click.
            page.get_by_role("button", name="Move section “World” up").click()
            assert shown_order(page) == [CRANES.title, FERRY.title, BREAD.title, RENTS.title]
            # From the keyboard: the focus stays on the moved article's buttons.
            page.get_by_role("button", name=f"Move “{FERRY.title}” up").focus()
            page.keyboard.press("Enter")
            assert shown_order(page) == [FERRY.title, CRANES.title, BREAD.title, RENTS.title]
            # First in its section now, it cannot go up: the focus went to "down".
            assert focused(page) == f"↓Move “{FERRY.title}” down"
            assert page.get_by_role("button", name=f"Move “{FERRY.title}” up").is_disabled()
            status = page.get_by_role("status").filter(has_text="Save to keep it")
            assert "now 1 of 2 in World" in status.inner_text()
            # By drag and drop: Rents above Bread, within Economy.
            rents = page.locator("li.article", has_text=RENTS.title)
            bread = page.locator("li.article", has_text=BREAD.title)
            rents.drag_to(bread, source_position={"x": 10, "y": 12},
                          target_position={"x": 10, "y": 4})
            assert shown_order(page) == [FERRY.title, CRANES.title, RENTS.title, BREAD.title]
            # An article dragged onto another section stays in its own.
            rents.drag_to(page.locator("li.article", has_text=FERRY.title),
                          source_position={"x": 10, "y": 12}, target_position={"x": 10, "y": 4})
            assert shown_order(page) == [FERRY.title, CRANES.title, RENTS.title, BREAD.title]
            # Remove one, add one from the search.
            page.get_by_role("button", name=f"Remove “{CRANES.title}”").click()
            page.get_by_label("Add an article").fill("tram")
            page.get_by_role("button", name=f"Add “{TRAM.title}”").click()
            assert shown_order(page) == [FERRY.title, TRAM.title, RENTS.title, BREAD.title]
            page.get_by_label("Subject").fill(SUBJECT)
            page.get_by_label("Intro (Markdown)").fill(INTRO)

            page.get_by_role("button", name="Save").click()
            saved = page.get_by_role("status").filter(has_text="Saved:")
            saved.wait_for()
            assert f"“{SUBJECT}”" in saved.inner_text()
            assert "intro added" in saved.inner_text()
            assert f"removed “{CRANES.title}”" in saved.inner_text()
            # The preview reloads with what was saved: the note, then the new order.
            preview.get_by_text("reopens after three years").wait_for()
            assert preview.locator("em", has_text="the port").count() == 1
            assert preview.get_by_role("link", name="our guide to the quay").get_attribute(
                "href") == "https://ledger.example.org/guide/"
            text = preview.locator("body").inner_text()
            assert in_order(text, ["reopens after three years", FERRY.title, TRAM.title,
                                   RENTS.title, BREAD.title])
            assert CRANES.title not in text
            assert page.locator("#title-subject").inner_text() == SUBJECT
            assert "approval withdrawn (approved by cli alice)" in saved.inner_text()
            assert page.locator("#approval").inner_text() == "not approved"
            assert page.get_by_role("button", name="Approve and send").is_visible()

            # Stored: exactly that, and who did it.
            issue = store.get_issue(1)
            assert issue is not None and issue.status == "scheduled"
            assert issue.approved_at is None
            assert issue.subject == SUBJECT and issue.intro == INTRO
            assert [s.name for s in issue.sections] == ["World", "Economy"]
            assert [a.id for a in issue.articles] == [FERRY.id, TRAM.id, RENTS.id, BREAD.id]
            last = store.issue_history(1)[-1]
            assert (last.action, last.actor) == ("edit", "dashboard 127.0.0.1")
            assert last.detail["articles"] == [FERRY.id, TRAM.id, RENTS.id, BREAD.id]
            newest = page.locator("#history li").first.inner_text()
            assert "dashboard 127.0.0.1" in newest and "articles reordered" in newest

            # A refusal: every article removed. One line says why; nothing is saved.
            while page.locator("#sections li.article").count():
                title = page.locator("#sections li.article .title").first.inner_text()
                page.get_by_role("button", name=f"Remove “{title}”").click()
            assert page.get_by_text("No articles left").is_visible()
            page.get_by_role("button", name="Save").click()
            refused = page.get_by_role("status").filter(has_text="Not saved:")
            refused.wait_for()
            assert refused.inner_text() == ("Not saved: articles is empty: an issue needs at "
                                            "least one article (cancel the issue instead)")
            again = store.get_issue(1)
            assert again is not None and again.edited_at == issue.edited_at
            assert [a.id for a in again.articles] == [a.id for a in issue.articles]
            assert [e.action for e in store.issue_history(1)] == [
                "build", "schedule", "approve", "edit"]  # the one edit

            # Dark, and on a phone: still no violation, nothing wider than the window.
            page.reload()  # the unsaved removals are dropped (the dialog is accepted)
            assert shown_order(page) == [FERRY.title, TRAM.title, RENTS.title, BREAD.title]
            page.emulate_media(color_scheme="dark")
            assert axe(page, "editor, dark") == []
            page.set_viewport_size({"width": 375, "height": 812})
            assert axe(page, "editor, dark, 375 px") == []

            # Sending begins: the next save is refused (409) and the page says so.
            page.get_by_label("Subject").fill("Too late")
            sending.start_sending(site.settings, store, sending.get_sendable(store, 1))
            page.get_by_role("button", name="Save").click()
            late = page.get_by_role("status").filter(has_text="Not saved:")
            late.wait_for()
            assert "issue 1 can no longer be edited: it is sending" in late.inner_text()
            assert store.get_issue(1).subject == SUBJECT  # type: ignore[union-attr]
            page.reload()
            page.get_by_text("Issue 1 can no longer be edited: it is sending").wait_for()
            assert page.locator("#editor").count() == 0  # read-only: no form, no buttons
            assert page.get_by_role("button", name="Save").count() == 0
            page.emulate_media(color_scheme="light")
            page.set_viewport_size({"width": 1280, "height": 900})
            assert axe(page, "read-only editor, light") == []
            assert problems == []  # no CSP violation, no script error
        finally:
            browser.close()


MORE = [piece(f"more{n}", f"Council note {n}", "City", 5 + n, now=NOW) for n in range(6)]


@pytest.fixture
def long_site(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Admin]:
    """Ten articles (the page is longer than the window), scheduled, not approved."""
    with issue_site(make_settings, tmp_path, [CRANES, FERRY, BREAD, RENTS, *MORE], now=NOW,
                    later=[TRAM], scheduled=True) as admin:
        yield admin


def test_two_tabs_unsaved_approval_and_what_a_save_says(long_site: Admin) -> None:
    """Two tabs of one issue: the second save from the old version is refused, and the
    refusal (like a success) shows in the window even when the save bar is out of sight;
    the intro's count refuses too much before sending; "Approve and send" saves unsaved
    changes first and approves only when that save went through."""
    site, store = long_site, long_site.store
    expect = sync_api.expect
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            one = context.new_page()
            one.on("pageerror", lambda e: problems.append(str(e)))
            one.on("dialog", lambda d: d.accept())
            one.goto(f"{site.base}/admin/login")
            one.get_by_label("Admin token").fill(TOKEN)
            one.get_by_role("button", name="Log in").click()
            one.wait_for_url(f"{site.base}/admin/")
            two = context.new_page()  # the same session, a second tab
            two.on("pageerror", lambda e: problems.append(str(e)))
            two.on("dialog", lambda d: d.accept())
            for page in (one, two):
                page.goto(f"{site.base}/admin/issues/1/edit")
                page.get_by_role("button", name=f"Add “{TRAM.title}”").wait_for()

            # Tab one saves with Ctrl+S from the top of the page: the save bar is out of
            # sight, the result is not.
            one.get_by_label("Subject").fill("From tab one")
            expect(one.locator("#save")).not_to_be_in_viewport()
            one.keyboard.press("Control+s")
            saved = one.get_by_role("status").filter(has_text="Saved:")
            expect(saved).to_be_in_viewport()
            assert "“From tab one”" in saved.inner_text()

            # Tab two, opened before that save: refused, told by whom, in sight.
            two.get_by_label("Subject").fill("From tab two")
            expect(two.locator("#save")).not_to_be_in_viewport()
            two.keyboard.press("Control+s")
            refused = two.get_by_role("status").filter(has_text="Not saved:")
            expect(refused).to_be_in_viewport()
            assert re.fullmatch(r"Not saved: Issue 1 was changed by dashboard 127\.0\.0\.1 at "
                                r"\d\d:\d\d UTC since you opened it; reload to see their "
                                r"changes", refused.inner_text())
            issue = store.get_issue(1)
            assert issue is not None and issue.subject == "From tab one"
            assert [e.action for e in store.issue_history(1)].count("edit") == 1

            # Reloaded, it shows tab one's save. An intro over the limit is counted and
            # refused in the page; nothing is sent.
            two.reload()
            expect(two.get_by_label("Subject")).to_have_value("From tab one")
            two.get_by_label("Intro (Markdown)").fill("x" * 21_000)
            expect(two.locator("#intro-count")).to_have_text(
                "21,000 of 20,480 bytes: 520 over, shorten it to save")
            two.keyboard.press("Control+s")
            expect(two.get_by_role("status")).to_have_text(
                "Not saved: the intro is 21,000 bytes: at most 20,480 (a note at the top, not "
                "an article)")
            assert store.get_issue(1).edited_at == issue.edited_at  # type: ignore[union-attr]

            # "Approve and send" with a change the server refuses: nothing approved.
            two.get_by_label("Intro (Markdown)").fill("A *short* note.")
            expect(two.locator("#intro-count")).to_have_text("15 of 20,480 bytes")
            two.get_by_label("Subject").fill("  ")
            two.get_by_role("button", name="Approve and send").click()
            expect(two.get_by_role("status")).to_have_text(
                "Not approved: your changes could not be saved (subject must not be empty). "
                "Nothing was approved.")
            after = store.get_issue(1)
            assert after is not None and after.approved_at is None and after.intro == ""

            # With a good change: saved first, then approved, in that order.
            two.get_by_label("Subject").fill("Approved as edited")
            two.get_by_role("button", name="Approve and send").click()
            expect(two.locator(".flash")).to_contain_text("Issue 1 approved")
            done = store.get_issue(1)
            assert done is not None and done.status == "scheduled"
            assert (done.subject, done.intro) == ("Approved as edited", "A *short* note.")
            assert done.approved_by == "dashboard 127.0.0.1"
            assert [e.action for e in store.issue_history(1)][-2:] == ["edit", "approve"]
            assert problems == []

            # Without JavaScript the article buttons would do nothing: hidden, and said so.
            plain = browser.new_context(java_script_enabled=False,
                                        storage_state=context.storage_state()).new_page()
            plain.goto(f"{site.base}/admin/issues/1/edit")
            expect(plain.locator("#noscript-note")).to_be_visible()
            expect(plain.get_by_role("button", name=f"Move “{FERRY.title}” up")).to_be_hidden()
            expect(plain.get_by_label("Add an article")).to_be_hidden()
            plain.get_by_label("Subject").fill("Saved without a script")
            plain.get_by_role("button", name="Save").click()
            expect(plain.locator(".flash")).to_contain_text("Saved: subject:")
            saved_plain = store.get_issue(1)
            assert saved_plain is not None and saved_plain.subject == "Saved without a script"
        finally:
            browser.close()
