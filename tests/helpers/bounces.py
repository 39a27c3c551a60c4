"""Bounces made to order for the ingestion tests: DSNs, ARF reports, auto-replies, dead readers."""

from __future__ import annotations

import uuid

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.pipeline import sending
from newsletter.store.database import Store
from tests.helpers.sending import seed

DEAD = ("gone@dead.test", "lost@dead.test")


def dsn(to: str, recipient: str, *, action: str = "failed", status: str = "5.1.1",
        message_id: str | None = None, diagnostic: str = "smtp; 550 5.1.1 no such user") -> bytes:
    """A Postfix-style RFC 3464 report delivered to `to` (the VERP address, or any)."""
    mid = message_id or f"<{uuid.uuid4().hex}@mx.example.net>"
    text = f"""Delivered-To: {to}
Return-Path: <>
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Date: Sat, 05 Dec 2026 10:00:00 +0000
Message-ID: {mid}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

The mail system could not deliver your message to {recipient}.

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
Arrival-Date: Sat, 05 Dec 2026 09:59:58 +0000

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Diagnostic-Code: {diagnostic}

--b1
Content-Type: text/rfc822-headers

From: Test Ledger <news@ledger.example.org>
To: {recipient}
Subject: Test Ledger No. 1

--b1--
"""
    return text.replace("\n", "\r\n").encode()


def arf(to: str, recipient: str, *, message_id: str | None = None) -> bytes:
    """An RFC 5965 abuse report naming `recipient` in Original-Rcpt-To."""
    mid = message_id or f"<{uuid.uuid4().hex}@fbl.example.net>"
    text = f"""Delivered-To: {to}
From: feedback@fbl.example.net
To: {to}
Subject: Complaint about message
Date: Sat, 05 Dec 2026 10:00:00 +0000
Message-ID: {mid}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="b2"

--b2
Content-Type: text/plain

This is an email abuse report.

--b2
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ExampleFBL/1.0
Version: 1
Original-Rcpt-To: {recipient}

--b2
Content-Type: text/rfc822-headers

From: Test Ledger <news@ledger.example.org>
To: {recipient}
Subject: Test Ledger No. 1

--b2--
"""
    return text.replace("\n", "\r\n").encode()


def vacation(to: str) -> bytes:
    text = f"""From: reader0@example.org
To: {to}
Subject: Out of office: back on Monday
Auto-Submitted: auto-replied
Message-ID: <{uuid.uuid4().hex}@example.org>

I am away until Monday.
"""
    return text.replace("\n", "\r\n").encode()


def send_to_the_dead(settings: Settings) -> tuple[Store, int]:
    """An issue built and sent through `settings` to two readers at the DEAD addresses; the store
    kept open for the caller to close."""
    store = pipeline.open_store(settings)
    seed(store, 2)
    with store.engine.begin() as conn:  # the seeded readers now live where nobody does
        for i, address in enumerate(DEAD):
            conn.exec_driver_sql(f"UPDATE subscribers SET email = '{address}', "
                                 f"email_key = '{address}' WHERE email = 'reader{i}@example.org'")
    issue = pipeline.build_issue(settings, store).issue
    assert issue is not None and issue.id is not None
    sending.start_sending(settings, store, issue)
    summary = sending.run_worker(settings, store, issue)
    assert summary.sent == 2  # Postfix took both: the failure comes later, as a DSN
    return store, issue.number
