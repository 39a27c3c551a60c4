"""Review mode over real SMTP, HTTP and databases: the scheduler mails the editors, nothing
unapproved goes out, a reminder comes once, approving sends; the signed links hold."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from smtpserver import Received, SmtpTestServer
from webserver import running

from newsletter import pipeline
from newsletter import scheduler as sched
from newsletter.cli.common import cli_actor
from newsletter.cli.main import cli
from newsletter.config import Settings
from newsletter.errors import ConfigError, NewsletterError
from newsletter.pipeline import control, review, scheduling, sending
from newsletter.pipeline.issue_links import IssueLinks
from newsletter.store.database import Store
from tests.helpers.admin import csrf_of, serve
from tests.helpers.review import (
    EDITOR_LINK,
    EDITORS,
    PREVIEW_LINK,
    link,
    local,
    parsed,
    parts,
    review_settings,
)
from tests.helpers.sending import r, seed
from tests.helpers.signing import verifies

READERS = 3


@pytest.fixture(scope="module")
def key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def runtime() -> Iterator[Callable[[Settings, Store], None]]:
    """Jobs run by calling them, as the scheduler would, on these settings and store."""
    def use(settings: Settings, store: Store) -> None:
        scheduling._RUNTIME = scheduling.Runtime(settings, store)

    yield use
    scheduling._RUNTIME = None


def wait_until(check: Callable[[], object], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.05)  # polling interval inside a deadline


def to_readers(srv: SmtpTestServer) -> list[Received]:
    return [m for m in srv.messages if m.rcpt_tos[0].startswith("reader")]


def actors(store: Store, number: int) -> list[tuple[str, str]]:
    return [(e.action, e.actor) for e in store.issue_history(number)]


def test_review_mode_end_to_end(make_settings: Callable[..., Settings], tmp_path: Path,
                                key_pem: bytes, db_url: str,
                                runtime: Callable[[Settings, Store], None]) -> None:
    with SmtpTestServer() as srv:
        settings = review_settings(make_settings, tmp_path, srv, key_pem, database_url=db_url)
        store = pipeline.open_store(settings)
        seed(store, READERS)
        runtime(settings, store)
        try:
            sched.job_issue()  # the cron's run: built, then mailed to the editors, not sent
            issue = store.get_issue(1)
            assert issue is not None and issue.status == "draft"
            assert issue.review_sent_at is not None
            wait_until(lambda: len(srv.messages) == len(EDITORS))
            reviews = {m.rcpt_tos[0]: m for m in srv.messages}
            assert sorted(reviews) == sorted(EDITORS) and not to_readers(srv)
            for got in reviews.values():
                assert verifies(got.data, key_pem)  # through the one signed builder
                msg = parsed(got)
                assert msg["Subject"] == f"[Review] {issue.subject}"
                assert msg["List-Unsubscribe"] is None and msg["List-Id"] is None
                html, text = parts(got)
                assert "For review: issue 1 is a draft, not yet sent" in text
                # The real thing below the note: the issue's articles and its footer.
                assert "World piece" in html and "Economy piece" in text
            mine = parts(reviews[EDITORS[0]])
            editor_url = link(mine[0], EDITOR_LINK)
            assert editor_url == link(mine[1], EDITOR_LINK)
            preview_url = link(mine[1], PREVIEW_LINK)
            assert "/issues/1?preview=" in link(mine[0], PREVIEW_LINK)
            other_editor_url = link(parts(reviews[EDITORS[1]])[1], EDITOR_LINK)
            assert other_editor_url != editor_url  # one link per editor: it names them

            sched.job_issue()  # nothing new since: the editors have this version already
            sched.job_sweep()  # a draft is never the sweep's to send
            due = datetime.now(UTC) - timedelta(minutes=5)
            control.schedule_issue(store, 1, due, now=due - timedelta(days=1), actor="cli ops")
            sched.job_sweep()  # scheduled and due, but nobody approved it: it waits
            assert store.get_issue(1).status == "scheduled"  # type: ignore[union-attr]
            assert len(srv.messages) == len(EDITORS) and not to_readers(srv)

            # The reminder: not before review_reminder_hours, then once.
            sent_at = issue.review_sent_at
            assert review.remind_editors(settings, store, sent_at + timedelta(hours=23)) == []
            store.set_issue_fields(1, datetime.now(UTC),
                                   review_sent_at=datetime.now(UTC) - timedelta(hours=25))
            sched.job_sweep()
            wait_until(lambda: len(srv.messages) == 2 * len(EDITORS))
            reminders = srv.messages[len(EDITORS):]
            assert sorted(m.rcpt_tos[0] for m in reminders) == sorted(EDITORS)
            assert all(parsed(m)["Subject"] == f"[Review reminder] {issue.subject}"
                       for m in reminders)
            assert store.get_issue(1).reminded_at is not None  # type: ignore[union-attr]
            sched.job_sweep()
            assert review.remind_editors(settings, store,
                                         datetime.now(UTC) + timedelta(days=3)) == []
            assert len(srv.messages) == 2 * len(EDITORS) and not to_readers(srv)

            with running(pipeline.web_app(settings, store)) as base, \
                    httpx.Client(base_url=base, timeout=30) as web:
                # The draft preview: the signed link shows it, uncached and unindexed.
                page = web.get(local(preview_url))
                assert page.status_code == 200 and "World piece" in page.text
                assert page.headers["cache-control"] == "no-store"
                assert "noindex" in page.headers["x-robots-tag"]
                assert page.headers["referrer-policy"] == "no-referrer"
                assert web.get("/issues/1").status_code == 404  # no token: as today
                assert web.get(local(preview_url)[:-2] + "xx").status_code == 404
                expired = IssueLinks.from_settings(settings, store).preview_url(
                    issue, datetime.now(UTC) - timedelta(days=8))
                assert web.get(local(expired)).status_code == 404

                # The editor link: a session for this issue only.
                opened = web.get(local(editor_url))
                assert opened.status_code == 303
                assert opened.headers["location"] == "/admin/issues/1/edit"
                cookie = opened.headers["set-cookie"]
                assert "Path=/admin/issues/1;" in cookie and "HttpOnly" in cookie
                editor_page = web.get("/admin/issues/1/edit")
                assert editor_page.status_code == 200 and EDITORS[0] in editor_page.text
                assert web.get("/admin/issues/1/preview").status_code == 200
                assert web.get("/admin/").headers["location"] == "/admin/login"
                assert web.get("/admin/api/issues/1").status_code == 401
                assert web.get("/admin/issues/2/edit").headers["location"] == "/admin/login"
                bad = web.get(local(editor_url)[:-2] + "xx")
                assert bad.status_code == 403
                # Only what the link allows: cancel is not among it.
                csrf = csrf_of(editor_page.text, "/admin/issues/1/approve")
                assert web.post("/admin/issues/1/cancel",
                                data={"csrf": csrf}).status_code == 403
                assert store.get_issue(1).status == "scheduled"  # type: ignore[union-attr]

                approved = web.post("/admin/issues/1/approve", data={"csrf": csrf})
                assert approved.status_code == 303
                assert approved.headers["location"] == "/admin/issues/1/edit"
                wait_until(lambda: store.get_issue(1).status == "sent")  # type: ignore[union-attr]
                assert sorted(m.rcpt_tos[0] for m in to_readers(srv)) == \
                    [r(i) for i in range(READERS)]
                done = store.get_issue(1)
                assert done is not None
                assert done.approved_by == f"editor {EDITORS[0]} 127.0.0.1"

                # Another issue's token opens nothing of this one, and the reverse.
                second = pipeline.build_issue(settings, store, force=True).issue
                assert second is not None and second.number == 2
                token = preview_url.rpartition("=")[2]
                assert web.get(f"/issues/2?preview={token}").status_code == 404
                assert web.get(f"/admin/issues/2/edit?token="
                               f"{editor_url.rpartition('=')[2]}").status_code == 403
            history = actors(store, 1)
        finally:
            store.close()
    assert ("review_sent", "scheduler") in history and ("reminder", "scheduler") in history
    assert ("schedule", "cli ops") in history
    assert ("approve", f"editor {EDITORS[0]} 127.0.0.1") in history
    assert ("send", f"editor {EDITORS[0]} 127.0.0.1") in history
    assert [a for a, _ in history].count("review_sent") == 1


def test_approve_from_the_cli_sends_and_names_who(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    with SmtpTestServer() as srv:
        settings = review_settings(make_settings, tmp_path, srv, key_pem)
        store = pipeline.open_store(settings)
        seed(store, READERS)
        assert pipeline.build_issue(settings, store).issue is not None
        args = ["--config", str(settings.path)]
        runner = CliRunner()
        refused = runner.invoke(cli, [*args, "issue", "send", "1"])
        assert refused.exit_code == 2 and "awaits approval" in refused.output
        assert not to_readers(srv) and store.get_issue(1).status == "draft"  # type: ignore[union-attr]
        done = runner.invoke(cli, [*args, "issue", "approve", "1"])
        assert done.exit_code == 0, done.output
        assert f"issue 1 approved by {cli_actor()}: sending now" in done.output
        assert "issue 1 is sent" in done.output
        assert sorted(m.rcpt_tos[0] for m in to_readers(srv)) == [r(i) for i in range(READERS)]
        again = runner.invoke(cli, [*args, "issue", "approve", "1"])
        assert again.exit_code == 2 and "nothing to approve" in again.output
        issue = store.get_issue(1)
        assert issue is not None and issue.approved_by == cli_actor()
        assert ("approve", cli_actor()) in actors(store, 1)
        assert ("send", cli_actor()) in actors(store, 1)
        store.close()


def test_approve_from_the_api_now_or_at_the_send_time(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes,
        runtime: Callable[[Settings, Store], None]) -> None:
    with SmtpTestServer() as srv:
        settings = review_settings(make_settings, tmp_path, srv, key_pem)
        store = pipeline.open_store(settings)
        seed(store, READERS)
        assert pipeline.build_issue(settings, store).issue is not None
        runtime(settings, store)
        with serve(settings, store, tmp_path) as admin:
            at = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
            assert admin.api.post("/admin/api/issues/1/schedule",
                                  json={"at": at}).status_code == 200
            assert admin.api.post("/admin/api/issues/1/send").status_code == 409  # unapproved
            answer = admin.api.post("/admin/api/issues/1/approve")
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["status"] == "scheduled" and body["approved_by"] == "api 127.0.0.1"
            assert body["send_at"] == datetime.fromisoformat(at).isoformat()
            assert admin.api.post("/admin/api/issues/1/approve").status_code == 409
            assert admin.anon.post("/admin/api/issues/1/approve").status_code == 401
            sched.job_sweep()  # not due yet
            assert not to_readers(srv)
            # The send time comes (the stored time rewritten): the sweep sends it, approved.
            store.set_issue_fields(1, datetime.now(UTC),
                                   send_at=datetime.now(UTC) - timedelta(minutes=1))
            sched.job_sweep()
            assert store.get_issue(1).status == "sent"  # type: ignore[union-attr]
            assert len(to_readers(srv)) == READERS
            assert ("send", "scheduler") in actors(store, 1)

            second = pipeline.build_issue(settings, store, force=True).issue
            assert second is not None and second.number == 2
            now = admin.api.post("/admin/api/issues/2/approve")
            assert now.status_code == 202 and now.json()["approved_by"] == "api 127.0.0.1"
            admin.wait_until(lambda: store.get_issue(2).status == "sent")  # type: ignore[union-attr]
            assert len(to_readers(srv)) == 2 * READERS
        assert [a for a in actors(store, 1) if a[0] != "build"] == [
            ("review_sent", "scheduler"),  # the build (its default actor) mailed the editors
            ("schedule", "api 127.0.0.1"), ("approve", "api 127.0.0.1"),
            ("send", "scheduler")]
        store.close()


def test_the_dashboard_offers_approve_in_review_mode(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    from tests.helpers.admin import login

    with SmtpTestServer() as srv:
        settings = review_settings(make_settings, tmp_path, srv, key_pem)
        store = pipeline.open_store(settings)
        seed(store, READERS)
        assert pipeline.build_issue(settings, store).issue is not None
        with serve(settings, store, tmp_path) as admin, login(admin) as browser:
            page = browser.get("/admin/").text
            assert 'action="/admin/issues/1/send"' not in page  # approve, not send
            done = browser.post("/admin/issues/1/approve",
                                data={"csrf": csrf_of(page, "/admin/issues/1/approve")})
            assert done.status_code == 303 and done.headers["location"] == "/admin/"
            admin.wait_until(lambda: store.get_issue(1).status == "sent")  # type: ignore[union-attr]
        assert len(to_readers(srv)) == READERS
        assert ("approve", "dashboard 127.0.0.1") in actors(store, 1)
        store.close()


@pytest.mark.parametrize(("extra", "expected"), [
    ("[newsletter]\nreview = true\n", "newsletter.review: review = true needs newsletter.editors"),
    ('[newsletter]\neditors = ["Ed <ed@example.org>"]\n', "newsletter.editors: expected email"),
    ('[newsletter]\nseed_list = ["seed"]\n', "newsletter.seed_list: expected email addresses"),
])
def test_config_check_refuses_review_without_editors_and_bad_addresses(
        make_settings: Callable[..., Settings], extra: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        make_settings(extra)


def test_an_edit_after_approval_withdraws_it(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    from newsletter.pipeline.editing import edit_issue

    with SmtpTestServer() as srv:
        settings = review_settings(make_settings, tmp_path, srv, key_pem)
        store = pipeline.open_store(settings)
        seed(store, READERS)
        assert pipeline.build_issue(settings, store).issue is not None
        later = datetime.now(UTC) + timedelta(days=1)
        control.schedule_issue(store, 1, later)
        review.approve_issue(store, 1, actor="cli alice")
        approved = store.get_issue(1)
        assert approved is not None and approved.approved_by == "cli alice"
        result = edit_issue(settings, store, 1, {"subject": "Changed after approval"},
                            "api 127.0.0.1")
        assert "approval withdrawn (approved by cli alice)" in result.message
        edited = store.get_issue(1)
        assert edited is not None and edited.approved_at is None and edited.approved_by == ""
        # Scheduled but no longer approved: the sending refuses it until it is approved again.
        with pytest.raises(NewsletterError, match="awaits approval"):
            sending.start_sending(settings, store, edited)
        assert not to_readers(srv)
        store.close()
