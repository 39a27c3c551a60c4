"""The whole loop on real servers: we send through Postfix, Postfix itself writes the DSN to the
VERP address, Dovecot stores it, our poller reads it over IMAP, the subscriber is bounced."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner

from newsletter import pipeline
from newsletter.cli.main import cli
from newsletter.config import Settings
from newsletter.pipeline import bounce_imap
from newsletter.pipeline.bounces import Ingestor
from newsletter.store.database import Store
from tests.helpers.bounces import DEAD, send_to_the_dead
from tests.mailstack import MailStack, running_mailstack


@pytest.fixture(scope="module")
def mailstack() -> Iterator[MailStack]:
    yield from running_mailstack()


def _settings(make_settings: Callable[..., Settings], stack: MailStack,
              extra: str = "", password: str | None = None) -> Settings:
    return make_settings(f"""
[mail]
transport = "smtp"
from_address = "news@news.test"
[smtp]
host = "{stack.smtp_host}"
port = {stack.smtp_port}
security = "none"
timeout = 10
[bounces]
return_path = "bounces@news.test"
imap_url = "imap://{stack.user}@{stack.imap_host}:{stack.imap_port}/INBOX"
imap_password = "{stack.password if password is None else password}"
{extra}
""")


def _poll_until(settings: Settings, store: Store, done: Callable[[], bool],
                deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while not done():
        assert time.monotonic() < end, "the bounce never came back"
        bounce_imap.poll_mailbox(settings, store)
        time.sleep(0.05)


def test_postfix_dsn_read_over_imap_bounces_the_subscriber(
        mailstack: MailStack, make_settings: Callable[..., Settings]) -> None:
    mailstack.clear_inbox()
    settings = _settings(make_settings, mailstack)
    started = time.monotonic()
    store, number = send_to_the_dead(settings)

    def both_bounced() -> bool:
        return all(store.get_subscriber_by_key(a).status == "bounced" for a in DEAD)

    _poll_until(settings, store, both_bounced)
    print(f"sent to suppressed: {time.monotonic() - started:.3f} s")
    events = store.list_bounces()
    assert {(e.email, e.kind, e.status, e.source, e.issue_number) for e in events} == {
        (a, "hard", "5.1.1", "imap", number) for a in DEAD}
    assert all("unknown user" in e.diagnostic for e in events)
    # Processed mail is flagged \Seen: the next poll reads nothing, changes nothing.
    again = bounce_imap.poll_mailbox(settings, store)
    assert again.messages == 0
    assert len(store.list_bounces()) == 2
    store.close()


def test_a_crash_before_recording_reprocesses_and_never_loses(
        mailstack: MailStack, make_settings: Callable[..., Settings],
        monkeypatch: pytest.MonkeyPatch) -> None:
    mailstack.clear_inbox()
    settings = _settings(make_settings, mailstack)
    store, _number = send_to_the_dead(settings)
    mailstack.wait_for_messages(2)
    real = Ingestor._record

    def crash(self: Ingestor, notices: list[object], where: str) -> None:
        raise RuntimeError("the process died here")

    monkeypatch.setattr(Ingestor, "_record", crash)
    with pytest.raises(RuntimeError):
        bounce_imap.poll_mailbox(settings, store)
    assert store.list_bounces() == []
    monkeypatch.setattr(Ingestor, "_record", real)
    # Nothing was marked: both messages are read again, and each counts once.
    summary = bounce_imap.poll_mailbox(settings, store)
    assert (summary.messages, summary.hard) == (2, 2)
    # The same message delivered to the mailbox twice (a copy) is counted once.
    with mailstack.imap() as conn:
        conn.uid("COPY", "1:*", "INBOX")
        conn.store("1:*", "-FLAGS.SILENT", r"(\Seen)")  # all four unread again
    summary = bounce_imap.poll_mailbox(settings, store)
    assert (summary.messages, summary.hard, summary.duplicates) == (4, 0, 4)
    assert len(store.list_bounces()) == 2
    store.close()


def test_move_to_a_folder_and_the_poll_command(
        mailstack: MailStack, make_settings: Callable[..., Settings]) -> None:
    mailstack.clear_inbox()
    with mailstack.imap() as conn:
        conn.create("Processed")
    settings = _settings(make_settings, mailstack, 'imap_move_to = "Processed"')
    store, _number = send_to_the_dead(settings)
    mailstack.wait_for_messages(2)
    result = CliRunner().invoke(cli, ["--config", str(settings.path), "bounces", "poll"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("2 read: 2 hard, 0 soft")
    assert mailstack.messages() == []  # moved out of the INBOX …
    with mailstack.imap() as conn:
        conn.select("Processed")
        _status, found = conn.uid("SEARCH", "ALL")
        assert len(found[0].split()) == 2  # … into the folder
    store.close()


def test_a_wrong_password_is_one_line(mailstack: MailStack,
                                      make_settings: Callable[..., Settings]) -> None:
    bad = _settings(make_settings, mailstack, password="wrong-pass")
    result = CliRunner().invoke(cli, ["--config", str(bad.path), "bounces", "poll"])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: bounce mailbox 127.0.0.1:{mailstack.imap_port}: cannot log in "
                      f"as bounces: [AUTHENTICATIONFAILED] Authentication failed."]
    assert "wrong-pass" not in result.stderr and "Traceback" not in result.stderr


def test_an_oversized_message_is_logged_marked_and_never_fetched(
        mailstack: MailStack, make_settings: Callable[..., Settings],
        caplog: pytest.LogCaptureFixture) -> None:
    mailstack.clear_inbox()
    settings = _settings(make_settings, mailstack, "max_message_bytes = 100000")
    store = pipeline.open_store(settings)
    big = b"From: MAILER-DAEMON@dead.test\r\nSubject: huge\r\n\r\n" + (b"x" * 76 + b"\r\n") * 3000
    with mailstack.imap() as conn:
        conn.append("INBOX", None, None, big)
    summary = bounce_imap.poll_mailbox(settings, store)
    assert (summary.messages, summary.malformed) == (1, 1)
    assert "over [bounces] max_message_bytes" in caplog.text
    assert bounce_imap.poll_mailbox(settings, store).messages == 0  # marked: not read again
    store.close()
