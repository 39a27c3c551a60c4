"""Two editors of one issue: a save made from an older version is refused (409) and changes
nothing, through the admin API (a "version" or If-Match), the editor page (its script's JSON
and its plain form), the page's approve button and the dashboard's Approve and Send (and the
API's approve and send, when they name a version); the store's save cannot let two through."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from webserver import running

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.pipeline import control, editing
from newsletter.store.database import Store
from tests.helpers.admin import TOKEN, Admin, csrf_of, flash_of, form_fields, login
from tests.helpers.editor import issue_site
from tests.helpers.issues import piece
from tests.helpers.sending import seed

NOW = datetime.now(UTC)
PAGE = "/admin/issues/1/edit"
ARTICLES = [piece("cranes", "Harbour cranes return", "World", 2, now=NOW),
            piece("bread", "Bread prices fall", "Economy", 3, now=NOW),
            piece("rents", "Rents rise again", "Economy", 4, now=NOW)]


def changed_by(actor: str) -> str:
    """The refusal's words, the time left as a pattern."""
    return (rf"Issue 1 was changed by {re.escape(actor)} at \d\d:\d\d UTC since you opened "
            rf"it; reload to see their changes")


@pytest.fixture
def site(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Admin]:
    with issue_site(make_settings, tmp_path, ARTICLES, now=NOW, scheduled=True) as admin:
        yield admin


def edits(site: Admin) -> list[str]:
    return [e.actor for e in site.store.issue_history(1) if e.action == "edit"]


def test_a_patch_from_an_older_version_is_refused_and_changes_nothing(site: Admin) -> None:
    opened = site.api.get("/admin/api/issues/1")
    old = opened.json()["version"]
    assert re.fullmatch(r"[0-9a-f]{24}", old) and opened.headers["etag"] == f'"{old}"'

    first = site.api.patch("/admin/api/issues/1", json={"subject": "First", "version": old})
    assert first.status_code == 200, first.text
    new = first.json()["version"]
    assert new != old and first.headers["etag"] == f'"{new}"'

    # The second editor still holds the first version: refused, whatever it changes.
    for body, headers in [({"subject": "Second", "version": old}, {}),
                          ({"intro": "A note."}, {"if-match": f'"{old}"'})]:
        late = site.api.patch("/admin/api/issues/1", json=body, headers=headers)
        assert late.status_code == 409, late.text
        assert re.fullmatch(changed_by("api 127.0.0.1"), late.json()["error"])
    issue = site.store.get_issue(1)
    assert issue is not None and issue.subject == "First" and issue.intro == ""
    assert edits(site) == ["api 127.0.0.1"]
    assert site.api.get("/admin/api/issues/1").json()["version"] == new

    # The current version, by If-Match or in the body, saves; no version at all still does.
    assert site.api.patch("/admin/api/issues/1", json={"intro": "A note."},
                          headers={"if-match": f'"{new}"'}).status_code == 200
    assert site.api.patch("/admin/api/issues/1", json={"subject": "Last"}).status_code == 200
    assert site.api.patch("/admin/api/issues/1",
                          json={"subject": "x", "version": 7}).status_code == 400
    issue = site.store.get_issue(1)
    assert issue is not None and (issue.subject, issue.intro) == ("Last", "A note.")


def page_version(page: str) -> str:
    m = re.search(r'<input type="hidden" name="version" value="([0-9a-f]+)">', page)
    assert m, "the editor form carries its version"
    return m[1]


def post_json(client: httpx.Client, csrf: str, changes: dict[str, Any]) -> httpx.Response:
    return client.post(PAGE, json=changes, headers={"accept": "application/json",
                                                    "x-csrf-token": csrf})


def test_two_saves_from_the_same_editor_page_version(site: Admin) -> None:
    with login(site) as one, login(site) as two:
        page_one, page_two = one.get(PAGE).text, two.get(PAGE).text
        opened = page_version(page_one)
        assert page_version(page_two) == opened
        saved = post_json(one, csrf_of(page_one, PAGE), {"subject": "From one",
                                                          "version": opened})
        assert saved.status_code == 200 and saved.json()["ok"], saved.text
        assert saved.json()["version"] != opened  # what the script sends next

        # The other tab, through the script (JSON) …
        late = post_json(two, csrf_of(page_two, PAGE), {"subject": "From two",
                                                        "version": opened})
        assert late.status_code == 409
        assert re.fullmatch(changed_by("dashboard 127.0.0.1"), late.json()["error"])
        # … and through the plain form: back to the page with the same refusal.
        plain = two.post(PAGE, data={"csrf": csrf_of(page_two, PAGE), "subject": "From two",
                                     "version": opened})
        assert plain.status_code == 303
        flash = re.search(r'<div class="flash bad" role="status">([^<]*)</div>',
                          two.get(PAGE).text)
        assert flash and re.fullmatch("Not saved: " + changed_by("dashboard 127.0.0.1"),
                                      flash[1].replace("&#39;", "'"))
        # Its approve button names the version it showed: not approved either.
        approve = two.post("/admin/issues/1/approve", data={
            "csrf": csrf_of(page_two, "/admin/issues/1/approve"), "version": opened})
        assert approve.status_code == 303
        assert "was changed by dashboard 127.0.0.1" in two.get(PAGE).text
        issue = site.store.get_issue(1)
        assert issue is not None and issue.subject == "From one" and issue.approved_at is None
        assert edits(site) == ["dashboard 127.0.0.1"]

        # Reloaded, it holds the new version: its save and approval go through.
        fresh = two.get(PAGE).text
        assert 'value="From one"' in fresh
        again = post_json(two, csrf_of(fresh, PAGE), {"subject": "From two",
                                                      "version": page_version(fresh)})
        assert again.status_code == 200, again.text
        approved = two.post("/admin/issues/1/approve", data={
            "csrf": csrf_of(fresh, "/admin/issues/1/approve"),
            "version": again.json()["version"]})
        assert approved.status_code == 303
    issue = site.store.get_issue(1)
    assert issue is not None and issue.subject == "From two"
    assert issue.approved_by == "dashboard 127.0.0.1" and issue.status == "scheduled"


def refused(done: str, verb: str) -> str:
    """The dashboard's refusal of a button pressed on a page loaded before an edit."""
    return (rf"Issue 1 was not {done}: it was changed by dashboard 127\.0\.0\.1 at \d\d:\d\d "
            rf"UTC since this page was loaded\. Review the latest, then {verb} again\.")


def pressed_after_an_edit(store: Store, one: httpx.Client, two: httpx.Client,
                          action: str) -> tuple[dict[str, str], str]:
    """Tab two loads the dashboard, tab one then edits issue 1 (subject "From one") in the
    editor page, and tab two presses its button posting to `action`, as it was loaded.
    The button's fields once reloaded (naming the saved version), and the flash it got."""
    stale = form_fields(two.get("/admin/").text, action)
    issue = store.get_issue(1, with_articles=True)
    assert issue is not None and stale["version"] == editing.version_of(issue)
    page = one.get(PAGE).text
    saved = post_json(one, csrf_of(page, PAGE), {"subject": "From one",
                                                 "version": page_version(page)})
    assert saved.status_code == 200, saved.text
    pressed = two.post(action, data=stale)
    assert pressed.status_code == 303 and pressed.headers["location"] == "/admin/"
    shown = two.get("/admin/").text
    fresh = form_fields(shown, action)
    assert fresh["version"] == saved.json()["version"] != stale["version"]
    return fresh, flash_of(shown)


def test_the_dashboards_approve_names_the_version_it_showed(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Two dashboards: one tab edits the issue, the other, loaded before, approves it as it
    showed it. Refused with the reason, nothing approved; reloaded, it approves."""
    settings = make_settings('[newsletter]\nreview = true\neditors = ["ed@example.org"]\n'
                             f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n')
    settings = replace(settings, secrets=replace(settings.secrets, admin_token=TOKEN))
    store = pipeline.open_store(settings)
    try:
        seed(store, 2)
        assert pipeline.build_issue(settings, store).issue is not None
        control.schedule_issue(store, 1, NOW + timedelta(days=1), actor="test")  # approving
        with running(pipeline.web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=30) as one, \
                httpx.Client(base_url=base, timeout=30) as two:  # keeps it waiting
            for tab in (one, two):
                assert tab.post("/admin/login", data={"token": TOKEN}).status_code == 303
            fresh, flash = pressed_after_an_edit(store, one, two, "/admin/issues/1/approve")
            assert re.fullmatch(refused("approved", "approve"), flash)
            issue = store.get_issue(1)
            assert issue is not None and issue.approved_at is None
            assert "approve" not in [e.action for e in store.issue_history(1)]

            assert two.post("/admin/issues/1/approve", data=fresh).status_code == 303
            assert flash_of(two.get("/admin/").text).startswith("Issue 1 approved: it goes at ")
        issue = store.get_issue(1)
        assert issue is not None and issue.subject == "From one"
        assert issue.approved_by == "dashboard 127.0.0.1" and issue.status == "scheduled"
    finally:
        store.close()


def sent_nothing(site: Admin) -> bool:
    """Issue 1 queued nobody, recorded no send and mailed nobody."""
    issue = site.store.get_issue(1)
    assert issue is not None and issue.id is not None
    return (not any(site.store.delivery_counts(issue.id).values())
            and "send" not in [e.action for e in site.store.issue_history(1)]
            and not list(site.outbox.glob("*.eml")))


def mailed_subjects(site: Admin) -> list[str]:
    """The Subject of each issue mail once issue 1 is sent (its one reader's)."""
    site.wait_until(lambda: getattr(site.store.get_issue(1), "status", "") == "sent")
    return [line.removeprefix("Subject: ") for p in site.outbox.glob("*.eml")
            for line in p.read_text("utf-8").splitlines() if line.startswith("Subject: ")]


def test_the_dashboards_send_names_the_version_it_showed(site: Admin) -> None:
    """Two dashboards, no review: one tab edits the issue, the other, loaded before, presses
    its Send. Refused with the reason, nothing queued or mailed; reloaded, it sends."""
    with login(site) as one, login(site) as two:
        fresh, flash = pressed_after_an_edit(site.store, one, two, "/admin/issues/1/send")
        assert re.fullmatch(refused("sent", "send"), flash)
        issue = site.store.get_issue(1)
        assert issue is not None and issue.status == "scheduled"
        assert sent_nothing(site)

        assert two.post("/admin/issues/1/send", data=fresh).status_code == 303
        assert flash_of(two.get("/admin/").text) == "Issue 1: sending started."
    assert mailed_subjects(site) == ["From one"]
    sends = [e for e in site.store.issue_history(1) if e.action == "send"]
    assert [e.actor for e in sends] == ["dashboard 127.0.0.1"]


def test_the_apis_send_and_approve_refuse_an_older_version(site: Admin) -> None:
    """As PATCH: a "version" (or If-Match) is optional; an older one is 409, nothing done."""
    old = site.api.get("/admin/api/issues/1").json()["version"]
    edited = site.api.patch("/admin/api/issues/1", json={"subject": "Edited"})
    assert edited.status_code == 200, edited.text
    new = edited.json()["version"]

    for verb, done in (("approve", "approved"), ("send", "sent")):
        for body, headers in [({"version": old}, {}), ({}, {"if-match": f'"{old}"'})]:
            late = site.api.post(f"/admin/api/issues/1/{verb}", json=body, headers=headers)
            assert late.status_code == 409, late.text
            assert re.fullmatch(rf"Issue 1 was not {done}: it was changed by api 127\.0\.0\.1 "
                                rf"at \d\d:\d\d UTC since that version was read\. Read the "
                                rf"latest \(GET /admin/api/issues/1\), then {verb} again\.",
                                late.json()["error"])
        bad = site.api.post(f"/admin/api/issues/1/{verb}", json={"version": 7})
        assert bad.status_code == 400 and '"version" must be a string' in bad.json()["error"]
    issue = site.store.get_issue(1)
    assert issue is not None and issue.approved_at is None and issue.status == "scheduled"
    assert sent_nothing(site)

    approved = site.api.post("/admin/api/issues/1/approve", json={"version": new})
    assert approved.status_code == 200 and approved.json()["approved_by"] == "api 127.0.0.1"
    started = site.api.post("/admin/api/issues/1/send", headers={"if-match": f'"{new}"'})
    assert started.status_code == 202, started.text
    assert mailed_subjects(site) == ["Edited"]


def test_an_edit_between_the_check_and_the_save_wins(
        make_settings: Callable[..., Settings], db_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Both saves read the same version; the other one is saved first, while this one is
    rendering: the store refuses this one (its edited_at is no longer the one read)."""
    settings = make_settings(database_url=db_url)
    store = pipeline.open_store(settings)
    try:
        seed(store, 2)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None
        version = editing.version_of(issue)
        save = store.replace_issue_if
        raced: list[str] = []

        def other_first(*args: Any, **kwargs: Any) -> bool:
            if not raced:
                raced.append("other")
                monkeypatch.setattr(store, "replace_issue_if", save)
                editing.edit_issue(settings, store, 1, {"subject": "Other", "version": version},
                                   "api other")
            return save(*args, **kwargs)

        monkeypatch.setattr(store, "replace_issue_if", other_first)
        with pytest.raises(editing.EditConflict, match="changed by api other at"):
            editing.edit_issue(settings, store, 1, {"subject": "Mine", "version": version},
                               "api mine")
        after = store.get_issue(1)
        assert after is not None and after.subject == "Other"
        assert [e.actor for e in store.issue_history(1) if e.action == "edit"] == ["api other"]
    finally:
        store.close()


def test_an_edit_between_the_send_check_and_its_start_stops_the_send(
        make_settings: Callable[..., Settings], db_url: str) -> None:
    """The page's version was checked, then an edit lands before the send moves the issue:
    the send, holding the issue as it was read, is refused as it starts — nothing queued,
    the issue still a draft — and with the latest version it goes."""
    from newsletter.pipeline import sending

    settings = make_settings(database_url=db_url)
    store = pipeline.open_store(settings)
    try:
        seed(store, 2)
        read = pipeline.build_issue(settings, store).issue
        assert read is not None and read.id is not None
        version = editing.version_of(read)
        editing.edit_issue(settings, store, 1, {"subject": "In between"}, "api other")
        with pytest.raises(sending.IssueChanged, match="issue 1 was not sent: it was changed"):
            sending.start_sending(settings, store, read, actor="api mine", version=version)
        with pytest.raises(sending.IssueChanged):  # a version that was never this issue's
            sending.start_sending(settings, store, read, actor="api mine", version="0" * 24)
        now = store.get_issue(1)
        assert now is not None and now.status == "draft" and now.subject == "In between"
        assert not any(store.delivery_counts(read.id).values())
        assert [e.action for e in store.issue_history(1)] == ["build", "edit"]

        added = sending.start_sending(settings, store, now, actor="api mine",
                                      version=f'"{editing.version_of(now)}"')
        assert added == 2 and store.get_issue(1).status == "sending"  # type: ignore[union-attr]
    finally:
        store.close()
