"""Hardening, issue size: the HTML part is budgeted as transmitted (quoted-printable, each
recipient's links and name filled in), measured here on real messages for a recipient."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

from newsletter.audience.subscriptions import MAX_NAME_CHARS, issue_links
from newsletter.compose import render
from newsletter.compose.render import SIZE_LIMIT, Renderer, personalize
from newsletter.deliver.headers import message_id
from newsletter.deliver.mail import MailIdentity, MessageTemplate
from tests.helpers.render import ARCHIVE_URL, MASTHEAD, long_issue

IDENTITY = MailIdentity(from_address="news@example.org", from_name="The Ledger", reply_to="",
                        list_id="ledger.example.org", unsubscribe_mailto="news@example.org",
                        message_id_domain="example.org")
NOW = datetime(2024, 6, 3, 9, 30, tzinfo=UTC)
LONGEST_NAME = "\U0001f600" * MAX_NAME_CHARS  # four UTF-8 bytes, twelve encoded, each
BIGGEST_ID = 2**63 - 1  # the longest subscriber id, so the longest signed token
UNSUBSCRIBE, PREFERENCES = issue_links(MASTHEAD.base_url, b"k" * 32, NOW)(
    BIGGEST_ID, "reader@example.com")


def html_part_as_sent(html: str, text: str, name: str) -> bytes:
    """The HTML part's body bytes in the message one recipient is sent."""
    template = MessageTemplate.build(identity=IDENTITY, subject="Big issue", html=html,
                                     text=text)
    raw = bytes(template.render(to_address="reader@example.com", to_name=name,
                                message_id=message_id(99, BIGGEST_ID, "example.org"),
                                unsubscribe_url=UNSUBSCRIBE, preferences_url=PREFERENCES,
                                date=NOW))
    boundary = email.message_from_bytes(raw, policy=email.policy.default).get_boundary()
    assert boundary
    parts = raw.split(b"--" + boundary.encode())
    (part,) = [p for p in parts if b"Content-Type: text/html" in p.split(b"\r\n\r\n", 1)[0]]
    body = part.split(b"\r\n\r\n", 1)[1]
    return body.removesuffix(b"\r\n")  # the CRLF before the next boundary belongs to it


def test_a_60_article_issue_is_under_the_limit_as_transmitted() -> None:
    result = Renderer().render_issue(long_issue(60), MASTHEAD, ARCHIVE_URL)
    sent = html_part_as_sent(result.html, result.text, LONGEST_NAME)
    # Before: the decoded HTML (94 KB) was measured and 107 KB went out, past Gmail's clip.
    assert len(sent) < SIZE_LIMIT, len(sent)
    assert result.omitted == 0 and result.summary_limit is not None
    # The budget counts at least what is sent, for the longest values a recipient can have.
    assert render._encoded_size(result.html, MASTHEAD.base_url) >= len(sent)
    # And it is the HTML that was rendered: the part decodes back to it, values filled in.
    message = email.message_from_bytes(
        b"Content-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + sent,
        policy=email.policy.default)
    assert message.get_content().replace("\r\n", "\n") == personalize(
        result.html, unsubscribe_url=UNSUBSCRIBE, preferences_url=PREFERENCES,
        name=LONGEST_NAME)


def test_a_huge_issue_keeps_only_what_fits_as_transmitted() -> None:
    result = Renderer().render_issue(long_issue(200, summary_bytes=400), MASTHEAD, ARCHIVE_URL)
    assert 0 < result.omitted < 200
    assert len(html_part_as_sent(result.html, result.text, LONGEST_NAME)) < SIZE_LIMIT


def test_the_budget_leaves_room_for_what_audience_fills_in() -> None:
    assert render._NAME_ROOM >= MAX_NAME_CHARS
    for url in (UNSUBSCRIBE, PREFERENCES):
        assert url.startswith(MASTHEAD.base_url)
        assert len(url) - len(MASTHEAD.base_url) <= render._URL_ROOM
