"""Messages built once per issue variant, stamped per recipient as bytes, headers and all."""

from __future__ import annotations

import functools
import hashlib
import html as html_lib
import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

from newsletter.deliver.headers import (
    DOMAIN_RE,
    LIST_ID_RE,
    MSGID_RE,
    HeaderError,
    check_address,
    check_url,
    encode_header,
    fold,
    named,
    safe_header_value,
)

if TYPE_CHECKING:
    from newsletter.config import Settings
    from newsletter.deliver.dkim import DkimSigner

_PLACEHOLDER_RE = re.compile(r"%%(UNSUBSCRIBE_URL|PREFERENCES_URL|NAME)%%")


_QP_BYTE = [chr(b) if 33 <= b <= 126 and b != 61 else f"={b:02X}" for b in range(256)]
# Values are escaped more than QP needs: spaces and dots too, so no encoded line of a value
# can start with "." (SMTP dot-stuffing) or "From " or end in whitespace.
_VALUE_UNSAFE_RE = re.compile(rb"[^!-\-/-<>-~]+")
_VALUE_ESC = [b"=%02X" % b for b in range(256)]
_PRINTABLE_RE = re.compile(rb"[!-~]*")  # no space: in it, only "." and "=" need escaping


def _qp_tokens(data: bytes) -> list[str]:
    toks = [_QP_BYTE[b] for b in data]
    # A literal space only where a printable character follows: no trailing or repeated
    # whitespace, so the body is already in DKIM relaxed canonical form.
    for i, b in enumerate(data):
        if b == 32 and i + 1 < len(data) and data[i + 1] not in (32, 9):
            toks[i] = " "
    return toks


def _qp_lines(text: str) -> list[str]:
    """One logical line as encoded lines of ≤ 75 columns (the soft-break "=" makes 76)."""
    toks = _qp_tokens(text.encode("utf-8"))
    lines: list[str] = []
    cur: list[str] = []
    col = 0
    for i, tok in enumerate(toks):
        if col + len(tok) > 75:
            carry = cur.pop() if cur and cur[-1] == " " else None  # no space before "="
            lines.append("".join(cur))
            cur, col = ([" "], 1) if carry else ([], 0)
        if col == 0 and (tok == "." or (tok == "F" and toks[i + 1:i + 5] == ["r", "o", "m", " "])):
            tok = f"={ord(tok):02X}"  # dot-stuffing and mbox "From " mangling cannot bite
        cur.append(tok)
        col += len(tok)
    lines.append("".join(cur))
    return lines


def _qp_piece(text: str, soft_end: bool) -> bytes:
    """Static text to QP with CRLF line ends; ends with a soft break when a value follows
    mid-line, so the value starts at column 0 whatever its length."""
    segs = text.split("\n")
    out = "\r\n".join("=\r\n".join(_qp_lines(seg)) for seg in segs)
    if soft_end and segs[-1]:
        out += "=\r\n"
    return out.encode("ascii")


@functools.lru_cache(maxsize=4)
def _date_field(date: datetime) -> bytes:
    """The Date field; within one second every message carries the same one, so it is
    formatted once (email.utils' formatting costs more than the rest of the headers)."""
    return f"Date: {format_datetime(date)}\r\n".encode("ascii")


def _qp_value(value: str) -> bytes:
    """A per-recipient value as whole encoded lines, each ending in a soft break."""
    if not value:
        return b""
    data = value.encode("utf-8")
    if _PRINTABLE_RE.fullmatch(data):
        # A URL or a plain name: "=" and "." are the only bytes to escape, and two C-level
        # replaces do it in a fifth of the time of the general substitution.
        data = data.replace(b"=", b"=3D").replace(b".", b"=2E")
    else:
        data = _VALUE_UNSAFE_RE.sub(lambda m: b"".join(_VALUE_ESC[b] for b in m[0]), data)
    if len(data) <= 75:
        return data + b"=\r\n"
    out = []
    i = 0
    while i < len(data):
        j = min(i + 75, len(data))
        eq = data.rfind(b"=", j - 2, j)
        if eq != -1 and j < len(data):
            j = eq  # never split an "=XX" escape across lines
        out.append(data[i:j] + b"=\r\n")
        i = j
    return b"".join(out)


class WireMessage(bytes):
    """Bytes fit for SMTP DATA as they are: CRLF line ends only and no line starting with "."
    (QP escapes it). Senders may skip line-ending and dot-stuffing passes for these."""

    __slots__ = ()


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
        if not LIST_ID_RE.fullmatch(lid):
            raise HeaderError(f"invalid List-Id {identity.list_id!r}")
        mailto = check_address(identity.unsubscribe_mailto)
        if not DOMAIN_RE.fullmatch(identity.message_id_domain):
            raise HeaderError(f"invalid Message-ID domain {identity.message_id_domain!r}")
        static = {
            "from": "From:" + named(identity.from_name, check_address(identity.from_address), 5),
            "subject": encode_header("Subject", subject),
            "mime-version": "MIME-Version: 1.0",
            "content-type": f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"',
            "list-id": "List-Id:" + named(label, lid, 8),
            "list-unsubscribe-post": "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        }
        if identity.reply_to:
            static["reply-to"] = "Reply-To:" + named("", check_address(identity.reply_to), 9)
        chunks: list[bytes | str] = [b"--%s\r\n" % boundary.encode() + _PART_HEAD % b"plain"]
        for kind, doc in (("text", text), ("html", html)):
            if kind == "html":
                chunks.append(b"\r\n--%s\r\n" % boundary.encode() + _PART_HEAD % b"html")
            pieces, names = _split(doc)
            for i, piece in enumerate(pieces):
                chunks.append(_qp_piece(piece, soft_end=i < len(names)))
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
        if not MSGID_RE.fullmatch(message_id):
            raise HeaderError(f"invalid Message-ID {message_id!r}")
        unsubscribe_url = check_url(unsubscribe_url)
        name = safe_header_value(to_name)
        raw = {"UNSUBSCRIBE_URL": unsubscribe_url, "PREFERENCES_URL": check_url(preferences_url),
               "NAME": name or self._default_name}
        values = {}
        for key, value in raw.items():
            values["text:" + key] = _qp_value(value)
            values["html:" + key] = _qp_value(html_lib.escape(value, quote=True))
        body = b"".join(c if isinstance(c, bytes) else values[c] for c in self._chunks)
        s = self._static
        unsub = fold([f"<{unsubscribe_url}>,", f"<mailto:{self._mailto}?subject=unsubscribe>"],
                      len("List-Unsubscribe:"))
        fields = [
            ("from", s["from"]),
            ("to", ("To:" + named(to_name, check_address(to_address), 3) + "\r\n").encode()),
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
    if not MSGID_RE.fullmatch(message_id):
        raise HeaderError(f"invalid Message-ID {message_id!r}")
    head = "".join(line + "\r\n" for line in (
        "From:" + named(identity.from_name, check_address(identity.from_address), 5),
        "To:" + named(to_name, check_address(to_address), 3),
        encode_header("Subject", subject),
        f"Date: {format_datetime(date)}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: quoted-printable",
    ))
    return WireMessage(head.encode("utf-8") + b"\r\n" + _qp_piece(text, soft_end=False)
                       + b"\r\n")
