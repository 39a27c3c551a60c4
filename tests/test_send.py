"""Sending an issue end to end to a real SMTP server on loopback, ledger checked after each."""

from __future__ import annotations

import email
import email.policy
import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from smtpserver import SmtpTestServer

from newsletter import pipeline
from newsletter.cli.main import cli
from newsletter.config import Settings
from newsletter.pipeline import sending
from newsletter.store.database import Store
from tests.helpers.sending import seed, send_killed_until_done, smtp_settings


def test_send_with_misbehaving_recipients(make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer(rcpt_codes={"reader1@example.org": 450, "reader2@example.org": 550},
                        data_codes={"reader3@example.org": 554}) as srv:
        settings = smtp_settings(make_settings, srv)
        store = pipeline.open_store(settings)
        addresses = seed(store, 8, prefs={4: ["Economy"]}, inactive=2)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None and issue.id is not None
        sending.start_sending(settings, store, issue)
        summary = sending.run_worker(settings, store, issue)
        assert (summary.sent, summary.deferred, summary.failed) == (6 - 1, 1, 2)
        counts = store.delivery_counts(issue.id)
        assert (counts["sent"], counts["deferred"], counts["failed"]) == (5, 1, 2)
        assert sum(counts.values()) == 8  # unsubscribed readers got no ledger row
        accepted = {m.rcpt_tos[0] for m in srv.messages} - {"reader3@example.org"}
        assert accepted == set(addresses) - {"reader1@example.org", "reader2@example.org",
                                             "reader3@example.org"}
        assert store.get_subscriber_by_key("reader2@example.org").status == "bounced"
        assert store.get_subscriber_by_key("reader3@example.org").status == "active"
        by_rcpt = {m.rcpt_tos[0]: m for m in srv.messages}
        msg = email.message_from_bytes(by_rcpt["reader0@example.org"].data,
                                       policy=email.policy.default)
        assert msg["To"] == "Reader 0 <reader0@example.org>"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "https://ledger.example.org/unsubscribe?token=" in msg["List-Unsubscribe"]
        assert msg["Message-ID"].startswith(f"<issue-{issue.number}.sub-")
        html = msg.get_body(("html",)).get_content()
        assert "World piece" in html and "Economy piece" in html and "%%" not in html
        # Reader 4 chose Economy only: the World section is not in their copy.
        only = email.message_from_bytes(by_rcpt["reader4@example.org"].data,
                                        policy=email.policy.default)
        text = only.get_body(("plain",)).get_content()
        assert "Economy piece" in text and "World piece" not in text
        # The deferred one is retried once due, and the issue is then sent.
        srv.rcpt_codes.clear()
        deadline = time.monotonic() + 10
        while store.next_due(issue.id) and store.next_due(issue.id) > datetime.now(UTC):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sending.run_worker(settings, store, issue)
        assert store.delivery_counts(issue.id)["sent"] == 6
        assert store.get_issue(issue.number).status == "sent"
        # Sending again sends nothing twice.
        before = len(srv.messages)
        sending.run_worker(settings, store, issue)
        assert len(srv.messages) == before
        store.close()


def test_421_defers_the_rest_and_fails_no_one(make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer(close_after=3) as srv:
        settings = smtp_settings(make_settings, srv)
        store = pipeline.open_store(settings)
        seed(store, 12)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None and issue.id is not None
        sending.start_sending(settings, store, issue)
        summary = sending.run_worker(settings, store, issue)
        assert "421" in summary.stopped
        counts = store.delivery_counts(issue.id)
        assert counts["failed"] == 0 and counts["sending"] == 0
        assert counts["sent"] + counts["deferred"] == 12
        store.close()


def test_server_down_at_start_defers_everyone(make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer() as srv:
        port = srv.port
    settings = make_settings(f"""
[mail]
transport = "smtp"
[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
timeout = 2
""")
    store = pipeline.open_store(settings)
    seed(store, 4)
    issue = pipeline.build_issue(settings, store).issue
    assert issue is not None and issue.id is not None
    sending.start_sending(settings, store, issue)
    summary = sending.run_worker(settings, store, issue)
    assert summary.stopped.startswith("cannot connect")
    counts = store.delivery_counts(issue.id)
    assert counts["deferred"] == 4 and counts["failed"] == 0
    assert store.get_issue(issue.number).status == "sending"
    store.close()


def test_cli_send_dry_run_test_copy_and_status(make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer() as srv:
        settings = smtp_settings(make_settings, srv)
        store = pipeline.open_store(settings)
        seed(store, 5)
        pipeline.build_issue(settings, store)
        store.close()
        runner = CliRunner()
        args = ["--config", str(settings.path)]
        dry = runner.invoke(cli, [*args, "issue", "send", "1", "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert "dry run: 5 messages in 1 variant," in dry.output and not srv.messages
        copy = runner.invoke(cli, [*args, "issue", "send", "1", "--to", "editor@example.org"])
        assert copy.exit_code == 0, copy.output
        assert [m.rcpt_tos for m in srv.messages] == [("editor@example.org",)]
        status = runner.invoke(cli, [*args, "issue", "status", "1"])
        assert "draft" in status.output and "0 deliveries" in status.output
        sent = runner.invoke(cli, [*args, "issue", "send", "1"])
        assert sent.exit_code == 0, sent.output
        assert "issue 1 is sent" in sent.output
        assert len(srv.messages) == 6


def test_outbox_transport_writes_eml(make_settings: Callable[..., Settings],
                                     tmp_path: Path) -> None:
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n')
    store = pipeline.open_store(settings)
    seed(store, 3)
    issue = pipeline.build_issue(settings, store).issue
    assert issue is not None
    sending.start_sending(settings, store, issue)
    sending.run_worker(settings, store, issue)
    files = sorted((tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 3
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert parsed["List-Unsubscribe"] and parsed["Subject"] == issue.subject
    store.close()


@pytest.mark.slow
def test_killed_mid_send_resumes_without_skipping(make_settings: Callable[..., Settings],
                                                  tmp_path: Path) -> None:
    """SIGKILL at random moments, restart until done: every address arrives, and duplicates
    stay within the messages in flight (one per connection per kill)."""
    with SmtpTestServer() as srv:
        settings = smtp_settings(make_settings, srv)
        store = pipeline.open_store(settings)
        addresses = seed(store, 800)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None and issue.id is not None
        store.close()
        # Killed after at most 250 more each time: at least twice before 800 are through.
        kills = send_killed_until_done(settings, issue.number, srv, random.Random(7), 250)
        assert kills >= 2
        received = Counter(m.rcpt_tos[0] for m in srv.messages)
        assert set(received) == set(addresses)
        duplicates = sum(c - 1 for c in received.values())
        assert duplicates <= kills * 3, (duplicates, kills)  # concurrency = 3
        store = Store(settings.storage.database_url)
        counts = store.delivery_counts(issue.id)
        assert counts["sent"] == 800 and store.get_issue(issue.number).status == "sent"
        store.close()
