"""`issue send`'s options as an operator combines them, over real SMTP on loopback: a dry run
sends nothing (not even a test copy), --to with --seed reaches both, and an issue already
sent goes to newcomers only when asked to, from the CLI, the API and the dashboard alike."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from smtpserver import SmtpTestServer
from webserver import running

from newsletter import pipeline
from newsletter.config import Settings
from tests.helpers.admin import TOKEN, flash_of, form_fields
from tests.helpers.review import EDITORS, SEEDS, new_key_pem, parsed, review_store
from tests.helpers.review import run_cli as run
from tests.helpers.sending import r


@pytest.fixture(scope="module")
def key_pem() -> bytes:
    return new_key_pem()


def test_a_dry_run_never_sends_and_to_with_seed_reaches_both(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    with SmtpTestServer() as srv, review_store(make_settings, tmp_path, srv, key_pem,
                                               readers=2, review=False) as (settings, _):
        code, out, err = run(settings, "issue", "send", "1", "--to", "me@example.org",
                             "--dry-run")
        assert code == 0, err
        assert out == ("dry run: a [TEST] copy of issue 1 would go to 1 address: "
                       "me@example.org; nothing sent\n")
        # The seed list too, each address once however it is spelt.
        code, out, err = run(settings, "issue", "send", "1", "--to", "me@example.org",
                             "--to", SEEDS[0].upper(), "--seed", "--dry-run")
        assert code == 0, err
        assert out == (f"dry run: a [TEST] copy of issue 1 would go to 3 addresses: "
                       f"me@example.org, {SEEDS[0].upper()}, {SEEDS[1]}; nothing sent\n")
        code, _, err = run(settings, "issue", "send", "1", "--to", "nope", "--dry-run")
        assert code == 2 and err == "error: 'nope' is not an email address\n"
        assert srv.messages == []

        code, out, err = run(settings, "issue", "send", "1", "--to", "me@example.org",
                             "--to", SEEDS[0], "--seed")
        assert code == 0, err
        assert [m.rcpt_tos[0] for m in srv.messages] == ["me@example.org", *SEEDS]
        assert all(str(parsed(m)["Subject"]).startswith("[TEST] ") for m in srv.messages)
        assert out.count("test copy sent to ") == 3


def test_an_issue_sent_goes_again_only_to_newcomers_and_only_when_asked(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    with SmtpTestServer() as srv, review_store(make_settings, tmp_path, srv, key_pem,
                                               readers=3, review=False) as (settings, store):
        code, out, err = run(settings, "issue", "send", "1")
        assert code == 0 and "issue 1 is sent" in out, err
        assert sorted(m.rcpt_tos[0] for m in srv.messages) == [r(0), r(1), r(2)]
        for new in ("new1@example.org", "new2@example.org"):
            code, _, err = run(settings, "subscribers", "add", new, "--confirmed")
            assert code == 0, err

        code, out, err = run(settings, "issue", "send", "1")
        assert code == 2 and out == ""
        assert err == ("error: issue 1 was sent already: sending it again would go to "
                       "the 2 subscribers who joined since (nobody gets it twice); to do "
                       "that, say so: `newsletter issue send 1 --to-new-subscribers` "
                       '(the API: {"new_subscribers": true})\n')
        code, out, _ = run(settings, "issue", "send", "1", "--dry-run")
        assert code == 0 and out == ("dry run: issue 1 was sent already; "
                                     "--to-new-subscribers would send it to the 2 "
                                     "subscribers who joined since; nothing sent\n")
        with running(pipeline.web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=30,
                             headers={"authorization": f"Bearer {TOKEN}"}) as api:
            refused = api.post("/admin/api/issues/1/send")
            assert refused.status_code == 409
            assert "was sent already" in refused.json()["error"]
        assert len(srv.messages) == 3

        code, out, err = run(settings, "issue", "send", "1", "--to-new-subscribers")
        assert code == 0, err
        assert "issue 1 is sent" in out
        assert sorted(m.rcpt_tos[0] for m in srv.messages[3:]) == [
            "new1@example.org", "new2@example.org"]
        issue = store.get_issue(1)
        assert issue is not None and issue.status == "sent"
        sends = [e.detail for e in store.issue_history(1) if e.action == "send"]
        assert sends[-1]["new_subscribers"] is True and sends[-1]["rows"] == 2

        code, _, err = run(settings, "issue", "send", "1", "--to-new-subscribers")
        assert code == 2 and "would reach nobody: every active subscriber has it" in err
        assert len(srv.messages) == 5
        code, _, err = run(settings, "issue", "send", "1", "--to", "me@example.org",
                           "--to-new-subscribers")
        assert code == 2 and "--to-new-subscribers sends the issue itself" in err


def test_the_api_sends_a_sent_issue_to_newcomers_only_when_asked(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    with SmtpTestServer() as srv, review_store(make_settings, tmp_path, srv, key_pem,
                                               readers=2, review=False) as (settings, store):
        assert run(settings, "issue", "send", "1")[0] == 0
        assert run(settings, "subscribers", "add", "late@example.org", "--confirmed")[0] == 0
        with running(pipeline.web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=30,
                             headers={"authorization": f"Bearer {TOKEN}"}) as api:
            bad = api.post("/admin/api/issues/1/send", json={"new_subscribers": "yes"})
            assert bad.status_code == 400 and "true or false" in bad.json()["error"]
            refused = api.post("/admin/api/issues/1/send", json={"new_subscribers": False})
            assert refused.status_code == 409
            assert '{"new_subscribers": true}' in refused.json()["error"]
            started = api.post("/admin/api/issues/1/send", json={"new_subscribers": True})
            assert started.status_code == 202, started.text
            deadline = time.monotonic() + 30
            while api.get("/admin/api/issues/1").json()["status"] != "sent":
                assert time.monotonic() < deadline, "the newcomer's send did not finish"
                time.sleep(0.05)
        assert sorted(m.rcpt_tos[0] for m in srv.messages) == sorted(
            [r(0), r(1), "late@example.org"])


def test_the_dashboard_sends_a_sent_issue_to_newcomers_on_an_explicit_post(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    with SmtpTestServer() as srv, review_store(make_settings, tmp_path, srv, key_pem,
                                               readers=2, review=False) as (settings, store):
        assert run(settings, "issue", "send", "1")[0] == 0
        with running(pipeline.web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=30) as web:
            assert web.post("/admin/login", data={"token": TOKEN}).status_code == 303
            page = web.get("/admin/").text
            assert "Sending it again would reach nobody: every active subscriber has it." \
                in page
            assert 'action="/admin/issues/1/send"' not in page  # no button to press
            for new in ("new1@example.org", "new2@example.org"):
                assert run(settings, "subscribers", "add", new, "--confirmed")[0] == 0

            page = web.get("/admin/").text
            assert "Send to the 2 who joined since</button>" in page
            assert "reach nobody" not in page
            form = form_fields(page, "/admin/issues/1/send")
            assert form["new_subscribers"] == "1" and form["csrf"]
            # Never on a GET, never without this session's token, never without saying so.
            assert web.get("/admin/issues/1/send").status_code == 405
            assert web.post("/admin/issues/1/send",
                            data={"new_subscribers": "1"}).status_code == 403
            plain = web.post("/admin/issues/1/send", data={"csrf": form["csrf"]})
            assert plain.status_code == 303
            assert flash_of(web.get("/admin/").text) == (
                "Issue 1 was sent already: nothing was sent. The 2 subscribers who joined "
                "since can get it: “Send to the 2 who joined since”, on its row.")
            assert len(srv.messages) == 2

            sent = web.post("/admin/issues/1/send", data=form)  # the button, as the page has it
            assert sent.status_code == 303 and sent.headers["location"] == "/admin/"
            page = web.get("/admin/").text
            assert flash_of(page) == \
                "Issue 1: sending started to the 2 subscribers who joined since."
            deadline = time.monotonic() + 30
            while store.get_issue(1).status != "sent":  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the newcomers' send did not finish"
                time.sleep(0.05)  # polling interval inside a deadline
            assert sorted(m.rcpt_tos[0] for m in srv.messages[2:]) == [
                "new1@example.org", "new2@example.org"]
            sends = [e for e in store.issue_history(1) if e.action == "send"]
            assert sends[-1].actor == "dashboard 127.0.0.1"
            assert sends[-1].detail["new_subscribers"] is True
            assert sends[-1].detail["rows"] == 2
            # Everyone has it now: nothing to offer, and a replay of the form sends nothing.
            page = web.get("/admin/").text
            assert "reach nobody" in page and 'action="/admin/issues/1/send"' not in page
            assert web.post("/admin/issues/1/send", data=form).status_code == 303
            assert flash_of(web.get("/admin/").text) == (
                "Issue 1 was sent already: nothing was sent. Every active subscriber has it.")
        assert len(srv.messages) == 4


@pytest.mark.parametrize("review", [True, False])
def test_the_api_mails_the_editors_again_in_review_mode_only(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes,
        review: bool) -> None:
    with SmtpTestServer() as srv, review_store(make_settings, tmp_path, srv, key_pem,
                                               readers=1, review=review) as (settings, store), \
            running(pipeline.web_app(settings, store)) as base, \
            httpx.Client(base_url=base, timeout=30,
                         headers={"authorization": f"Bearer {TOKEN}"}) as api:
        before = len(srv.messages)
        answer = api.post("/admin/api/issues/1/review")
        if not review:
            assert answer.status_code == 409 and "review mode is off" in answer.text
            assert len(srv.messages) == before
            return
        assert answer.status_code == 200, answer.text
        assert answer.json()["message"] == "review requested from 2 editors"
        assert sorted(answer.json()["reached"]) == sorted(EDITORS)
        assert sorted(m.rcpt_tos[0] for m in srv.messages[before:]) == sorted(EDITORS)
        assert api.post("/admin/api/issues/9/review").status_code == 404
        assert [e.actor for e in store.issue_history(1)
                if e.action == "review_sent"][-1].startswith("api ")
