"""What came back, as operators see it: the subscriber record and bounce list in the API and
dashboard, per-issue rates with their warnings, and pages that change nothing on GET."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.models import BounceNotice, BouncePolicy
from newsletter.pipeline import sending
from tests.helpers.admin import admin_settings, login, serve
from tests.helpers.sending import seed


def _sent_with_trouble(settings: Settings) -> tuple[object, int]:
    store = pipeline.open_store(settings)
    seed(store, 4)
    pipeline.collect(settings, store)
    issue = pipeline.build_issue(settings, store).issue
    assert issue is not None and issue.id is not None
    sending.start_sending(settings, store, issue)
    sending.run_worker(settings, store, issue)
    a, b = store.list_subscribers(status="active", limit=2)
    store.record_bounces([
        BounceNotice(a.id, issue.id, "hard", "5.1.1", "550 5.1.1 <x> unknown <b>user</b>",
                     "imap", a.email, "k1"),
        BounceNotice(b.id, issue.id, "complaint", "", "feedback-type: abuse", "ses", b.email,
                     "k2")], datetime.now(UTC), BouncePolicy())
    return store, issue.number


def test_the_api_shows_the_record_the_list_and_the_rates(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = admin_settings(make_settings, tmp_path)
    store, number = _sent_with_trouble(settings)
    with serve(settings, store, tmp_path) as admin:
        body = admin.api.get(f"/admin/api/issues/{number}").json()
        back = body["came_back"]
        assert (back["hard"], back["soft"], back["complaints"]) == (1, 0, 1)
        assert back["hard_bounce_rate"] == 0.25 and back["complaint_rate"] == 0.25
        assert [w.split(":")[1].split(" rate")[0].strip() for w in back["warnings"]] == [
            "complaint", "hard-bounce"]
        status = admin.api.get("/admin/api/status").json()
        assert status["issues"][0]["came_back"]["complaints"] == 1
        listed = admin.api.get("/admin/api/bounces", params={"kind": "hard"}).json()
        assert [(e["email"], e["status"], e["issue"], e["source"]) for e in listed["bounces"]] \
            == [("reader0@example.org", "5.1.1", number, "imap")]
        assert listed["totals"] == {"hard": 1, "soft": 0, "complaint": 1}
        assert admin.api.get("/admin/api/bounces", params={"kind": "nope"}).status_code == 400
        record = admin.api.get(f"/admin/api/subscribers/{quote('Reader1@Example.org')}").json()
        assert record["status"] == "complained"
        assert [e["kind"] for e in record["bounces"]] == ["complaint"]
        assert record["consent"] == []  # seeded rows carry no consent history
        assert admin.api.get("/admin/api/subscribers/nobody@example.org").status_code == 404
        assert admin.anon.get("/admin/api/bounces").status_code == 401
    store.close()


def test_the_dashboard_shows_what_came_back_and_changes_nothing_on_get(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = admin_settings(make_settings, tmp_path)
    store, number = _sent_with_trouble(settings)
    with serve(settings, store, tmp_path) as admin:
        assert admin.anon.get("/admin/bounces").status_code in (303, 307)  # to the login
        with login(admin) as client:
            page = client.get("/admin/").text
            assert "came back: 1 hard (25.00%)" in page and "1 complaint (25.00%)" in page
            assert "complaint rate 25.00% (1 of 4 sent) reaches 0.10%" in page
            assert 'href="/admin/subscribers/' in page  # the latest events link to people
            # The diagnostic comes from a remote server: shown as text, never as markup.
            listing = client.get("/admin/bounces", params={"issue": number}).text
            assert "&lt;b&gt;user&lt;/b&gt;" in listing and "<b>user</b>" not in listing
            only = client.get("/admin/bounces", params={"kind": "complaint"}).text
            assert "reader1@example.org" in only and "reader0@example.org" not in only
            found = client.get("/admin/subscribers/find",
                               params={"email": "READER0@example.org"})
            assert found.status_code == 303
            record = client.get(found.headers["location"]).text
            assert "reader0@example.org" in record and "bounced" in record
            assert "5.1.1" in record and "imap" in record
            assert client.get("/admin/subscribers/find",
                              params={"email": "nobody@example.org"}).status_code == 404
            assert client.get("/admin/subscribers/find",
                              params={"email": "not an address"}).status_code == 400
            assert client.get("/admin/subscribers/99999").status_code == 404
            before = store.count_subscribers()
            for path in ("/admin/bounces", "/admin/subscribers/1"):
                assert client.post(path).status_code == 405
            assert store.count_subscribers() == before
    store.close()
