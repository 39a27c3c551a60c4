"""Editing an issue through the admin API over real HTTP, then sending it over real SMTP."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from smtpserver import SmtpTestServer

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.pipeline import editing
from tests.helpers.admin import TOKEN, Admin, serve
from tests.helpers.issues import piece
from tests.helpers.sending import seed, smtp_settings

NOW = datetime.now(UTC)
INTRO = ("Dear readers, this week *the port* reopens after three years.\n\n"
         "Read [our guide to the quay](https://ledger.example.org/guide/) before you go.")


ARTICLES = [piece("cranes", "Harbour cranes return", "World", 2, now=NOW),
            piece("ferry", "Night ferry resumes", "World", 3, now=NOW),
            piece("bread", "Bread prices fall", "Economy", 2.5, now=NOW),
            piece("rents", "Rents rise again", "Economy", 4, now=NOW)]


def with_admin(settings: Settings) -> Settings:
    return replace(settings, secrets=replace(settings.secrets, admin_token=TOKEN))


@pytest.fixture
def smtp() -> Iterator[SmtpTestServer]:
    with SmtpTestServer() as srv:
        yield srv


@pytest.fixture
def site(make_settings: Callable[..., Settings], smtp: SmtpTestServer,
         tmp_path: Path) -> Iterator[Admin]:
    settings = with_admin(smtp_settings(make_settings, smtp))
    store = pipeline.open_store(settings)
    try:
        seed(store, 2)  # two readers (and two articles of its own, one per section)
        store.save_articles(ARTICLES, [], NOW)
        built = pipeline.build_issue(settings, store, actor="test")
        assert built.created and built.issue is not None
        with serve(settings, store, tmp_path) as admin:
            yield admin
    finally:
        store.close()


def parts(received: bytes) -> tuple[EmailMessage, str, str]:
    msg = email.message_from_bytes(received, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    return msg, html, text


def in_order(document: str, titles: list[str]) -> bool:
    places = [document.find(t) for t in titles]
    return -1 not in places and places == sorted(places)


def test_an_edited_draft_is_sent_as_edited_then_refused_once_sent(
        site: Admin, smtp: SmtpTestServer) -> None:
    before = site.api.get("/admin/api/issues/1").json()
    assert before["status"] == "draft" and before["intro"] == "" and before["edited_at"] is None
    ids = [a["id"] for a in before["articles"]]
    titles = {a["id"]: a["title"] for a in before["articles"]}
    # The flat list is the email's order and agrees with the sections.
    assert ids == [a["id"] for s in before["sections"] for a in s["articles"]]
    assert [a["section"] for a in before["articles"]] == ["Economy"] * 3 + ["World"] * 3
    removed, rest = ids[0], ids[1:]
    order = rest[::-1]  # the rest reversed: World first now, each section reversed
    change = {"subject": "Harbour week: the editor's pick", "preheader": "Cranes, bread, ferries",
              "intro": INTRO, "articles": order}
    r = site.api.patch("/admin/api/issues/1", json=change)
    assert r.status_code == 200, r.text
    edited = r.json()
    assert [a["id"] for a in edited["articles"]] == order
    assert [s["name"] for s in edited["sections"]] == ["World", "Economy"]
    assert edited["subject"] == change["subject"] and edited["intro"] == INTRO
    assert edited["edited_at"] and edited["status"] == "draft"
    assert any(line.startswith("removed “") and removed in line for line in edited["changes"])
    assert "articles reordered" in edited["changes"]

    history = site.api.get("/admin/api/issues/1/history").json()["history"]
    assert [(e["action"], e["actor"]) for e in history] == [("build", "test"),
                                                            ("edit", "api 127.0.0.1")]
    assert history[1]["detail"]["subject"][1] == change["subject"]
    assert "“Harbour week: the editor's pick”" in history[1]["summary"]

    assert site.api.post("/admin/api/issues/1/send").status_code == 202
    site.wait_until(lambda: site.store.get_issue(1).status == "sent")  # type: ignore[union-attr]
    assert len(smtp.messages) == 2
    shown = [titles[i] for i in order]
    for received in smtp.messages:
        msg, html, text = parts(received.data)
        assert msg["Subject"] == change["subject"]
        # The HTML part: preview text, the note as HTML, the articles as arranged.
        assert re.search(r'<div class="preheader"[^>]*>Cranes, bread, ferries', html)
        assert "this week <em>the port</em> reopens" in html
        assert re.search(r'<a href="https://ledger.example.org/guide/"[^>]*>our guide to the '
                         r'quay</a>', html)
        assert in_order(html, ["the port", *shown]) and titles[removed] not in html
        # The text part: the same note in words, its link after the link text.
        flat = " ".join(text.split())
        assert ("Dear readers, this week the port reopens after three years. Read our guide "
                "to the quay (https://ledger.example.org/guide/) before you go.") in flat
        assert in_order(text, ["the port", *shown]) and titles[removed] not in text
        assert "%%" not in html and "%%" not in text

    sent = site.api.get("/admin/api/issues/1").json()
    again = site.api.patch("/admin/api/issues/1", json={**change, "subject": "Too late"})
    assert again.status_code == 409, again.text
    assert "can no longer be edited: it is sent" in again.json()["error"]
    after = site.api.get("/admin/api/issues/1").json()
    assert {k: after[k] for k in ("subject", "preheader", "intro", "articles", "edited_at")} == \
        {k: sent[k] for k in ("subject", "preheader", "intro", "articles", "edited_at")}
    assert [e["action"] for e in site.api.get("/admin/api/issues/1/history").json()[
        "history"]].count("edit") == 1


def patch(site: Admin, body: Any) -> tuple[int, str]:
    r = site.api.patch("/admin/api/issues/1", json=body)
    return r.status_code, r.json().get("error", "")


def test_bad_edits_are_one_clear_line_and_change_nothing(site: Admin) -> None:
    before = site.api.get("/admin/api/issues/1").json()
    ids = [a["id"] for a in before["articles"]]
    cases: list[tuple[Any, str]] = [
        ({"articles": [ids[0], "nope0000000000000000", "gone"]},
         "no stored article has the id 'nope0000000000000000', 'gone'"),
        ({"articles": [ids[0], ids[1], ids[0]]}, f"articles lists '{ids[0]}' more than once"),
        ({"articles": []}, "articles is empty"),
        ({"articles": ids[0]}, "articles must be a list of article ids"),
        ({"articles": [1, 2]}, "articles must be a list of article ids"),
        ({"subject": "Two\nlines"}, "subject must be one line"),
        ({"subject": "Sneaky\u2028separator"}, "subject must be one line"),
        ({"subject": "  "}, "subject must not be empty"),
        ({"subject": "x" * 201}, "subject is 201 characters: at most 200"),
        ({"subject": "bell\x07"}, "subject must not hold control characters"),
        ({"subject": 7}, "subject must be a string"),
        ({"preheader": "a\r\nb"}, "preheader must be one line"),
        ({"intro": "x" * (20 * 1024 + 1)}, "intro is 20,481 bytes: at most 20,480"),
        ({"intro": None}, "intro must be a string"),
        ({"title": "x"}, "cannot edit 'title': give any of subject, preheader, intro, articles"),
    ]
    for body, error in cases:
        code, text = patch(site, body)
        assert code == 400 and error in text, (body, code, text)
        assert "\n" not in text and "Traceback" not in text
    r = site.api.patch("/admin/api/issues/1", content=b"{not json",
                       headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": "the body is not valid JSON"}
    assert site.api.patch("/admin/api/issues/9", json={"subject": "x"}).status_code == 404
    assert site.api.get("/admin/api/issues/9/history").status_code == 404
    after = site.api.get("/admin/api/issues/1").json()
    assert after == before  # nothing saved, nothing re-rendered
    assert [e["action"] for e in site.api.get("/admin/api/issues/1/history").json()[
        "history"]] == ["build"]


def test_hostile_markdown_in_the_intro_is_shown_as_text(site: Admin) -> None:
    hostile = ("<script>alert(1)</script> <img src=x onerror=alert(2)> "
               "<a href='https://evil.example/'>raw</a> [js](javascript:alert(3)) "
               "[data](data:text/html;base64,PHNjcmlwdD4=) [ok](https://ok.example/a?b=1&c=2) "
               "![pixel](https://tracker.example/p.gif) %%UNSUBSCRIBE_URL%% [me](mailto:ed@x.org)"
               " [rel](/about/)")
    r = site.api.patch("/admin/api/issues/1", json={"intro": hostile})
    assert r.status_code == 200, r.text
    issue = site.store.get_issue(1)
    assert issue is not None and issue.intro == hostile  # kept as written, for editing
    note = re.search(r'<div class="intro"[^>]*>(.*?)</div>', issue.html, re.S)
    assert note
    html = note[1]
    assert "<script" not in html and "<img" not in html and "evil.example" not in \
        re.findall(r'href="([^"]*)"', html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, not run
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert hrefs == ["https://ok.example/a?b=1&amp;c=2", "https://tracker.example/p.gif",
                     "mailto:ed@x.org", "https://ledger.example.org/about/"]
    assert all(not h.startswith(("javascript:", "data:")) for h in hrefs)
    # The reader's own unsubscribe link is never put into the editor's text.
    assert "%%UNSUBSCRIBE_URL%%" not in html and "%\u2060%UNSUBSCRIBE_URL%\u2060%" in html
    top = issue.text.split("\n\n\n", 1)[0]
    assert "ok (https://ok.example/a?b=1&c=2)" in " ".join(top.split())
    assert "%%UNSUBSCRIBE_URL%%" not in top
    assert issue.text.count("%%UNSUBSCRIBE_URL%%") == 1  # the footer's


def test_paused_before_sending_is_editable_after_sending_started_is_not(site: Admin) -> None:
    at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert site.api.post("/admin/api/issues/1/schedule", json={"at": at}).status_code == 200
    assert patch(site, {"subject": "Scheduled, edited"})[0] == 200
    assert site.api.post("/admin/api/issues/1/pause").status_code == 200
    assert patch(site, {"subject": "Paused, edited"})[0] == 200
    issue = site.store.get_issue(1)
    assert issue is not None and issue.status == "paused" and issue.id is not None
    assert issue.send_at is not None  # an edit leaves the send time alone
    site.store.enqueue(issue.id, datetime.now(UTC))  # as a send that began, then paused
    code, error = patch(site, {"subject": "Too late"})
    assert code == 409 and "started sending before it was paused" in error
    assert site.store.get_issue(1).subject == "Paused, edited"  # type: ignore[union-attr]


def test_an_edit_racing_the_first_send_is_refused_atomically(
        make_settings: Callable[..., Settings], db_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(database_url=db_url)
    store = pipeline.open_store(settings)
    try:
        seed(store, 3)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None and issue.id is not None
        issue_id, html = issue.id, issue.html
        save = store.replace_issue_if

        def send_first(*args: Any, **kwargs: Any) -> bool:
            # The ledger is filled after the edit read the issue (still a draft), before it
            # saves: the save must see the rows and change nothing.
            store.enqueue(issue_id, datetime.now(UTC))
            return save(*args, **kwargs)

        monkeypatch.setattr(store, "replace_issue_if", send_first)
        with pytest.raises(editing.IssueLocked, match="started sending while it was being edited"):
            editing.edit_issue(settings, store, issue.number, {"subject": "Edited"}, "test")
        after = store.get_issue(issue.number)
        assert after is not None and after.subject == issue.subject and after.html == html
        assert after.edited_at is None
        assert [e.action for e in store.issue_history(issue.number)] == ["build"]
    finally:
        store.close()


def test_openapi_documents_the_edit(site: Admin) -> None:
    doc = site.api.get("/admin/api/openapi.json").json()
    patch_op = doc["paths"]["/admin/api/issues/{number}"]["patch"]
    assert {"200", "400", "404", "409"} <= set(patch_op["responses"])
    props = doc["components"]["schemas"]["IssueEdit"]["properties"]
    assert set(props) == {*editing.FIELDS, "version"}
    assert "get" in doc["paths"]["/admin/api/issues/{number}/history"]



def test_the_built_preheader_follows_the_articles_an_editors_stays(site: Admin) -> None:
    before = site.api.get("/admin/api/issues/1").json()
    assert before["preheader"] == "This issue: 6 articles in Economy and World."
    economy = [a["id"] for a in before["articles"] if a["section"] == "Economy"]
    world = [a["id"] for a in before["articles"] if a["section"] == "World"]
    # As the editor page sends it: every field, the preheader as it was.
    r = site.api.patch("/admin/api/issues/1", json={"preheader": before["preheader"],
                                                    "articles": world + economy[:1]})
    assert r.status_code == 200, r.text
    assert r.json()["preheader"] == "This issue: 4 articles in World and Economy."
    assert ("preheader regenerated for the new articles: “This issue: 4 articles in World "
            "and Economy.”") in r.json()["changes"]
    issue = site.store.get_issue(1)
    assert issue is not None and "This issue: 4 articles in World and Economy." in issue.html
    assert site.api.patch("/admin/api/issues/1", json={"articles": world}).json()[
        "preheader"] == "This issue: 3 articles in World."

    # The editor's own line is never replaced, set alone or with the articles.
    for body in ({"preheader": "Cranes and ferries"}, {"articles": world[:2]},
                 {"preheader": "Only cranes", "articles": world[:1]}):
        r = site.api.patch("/admin/api/issues/1", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["preheader"] == body.get("preheader", "Cranes and ferries")
    assert not any("regenerated" in line for line in r.json()["changes"])
