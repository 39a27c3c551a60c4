"""What the issue editor tells people: its history in plain sentences (the same in the API
and from `newsletter issue history`), an intro over its limit told that limit (not the
request body's), an editor's link told what it can do, what works without the page's
script, and no promise of a reload after a save on a read-only page."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from newsletter.cli.main import cli
from newsletter.config import Settings
from newsletter.pipeline import review, sending
from newsletter.pipeline.history import describe
from tests.helpers.admin import Admin, csrf_of, login
from tests.helpers.editor import PAGE, editor_link, issue_site
from tests.helpers.issues import piece

NOW = datetime.now(UTC)
EDITOR = "editor@example.org"
AT = (NOW + timedelta(days=2)).replace(hour=7, minute=0, second=0, microsecond=0)
ARTICLES = [piece("cranes", "Harbour cranes return", "World", 2, now=NOW),
            piece("bread", "Bread prices fall", "Economy", 3, now=NOW)]


@pytest.fixture
def site(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Admin]:
    with issue_site(make_settings, tmp_path, ARTICLES, now=NOW,
                    extra=f'[newsletter]\neditors = ["{EDITOR}"]\n') as admin:
        yield admin


def save(client: httpx.Client, csrf: str, changes: dict[str, Any]) -> httpx.Response:
    return client.post(PAGE, json=changes, headers={"accept": "application/json",
                                                    "x-csrf-token": csrf})


def flash(client: httpx.Client) -> str:
    found = re.search(r'<div class="flash \w+" role="status">([^<]*)</div>',
                      client.get(PAGE).text)
    assert found, "a flash on the page"
    return html.unescape(found[1])


def test_a_long_intro_is_told_the_intros_limit(site: Admin) -> None:
    limit = "at most 20,480 (a note at the top, not an article)"
    with login(site) as browser:
        csrf = csrf_of(browser.get(PAGE).text, PAGE)
        # 100 KB: over the 64 KiB a dashboard form may send, under what an edit may.
        long = save(browser, csrf, {"intro": "x" * 100_000})
        assert long.status_code == 400
        assert long.json()["error"] == f"intro is 100,000 bytes: {limit}"
        # The plain form escapes each byte of "é" as %C3%A9: 30,000 of them are 180 KB.
        plain = browser.post(PAGE, data={"csrf": csrf, "intro": "é" * 30_000})
        assert plain.status_code == 303
        assert flash(browser) == f"Not saved: intro is 60,000 bytes: {limit}"
        # Past what any edit needs, the refusal still names the intro's limit.
        huge = save(browser, csrf, {"intro": "x" * 300_000})
        assert huge.status_code == 413
        assert "the intro can be at most 20,480 bytes" in huge.json()["error"]
    api = site.api.patch("/admin/api/issues/1", json={"intro": "x" * 100_000})
    assert api.status_code == 400 and api.json()["error"] == f"intro is 100,000 bytes: {limit}"
    issue = site.store.get_issue(1)
    assert issue is not None and issue.intro == "" and issue.edited_at is None


def test_an_editors_link_is_not_told_to_cancel(site: Admin) -> None:
    with editor_link(site, EDITOR, NOW) as editor:
        csrf = csrf_of(editor.get(PAGE).text, PAGE)
        refused = save(editor, csrf, {"articles": []})
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert "cancel the issue instead" not in error
        assert error == ("articles is empty: an issue needs at least one article. To stop "
                         "this issue from going out, leave it unapproved and tell the "
                         "publication's operator, who can cancel it.")
        plain = editor.post(PAGE, data={"csrf": csrf, "articles": ""})
        assert plain.status_code == 303 and "leave it unapproved" in flash(editor)
    with login(site) as browser:  # the operator can cancel: told so
        csrf = csrf_of(browser.get(PAGE).text, PAGE)
        assert save(browser, csrf, {"articles": []}).json()["error"].endswith(
            "(cancel the issue instead)")
    assert len(site.store.get_issue(1).articles) == 2  # type: ignore[union-attr]


def test_the_page_says_what_works_without_its_script(site: Admin) -> None:
    with login(site) as browser:
        page = browser.get(PAGE).text
        # The intro's limit beside it (the script turns it into a running count).
        assert re.search(r'<textarea id="intro" name="intro" rows="6" aria-describedby='
                         r'"intro-hint intro-count" data-max="20480">', page)
        assert '<p id="intro-count" class="hint">At most 20,480 bytes' in page
        noscript = re.search(r"<noscript>(.*?)</noscript>", page, re.S)
        assert noscript and "Without JavaScript the articles cannot be moved, removed or " \
            "added here, so those buttons are hidden" in noscript[1]
        assert "#editor .tools" in noscript[1]  # hidden, not left doing nothing
        assert "it reloads after each save" in page
        sending.start_sending(site.settings, site.store, sending.get_sendable(site.store, 1))
        locked = browser.get(PAGE).text
        assert "can no longer be edited: it is sending" in locked
        assert "reloads after each save" not in locked
        assert "The email as it was built and edited, with sample reader values." in locked


def test_every_action_reads_as_a_sentence_everywhere(site: Admin) -> None:
    api = "api 127.0.0.1"
    built = site.store.get_issue(1, with_articles=False)
    assert built is not None
    assert site.api.patch("/admin/api/issues/1", json={"subject": "Harbour week"}
                          ).status_code == 200
    sent = site.api.post("/admin/api/issues/1/test",
                         json={"to": ["a@example.org", "b@example.org"]})
    assert sent.status_code == 200, sent.text
    review.request_review(site.settings, site.store, 1)  # mails the one editor
    assert site.api.post("/admin/api/issues/1/schedule",
                         json={"at": AT.isoformat()}).status_code == 200
    assert site.api.post("/admin/api/issues/1/approve").status_code == 200
    assert site.api.post("/admin/api/issues/1/pause").status_code == 200
    assert site.api.post("/admin/api/issues/1/resume").status_code == 200
    assert site.api.post("/admin/api/issues/1/send").status_code == 202
    site.wait_until(lambda: site.store.get_issue(1).status == "sent")  # type: ignore[union-attr]
    when = f"{AT:%Y-%m-%d} 07:00 UTC"
    expected = [
        ("test", "built: 2 articles"),
        (api, f"subject: “{built.subject}” → “Harbour week”"),
        (api, "test copies sent to a@example.org and b@example.org"),
        ("scheduler", f"review requested from 1 editor ({EDITOR})"),
        (api, f"scheduled for {when}; status draft → scheduled"),
        (api, f"approved: it goes at {when}"),
        (api, "paused; status scheduled → paused"),
        (api, "resumed; status paused → scheduled"),
        (api, "sending started: 1 message queued; status scheduled → sending")]
    history = site.api.get("/admin/api/issues/1/history").json()["history"]
    assert [(e["actor"], e["summary"]) for e in history] == expected
    for _, summary in expected:
        assert not re.search(r"[{}\[\]]|None|'", summary), summary

    # The CLI prints the same sentences, as does the editor page (newest first).
    out = CliRunner().invoke(cli, ["--config", str(site.settings.path), "issue", "history",
                                   "1"])
    assert out.exit_code == 0, out.output
    assert [line.partition(": ")[2] for line in out.stdout.splitlines()] == \
        [s for _, s in expected]
    with login(site) as browser:
        page = html.unescape(browser.get("/admin/issues/1/edit").text)
    shown = re.findall(r"<li><span class=\"muted\">[^<]*</span> · <strong>([^<]*)</strong> · "
                       r"([^<]*)</li>", page)
    assert shown == expected[::-1]


def test_what_it_does_not_know_it_still_says_in_words() -> None:
    assert describe("review", {"to": ["a@x.example"], "status": {"from": "draft",
                                                                  "to": "draft"},
                               "at": "2026-05-04T07:00:00+00:00", "urgent": False,
                               "note": None}) == [
        "review: to a@x.example, status draft → draft, at 2026-05-04 07:00 UTC, urgent no"]
    assert describe("send", {"status": {"from": "paused", "to": "sending"}, "rows": 3,
                             "resumed": True}) == [
        "sending resumed: 3 messages queued", "status paused → sending"]
    assert describe("test_send", {"to": [], "failed": ["c@x.example"]}) == [
        "test copy not sent to c@x.example"]
    assert describe("reminder", {"to": ["a@x.example", "b@x.example"],
                                 "waited_hours": 48.0}) == [
        "review reminder sent to 2 editors (a@x.example and b@x.example) after 48 hours "
        "without an approval"]
