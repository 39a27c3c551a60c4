"""The mail stack itself: real Postfix bounces to the VERP address, Dovecot stores it for IMAP."""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from collections.abc import Iterator
from email.message import Message

import pytest

from tests.mailstack import MailStack, running_mailstack

TOKEN = "7-42-mfrggzdfmztwq2lk"  # the shape of newsletter.audience.bounces VERP tokens
DEAD = "nobody@dead.test"


@pytest.fixture(scope="module")
def mailstack() -> Iterator[MailStack]:
    yield from running_mailstack()


def _send(stack: MailStack, sender: str, recipient: str) -> float:
    """Hand one message to Postfix; the moment it accepted the data (time.monotonic())."""
    message = (f"From: Newsletter <{sender}>\r\nTo: <{recipient}>\r\n"
               f"Subject: Issue 7\r\nMessage-ID: <issue-7.42@news.test>\r\n"
               f"\r\nHello.\r\n").encode()
    with smtplib.SMTP(stack.smtp_host, stack.smtp_port, timeout=30) as smtp:
        refused = smtp.sendmail(sender, [recipient], message)
        accepted = time.monotonic()
    assert refused == {}
    return accepted


def _parts(msg: Message, ctype: str) -> list[Message]:
    """The parsed blocks inside the one `ctype` part (DSN field groups, a returned message)."""
    found = [part for part in msg.walk() if part.get_content_type() == ctype]
    assert len(found) == 1, f"{len(found)} {ctype} parts"
    payload = found[0].get_payload()
    assert isinstance(payload, list)
    return [block for block in payload if isinstance(block, Message)]


def test_an_unknown_recipient_bounces_to_the_verp_address_in_the_inbox(
        mailstack: MailStack) -> None:
    mailstack.clear_inbox()
    sender = mailstack.address(TOKEN)
    accepted = _send(mailstack, sender, DEAD)  # accepted at RCPT: no refusal

    (raw,) = mailstack.wait_for_messages(1, deadline=60)
    print(f"DSN visible over IMAP {time.monotonic() - accepted:.3f} s after Postfix accepted "
          f"the message")

    dsn = email.message_from_bytes(raw, policy=email.policy.compat32)
    # The VERP address, +TOKEN included, as Postfix handed the DSN to Dovecot (RCPT TO).
    assert dsn["Delivered-To"] == f"bounces+{TOKEN}@news.test"
    assert dsn["Return-Path"] == "<>"  # a DSN's envelope sender is null
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"

    per_message, per_recipient = _parts(dsn, "message/delivery-status")
    assert per_message["Reporting-MTA"] == "dns; mx.dead.test"
    assert per_recipient["Final-Recipient"] == f"rfc822; {DEAD}"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert "unknown user" in per_recipient["Diagnostic-Code"]
    assert b"\nAction: failed\r\n" in raw and b"\nStatus: 5.1.1\r\n" in raw  # as stored

    (returned,) = _parts(dsn, "message/rfc822")
    assert returned["Message-ID"] == "<issue-7.42@news.test>"
    assert returned["Return-Path"] == f"<{sender}>"

    # Stored in bounces's INBOX (not a TOKEN folder: lmtp_save_to_detail_mailbox = no).
    stored = [path for sub in ("new", "cur") for path in (mailstack.maildir / sub).iterdir()]
    assert len(stored) == 1
    assert "postfix-mailstack/bounce" in mailstack.log()


def test_stopping_leaves_no_process_and_no_folder() -> None:
    stacks = running_mailstack()
    stack = next(stacks)
    assert len(stack.processes()) > 2  # two masters and their children
    stacks.close()  # the fixture's teardown
    assert stack.processes() == []
    assert not stack.root.exists()
