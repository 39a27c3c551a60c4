"""Messages built once per issue variant, stamped per recipient as bytes; headers encoded here."""

from __future__ import annotations

import base64
import functools
import hashlib
import html as html_lib
import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

from newsletter.deliver.qp import qp_piece, qp_value
from newsletter.deliver.wire import WireMessage

if TYPE_CHECKING:
    from newsletter.config import Settings
    from newsletter.deliver.dkim import DkimSigner

MAX_LINE = 78  # RFC 5322 §2.1.1 SHOULD; 998 is the hard limit
_PLACEHOLDER_RE = re.compile(r"%%(UNSUBSCRIBE_URL|PREFERENCES_URL|NAME)%%")


class HeaderError(ValueError):
    """A value that cannot be put in a header safely: an invalid address, URL or id."""


# -- header values ----------------------------------------------------------------------------

# C0, DEL, C1 (NEL included) and the Unicode line/paragraph separators: some parser somewhere
# treats each of them as a line end, so none may reach a header. Lone surrogates cannot be
# encoded at all.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_SPACES_RE = re.compile(" {2,}")
_PLAIN_RE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_ATOM_PHRASE_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+")
_LIST_ID_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)+")
_DOMAIN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
# Local parts: dot-atom, or non-ASCII (RFC 6531, sent only with SMTPUTF8); never quoted.
_LOCAL_RE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f<>()\[\],;:\\\"@.]+(?:\.[^\s\x00-\x1f\x7f-\x9f"
                       r"<>()\[\],;:\\\"@.]+)*")
_URL_RE = re.compile(r"https?://[!#-;=?-~]+")  # printable ASCII without space, quote, < and >
_MSGID_RE = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")


def safe_header_value(value: str) -> str:
    """One line of text: control characters become spaces, runs of spaces one, ends trimmed.

    The result is still *text*: it only reaches a message through encode_header, which turns
    anything that could be read as an encoded word ("=?…?=") into encoded words of its own.
    """
    value = _SURROGATE_RE.sub("\ufffd", _CONTROL_RE.sub(" ", value))
    return _SPACES_RE.sub(" ", value).strip()


def _b_words(text: str, used: int) -> list[str]:
    """RFC 2047 'B' encoded words of whole characters, each ≤ 75 columns, the first fitting
    after `used` columns. Words are split after a space where possible: decoders that (against
    RFC 2047 §6.2) keep the whitespace between encoded words, as Python's address parser does,
    then show a doubled space rather than a space inside a word."""
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    width = max(16, min(75, MAX_LINE - used - 1))
    for ch in text:
        n = len(ch.encode("utf-8"))
        while chunk and size + n > (width - 12) // 4 * 3:  # 12 = len("=?utf-8?b??=")
            cut = len(chunk) - chunk[::-1].index(" ") if " " in chunk[1:] else len(chunk)
            words.append(_b_word("".join(chunk[:cut])))
            chunk, width = chunk[cut:], 75
            size = len("".join(chunk).encode("utf-8"))
        chunk.append(ch)
        size += n
    if chunk:
        words.append(_b_word("".join(chunk)))
    return words


def _b_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


def _fold(tokens: list[str], used: int) -> str:
    """Tokens joined by single spaces, a CRLF put before the space wherever a line would pass
    78 columns; unfolding (removing the CRLFs) gives back the single-spaced text."""
    out: list[str] = []
    col = used
    for tok in tokens:
        if out and col + 1 + len(tok) > MAX_LINE:
            out.append("\r\n")
            col = 0
        out.append(" " + tok)
        col += 1 + len(tok)
    return "".join(out)


def _text_tokens(value: str, used: int) -> list[str]:
    words = value.split(" ")
    if (_PLAIN_RE.fullmatch(value) and "=?" not in value
            and max(len(w) for w in words) < MAX_LINE - 8):
        return words
    # Non-ASCII, an encoded-word look-alike, or an unfoldable word: encode it all ourselves,
    # so no "=?…?=" from the input survives verbatim to be decoded by a reader.
    return _b_words(value, used)


def encode_header(name: str, value: str) -> str:
    """`Name: value` (no CRLF at the end), folded at 78 columns with CRLF + space."""
    value = safe_header_value(value)
    return name + ":" + (_fold(_text_tokens(value, len(name) + 1), len(name) + 1) or " ")


def check_address(addr: str) -> str:
    """The address itself (IDN domains in A-labels) or HeaderError: no display name, no
    comments, no quoted local part, nothing that could end a header or an SMTP command."""
    local, at, domain = addr.rpartition("@")
    if not at or len(addr) > 254 or len(local) > 64 or not _LOCAL_RE.fullmatch(local):
        raise HeaderError(f"invalid email address {addr!r}")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise HeaderError(f"invalid email address {addr!r}") from None
    if not _DOMAIN_RE.fullmatch(domain):
        raise HeaderError(f"invalid email address {addr!r}")
    return f"{local}@{domain}"


def _phrase_tokens(name: str, used: int) -> list[str]:
    name = safe_header_value(name)
    if not name:
        return []
    if "=?" not in name and max(len(w) for w in name.split(" ")) < MAX_LINE - 20:
        if _ATOM_PHRASE_RE.fullmatch(name):
            return name.split(" ")
        if _PLAIN_RE.fullmatch(name) and len(name) < MAX_LINE - 20:
            return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return _b_words(name, used)


def _named(name: str, angle: str, used: int) -> str:
    return _fold([*_phrase_tokens(name, used + 1), f"<{angle}>"], used)


def format_address(name: str, addr: str) -> str:
    """`Name <addr>` (or `<addr>`) for an address header; the name quoted or encoded, folded
    for a header name of up to 10 columns (Reply-To:)."""
    return _named(name, check_address(addr), 10).lstrip(" ")


def message_id(issue_number: int, subscriber_id: int | str, domain: str) -> str:
    """Deterministic: a resend of the same issue to the same subscriber keeps its id."""
    sub = str(subscriber_id)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", sub) or not _DOMAIN_RE.fullmatch(domain):
        raise HeaderError(f"cannot build a Message-ID from {subscriber_id!r} and {domain!r}")
    digest = hashlib.sha256(f"{issue_number}:{sub}:{domain}".encode()).hexdigest()[:12]
    return f"<issue-{int(issue_number)}.sub-{sub}.{digest}@{domain}>"


def _check_url(url: str) -> str:
    if len(url) > 900 or not _URL_RE.fullmatch(url):
        raise HeaderError(f"not an absolute http(s) URL fit for a header: {url!r}")
    return url


@functools.lru_cache(maxsize=4)
def _date_field(date: datetime) -> bytes:
    """The Date field; within one second every message carries the same one, so it is
    formatted once (email.utils' formatting costs more than the rest of the headers)."""
    return f"Date: {format_datetime(date)}\r\n".encode("ascii")


# -- identity and template ---------------------------------------------------------------------

@dataclass(frozen=True)
class MailIdentity:
    """Who the messages are from and which list they belong to."""

    from_address: str
    from_name: str
    reply_to: str  # "" sends no Reply-To
    list_id: str  # "Name <id.example.org>" or just "id.example.org"
    unsubscribe_mailto: str
    message_id_domain: str


def identity_from_settings(settings: Settings) -> MailIdentity:
    """[mail] with its documented fallbacks: publication name, derived list id, From address."""
    mail = settings.mail
    local, _, domain = mail.from_address.rpartition("@")
    return MailIdentity(
        from_address=mail.from_address,
        from_name=mail.from_name or settings.publication.name,
        reply_to=mail.reply_to,
        list_id=mail.list_id or f"{local}.{domain}",
        unsubscribe_mailto=mail.unsubscribe_mailto or mail.from_address,
        message_id_domain=domain)


_PART_HEAD = (b'Content-Type: text/%s; charset="utf-8"\r\n'
              b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")


def _split(doc: str) -> tuple[list[str], list[str]]:
    """Static pieces and the placeholder names between them (len(pieces) == len(names) + 1)."""
    parts = _PLACEHOLDER_RE.split(doc.replace("\r\n", "\n").replace("\r", "\n"))
    return parts[0::2], parts[1::2]


class MessageTemplate:
    """One issue variant, body pre-encoded; render() only substitutes and adds headers."""

    def __init__(self, chunks: list[bytes | str], static: dict[str, bytes],
                 identity: MailIdentity, mailto: str, dkim: DkimSigner | None,
                 default_name: str) -> None:
        self._chunks = chunks  # bytes, or "text:NAME" / "html:NAME" slots
        self._static = static  # encoded header lines, CRLF included
        self._identity = identity
        self._mailto = mailto
        self._dkim = dkim
        self._default_name = default_name

    @classmethod
    def build(cls, *, identity: MailIdentity, subject: str, html: str, text: str,
              dkim: DkimSigner | None = None, default_name: str = "there") -> MessageTemplate:
        """Encode headers and both parts once; HeaderError if the identity is unusable."""
        # Fixed per content, and "=_" never occurs in QP output, so it cannot clash.
        content = f"{subject}\0{text}\0{html}".encode("utf-8", "surrogatepass")
        boundary = "=_nl_" + hashlib.sha256(content).hexdigest()[:28]
        label, lid = identity.from_name, identity.list_id.strip()
        if m := re.fullmatch(r"(.*)<([^<>]*)>\s*", lid, re.S):
            label, lid = m[1], m[2].strip()
        if not _LIST_ID_RE.fullmatch(lid):
            raise HeaderError(f"invalid List-Id {identity.list_id!r}")
        mailto = check_address(identity.unsubscribe_mailto)
        if not _DOMAIN_RE.fullmatch(identity.message_id_domain):
            raise HeaderError(f"invalid Message-ID domain {identity.message_id_domain!r}")
        static = {
            "from": "From:" + _named(identity.from_name, check_address(identity.from_address), 5),
            "subject": encode_header("Subject", subject),
            "mime-version": "MIME-Version: 1.0",
            "content-type": f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"',
            "list-id": "List-Id:" + _named(label, lid, 8),
            "list-unsubscribe-post": "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        }
        if identity.reply_to:
            static["reply-to"] = "Reply-To:" + _named("", check_address(identity.reply_to), 9)
        chunks: list[bytes | str] = [b"--%s\r\n" % boundary.encode() + _PART_HEAD % b"plain"]
        for kind, doc in (("text", text), ("html", html)):
            if kind == "html":
                chunks.append(b"\r\n--%s\r\n" % boundary.encode() + _PART_HEAD % b"html")
            pieces, names = _split(doc)
            for i, piece in enumerate(pieces):
                chunks.append(qp_piece(piece, soft_end=i < len(names)))
                if i < len(names):
                    chunks.append(f"{kind}:{names[i]}")
        chunks.append(b"\r\n--%s--\r\n" % boundary.encode())
        merged: list[bytes | str] = []
        for c in chunks:  # adjacent static bytes joined once, not per recipient
            if merged and isinstance(c, bytes) and isinstance(merged[-1], bytes):
                merged[-1] += c
            else:
                merged.append(c)
        quoted = quote(mailto, safe="@!$'*+-._~")
        return cls(merged, {k: (v + "\r\n").encode("utf-8") for k, v in static.items()},
                   identity, quoted, dkim, default_name)

    def render(self, *, to_address: str, to_name: str, message_id: str, unsubscribe_url: str,
               preferences_url: str, date: datetime) -> WireMessage:
        """The whole message, CRLF line ends, DKIM-signed when the template has a signer."""
        if date.tzinfo is None:
            raise ValueError("date must be timezone-aware")
        if not _MSGID_RE.fullmatch(message_id):
            raise HeaderError(f"invalid Message-ID {message_id!r}")
        unsubscribe_url = _check_url(unsubscribe_url)
        name = safe_header_value(to_name)
        raw = {"UNSUBSCRIBE_URL": unsubscribe_url, "PREFERENCES_URL": _check_url(preferences_url),
               "NAME": name or self._default_name}
        values = {}
        for key, value in raw.items():
            values["text:" + key] = qp_value(value)
            values["html:" + key] = qp_value(html_lib.escape(value, quote=True))
        body = b"".join(c if isinstance(c, bytes) else values[c] for c in self._chunks)
        s = self._static
        unsub = _fold([f"<{unsubscribe_url}>,", f"<mailto:{self._mailto}?subject=unsubscribe>"],
                      len("List-Unsubscribe:"))
        fields = [
            ("from", s["from"]),
            ("to", ("To:" + _named(to_name, check_address(to_address), 3) + "\r\n").encode()),
            ("subject", s["subject"]),
            ("date", _date_field(date.replace(microsecond=0))),
            ("message-id", f"Message-ID: {message_id}\r\n".encode("ascii")),
            *([("reply-to", s["reply-to"])] if "reply-to" in s else []),
            ("list-id", s["list-id"]),
            ("list-unsubscribe", f"List-Unsubscribe:{unsub}\r\n".encode("ascii")),
            ("list-unsubscribe-post", s["list-unsubscribe-post"]),
            ("mime-version", s["mime-version"]),
            ("content-type", s["content-type"]),
        ]
        head = b"".join(line for _, line in fields)
        if self._dkim is not None:
            # Canonical by construction: QP lines never hold repeated or trailing whitespace.
            head = self._dkim.sign_fields(fields, body, body_is_canonical=True) + head
        return WireMessage(b"".join((head, b"\r\n", body)))


def notice_message(*, identity: MailIdentity, to_address: str, to_name: str, subject: str,
                   text: str, message_id: str, date: datetime) -> WireMessage:
    """A one-off plain-text message (a confirmation request): no list headers, since the
    reader is not on the list yet."""
    if not _MSGID_RE.fullmatch(message_id):
        raise HeaderError(f"invalid Message-ID {message_id!r}")
    head = "".join(line + "\r\n" for line in (
        "From:" + _named(identity.from_name, check_address(identity.from_address), 5),
        "To:" + _named(to_name, check_address(to_address), 3),
        encode_header("Subject", subject),
        f"Date: {format_datetime(date)}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: quoted-printable",
    ))
    return WireMessage(head.encode("utf-8") + b"\r\n" + qp_piece(text, soft_end=False)
                       + b"\r\n")
