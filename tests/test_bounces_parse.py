"""Bounce parsing and VERP tokens: DSNs, ARF complaints, auto-replies, garbage, forgeries.

The fixtures under tests/fixtures/bounces/ are written for these tests; each names its VERP
address with the placeholder token VERPTOKENPLACEHO, replaced here by a real or forged one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.audience import bounces
from newsletter.audience.bounces import COMPLAINT, HARD, SOFT, parse, verp_address, verp_token_of

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
SECRET = b"k" * 32
RETURN_PATH = "bounces@news.example.org"
PLACEHOLDER = re.compile(rb"bounces\+(\d+)-(\d+)-VERPTOKENPLACEHO@news\.example\.org")


def fixture(name: str, secret: bytes | None = SECRET) -> bytes:
    """The fixture with its placeholder VERP addresses signed with `secret` (None: left forged)."""
    raw = (FIXTURES / name).read_bytes()
    if secret is None:
        return raw
    return PLACEHOLDER.sub(lambda m: verp_address(RETURN_PATH, secret, int(m[1]), int(m[2]))
                           .encode("ascii"), raw)


# --- VERP ---------------------------------------------------------------------------------

def test_verp_round_trip_short_and_local_part_safe() -> None:
    address = verp_address(RETURN_PATH, SECRET, 15, 123456)
    local, _, domain = address.rpartition("@")
    assert domain == "news.example.org"
    assert local.startswith("bounces+")
    token = local.removeprefix("bounces+")
    assert re.fullmatch(r"[a-z0-9-]+", token), token  # no '+', '=', '/', one case
    assert len(local) <= 64  # RFC 5321 limit on a local part
    assert verp_token_of(address, SECRET) == (15, 123456)
    assert verp_token_of(address.upper(), SECRET) == (15, 123456)  # an MTA folded the case
    assert verp_token_of(f"Bounces <{address}>", SECRET) == (15, 123456)
    assert verp_address(RETURN_PATH, SECRET, 15, 123456) == address  # deterministic


def test_verp_forged_or_altered_tokens_refused() -> None:
    address = verp_address(RETURN_PATH, SECRET, 15, 42)
    assert verp_token_of(address, b"x" * 32) is None  # another key
    assert verp_token_of(address.replace("+15-42-", "+15-43-"), SECRET) is None
    assert verp_token_of(address.replace("+15-42-", "+015-42-"), SECRET) is None
    local, _, domain = address.rpartition("@")
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b")
    assert verp_token_of(f"{flipped}@{domain}", SECRET) is None
    assert verp_token_of(RETURN_PATH, SECRET) is None
    assert verp_token_of("bounces+15-42-verptokenplaceho@news.example.org", SECRET) is None
    assert verp_token_of("", SECRET) is None
    assert verp_token_of("x" * 5000, SECRET) is None


def test_verp_bad_return_path_refused() -> None:
    for bad in ("bounces", "@news.example.org", "bounces@", "a+b@example.org"):
        with pytest.raises(ValueError):
            verp_address(bad, SECRET, 1, 1)


@settings(max_examples=100, deadline=None)
@given(issue=st.integers(0, 10**9), subscriber=st.integers(0, 10**12))
def test_verp_round_trip_any_ids(issue: int, subscriber: int) -> None:
    address = verp_address(RETURN_PATH, SECRET, issue, subscriber)
    assert verp_token_of(address, SECRET) == (issue, subscriber)
    assert len(address.partition("@")[0]) <= 64


# --- DSNs ---------------------------------------------------------------------------------

def test_postfix_550_511() -> None:
    report = parse(fixture("postfix_550_511.eml"))
    assert report.kind == "dsn" and report.error is None
    assert not report.auto_reply  # Postfix marks DSNs Auto-Submitted: still a bounce
    [event] = report.events
    assert event.recipient == "nobody@example.com"
    assert event.kind == HARD
    assert event.status == "5.1.1"
    assert event.diagnostic.startswith("550 5.1.1 <nobody@example.com>: Recipient address")
    assert "\n" not in event.diagnostic
    assert report.verp_address is not None
    assert verp_token_of(report.verp_address, SECRET) == (15, 42)
    assert report.message_id == "<20261201100005.4Q1@relay.example.net>"


def test_exim_dsn() -> None:
    report = parse(fixture("exim_dsn.eml"))
    assert report.kind == "dsn"
    [event] = report.events
    assert (event.recipient, event.kind, event.status) == ("gone@example.net", HARD, "5.0.0")
    assert event.diagnostic == "550 No such user here"
    assert report.verp_address is not None
    assert verp_token_of(report.verp_address, SECRET) == (7, 1001)


def test_delayed_422_is_soft() -> None:
    report = parse(fixture("delayed_422.eml"))
    [event] = report.events
    assert (event.recipient, event.kind, event.status) == ("full@example.org", SOFT, "4.2.2")
    assert "Mailbox full, quota exceeded" in event.diagnostic
    assert report.verp_address is not None
    assert verp_token_of(report.verp_address, SECRET) == (15, 43)


def _dsn(recipients: list[tuple[str, str, str]], diagnostic: str = "smtp; 550 5.1.1 no") -> bytes:
    blocks = "".join(f"\nFinal-Recipient: rfc822; {r}\nAction: {a}\nStatus: {s}\n"
                     f"Diagnostic-Code: {diagnostic}\n" for r, a, s in recipients)
    return (b"From: MAILER-DAEMON@relay.example.net\nTo: bounces@news.example.org\n"
            b"Subject: failure\nMIME-Version: 1.0\n"
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=XX\n\n"
            b"--XX\nContent-Type: text/plain\n\nfailed\n\n"
            b"--XX\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; relay\n"
            + blocks.encode("utf-8") + b"\n--XX--\n")


def test_dsn_actions_and_statuses() -> None:
    report = parse(_dsn([("a@example.org", "failed", "5.7.1"),
                         ("b@example.org", "delayed", "4.4.1"),
                         ("c@example.org", "delivered", "2.0.0"),
                         ("d@example.org", "relayed", "2.0.0"),
                         ("e@example.org", "failed", "4.4.7")]))
    assert [(e.recipient, e.kind, e.status) for e in report.events] == [
        ("a@example.org", HARD, "5.7.1"), ("b@example.org", SOFT, "4.4.1"),
        ("e@example.org", SOFT, "4.4.7")]
    assert report.verp_address is None  # sent to the bare return path


def test_dsn_capped_at_100_recipients() -> None:
    many = [(f"user{i}@example.org", "failed", "5.1.1") for i in range(1000)]
    report = parse(_dsn(many))
    assert len(report.events) == bounces.MAX_RECIPIENTS == 100
    assert report.events[-1].recipient == "user99@example.org"
    assert any("capped at 100" in note and "900" in note for note in report.notes)


def test_diagnostic_one_line_and_capped() -> None:
    report = parse(_dsn([("a@example.org", "failed", "5.1.1")],
                        diagnostic="smtp; 550 " + "very long\x07 " * 200))
    [event] = report.events
    assert len(event.diagnostic) <= bounces.MAX_DIAGNOSTIC
    assert "\x07" not in event.diagnostic and "\n" not in event.diagnostic


# --- complaints ---------------------------------------------------------------------------

def test_arf_complaint() -> None:
    report = parse(fixture("arf_complaint.eml"))
    assert report.kind == "complaint"
    [event] = report.events
    assert (event.recipient, event.kind, event.status) == ("annoyed@example.com", COMPLAINT, "")
    assert "abuse" in event.diagnostic
    assert report.verp_address is not None
    assert verp_token_of(report.verp_address, SECRET) == (15, 44)


def test_arf_without_original_rcpt_to_uses_returned_to() -> None:
    report = parse(fixture("arf_no_rcpt_to.eml"))
    assert report.kind == "complaint"
    assert [e.recipient for e in report.events] == ["someone@example.com"]
    assert report.verp_address is None


# --- auto-replies, garbage, forgeries -----------------------------------------------------

def test_vacation_is_auto_reply_not_bounce() -> None:
    report = parse(fixture("vacation.eml"))
    assert report.kind == "auto-reply" and report.auto_reply
    assert report.events == ()
    assert report.verp_address is not None
    assert verp_token_of(report.verp_address, SECRET) == (15, 45)


def test_vacation_subject_and_x_autoreply() -> None:
    assert parse(fixture("vacation_subject_only.eml")).auto_reply
    raw = (b"From: c@example.com\nTo: news@news.example.org\nSubject: Re: issue\n"
           b"X-Autoreply: yes\n\nx")
    assert parse(raw).auto_reply
    plain = b"From: c@example.com\nTo: news@news.example.org\nSubject: Re: issue\n" \
            b"Auto-Submitted: no\n\nThanks!"
    report = parse(plain)
    assert report.kind == "unrecognised" and report.events == ()


def test_garbage_is_malformed_never_raises() -> None:
    report = parse((FIXTURES / "garbage.bin").read_bytes())
    assert report.kind == "malformed" and report.error
    assert report.events == ()
    for raw in (b"", b"\x00\xff" * 100, b"Content-Type: multipart/report; boundary=\n\n--",
                b"x" * (bounces.MAX_MESSAGE_BYTES + 1)):
        assert parse(raw).kind == "malformed"


def test_broken_mime_dsn_does_not_raise() -> None:
    raw = (b"From: m@relay\nTo: bounces@news.example.org\nSubject: x\n"
           b"Content-Type: multipart/report; boundary=\"never-closed\"\n\n"
           b"--never-closed\nContent-Type: message/delivery-status\n\n"
           b"Final-Recipient: rfc822;\nAction: failed\n\n"
           b"Final-Recipient: \xff\xfe; junk\nAction: failed\nStatus: 9.9.9\n")
    report = parse(raw)
    assert report.error is None or report.kind == "malformed"
    assert all(e.kind in (HARD, SOFT) for e in report.events)


def test_forged_verp_token_is_found_but_refused() -> None:
    report = parse(fixture("postfix_550_511.eml", secret=None))  # placeholder token: forged
    assert report.kind == "dsn" and len(report.events) == 1
    assert report.verp_address == "bounces+15-42-VERPTOKENPLACEHO@news.example.org"
    assert verp_token_of(report.verp_address, SECRET) is None
    signed_elsewhere = parse(fixture("postfix_550_511.eml", secret=b"z" * 32))
    assert signed_elsewhere.verp_address is not None
    assert verp_token_of(signed_elsewhere.verp_address, SECRET) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_parse_never_raises(raw: bytes) -> None:
    report = parse(raw)
    assert report.kind in ("dsn", "bounce", "complaint", "auto-reply", "unrecognised",
                           "malformed")
