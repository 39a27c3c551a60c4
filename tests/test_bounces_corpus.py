"""The bounce corpus: one message per MTA format, replies that must not count, hostile input.

Every fixture under tests/fixtures/bounces/ is written for these tests, with invented hosts and
addresses (example.org, example.net, example.com and their subdomains); each names its VERP
address with the placeholder token VERPTOKENPLACEHO, which fixture() signs with SECRET, so a
row's token is checked to verify, not only to be found.
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from pathlib import Path

import flufl.bounce
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter.audience import bounces
from newsletter.audience.bounces import COMPLAINT, HARD, SOFT, parse, verp_address, verp_token_of

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
SECRET = b"k" * 32
RETURN_PATH = "bounces@news.example.org"
PLACEHOLDER = re.compile(rb"bounces\+(\d+)-(\d+)-VERPTOKENPLACEHO@news\.example\.org")
KINDS = ("dsn", "bounce", "complaint", "auto-reply", "unrecognised", "malformed")


def fixture(name: str) -> bytes:
    raw = (FIXTURES / name).read_bytes()
    return PLACEHOLDER.sub(lambda m: verp_address(RETURN_PATH, SECRET, int(m[1]), int(m[2]))
                           .encode("ascii"), raw)


def flufl_reading(raw: bytes) -> set[str]:
    """What flufl.bounce alone makes of a message, as Mailman would call it."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    temporary, permanent = flufl.bounce.all_failures(msg)
    return {a.decode("ascii") for a in temporary | permanent}


def timed(raw: bytes) -> tuple[bounces.Report, float]:
    start = time.perf_counter()
    report = parse(raw)
    return report, time.perf_counter() - start


# --- the corpus ---------------------------------------------------------------------------

# fixture, kind, (recipient, kind, status) per event, VERP (issue, subscriber) or None
CORPUS: list[tuple[str, str, list[tuple[str, str, str]], tuple[int, int] | None]] = [
    ("postfix_550_511.eml", "dsn", [("nobody@example.com", HARD, "5.1.1")], (15, 42)),
    ("exim_dsn.eml", "dsn", [("gone@example.net", HARD, "5.0.0")], (7, 1001)),
    ("exim_classic.eml", "bounce", [("gone2@example.net", HARD, "5.1.1")], (15, 60)),
    ("qmail.eml", "bounce", [("qm.user@example.org", HARD, "5.1.1"),
                             ("someone@nohost.example.invalid", HARD, "5.1.2")], (15, 61)),
    ("sendmail_dsn.eml", "dsn", [("sm.user@example.org", HARD, "5.1.1")], (15, 62)),
    ("exchange_o365_ndr.eml", "dsn", [("ex.user@corp.example.com", HARD, "5.1.10"),
                                      ("locked.user@corp.example.com", HARD, "5.4.1")],
     (15, 63)),
    # 5.2.2, mailbox full, is a persistent transient failure (RFC 3463): soft
    ("gmail_dsn.eml", "dsn", [("gm.user@example.org", HARD, "5.1.1"),
                              ("full.user@example.org", SOFT, "5.2.2")], (15, 64)),
    ("yahoo_classic.eml", "bounce", [("ya.user@example.org", HARD, "5.1.1")], (15, 65)),
    ("yahoo_dsn.eml", "dsn", [("policy.user@example.org", HARD, "5.7.9")], (15, 66)),
    ("ses_dsn.eml", "dsn", [("ses.user@example.org", HARD, "5.1.1")], (15, 67)),
    ("postfix_delayed_441.eml", "dsn", [("slow@example.org", SOFT, "4.4.1")], (15, 68)),
    ("delayed_422.eml", "dsn", [("full@example.org", SOFT, "4.2.2")], (15, 43)),
    ("greylist_471.eml", "dsn", [("grey@example.org", SOFT, "4.7.1")], (15, 69)),
    ("warning_nondsn.eml", "bounce", [("slow.user@example.org", SOFT, "4.4.2")], (15, 73)),
    ("domino.eml", "bounce", [("dom.user@corp.example.com", HARD, "")], (15, 70)),
    ("groupwise.eml", "bounce", [("gw.user@gw.example.net", HARD, "")], (15, 71)),
    ("dsn_mixed_recipients.eml", "dsn", [("failed.one@example.org", HARD, "5.1.1")], (15, 72)),
    ("arf_complaint.eml", "complaint", [("annoyed@example.com", COMPLAINT, "")], (15, 44)),
    ("arf_yahoo_fbl.eml", "complaint", [("complainer@example.org", COMPLAINT, "")], (15, 74)),
    ("arf_headers_only.eml", "complaint", [("headers.only@example.org", COMPLAINT, "")],
     (15, 75)),
    ("arf_no_rcpt_to.eml", "complaint", [("someone@example.com", COMPLAINT, "")], None),
    ("vacation.eml", "auto-reply", [], (15, 45)),
    ("vacation_subject_only.eml", "auto-reply", [], None),
    ("vacation_rfc3834.eml", "auto-reply", [], (15, 76)),
    ("outlook_ooo.eml", "auto-reply", [], (15, 77)),
    ("abwesenheitsnotiz.eml", "auto-reply", [], (15, 78)),
    ("challenge_response.eml", "auto-reply", [], (15, 79)),
    ("human_reply.eml", "unrecognised", [], (15, 80)),
]


def test_every_fixture_has_a_row() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.eml")) == sorted(row[0] for row in CORPUS)


@pytest.mark.parametrize(("name", "kind", "expected", "token"), CORPUS,
                         ids=[row[0] for row in CORPUS])
def test_corpus(name: str, kind: str, expected: list[tuple[str, str, str]],
                token: tuple[int, int] | None) -> None:
    report = parse(fixture(name))
    assert report.kind == kind, report
    assert report.error is None
    assert [(e.recipient, e.kind, e.status) for e in report.events] == expected
    if token is None:
        assert report.verp_address is None
    else:
        assert report.verp_address is not None
        assert verp_token_of(report.verp_address, SECRET) == token
    for event in report.events:
        assert "\n" not in event.diagnostic and len(event.diagnostic) <= bounces.MAX_DIAGNOSTIC
    if kind in ("dsn", "bounce"):
        assert all(e.diagnostic for e in report.events)  # each failure says why
    if kind in ("dsn", "bounce", "complaint"):
        assert report.notes == ()  # notes are logged as warnings: none for a plain report


@pytest.mark.parametrize(("name", "recipient", "words"), [
    ("exim_classic.eml", "gone2@example.net",
     "550 5.1.1 <gone2@example.net>: Recipient address rejected"),
    ("qmail.eml", "qm.user@example.org", "Remote host said: 550 5.1.1"),
    ("qmail.eml", "someone@nohost.example.invalid", "couldn't find any host named"),
    ("yahoo_classic.eml", "ya.user@example.org", "this mailbox is not in use"),
    ("warning_nondsn.eml", "slow.user@example.org", "421 4.4.2 mx.example.org: connection"),
    ("domino.eml", "dom.user@corp.example.com", "not listed in Domino Directory"),
    ("groupwise.eml", "gw.user@gw.example.net", "(user not found)"),
    ("exchange_o365_ndr.eml", "ex.user@corp.example.com", "RESOLVER.ADR.RecipientNotFound"),
    ("gmail_dsn.eml", "full.user@example.org", "mailbox over quota"),
    ("postfix_delayed_441.eml", "slow@example.org", "Connection timed out"),
])
def test_diagnostic_names_the_reason(name: str, recipient: str, words: str) -> None:
    [event] = [e for e in parse(fixture(name)).events if e.recipient == recipient]
    assert words in event.diagnostic


# --- what reads a message first -----------------------------------------------------------

@pytest.mark.parametrize(("name", "address"), [
    ("vacation_rfc3834.eml", "frank@example.org"),  # Return-Path <>, Auto-Submitted
    ("abwesenheitsnotiz.eml", "anna@example.org"),  # Return-Path <>, only the subject says
    ("challenge_response.eml", "gina@example.org"),  # Return-Path <>, only the text says
    ("human_reply.eml", "ida@example.org"),  # a person's reply
])
def test_flufl_heuristics_match_these_yet_they_are_not_bounces(name: str, address: str) -> None:
    raw = fixture(name)
    assert address in flufl_reading(raw)  # flufl alone would call it a bounce
    report = parse(raw)
    assert report.kind in ("auto-reply", "unrecognised") and report.events == ()


def test_mail_system_bounce_marked_auto_submitted_is_still_a_bounce() -> None:
    raw = fixture("exim_classic.eml")
    assert b"\nAuto-Submitted: auto-replied\n" in raw
    assert parse(raw).kind == "bounce"
    qmail = fixture("qmail.eml").replace(b"Subject:", b"Auto-Submitted: auto-replied\nSubject:")
    assert [e.recipient for e in parse(qmail).events] == [
        "qm.user@example.org", "someone@nohost.example.invalid"]


def test_null_return_path_is_what_lets_flufl_read_a_stranger() -> None:
    stranger = fixture("qmail.eml").replace(
        b"From: MAILER-DAEMON@mx.example.net", b"From: Notices <notices@mx.example.net>"
    ).replace(b"Subject: failure notice", b"Subject: Notice")
    assert parse(stranger).kind == "bounce"
    with_sender = stranger.replace(b"Return-Path: <>", b"Return-Path: <notices@mx.example.net>")
    report = parse(with_sender)
    assert report.kind == "unrecognised" and report.events == ()
    # A bounce-like subject with a null return path is a mail system even when Auto-Submitted.
    marked = stranger.replace(b"Subject: Notice",
                              b"Subject: failure notice\nAuto-Submitted: auto-replied")
    assert parse(marked).kind == "bounce"
    assert parse(marked.replace(b"Return-Path: <>", b"Return-Path: <notices@mx.example.net>")
                 ).kind == "auto-reply"


def test_encoded_bounce_subject_is_read_too() -> None:
    # "Unzustellbar: Example News für Sie", base64: only decoded does it say undeliverable
    raw = fixture("qmail.eml").replace(
        b"From: MAILER-DAEMON@mx.example.net", b"From: Notices <notices@mx.example.net>"
    ).replace(b"Subject: failure notice",
              b"Subject: =?utf-8?B?VW56dXN0ZWxsYmFyOiBFeGFtcGxlIE5ld3MgZsO8ciBTaWU=?=\n"
              b"Auto-Submitted: auto-replied")
    assert parse(raw).kind == "bounce"


def test_out_of_office_subject_wins_even_from_a_role_address() -> None:
    raw = fixture("vacation_rfc3834.eml").replace(
        b"From: Erin Example <erin@example.org>", b"From: Postmaster <postmaster@example.org>"
    ).replace(b"Subject: Re: Example News", b"Subject: Out of Office: Example News")
    assert "frank@example.org" in flufl_reading(raw)
    assert parse(raw).kind == "auto-reply"


def test_dsn_of_successes_only_has_no_events() -> None:
    raw = fixture("dsn_mixed_recipients.eml")
    start = raw.index(b"Final-Recipient: rfc822; failed.one")
    raw = raw[:start] + raw[raw.index(b"Final-Recipient: rfc822; delivered.one"):]
    report = parse(raw)
    assert report.kind == "dsn" and report.events == ()  # not read again as another format


def test_mail_system_message_nobody_can_read_is_unrecognised_with_a_note() -> None:
    raw = (b"Return-Path: <>\nFrom: MAILER-DAEMON@relay.example.net\n"
           b"To: bounces@news.example.org\nSubject: Something happened\n"
           b"Auto-Submitted: auto-replied\n\nYour message met an unusual fate.\n")
    report = parse(raw)
    assert report.kind == "unrecognised" and report.events == ()
    assert any("mail system" in note for note in report.notes)


def test_headers_that_do_not_make_an_auto_reply() -> None:
    raw = fixture("human_reply.eml")
    assert b"X-Auto-Response-Suppress: All" in raw  # Exchange asks for no replies; not one
    assert parse(raw).kind == "unrecognised"
    assert b"Subject: =?iso-8859-1?Q?Abwesenheitsnotiz" in fixture("abwesenheitsnotiz.eml")


def test_our_own_addresses_are_never_failed_recipients() -> None:
    extra = (b"<bounces+15-61-VERPTOKENPLACEHO@news.example.org>:\nMail loop detected.\n\n"
             b"<MAILER-DAEMON@mx.example.net>:\nLoop.\n\n")
    raw = fixture("qmail.eml").replace(b"<qm.user@example.org>:\n", extra +
                                       b"<qm.user@example.org>:\n", 1)
    report = parse(raw)
    assert len(flufl_reading(raw)) == 4
    assert [e.recipient for e in report.events] == [
        "qm.user@example.org", "someone@nohost.example.invalid"]


# --- VERP addresses found elsewhere -------------------------------------------------------

def test_verp_from_the_inline_returned_copy() -> None:
    raw = fixture("qmail.eml")
    without_to = b"\n".join(line for line in raw.split(b"\n") if not line.startswith(b"To: b"))
    report = parse(without_to)
    assert report.kind == "bounce"
    assert report.verp_address is not None
    assert verp_token_of(report.verp_address, SECRET) == (15, 61)


def test_arf_verp_from_the_returned_message() -> None:
    raw = fixture("arf_yahoo_fbl.eml")
    top = raw.split(b"\n\n", 1)[0]
    assert b"bounces+" not in top  # sent to the registered FBL address, not the VERP one
    assert verp_token_of(parse(raw).verp_address or "", SECRET) == (15, 74)
    plain = re.sub(rb"Return-Path: <bounces\+[^>]+>", b"Return-Path: <news@news.example.org>",
                   raw)
    assert plain != raw
    assert parse(plain).verp_address is None  # only a VERP-shaped address is taken


def test_arf_verp_from_original_mail_from() -> None:
    raw = fixture("arf_headers_only.eml")
    token = verp_address(RETURN_PATH, SECRET, 15, 90).encode("ascii")
    raw = re.sub(rb"Return-Path: <[^>]+>\n", b"", raw).replace(
        b"Feedback-Type: abuse\n", b"Feedback-Type: abuse\nOriginal-Mail-From: <" + token + b">\n")
    report = parse(raw)
    assert [e.recipient for e in report.events] == ["headers.only@example.org"]
    assert verp_token_of(report.verp_address or "", SECRET) == (15, 90)


# --- many recipients ----------------------------------------------------------------------

def test_postfix_dsn_with_a_thousand_recipients_is_capped() -> None:
    raw = fixture("dsn_mixed_recipients.eml")
    start = raw.index(b"Final-Recipient: rfc822; failed.one")
    end = raw.index(b"--7C3.1764583860/hub.example.net\nContent-Description: Undelivered")
    blocks = b"".join(b"Final-Recipient: rfc822; user%d@example.org\nAction: failed\n"
                      b"Status: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 no such user\n\n" % i
                      for i in range(1000))
    report = parse(raw[:start] + blocks + raw[end:])
    assert report.kind == "dsn" and len(report.events) == bounces.MAX_RECIPIENTS
    assert report.events[0].recipient == "user0@example.org"
    assert any("900 more" in note for note in report.notes)


def test_qmail_bounce_with_a_thousand_recipients_is_capped() -> None:
    raw = fixture("qmail.eml")
    paragraphs = b"".join(b"<user%04d@example.org>:\nRemote host said: 550 5.1.1 no\n\n" % i
                          for i in range(1000))
    report, elapsed = timed(raw.replace(b"<qm.user@example.org>:\n", paragraphs +
                                        b"<qm.user@example.org>:\n", 1))
    assert report.kind == "bounce" and len(report.events) == bounces.MAX_RECIPIENTS
    assert {e.kind for e in report.events} == {HARD}
    # the detectors read a bounded copy: the note says how many at least were left
    assert any(note.startswith("capped at 100 recipients: at least ") for note in report.notes)
    assert elapsed < 5


@pytest.mark.parametrize(("count", "note"), [
    (150, "capped at 100 recipients: 50 more not read"),
    (1000, "capped at 100 recipients: at least "),  # the header is read up to 4000 characters
])
def test_exim_failed_recipients_header_is_capped(count: int, note: str) -> None:
    names = b", ".join(b"u%d@example.net" % i for i in range(count))
    raw = fixture("exim_classic.eml").replace(b"X-Failed-Recipients: gone2@example.net",
                                              b"X-Failed-Recipients: " + names)
    report = parse(raw)
    assert report.kind == "bounce" and len(report.events) == bounces.MAX_RECIPIENTS
    assert [n for n in report.notes if n.startswith(note)]


# --- hostile input ------------------------------------------------------------------------

def _sane(report: bounces.Report) -> None:
    assert report.kind in KINDS
    assert (report.kind == "malformed") == (report.error is not None)
    if report.kind not in ("dsn", "bounce", "complaint"):
        assert report.events == ()
    assert len(report.events) <= bounces.MAX_RECIPIENTS


@pytest.mark.parametrize("name", ["postfix_550_511.eml", "qmail.eml", "exchange_o365_ndr.eml",
                                  "arf_yahoo_fbl.eml", "domino.eml"])
def test_truncated_anywhere_never_raises(name: str) -> None:
    raw = fixture(name)
    for cut in range(0, len(raw), 53):
        _sane(parse(raw[:cut]))


def test_truncated_after_the_status_still_reads_it() -> None:
    raw = fixture("postfix_550_511.eml")
    cut = raw.index(b"Status: 5.1.1\n") + len(b"Status: 5.1.1\n")
    report = parse(raw[:cut])
    assert report.kind == "dsn"
    assert [(e.recipient, e.kind, e.status) for e in report.events] == [
        ("nobody@example.com", HARD, "5.1.1")]


def test_dsn_whose_status_part_is_garbage() -> None:
    raw = fixture("postfix_550_511.eml")
    start = raw.index(b"Reporting-MTA")
    end = raw.index(b"--4Q1.1764583205/relay.example.net\nContent-Description: Undelivered")
    report = parse(raw[:start] + bytes(range(256)) * 8 + b"\n\n" + raw[end:])
    assert report.kind == "dsn" and report.events == ()


def test_non_utf8_header_bytes() -> None:
    raw = fixture("qmail.eml").replace(
        b"Subject: failure notice",
        b"Subject: failure \xff\xfe notice \xe9\nX-Junk: \x80\x81\xc3(\nReply-To: \xe9@\xff")
    report = parse(raw)
    assert report.kind == "bounce" and len(report.events) == 2
    exim = fixture("exim_classic.eml").replace(
        b"X-Failed-Recipients: gone2@example.net",
        b"X-Failed-Recipients: gone2@example.net, \xe9t\xe9@example.net")
    assert [e.recipient for e in parse(exim).events] == ["gone2@example.net"]
    vacation = fixture("outlook_ooo.eml").replace(b"Automatic reply:", b"Automatic reply: \xff")
    assert parse(vacation).kind == "auto-reply"


def test_twenty_megabytes_refused_by_size_at_once() -> None:
    raw = b"From: MAILER-DAEMON@relay.example.net\nSubject: x\n\n" + b"a" * (20 * 1024 * 1024)
    report, elapsed = timed(raw)
    assert report.kind == "malformed" and "bytes" in (report.error or "")
    assert elapsed < 1


@pytest.mark.parametrize("depth", [300, 5000])
def test_deep_nesting_refused_quickly(depth: int) -> None:
    multipart = (b"From: MAILER-DAEMON@relay.example.net\nSubject: x\n"
                 + b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)
                            for i in range(depth))
                 + b"Content-Type: text/plain\n\n<x@example.org>:\n"
                 + b"".join(b"\n--b%d--\n" % i for i in reversed(range(depth))))
    rfc822 = (b"From: MAILER-DAEMON@relay.example.net\nSubject: x\n"
              + b"Content-Type: message/rfc822\n\n" * depth + b"Subject: y\n\nbody\n")
    for raw in (multipart, rfc822):
        report, elapsed = timed(raw)
        assert report.kind == "malformed", report
        assert elapsed < 5


def test_thousands_of_parts_refused() -> None:
    parts = b"".join(b"--B\nContent-Type: text/plain\n\nx, y@example.org,\n" for _ in range(5000))
    raw = (b"From: MAILER-DAEMON@relay.example.net\nSubject: failure notice\n"
           b"Content-Type: multipart/mixed; boundary=B\n\n" + parts + b"--B--\n")
    report, elapsed = timed(raw)
    assert report.kind == "malformed" and "parts" in (report.error or "")
    assert elapsed < 5


@pytest.mark.parametrize("body", [
    # Each takes flufl.bounce tens of seconds on the message itself (longer lines: hours).
    # Netscape's detector backtracks cubically over '<' on a line,
    b"This Message was undeliverable due to the following reason:\n" + b"<" * 3000 + b"\n",
    # LLNL's quadratically over ',',
    b"," * 60000 + b"\n",
    # and SimpleMatch's earthlink pattern over a long word after its start line.
    b"Sorry, unable to deliver your message to\n" + b"a" * 60000 + b"\n",
])
def test_long_lines_do_not_stall_the_detectors(body: bytes) -> None:
    raw = (b"Return-Path: <>\nFrom: MAILER-DAEMON@relay.example.net\nSubject: failure notice\n"
           b"Content-Type: multipart/mixed; boundary=B\n\n--B\nContent-Type: text/plain\n\n"
           + body + b"\n--B\nContent-Type: text/plain\n\nend\n--B--\n")
    report, elapsed = timed(raw)
    _sane(report)
    assert elapsed < 3


def test_a_detector_that_raises_leaves_unrecognised_and_a_note(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(msg: object) -> object:
        raise RuntimeError("boom")
    monkeypatch.setattr(flufl.bounce, "all_failures", boom)
    report = parse(fixture("qmail.eml"))
    assert report.kind == "unrecognised" and report.events == ()
    assert any("flufl.bounce could not read it: RuntimeError: boom" in n for n in report.notes)


def test_no_from_does_not_trip_a_detector() -> None:
    # flufl's Yale detector raises IndexError on a single-part message without From.
    raw = b"Return-Path: <>\nSubject: failure notice\n\nHi. Something failed.\n"
    report = parse(raw)
    assert report.kind == "unrecognised"
    assert not any("flufl" in note for note in report.notes)


_WORDS = st.sampled_from([
    "Hi. This is the qmail-send program at mx.example.net.", "\n", "\n\n", "<", ">", ":", ",",
    " ", "a@example.org", "<b@example.org>:", "550 5.1.1", "4.2.2", "--B\n", "--B--\n",
    "Content-Type: text/plain\n\n", "Content-Description: notification\n", "because:\n",
    "A message that you sent could not be delivered", "Your message\n", "the postfix program",
    "This Message was undeliverable due to the following reason:", "not yet been delivered",
    "No action is required on your part", "did not reach the following recipient", "MSEXCH:",
    "Sorry, we were unable to deliver your message to the following address.", "\u00e9", "\x00"])


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(head=st.sampled_from(["From: MAILER-DAEMON@relay.example.net\n", "From: \n", "",
                             "X-Failed-Recipients: , <>, x@\n", "X-Mailer: Novell\n"]),
       ctype=st.sampled_from(["", "Content-Type: multipart/mixed; boundary=B\n",
                              "Content-Type: multipart/report; boundary=B\n",
                              "Content-Type: text/plain; charset=bogus\n"]),
       body=st.lists(_WORDS, max_size=60))
def test_non_standard_path_never_raises(head: str, ctype: str, body: list[str]) -> None:
    raw = ("Return-Path: <>\nSubject: failure notice\n" + head + ctype + "\n"
           + "".join(body)).encode("utf-8")
    report = parse(raw)
    _sane(report)
    for event in report.events:
        assert event.kind in (HARD, SOFT) and "@" in event.recipient
        assert not any("flufl" in note for note in report.notes)
