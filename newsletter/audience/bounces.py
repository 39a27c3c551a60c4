"""Bounces read, purely: VERP return paths, RFC 3464 DSNs, RFC 5965 complaints, auto-replies."""

# Bytes in, a Report out; nothing here stores, sends or looks anything up.
# A VERP token names the issue and the subscriber and carries a short HMAC made through the one
# signer (tokens.sign, purpose "verp"), so a bounce says exactly who failed and nobody can forge
# one to suppress someone else. The token is lower-case letters, digits and '-', because some
# MTAs fold the case of local parts and '+', '=', '/' have meanings there.

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

from newsletter.audience.tokens import sign

VERP_PURPOSE = "verp"
MAX_RECIPIENTS = 100  # taken from one DSN; the rest are named in Report.notes
MAX_DIAGNOSTIC = 300
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
_MAC_LEN = 10  # bytes of HMAC kept: 80 bits, 16 base32 characters
_FIXED_TIME = datetime(2000, 1, 1, tzinfo=UTC)  # a token never expires, so it is deterministic
_TOKEN = re.compile(r"^([0-9]{1,12})-([0-9]{1,15})-([a-z2-7]{16})$")
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_VERP_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To")
_VACATION = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|auto:|out of (the )?office|vacation|"
    r"away from|abwesenheit|absence|r[ée]ponse automatique|on leave|urlaub)",
    re.IGNORECASE)

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

    kind: "dsn", "complaint", "auto-reply", "unrecognised" or "malformed" (then `error` says
    why). `verp_address` is the VERP address it was sent to, unverified: verp_token_of decides.
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
    token = sign(secret, VERP_PURPOSE, f"{issue_number}.{subscriber_id}", _FIXED_TIME)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    mac = raw[-32:][:_MAC_LEN]
    return base64.b32encode(mac).decode("ascii").lower()


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

def _one_line(text: object, limit: int = MAX_DIAGNOSTIC) -> str:
    line = " ".join(str(text or "").split())
    line = "".join(ch for ch in line if ch.isprintable())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # a header the parser cannot decode
        return ""
    return "" if value is None else str(value)


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


def _event_of(block: Message) -> Event | None:
    action = _header(block, "Action").strip().lower()
    recipient = _address_of(_header(block, "Final-Recipient")
                            or _header(block, "Original-Recipient"))
    if not recipient or action not in ("failed", "delayed"):
        return None  # delivered, relayed, expanded: not a failure
    diagnostic = _diagnostic(block)
    found = _STATUS.search(_header(block, "Status")) or _STATUS.search(diagnostic)
    status = found.group(0) if found else ""
    # failed with 5.x.x, or failed with no usable status, is permanent
    kind = SOFT if action == "delayed" or status.startswith("4") else HARD
    return Event(recipient, kind, status, diagnostic)


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


def _parse_arf(msg: Message, part: Message) -> list[Event]:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        fields: Message = payload[0]
    else:
        fields = email.parser.Parser(policy=email.policy.compat32).parsestr(
            str(payload or ""), headersonly=True)
    feedback = _one_line(_header(fields, "Feedback-Type") or "abuse", 60).lower()
    recipients = [_address_of(v) for v in fields.get_all("Original-Rcpt-To", [])]
    if not recipients:
        returned = _returned_headers(msg)
        if returned is not None:
            recipients = [addr.lower() for _, addr in
                          getaddresses([_header(returned, "To")]) if addr]
    diagnostic = _one_line(f"feedback-type: {feedback}; "
                           f"user-agent: {_header(fields, 'User-Agent')}")
    unique = list(dict.fromkeys(r for r in recipients if r))[:MAX_RECIPIENTS]
    return [Event(r, COMPLAINT, "", diagnostic) for r in unique]


def _is_auto_reply(msg: Message) -> bool:
    submitted = _header(msg, "Auto-Submitted").strip().lower()
    if submitted and not submitted.startswith("no"):
        return True
    if any(_header(msg, name) for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponse")):
        return True
    if _header(msg, "Precedence").strip().lower() == "auto_reply":
        return True
    return bool(_VACATION.search(_header(msg, "Subject")))


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


def _classify(msg: Message) -> Report:
    verp, mid = _verp_candidate(msg), _one_line(_header(msg, "Message-ID"), 998)
    dsn = _find(msg, "message/delivery-status")
    if dsn is not None:
        events, notes = _parse_dsn(dsn)
        return Report("dsn", tuple(events), verp, mid, notes=tuple(notes))
    arf = _find(msg, "message/feedback-report")
    if arf is not None:
        return Report("complaint", tuple(_parse_arf(msg, arf)), verp, mid)
    if _is_auto_reply(msg):
        return Report("auto-reply", (), verp, mid)
    return Report("unrecognised", (), verp, mid)


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
        fatal = [type(d).__name__ for part in msg.walk() for d in part.defects
                 if isinstance(d, _FATAL_DEFECTS)]
        fatal += ["EmptyBoundary" for part in msg.walk()
                  if part.get_content_maintype() == "multipart" and not part.get_boundary()]
        if fatal:
            return Report("malformed", error=f"broken MIME structure: {', '.join(fatal)}")
        return _classify(msg)
    except Exception as exc:  # the email package on hostile input: any error is "malformed"
        return Report("malformed", error=_one_line(f"{type(exc).__name__}: {exc}"))
