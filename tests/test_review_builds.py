"""Review mode for every build: `issue build`, the API and the dashboard mail the editors as
the cron does, say so, and the reminder follows; `issue review N` mails them again; `issue
show` says who approved. Real SMTP, the app as `newsletter serve` wires it, real SQLite."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from smtpserver import Received, SmtpTestServer
from webserver import running

from newsletter import pipeline
from newsletter.cli.common import cli_actor
from newsletter.config import Settings
from newsletter.pipeline import control, review
from newsletter.store.database import Store
from tests.helpers.admin import TOKEN, csrf_of
from tests.helpers.review import EDITORS, new_key_pem, parsed, review_store
from tests.helpers.review import run_cli as run


@pytest.fixture(scope="module")
def key_pem() -> bytes:
    return new_key_pem()


def reviews(srv: SmtpTestServer, prefix: str = "[Review] ") -> list[Received]:
    return [m for m in srv.messages if str(parsed(m)["Subject"]).startswith(prefix)]


def review_events(store: Store, number: int) -> list[str]:
    return [e.actor for e in store.issue_history(number) if e.action == "review_sent"]


def test_a_build_by_hand_the_api_or_the_dashboard_mails_the_editors_and_says_so(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    with SmtpTestServer() as srv, review_store(make_settings, tmp_path, srv, key_pem,
                                               readers=2, build=False) as (settings, store):
        code, out, err = run(settings, "issue", "build")
        assert code == 0, err
        assert out.startswith("built issue 1: ")
        assert out.rstrip().endswith("; review requested from 2 editors"), out
        assert sorted(m.rcpt_tos[0] for m in reviews(srv)) == sorted(EDITORS)
        assert review_events(store, 1) == [cli_actor()]

        # Built again with nothing new: the editors have this version, none is mailed.
        code, out, _ = run(settings, "issue", "build")
        assert code == 0 and "the editors have had this version for review since" in out
        assert len(srv.messages) == len(EDITORS)

        # A draft built by hand gets its reminder, as the cron's does.
        later = datetime.now(UTC) + timedelta(hours=25)
        assert review.remind_editors(settings, store, later) == [1]
        assert sorted(m.rcpt_tos[0] for m in reviews(srv, "[Review reminder] ")) == \
            sorted(EDITORS)

        control.cancel_issue(store, 1, actor="test")
        with running(pipeline.web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=30,
                             headers={"authorization": f"Bearer {TOKEN}"}) as api:
            built = api.post("/admin/api/issues", json={"force": True})
            assert built.status_code == 201, built.text
            assert built.json()["message"].endswith("; review requested from 2 editors")
            assert review_events(store, 2) == ["api 127.0.0.1"]
            control.cancel_issue(store, 2, actor="test")

            with httpx.Client(base_url=base, timeout=30) as browser:
                assert browser.post("/admin/login", data={"token": TOKEN}).status_code \
                    == 303
                page = browser.get("/admin/").text
                done = browser.post("/admin/build", data={
                    "csrf": csrf_of(page, "/admin/build"), "force": "1"})
                assert done.status_code == 303
                assert "review requested from 2 editors" in browser.get("/admin/").text
            assert review_events(store, 3) == ["dashboard 127.0.0.1"]
        # Two for each of the three builds (and the first one's two reminders).
        assert len(reviews(srv)) == 3 * len(EDITORS)
        assert len(srv.messages) == 4 * len(EDITORS)


def test_issue_review_mails_the_editors_again_and_show_tells_the_approval(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    with SmtpTestServer() as srv, review_store(make_settings, tmp_path, srv, key_pem,
                                               readers=2, build=False) as (settings, store):
        assert pipeline.build_issue(settings, store, actor="cli first").issue is not None
        code, shown, _ = run(settings, "issue", "show", "1")
        assert code == 0
        assert "\nReview:    requested " in shown
        assert "\nApproved:  no (`newsletter issue approve 1` releases it)\n" in shown
        # The reminder went; a resend by hand starts the clock again.
        assert review.remind_editors(settings, store,
                                     datetime.now(UTC) + timedelta(hours=25)) == [1]
        before = len(srv.messages)
        code, out, err = run(settings, "issue", "review", "1")
        assert code == 0, err
        assert out == (f"issue 1: review requested from 2 editors: "
                       f"{', '.join(EDITORS)}\n")
        assert sorted(m.rcpt_tos[0] for m in srv.messages[before:]) == sorted(EDITORS)
        assert all(str(parsed(m)["Subject"]).startswith("[Review] ")
                   for m in srv.messages[before:])
        again = store.get_issue(1)
        assert again is not None and again.reminded_at is None
        assert review_events(store, 1) == ["cli first", cli_actor()]

        # The editors' server refuses them: said, exit status 1.
        for editor in EDITORS:
            srv.rcpt_codes[editor] = 550
        code, _, err = run(settings, "issue", "review", "1")
        assert code == 1  # after the log's line for each refusal, one line that says so
        assert err.splitlines()[-1] == "error: issue 1: the review mail reached none of " \
                                       "the 2 editors (see the log)"
        srv.rcpt_codes.clear()

        control.schedule_issue(store, 1, datetime.now(UTC) + timedelta(days=1))
        review.approve_issue(store, 1, actor="cli alice")
        code, shown, _ = run(settings, "issue", "show", "1")
        assert "\nApproved:  by cli alice, 20" in shown
        code, _, err = run(settings, "issue", "review", "1")
        assert code == 2 and err.startswith("error: issue 1 is already approved (by cli "
                                            "alice, ")
        assert err.count("\n") == 1


def test_issue_review_is_refused_outside_review_mode(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    with SmtpTestServer() as srv, review_store(make_settings, tmp_path, srv, key_pem,
                                               readers=1, review=False,
                                               build=False) as (settings, store):
        result = pipeline.build_issue(settings, store)
        assert result.issue is not None and "review" not in result.message
        code, shown, _ = run(settings, "issue", "show", "1")
        assert code == 0 and "Approved:" not in shown and "Review:" not in shown
        code, _, err = run(settings, "issue", "review", "1")
    assert code == 2 and err.startswith("error: review mode is off ([newsletter] review = "
                                        "false)")
    assert not srv.messages
