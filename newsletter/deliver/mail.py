"""Every message the service sends, as bytes, headers and all: built once, stamped per recipient."""

from __future__ import annotations

import functools
import hashlib
import html as html_lib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote

from newsletter.deliver.dkim import signer_from_settings
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

ListFields = Literal["unsubscribe", "manage", "id", "none"]
"""The list header fields a message carries (RFC 2369, 2919, 8058):
"unsubscribe": List-Id, List-Unsubscribe and List-Unsubscribe-Post, for mail to a subscriber
(an issue, the link to manage a subscription, the welcome); "manage": List-Id and
List-Unsubscribe without -Post, for a copy whose link is a page to visit, not one a mail
client may POST to for one click (a test copy: its recipient may not be on the list); "id":
List-Id alone, for mail about the list to someone not on it (a confirmation request: there
is nothing to unsubscribe from yet); "none": for mail that is not about the list (a
notification to the editor)."""


@dataclass(frozen=True)
class MailIdentity:
    """Who the messages are from, which list they belong to, and who signs them."""

    from_address: str
    from_name: str
    reply_to: str  # "" sends no Reply-To
    list_id: str  # "Name <id.example.org>" or just "id.example.org"
    unsubscribe_mailto: str
    message_id_domain: str
    # Every message built with this identity is signed with it: a DKIM signature is never
    # something a caller has to remember (an unsigned confirmation fails strict DMARC).
    dkim: DkimSigner | None = field(default=None, repr=False, compare=False)


def identity_from_settings(settings: Settings) -> MailIdentity:
    """[mail] with its documented fallbacks: publication name, derived list id, From address,
    and the DKIM signer when one is configured (ConfigError naming the key if it is unusable)."""
    mail = settings.mail
    local, _, domain = mail.from_address.rpartition("@")
    return MailIdentity(
        from_address=mail.from_address,
        from_name=mail.from_name or settings.publication.name,
        reply_to=mail.reply_to,
        list_id=mail.list_id or f"{local}.{domain}",
        unsubscribe_mailto=mail.unsubscribe_mailto or mail.from_address,
        message_id_domain=domain,
        dkim=signer_from_settings(mail))


_PART_HEAD = (b'Content-Type: text/%s; charset="utf-8"\r\n'
              b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")


def _boundary(hexdigest: str) -> bytes:
    return ("=_nl_" + hexdigest[:28]).encode()


def _multipart(boundary: bytes) -> str:
    return 'Content-Type: multipart/alternative;\r\n boundary="' + boundary.decode() + '"'


def _split(doc: str) -> tuple[list[str], list[str]]:
    """Static pieces and the placeholder names between them (len(pieces) == len(names) + 1)."""
    parts = _PLACEHOLDER_RE.split(doc.replace("\r\n", "\n").replace("\r", "\n"))
    return parts[0::2], parts[1::2]


@dataclass(frozen=True, slots=True)
class Piece:
    """A run of whole lines of one part, encoded once to be joined into many bodies: its
    UTF-8 (for the boundary) and its QP bytes with "kind:NAME" slots."""

    raw: bytes
    chunks: tuple[bytes | str, ...]


def encode_piece(text: str, kind: Literal["text", "html"]) -> Piece:
    """`text` as a Piece of the `kind` part; it must end in a line end unless it ends the part
    (QP encodes line by line, so pieces that end lines join to the encoding of their join)."""
    return Piece(text.encode("utf-8", "surrogatepass"), tuple(_encoded(text, kind, True)))


def join_pieces(pieces: Sequence[Piece]) -> Piece:
    """One Piece of several, as encode_piece would give for their joined text."""
    chunks: list[bytes | str] = []
    for piece in pieces:
        for c in piece.chunks:
            if chunks and isinstance(c, bytes) and isinstance(chunks[-1], bytes):
                chunks[-1] += c
            else:
                chunks.append(c)
    return Piece(b"".join(p.raw for p in pieces), tuple(chunks))


def _encoded(doc: str, kind: str, placeholders: bool) -> list[bytes | str]:
    """One part's body as QP bytes, with "kind:NAME" slots where placeholders are filled."""
    if not placeholders:
        return [qp_piece(doc.replace("\r\n", "\n").replace("\r", "\n"), soft_end=False)]
    pieces, names = _split(doc)
    chunks: list[bytes | str] = []
    for i, piece in enumerate(pieces):
        chunks.append(qp_piece(piece, soft_end=i < len(names)))
        if i < len(names):
            chunks.append(f"{kind}:{names[i]}")
    return chunks


class MessageTemplate:
    """The one builder of every message the service sends: an issue variant, a test copy, a
    confirmation request, a preferences link. Headers and body are encoded once; render()
    only fills the per-recipient values, adds To, Date and Message-ID, and signs."""

    def __init__(self, *, chunks: list[bytes | str], static: dict[str, bytes], mailto: str,
                 dkim: DkimSigner | None, default_name: str, placeholders: bool,
                 unsubscribe: bool, canonical: bool) -> None:
        self._chunks = chunks  # bytes, or "text:NAME" / "html:NAME" slots
        self._static = static  # encoded header lines, CRLF included, in their order
        self._mailto = mailto
        self._dkim = dkim
        self._default_name = default_name
        self._placeholders = placeholders
        self._unsubscribe = unsubscribe  # List-Unsubscribe (per recipient), -Post if static
        self._canonical = canonical  # the body is DKIM relaxed-canonical as built
        self._tail = [(k, v) for k, v in static.items()
                      if k in ("mime-version", "content-type", "content-transfer-encoding")]
        self._subject = b""  # UTF-8, for the boundary of bodies joined by with_body()

    @classmethod
    def build(cls, *, identity: MailIdentity, subject: str, html: str | None, text: str,
              dkim: DkimSigner | None = None, default_name: str = "there",
              list_fields: ListFields = "unsubscribe",
              placeholders: bool = True) -> MessageTemplate:
        """Encode headers and parts once; HeaderError if the identity is unusable.

        html None makes a single text/plain message, else multipart/alternative. Signed by
        `dkim`, else by the identity's signer. placeholders: fill %%NAME%%, %%UNSUBSCRIBE_URL%%
        and %%PREFERENCES_URL%% per recipient; False sends the text exactly as written (it
        already holds its values, and a name in it must never be read as a placeholder).
        """
        static = {
            "from": "From:" + named(identity.from_name, check_address(identity.from_address), 5),
            "subject": encode_header("Subject", subject),
        }
        if not DOMAIN_RE.fullmatch(identity.message_id_domain):
            raise HeaderError(f"invalid Message-ID domain {identity.message_id_domain!r}")
        if identity.reply_to:
            static["reply-to"] = "Reply-To:" + named("", check_address(identity.reply_to), 9)
        mailto = ""
        if list_fields != "none":
            label, lid = identity.from_name, identity.list_id.strip()
            if m := re.fullmatch(r"(.*)<([^<>]*)>\s*", lid, re.S):
                label, lid = m[1], m[2].strip()
            if not LIST_ID_RE.fullmatch(lid):
                raise HeaderError(f"invalid List-Id {identity.list_id!r}")
            static["list-id"] = "List-Id:" + named(label, lid, 8)
        if list_fields in ("unsubscribe", "manage"):
            mailto = quote(check_address(identity.unsubscribe_mailto), safe="@!$'*+-._~")
        if list_fields == "unsubscribe":
            static["list-unsubscribe-post"] = "List-Unsubscribe-Post: List-Unsubscribe=One-Click"
        static["mime-version"] = "MIME-Version: 1.0"
        if html is None:
            static["content-type"] = 'Content-Type: text/plain; charset="utf-8"'
            static["content-transfer-encoding"] = "Content-Transfer-Encoding: quoted-printable"
            chunks = [*_encoded(text, "text", placeholders), b"\r\n"]
        else:
            # Fixed per content, and "=_" never occurs in QP output, so it cannot clash.
            content = f"{subject}\0{text}\0{html}".encode("utf-8", "surrogatepass")
            boundary = _boundary(hashlib.sha256(content).hexdigest())
            static["content-type"] = _multipart(boundary)
            chunks = [b"--%s\r\n" % boundary + _PART_HEAD % b"plain",
                      *_encoded(text, "text", placeholders),
                      b"\r\n--%s\r\n" % boundary + _PART_HEAD % b"html",
                      *_encoded(html, "html", placeholders), b"\r\n--%s--\r\n" % boundary]
        merged: list[bytes | str] = []
        for c in chunks:  # adjacent static bytes joined once, not per recipient
            if merged and isinstance(c, bytes) and isinstance(merged[-1], bytes):
                merged[-1] += c
            else:
                merged.append(c)
        template = cls(chunks=merged, static={k: (v + "\r\n").encode("utf-8")
                                              for k, v in static.items()},
                       mailto=mailto, dkim=dkim or identity.dkim, default_name=default_name,
                       placeholders=placeholders,
                       unsubscribe=list_fields in ("unsubscribe", "manage"),
                       # QP lines never hold repeated or trailing whitespace, and a multipart
                       # body ends in its closing boundary: canonical by construction.
                       canonical=html is not None)
        template._subject = subject.encode("utf-8", "surrogatepass")
        return template

    def with_body(self, *, text: Sequence[Piece], html: Sequence[Piece]) -> MessageTemplate:
        """The same headers and signer around another body, joined from pieces encoded once:
        the bytes build() gives for the pieces' joined text and HTML, at the cost of a join
        (the pieces are shared, not copied). Only for a multipart template with placeholders."""
        if not (self._canonical and self._placeholders):
            raise ValueError("with_body needs a multipart template that fills placeholders")
        digest = hashlib.sha256(self._subject)
        digest.update(b"\0")
        for piece in text:
            digest.update(piece.raw)
        digest.update(b"\0")
        for piece in html:
            digest.update(piece.raw)
        boundary = _boundary(digest.hexdigest())
        chunks: list[bytes | str] = [b"--%s\r\n" % boundary + _PART_HEAD % b"plain"]
        for piece in text:
            chunks += piece.chunks
        chunks.append(b"\r\n--%s\r\n" % boundary + _PART_HEAD % b"html")
        for piece in html:
            chunks += piece.chunks
        chunks.append(b"\r\n--%s--\r\n" % boundary)
        static = {**self._static,
                  "content-type": (_multipart(boundary) + "\r\n").encode("ascii")}
        twin = MessageTemplate(chunks=chunks, static=static, mailto=self._mailto,
                               dkim=self._dkim, default_name=self._default_name,
                               placeholders=True, unsubscribe=self._unsubscribe,
                               canonical=True)
        twin._subject = self._subject
        return twin

    def render(self, *, to_address: str, to_name: str, message_id: str, date: datetime,
               unsubscribe_url: str = "", preferences_url: str = "") -> WireMessage:
        """The whole message, CRLF line ends, DKIM-signed when the template has a signer.
        The URLs are needed when the template fills placeholders or names List-Unsubscribe."""
        if date.tzinfo is None:
            raise ValueError("date must be timezone-aware")
        if not MSGID_RE.fullmatch(message_id):
            raise HeaderError(f"invalid Message-ID {message_id!r}")
        if self._placeholders or self._unsubscribe:
            unsubscribe_url = check_url(unsubscribe_url)
        if self._placeholders:
            name = safe_header_value(to_name)
            raw = {"UNSUBSCRIBE_URL": unsubscribe_url,
                   "PREFERENCES_URL": check_url(preferences_url),
                   "NAME": name or self._default_name}
            values = {}
            for key, value in raw.items():
                values["text:" + key] = qp_value(value)
                values["html:" + key] = qp_value(html_lib.escape(value, quote=True))
            body = b"".join(c if isinstance(c, bytes) else values[c] for c in self._chunks)
        else:
            body = b"".join(c for c in self._chunks if isinstance(c, bytes))
        s = self._static
        fields = [
            ("from", s["from"]),
            ("to", ("To:" + named(to_name, check_address(to_address), 3) + "\r\n").encode()),
            ("subject", s["subject"]),
            ("date", _date_field(date.replace(microsecond=0))),
            ("message-id", f"Message-ID: {message_id}\r\n".encode("ascii")),
            *([("reply-to", s["reply-to"])] if "reply-to" in s else []),
            *([("list-id", s["list-id"])] if "list-id" in s else []),
        ]
        if self._unsubscribe:
            unsub = fold([f"<{unsubscribe_url}>,", f"<mailto:{self._mailto}?subject=unsubscribe>"],
                          len("List-Unsubscribe:"))
            fields.append(("list-unsubscribe", f"List-Unsubscribe:{unsub}\r\n".encode("ascii")))
            if "list-unsubscribe-post" in s:  # one-click: only where the URL takes a POST
                fields.append(("list-unsubscribe-post", s["list-unsubscribe-post"]))
        fields += self._tail
        head = b"".join(line for _, line in fields)
        if self._dkim is not None:
            head = self._dkim.sign_fields(fields, body,
                                          body_is_canonical=self._canonical) + head
        return WireMessage(b"".join((head, b"\r\n", body)))


def notice_message(*, identity: MailIdentity, to_address: str, to_name: str, subject: str,
                   text: str, message_id: str, date: datetime, list_fields: ListFields = "none",
                   unsubscribe_url: str = "", html: str | None = None) -> WireMessage:
    """A message sent once (a confirmation request, a preferences link, a welcome, an editor's
    notification): built, headed and signed by MessageTemplate like every issue, its
    text sent as written. See ListFields for which list fields fit which message."""
    return MessageTemplate.build(
        identity=identity, subject=subject, html=html, text=text, list_fields=list_fields,
        placeholders=False).render(to_address=to_address, to_name=to_name,
                                   message_id=message_id, date=date,
                                   unsubscribe_url=unsubscribe_url)
