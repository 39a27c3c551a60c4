"""The editor page's save and article search over real HTTP: CSRF, who acts (a dashboard
session or an issue's editor link, that issue only), the plain-form save, refusals, read-only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from newsletter.config import Settings
from newsletter.pipeline import sending
from tests.helpers.admin import Admin, csrf_of, login
from tests.helpers.editor import editor_link, issue_site
from tests.helpers.issues import piece

NOW = datetime.now(UTC)
EDITOR = "editor@example.org"
PAGE = "/admin/issues/1/edit"


ARTICLES = [piece("cranes", "Harbour cranes return", "World", 2, now=NOW),
            piece("bread", "Bread prices fall", "Economy", 3, now=NOW),
            piece("rents", "Rents rise 100% again", "Economy", 4, now=NOW),
            piece("loose", "A loose note", "", 5, now=NOW)]
LATER = piece("tram", "Tram line opens", "World", 30, now=NOW)


@pytest.fixture
def site(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Admin]:
    with issue_site(make_settings, tmp_path, ARTICLES, now=NOW, later=[LATER],
                    extra=f'[newsletter]\neditors = ["{EDITOR}"]\n') as admin:
        yield admin


def ids(site: Admin) -> list[str]:
    issue = site.store.get_issue(1)
    assert issue is not None
    return [a.id for a in issue.articles]


def save(client: httpx.Client, csrf: str, changes: dict[str, Any],
         path: str = PAGE) -> httpx.Response:
    return client.post(path, json=changes, headers={"accept": "application/json",
                                                    "x-csrf-token": csrf})


def test_a_dashboard_session_saves_as_json_or_as_a_plain_form(site: Admin) -> None:
    with login(site) as browser:
        dashboard = browser.get("/admin/").text
        assert f'href="{PAGE}" aria-label="Edit issue 1">Edit</a>' in dashboard
        page = browser.get(PAGE)
        assert page.status_code == 200
        assert "script-src 'nonce-" in page.headers["content-security-policy"]
        csrf = csrf_of(page.text, PAGE)
        before, preheader = ids(site), site.store.get_issue(1).preheader  # type: ignore[union-attr]
        order = before[::-1]
        done = save(browser, csrf, {"subject": "Edited", "intro": "A *note*.",
                                    "articles": order})
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["ok"] and body["message"].startswith("Saved: subject: ")
        assert [a["id"] for s in body["sections"] for a in s["articles"]] == order
        assert body["history"][0]["actor"] == "dashboard 127.0.0.1"  # newest first
        assert "intro added" in body["history"][0]["summary"]
        assert ids(site) == order
        again = save(browser, csrf, {"subject": "Edited", "articles": order})
        assert again.json()["message"] == "Nothing to save: the issue is as it was."

        # Refusals: one line each, nothing saved.
        for changes, code, error in [
                ({"articles": []}, 400, "articles is empty: an issue needs at least one "
                                        "article (cancel the issue instead)"),
                ({"articles": ["nope"]}, 400, "no stored article has the id 'nope'"),
                ({"title": "x"}, 400, "cannot edit 'title': give any of subject, "
                                      "preheader, intro, articles"),
                ({"subject": "two\nlines"}, 400, "subject must be one line")]:
            refused = save(browser, csrf, changes)
            assert refused.status_code == code
            assert refused.json()["ok"] is False
            assert refused.json()["error"].startswith(error)
        assert ids(site) == order
        # Without the token, or with another form's: refused before anything is read.
        for token in ("", csrf_of(page.text, "/admin/issues/1/approve")):
            forged = save(browser, token, {"subject": "Forged"})
            assert forged.status_code == 403
            assert "not sent from the dashboard" in forged.json()["error"]
        assert browser.post(PAGE, content=b"[1]", headers={
            "content-type": "application/json", "accept": "application/json",
            "x-csrf-token": csrf}).json()["error"] == "The changes must be a JSON object."
        assert site.store.get_issue(1).subject == "Edited"  # type: ignore[union-attr]

        # The build's preheader followed the new order of sections.
        regenerated = site.store.get_issue(1).preheader  # type: ignore[union-attr]
        assert regenerated != preheader and regenerated.startswith("This issue: 4 articles")

        # Without the page's script the form posts itself: saved, then back with a flash.
        plain = browser.post(PAGE, data={"csrf": csrf, "subject": "Plain form",
                                         "preheader": regenerated, "intro": "A *note*.",
                                         "articles": " ".join(before)})
        assert plain.status_code == 303 and plain.headers["location"] == PAGE
        shown = browser.get(PAGE).text
        assert (f"Saved: subject: “Edited” → “Plain form”; preheader regenerated for the new "
                f"articles: “{preheader}”; articles reordered.") in shown
        assert ids(site) == before
    history = site.store.issue_history(1)
    assert [(e.action, e.actor) for e in history] == [
        ("build", "test"), ("edit", "dashboard 127.0.0.1"), ("edit", "dashboard 127.0.0.1")]


def test_the_editor_link_saves_its_own_issue_only(site: Admin) -> None:
    with editor_link(site, EDITOR, NOW) as editor:
        page = editor.get(PAGE).text
        assert f"Opened with the editor link mailed to {EDITOR}" in page
        csrf = csrf_of(page, PAGE)
        done = save(editor, csrf, {"subject": "By the editor"})
        assert done.status_code == 200 and done.json()["ok"]
        assert done.json()["history"][0]["actor"] == f"editor {EDITOR} 127.0.0.1"
        assert editor.get("/admin/issues/1/articles.json").status_code == 200
        assert editor.get(PAGE).status_code == 200  # the edit left the link valid
        # Its cookie is for issue 1's paths: nothing of another issue, nor the API.
        assert save(editor, csrf, {"subject": "x"}, "/admin/issues/2/edit").status_code == 403
        assert editor.get("/admin/issues/2/articles.json").status_code == 401
        assert editor.get("/admin/api/issues/1").status_code == 401
    last = site.store.issue_history(1)[-1]
    assert (last.action, last.actor) == ("edit", f"editor {EDITOR} 127.0.0.1")
    assert last.detail["subject"][1] == "By the editor"


def test_the_article_search(site: Admin) -> None:
    def titles(answer: httpx.Response) -> list[str]:
        assert answer.status_code == 200, answer.text
        return [a["title"] for a in answer.json()["articles"]]

    with login(site) as browser:
        search = "/admin/issues/1/articles.json"
        newest = titles(browser.get(search))
        assert newest == [a.title for a in ARTICLES] + [LATER.title]  # newest first
        assert titles(browser.get(search, params={"q": "TRAM"})) == [LATER.title]
        assert titles(browser.get(search, params={"q": "economy"})) == [
            "Bread prices fall", "Rents rise 100% again"]
        assert titles(browser.get(search, params={"q": "100%"})) == ["Rents rise 100% again"]
        assert titles(browser.get(search, params={"q": "%"})) == ["Rents rise 100% again"]
        assert titles(browser.get(search, params={"q": "_"})) == []
        loose = browser.get(search, params={"q": "loose"}).json()["articles"][0]
        assert loose["section"] == "More"  # [newsletter] untitled_section, as the issue has
        assert loose["meta"] == f"{ARTICLES[3].published:%Y-%m-%d}"
        assert browser.get("/admin/issues/99/articles.json").status_code == 404
    assert site.anon.get("/admin/issues/1/articles.json").status_code == 401


def test_an_issue_that_began_sending_is_shown_read_only(site: Admin) -> None:
    with login(site) as browser:
        csrf = csrf_of(browser.get(PAGE).text, PAGE)
        sending.start_sending(site.settings, site.store, sending.get_sendable(site.store, 1))
        late = save(browser, csrf, {"subject": "Too late"})
        assert late.status_code == 409
        assert late.json()["error"].startswith("issue 1 can no longer be edited: it is sending")
        page = browser.get(PAGE).text
        assert ("Issue 1 can no longer be edited: it is sending (only a draft, scheduled or "
                "paused issue that has not started sending can).") in page
        assert 'id="editor"' not in page and "Approve and send" not in page
        assert 'aria-label="Edit issue 1"' not in browser.get("/admin/").text
    assert site.store.get_issue(1).subject != "Too late"  # type: ignore[union-attr]
