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
from newsletter.deliver.qp import qp_piece, qp_value
from newsletter.deliver.wire import WireMessage

if TYPE_CHECKING:
    from newsletter.config import Settings
    from newsletter.deliver.dkim import DkimSigner

_PLACEHOLDER_RE = re.compile(r"%%(UNSUBSCRIBE_URL|PREFERENCES_URL|NAME)%%")


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
        if not MSGID_RE.fullmatch(message_id):
            raise HeaderError(f"invalid Message-ID {message_id!r}")
        unsubscribe_url = check_url(unsubscribe_url)
        name = safe_header_value(to_name)
        raw = {"UNSUBSCRIBE_URL": unsubscribe_url, "PREFERENCES_URL": check_url(preferences_url),
               "NAME": name or self._default_name}
        values = {}
        for key, value in raw.items():
            values["text:" + key] = qp_value(value)
            values["html:" + key] = qp_value(html_lib.escape(value, quote=True))
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
    return WireMessage(head.encode("utf-8") + b"\r\n" + qp_piece(text, soft_end=False)
                       + b"\r\n")
