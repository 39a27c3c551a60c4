"""Non-standard bounces: who sent them, flufl.bounce's reading, and the text around each address."""

# flufl.bounce (Mailman's detectors) knows the formats that are not RFC 3464: qmail, Exim
# without a DSN, Yahoo, Domino, GroupWise and dozens of older MTAs. Its detectors are line-by-
# line regular expressions, some of which backtrack quadratically (one cubically) in the length
# of a line, so they never see the message itself: they see a bounded copy (text parts only,
# decoded, lines and total size capped), which keeps a hostile message from taking minutes.
# Their heuristics also match ordinary prose ("a, b@example.org, c"), so bounces.py asks them
# only about mail sent by a mail system or with a null return path, never about people's mail.

from __future__ import annotations

import email.policy
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses, parseaddr
from itertools import islice

import flufl.bounce

# flufl.bounce logs each detector that raises, with its traceback; the reason is kept in the
# Report's notes instead, and with no handler Python would print it to stderr for every such
# message. Operators who configure the root logger still see these records.
logging.getLogger("flufl.bounce").addHandler(logging.NullHandler())

MAX_DIAGNOSTIC = 300
STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
# In prose: not the tail of an IP address (10.4.5.6), not followed by more dotted digits.
_STATUS_TEXT = re.compile(r"(?<![\w.])[245]\.\d{1,3}\.\d{1,3}(?!\.?\d)")
_REPLY_CODE = re.compile(r"(?<![\w.])([245])\d\d(?=[ -]|$)")
_COPY_TEXT = 32_000  # characters of text the detectors see, all parts together
_COPY_LINE = 200  # characters per line: the slow patterns are quadratic in it
_COPY_ANGLES = 8  # '<' per line: Netscape's pattern is cubic in them
_COPY_PARTS = 64
_COPY_DEPTH = 12
_COPY_HEADERS = 200
_COPY_HEADER = 4_000  # characters per header value (X-Failed-Recipients can be long)
_WINDOW = 6  # lines after an address searched for the reply that explains it
_ADDRESS = re.compile(r"^[^\s@<>()\[\],;:\"]{1,64}@[^\s@<>()\[\],;:\"]{1,255}$")

_SYSTEM_LOCAL = re.compile(r"^(mailer[-_.]?daemon|mail[-_.]?daemon|postmaster|mdaemon|"
                           r"mail[-_.]?(delivery|router|administrator|system))$", re.IGNORECASE)
_SYSTEM_NAME = re.compile(r"mail delivery (sub)?system|mailer[- ]daemon|postmaster|"
                          r"mail administrator|mail router", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery (status notification|failure|failed|has failed|problem|report)|"
    r"mail delivery failed|returned mail|failure notice|non-?delivery|nondeliverable|"
    r"could not be delivered|unzustellbar|non remis", re.IGNORECASE)
_CHALLENGE = re.compile(
    r"(confirm|verify|prove) (that )?you('re| are) (a )?(human|real|person|not a (robot|bot|"
    r"machine|spammer))|(held|quarantined|pending|waiting) until you (confirm|verify|reply)|"
    r"please (confirm|verify) your (message|e-?mail|address)|challenge[- ]response",
    re.IGNORECASE)
# Where a returned copy of the original message starts inside a plain-text bounce.
_COPY_MARKER = re.compile(
    r"^\s*-*\s*(below this line is a copy|this is a copy of (the|your) message|"
    r"original message( follows)?|returned message|forwarded message|"
    r"(undelivered )?message headers follow)", re.IGNORECASE)
_INLINE_RETURN_PATH = re.compile(r"^\s*Return-Path:\s*<([^<>\s]{1,320})>", re.IGNORECASE)


@dataclass(frozen=True)
class Failure:
    """One address a non-standard bounce names, and what its text says about it."""

    recipient: str
    temporary: bool  # flufl.bounce's reading: a warning rather than a failure
    status: str
    diagnostic: str


def one_line(text: object, limit: int = MAX_DIAGNOSTIC) -> str:
    line = " ".join(str(text or "").split())
    line = "".join(ch for ch in line if ch.isprintable())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # a header the parser cannot decode
        return ""
    return "" if value is None else str(value)


def clean(value: str) -> str:
    # compat32 keeps undecodable header bytes as surrogates; flufl's detectors call str methods
    # on header values and would trip over the Header objects msg.get makes of them.
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def subject(msg: Message) -> str:
    raw = header(msg, "Subject")
    if "=?" not in raw:
        return raw
    try:  # RFC 2047 words ("=?iso-8859-1?Q?Abwesenheitsnotiz...?=") read as text
        return str(email.policy.default.header_fetch_parse("Subject", clean(raw)))
    except Exception:  # an encoded word the header registry cannot read
        return raw


# --- who sent it --------------------------------------------------------------------------

def null_sender(msg: Message) -> bool:
    """Return-Path <>: what RFC 5321 asks of bounces, and of some auto-replies too."""
    return header(msg, "Return-Path").strip() in ("<>", "<<>>")


def from_mail_system(msg: Message) -> bool:
    """Sent by an MTA (MAILER-DAEMON, postmaster, "Mail Delivery System") or saying so."""
    name, address = parseaddr(clean(header(msg, "From")))
    if _SYSTEM_LOCAL.match(address.rpartition("@")[0] or address) or _SYSTEM_NAME.search(name):
        return True
    if header(msg, "X-Failed-Recipients"):  # Exim names the failed addresses here
        return True
    return null_sender(msg) and bool(_BOUNCE_SUBJECT.search(subject(msg)))


def is_challenge(msg: Message, notice: list[str]) -> bool:
    """A challenge-response ("confirm you are human"): automatic, and not a failure."""
    if "tmda" in header(msg, "X-Delivery-Agent").lower() or any(
            name.lower().startswith("x-challenge") for name in msg):
        return True
    return bool(_CHALLENGE.search(subject(msg))
                or any(_CHALLENGE.search(line) for line in notice[:60]))


# --- the bounded copy ---------------------------------------------------------------------

def _text_of(part: Message) -> str:
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return data.decode(charset, "replace")
    except (LookupError, ValueError):  # an unknown or hostile charset name
        return data.decode("latin-1")


def _bounded_lines(text: str, budget: list[int]) -> list[str]:
    text = text[:max(budget[0], 0)]
    budget[0] -= len(text)
    lines = [line[:_COPY_LINE] for line in text.splitlines()]
    return ["" if line.count("<") > _COPY_ANGLES else line for line in lines]


class _Copier:
    """The bounded copy flufl reads, and the notice text (the parts outside any returned
    message, cut where an inline copy of the message starts) that diagnostics come from."""

    def __init__(self) -> None:
        self.budget = [_COPY_TEXT]
        self.message = Message()
        self.parts = 0
        self.notice: list[str] = []
        self.return_paths: list[str] = []
        self._notice_done = False
        self.cut = False  # some text was left out: the budget ran out

    def copy(self, part: Message, depth: int = 0, returned: bool = False) -> Message:
        new = Message()
        for name, value in islice(part.raw_items(), _COPY_HEADERS):
            if name.lower() != "content-transfer-encoding":  # the copy holds decoded text
                value = clean(value)
                self.cut = self.cut or len(value) > _COPY_HEADER
                new[clean(name)] = value[:_COPY_HEADER]
        if depth == 0 and not header(new, "From").strip():
            # Yale's detector takes the first of getaddresses(From), which has none when
            # From is missing or empty, and raises; "<>" reads as nobody.
            del new["From"]
            new["From"] = "<>"
        self.parts += 1
        ctype = part.get_content_type()
        if part.is_multipart():
            inner = returned or ctype == "message/rfc822"
            for child in part.get_payload():
                if (isinstance(child, Message) and depth < _COPY_DEPTH
                        and self.parts < _COPY_PARTS):
                    new.attach(self.copy(child, depth + 1, inner))
            return new
        text = _text_of(part) if part.get_content_maintype() == "text" else ""
        self.cut = self.cut or len(text) > self.budget[0]
        lines = _bounded_lines(text, self.budget)
        if ctype == "text/plain" and not returned and not self._notice_done:
            for line in lines:
                if _COPY_MARKER.match(line):
                    self._notice_done = True
                    break
                self.notice.append(line)
        self.return_paths += [m[1] for line in lines if (m := _INLINE_RETURN_PATH.match(line))]
        # flufl encodes what it reads as ASCII: fold the rest rather than let it raise.
        new.set_payload("\n".join(lines).encode("ascii", "replace").decode("ascii") + "\n")
        return new


def bounded_copy(msg: Message) -> _Copier:
    """The copier after copying `msg`: .message, .notice (lines), .return_paths (of inline
    returned copies), .cut (text left out)."""
    copier = _Copier()
    copier.message = copier.copy(msg)
    return copier


# --- what the text says about each address ------------------------------------------------

def _status_of(text: str) -> str:
    found = _STATUS_TEXT.search(text)
    if found:
        return found.group(0)
    code = _REPLY_CODE.search(text)
    return f"{code[1]}.0.0" if code else ""  # "550 No such user": permanent, reason unknown


def _explain(address: str, notice: list[str], lowered: list[str],
             alone: bool) -> tuple[str, str]:
    """(status, diagnostic) from the lines that name `address`, or the reply that follows."""
    mentions = [i for i, line in enumerate(lowered) if address in line]
    for i in mentions:
        for j in range(i, min(i + _WINDOW, len(notice))):
            if j > i and not notice[j].strip():
                break  # the paragraph about this address ended
            if _STATUS_TEXT.search(notice[j]) or _REPLY_CODE.search(notice[j]):
                line = one_line(notice[j])
                return _status_of(line), line
    for i in mentions:
        line = one_line(notice[i])
        if len(line.strip("<>: ")) > len(address) + 3:  # more than the bare address
            return _status_of(line), line
    if alone:  # one address: a reply code anywhere in the notice is about it
        for line in notice:
            if _STATUS_TEXT.search(line) or _REPLY_CODE.search(line):
                return _status_of(line), one_line(line)
    return "", ""


def _address(raw: bytes) -> str:
    text = raw.decode("ascii", "replace").strip().strip("<>").strip().lower()
    return text if _ADDRESS.match(text) else ""


@dataclass(frozen=True)
class Reading:
    """What flufl.bounce made of a message: the first `limit` failures (by address), how many
    it found in all (more, if `cut`: it read only the first _COPY_TEXT characters), notes,
    and the Return-Path addresses of inline returned copies."""

    failures: list[Failure]
    found: int
    cut: bool
    notes: list[str]
    return_paths: list[str]


def read(msg: Message, ours: Callable[[str], bool], limit: int) -> Reading:
    """flufl.bounce's reading of `msg`. Never raises: a detector that fails on hostile input
    leaves a note and no failures. An address `ours` accepts (our own return path, where the
    bounce was delivered) is never a failure."""
    try:
        copy = bounded_copy(msg)
        temporary, permanent = flufl.bounce.all_failures(copy.message)
    except Exception as exc:  # flufl's detectors and the email package on hostile input
        note = one_line(f"flufl.bounce could not read it: {type(exc).__name__}: {exc}")
        return Reading([], 0, False, [note], [])
    found: dict[str, bool] = {}
    for raws, is_temporary in ((temporary, True), (permanent, False)):
        for raw in raws:
            address = _address(raw)
            if address and not ours(address):
                found[address] = is_temporary  # permanent, read last, wins
    notice = copy.notice
    lowered = [line.lower() for line in notice]
    result = [Failure(address, found[address],
                      *_explain(address, notice, lowered, alone=len(found) == 1))
              for address in sorted(found)[:limit]]
    return Reading(result, len(found), copy.cut, [], copy.return_paths)


def addresses_in(values: list[str]) -> list[str]:
    """The addresses in header values, lower-cased, in order, each once."""
    found = (addr.lower() for _, addr in getaddresses([clean(v) for v in values]) if addr)
    return list(dict.fromkeys(found))
