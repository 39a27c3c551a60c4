"""Bounces read, purely: VERP return paths, DSNs, other MTAs' bounces, complaints, auto-replies."""

# Bytes in, a Report out; nothing here stores, sends or looks anything up.
# A VERP token names the issue and the subscriber and carries a short HMAC made through the one
# signer (tokens.sign, purpose "verp"), so a bounce says exactly who failed and nobody can forge
# one to suppress someone else. The token is lower-case letters, digits and '-', because some
# MTAs fold the case of local parts and '+', '=', '/' have meanings there.
# The order of the checks in _classify matters: Postfix and Exim mark their bounces
# Auto-Submitted like any vacation notice, and flufl.bounce's heuristics match some vacation
# notices' prose, so who sent a message decides which reading it gets (see _classify).

from __future__ import annotations

import base64
import email.parser
import email.policy
import hmac
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import errors as email_errors
from email.message import Message
from email.utils import getaddresses, parseaddr

from newsletter.audience import bounce_formats as formats
from newsletter.audience.bounce_formats import STATUS as _STATUS
from newsletter.audience.bounce_formats import header as _header
from newsletter.audience.bounce_formats import one_line as _one_line
from newsletter.audience.tokens import mac_of

VERP_PURPOSE = "verp"
MAX_RECIPIENTS = 100  # taken from one report; the rest are named in Report.notes
MAX_DIAGNOSTIC = formats.MAX_DIAGNOSTIC
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 50  # MIME nesting; a real report nests four or five deep
MAX_PARTS = 1000  # MIME parts; a real report with the message returned has a dozen
_MAC_LEN = 10  # bytes of HMAC kept: 80 bits, 16 base32 characters
_FIXED_TIME = datetime(2000, 1, 1, tzinfo=UTC)  # a token never expires, so it is deterministic
_TOKEN = re.compile(r"^([0-9]{1,12})-([0-9]{1,15})-([a-z2-7]{16})$")
_VERP_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To")
_VACATION = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|automatische antwort|auto:|"
    r"out of (the )?office|vacation|away from|abwesenheit|absence|r[ée]ponse automatique|"
    r"respuesta autom[áa]tica|risposta automatica|on leave|urlaub)", re.IGNORECASE)

# Defects after which the parts cannot be trusted to be what they say (an unclosed last
# boundary is common and harmless: the parts before it are read).
_FATAL_DEFECTS = (email_errors.NoBoundaryInMultipartDefect,
                  email_errors.StartBoundaryNotFoundDefect,
                  email_errors.MultipartInvariantViolationDefect)

HARD, SOFT, COMPLAINT = "hard", "soft", "complaint"


@dataclass(frozen=True)
class Event:
    """One recipient's failure or complaint as the report states it."""

    recipient: str
    kind: str  # HARD, SOFT or COMPLAINT
    status: str  # e.g. "5.1.1"; "" when the report gives none (complaints)
    diagnostic: str  # one line, at most MAX_DIAGNOSTIC characters


@dataclass(frozen=True)
class Report:
    """What one message turned out to be.

    kind: "dsn" (RFC 3464), "bounce" (another MTA format, read by flufl.bounce), "complaint"
    (RFC 5965), "auto-reply" (vacation notices, challenge-responses: ignored), "unrecognised"
    or "malformed" (then `error` says why). `verp_address` is the VERP address it was sent to,
    unverified: verp_token_of decides.
    """

    kind: str
    events: tuple[Event, ...] = ()
    verp_address: str | None = None
    message_id: str = ""
    error: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def auto_reply(self) -> bool:
        return self.kind == "auto-reply"


# --- VERP ---------------------------------------------------------------------------------

def _short_mac(secret: bytes, issue_number: int, subscriber_id: int) -> str:
    # The MAC of the token sign() would make, without building and decoding that token: a
    # return path is made for every message sent.
    mac = mac_of(secret, VERP_PURPOSE, f"{issue_number}.{subscriber_id}", _FIXED_TIME)
    return base64.b32encode(mac[:_MAC_LEN]).decode("ascii").lower()


def verp_address(return_path: str, secret: bytes, issue_number: int, subscriber_id: int) -> str:
    """`local+TOKEN@domain` for `return_path` (e.g. bounces@news.example.org)."""
    local, at, domain = return_path.strip().rpartition("@")
    if not at or not local or not domain or "+" in local:
        raise ValueError(f"bounces.return_path: expected local@domain without '+': "
                         f"{return_path!r}")
    if issue_number < 0 or subscriber_id < 0:
        raise ValueError("VERP issue number and subscriber id must not be negative")
    token = f"{issue_number}-{subscriber_id}-{_short_mac(secret, issue_number, subscriber_id)}"
    return f"{local}+{token}@{domain}"


def verp_token_of(address: str, secret: bytes) -> tuple[int, int] | None:
    """(issue_number, subscriber_id) from a VERP address, or None when absent or forged."""
    if not isinstance(address, str) or len(address) > 320:
        return None
    local = parseaddr(address)[1].rpartition("@")[0] or address.rpartition("@")[0]
    if "+" not in local:
        return None
    match = _TOKEN.match(local.rpartition("+")[2].lower())
    if not match:
        return None
    issue_number, subscriber_id = int(match[1]), int(match[2])
    if str(issue_number) != match[1] or str(subscriber_id) != match[2]:
        return None  # leading zeros: one spelling per token
    expected = _short_mac(secret, issue_number, subscriber_id)
    if not hmac.compare_digest(expected, match[3]):
        return None
    return issue_number, subscriber_id


# --- parsing --------------------------------------------------------------------------------

def _all_headers(msg: Message, name: str) -> list[str]:
    try:
        return [str(v) for v in msg.get_all(name, [])]
    except Exception:  # a header the parser cannot decode
        return []


def _address_of(value: str) -> str:
    """The address in a field like "rfc822; user@example.org" or "<user@example.org>"."""
    value = value.partition(";")[2] if ";" in value else value
    addr = parseaddr(value.strip())[1] or value.strip().strip("<>")
    return _one_line(addr, 320).lower()


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    text = str(payload or "")
    parser = email.parser.Parser(policy=email.policy.compat32)
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    return [parser.parsestr(block, headersonly=True) for block in blocks if block.strip()]


def _diagnostic(block: Message) -> str:
    for name in ("Diagnostic-Code", "X-Remote-MTA-Diagnostic", "X-Postfix-Diagnostic"):
        value = _header(block, name)
        if value:
            kind, sep, rest = value.partition(";")
            return _one_line(rest if sep and " " not in kind.strip() else value)
    return ""


def _kind_of(status: str, temporary: bool) -> str:
    # X.2.2, mailbox full, is "a persistent transient failure" (RFC 3463) even when sent as
    # 5.2.2: the owner can make room, so it counts towards soft_limit, not at once.
    if temporary or status.startswith("4") or status[1:] == ".2.2":
        return SOFT
    return HARD  # failed with 5.x.x, or with no usable status


def _event_of(block: Message) -> Event | None:
    action = _header(block, "Action").strip().lower()
    recipient = _address_of(_header(block, "Final-Recipient")
                            or _header(block, "Original-Recipient"))
    if not recipient or action not in ("failed", "delayed"):
        return None  # delivered, relayed, expanded: not a failure
    diagnostic = _diagnostic(block)
    found = _STATUS.search(_header(block, "Status")) or _STATUS.search(diagnostic)
    status = found.group(0) if found else ""
    return Event(recipient, _kind_of(status, action == "delayed"), status, diagnostic)


def _parse_dsn(part: Message) -> tuple[list[Event], list[str]]:
    events: list[Event] = []
    notes: list[str] = []
    skipped = 0
    for block in _status_blocks(part)[1:]:  # the first block is about the message
        event = _event_of(block)
        if event is None:
            continue
        if len(events) >= MAX_RECIPIENTS:
            skipped += 1
            continue
        events.append(event)
    if skipped:
        notes.append(f"capped at {MAX_RECIPIENTS} recipients: {skipped} more not read")
    return events, notes


def _returned_headers(report: Message) -> Message | None:
    for part in report.walk():
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return inner[0]
        elif ctype == "text/rfc822-headers":
            text = part.get_payload(decode=True)
            if isinstance(text, bytes):
                parser = email.parser.BytesParser(policy=email.policy.compat32)
                return parser.parsebytes(text, headersonly=True)
    return None


def _parse_arf(msg: Message, part: Message) -> tuple[list[Event], str | None]:
    """The complaint's events, and the VERP address its report or returned message names."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        fields: Message = payload[0]
    else:
        fields = email.parser.Parser(policy=email.policy.compat32).parsestr(
            str(payload or ""), headersonly=True)
    feedback = _one_line(_header(fields, "Feedback-Type") or "abuse", 60).lower()
    recipients = [_address_of(v) for v in _all_headers(fields, "Original-Rcpt-To")]
    returned = _returned_headers(msg)
    if not recipients and returned is not None:
        recipients = formats.addresses_in(_all_headers(returned, "To"))
    diagnostic = _one_line(f"feedback-type: {feedback}; "
                           f"user-agent: {_header(fields, 'User-Agent')}")
    unique = list(dict.fromkeys(r for r in recipients if r))[:MAX_RECIPIENTS]
    # Feedback loops send to the address registered with them, not to the VERP address: the
    # envelope sender survives in Original-Mail-From or the returned message's Return-Path.
    verp = _verp_in(_all_headers(fields, "Original-Mail-From")) or (
        _verp_in(_all_headers(returned, "Return-Path")) if returned is not None else None)
    return [Event(r, COMPLAINT, "", diagnostic) for r in unique], verp


def _is_auto_reply(msg: Message, notice: list[str]) -> bool:
    submitted = _header(msg, "Auto-Submitted").strip().lower()
    if submitted and not submitted.startswith("no"):
        return True
    # Not X-Auto-Response-Suppress: Exchange puts it on ordinary mail, asking for no replies.
    if any(_header(msg, name) for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponse")):
        return True
    if _header(msg, "Precedence").strip().lower() == "auto_reply":
        return True
    return bool(_VACATION.search(formats.subject(msg))) or formats.is_challenge(msg, notice)


def _verp_in(values: list[str]) -> str | None:
    for addr in formats.addresses_in(values):
        local = addr.rpartition("@")[0]
        if "+" in local and _TOKEN.match(local.rpartition("+")[2]):
            return addr
    return None


def _verp_candidate(msg: Message) -> str | None:
    for name in _VERP_HEADERS:
        for _, addr in getaddresses(_all_headers(msg, name)):
            local = addr.rpartition("@")[0]
            if "+" in local and _TOKEN.match(local.rpartition("+")[2].lower()):
                return addr
    return None


def _find(msg: Message, ctype: str) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == ctype:
            return part
    return None


def _nonstandard(msg: Message, verp: str | None, mid: str) -> Report:
    """A bounce in another MTA's own format, read by flufl.bounce; "unrecognised" when its
    detectors find nobody (or fail: the reason is kept in notes)."""
    delivered_to = set(formats.addresses_in([v for name in (*_VERP_HEADERS, "From")
                                             for v in _all_headers(msg, name)]))
    # Where the bounce went and who sent it are not failed recipients; nor is any VERP
    # address, which is our own return path quoted back.
    reading = formats.read(msg, lambda a: a in delivered_to or _verp_in([a]) is not None,
                           MAX_RECIPIENTS)
    notes = list(reading.notes)
    if reading.found > MAX_RECIPIENTS:
        more = reading.found - MAX_RECIPIENTS
        notes.append(f"capped at {MAX_RECIPIENTS} recipients: "
                     f"{f'at least {more}' if reading.cut else more} more not read")
    events = tuple(Event(f.recipient, _kind_of(f.status, f.temporary), f.status,
                         f.diagnostic) for f in reading.failures)
    verp = verp or _verp_in(reading.return_paths) or _returned_verp(msg)
    return Report("bounce" if events else "unrecognised", events, verp, mid,
                  notes=tuple(notes))


def _returned_verp(msg: Message) -> str | None:
    returned = _returned_headers(msg)
    return None if returned is None else _verp_in(_all_headers(returned, "Return-Path"))


def _classify(msg: Message) -> Report:
    verp, mid = _verp_candidate(msg), _one_line(_header(msg, "Message-ID"), 998)
    dsn = _find(msg, "message/delivery-status")
    if dsn is not None:  # before auto-replies: Postfix and Exim mark DSNs Auto-Submitted
        events, notes = _parse_dsn(dsn)
        return Report("dsn", tuple(events), verp or _returned_verp(msg), mid,
                      notes=tuple(notes))
    arf = _find(msg, "message/feedback-report")
    if arf is not None:
        complaints, arf_verp = _parse_arf(msg, arf)
        return Report("complaint", tuple(complaints), verp or arf_verp, mid)
    if _VACATION.search(formats.subject(msg)):  # "Out of Office: …" whatever its body says
        return Report("auto-reply", (), verp, mid)
    if formats.from_mail_system(msg):  # MAILER-DAEMON, postmaster: a bounce or nothing
        report = _nonstandard(msg, verp, mid)
        if report.events:
            return report
        return Report("unrecognised", (), report.verp_address, mid, notes=report.notes + (
            "sent by a mail system, but no failed recipient found in it",))
    if _is_auto_reply(msg, formats.bounded_copy(msg).notice):
        return Report("auto-reply", (), verp, mid)
    if formats.null_sender(msg):  # a null return path and no sign of a person's auto-reply
        report = _nonstandard(msg, verp, mid)
        if report.events:
            return report
    return Report("unrecognised", (), verp, mid)


def _shape(msg: Message) -> tuple[int, int]:
    """(deepest nesting, number of parts), counted without recursion and given up past the
    limits, so that a hostile tree is refused before anything walks it recursively."""
    deepest, parts, stack = 0, 0, [(msg, 0)]
    while stack and deepest <= MAX_DEPTH and parts <= MAX_PARTS:
        part, depth = stack.pop()
        deepest, parts = max(deepest, depth), parts + 1
        # A delivery-status part's "parts" are its per-recipient blocks: counted by _parse_dsn.
        payload = None if part.get_content_type() == "message/delivery-status" \
            else part.get_payload()
        if isinstance(payload, list):
            stack.extend((p, depth + 1) for p in payload if isinstance(p, Message))
    return deepest, parts


def parse(raw: bytes) -> Report:
    """Read one message; never raises: bad input is a Report of kind "malformed"."""
    if not isinstance(raw, bytes | bytearray):
        return Report("malformed", error="not bytes")
    if len(raw) > MAX_MESSAGE_BYTES:
        return Report("malformed", error=f"message over {MAX_MESSAGE_BYTES} bytes")
    try:
        msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(bytes(raw))
        if not msg.keys():
            return Report("malformed", error="no header fields: not a mail message")
        if not any(msg.get(name) for name in ("From", "To", "Subject", "Date",
                                              "Message-ID", "Content-Type", "Return-Path")):
            return Report("malformed", error="none of From, To, Subject, Date, Message-ID, "
                                             "Content-Type, Return-Path: not a mail message")
        depth, parts = _shape(msg)
        if depth > MAX_DEPTH:
            return Report("malformed", error=f"MIME parts nested over {MAX_DEPTH} deep")
        if parts > MAX_PARTS:
            return Report("malformed", error=f"over {MAX_PARTS} MIME parts")
        fatal = [type(d).__name__ for part in msg.walk() for d in part.defects
                 if isinstance(d, _FATAL_DEFECTS)]
        fatal += ["EmptyBoundary" for part in msg.walk()
                  if part.get_content_maintype() == "multipart" and not part.get_boundary()]
        if fatal:
            return Report("malformed", error=f"broken MIME structure: {', '.join(fatal)}")
        return _classify(msg)
    except Exception as exc:  # the email package on hostile input: any error is "malformed"
        return Report("malformed", error=_one_line(f"{type(exc).__name__}: {exc}"))
