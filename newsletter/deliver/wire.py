"""Message bytes as SMTP DATA needs them: CRLF line ends only, dot-stuffed (RFC 5321)."""

from __future__ import annotations

import re

# CRLF first, so that it stays one line end; then a CR or an LF on its own.
_LINE_END = re.compile(rb"\r\n|\r|\n")


class WireMessage(bytes):
    """Bytes fit for SMTP DATA as they are: CRLF line ends only and no line starting with "."
    (mail.py QP-escapes it). Senders may skip line-ending and dot-stuffing passes for these."""

    __slots__ = ()


def crlf(data: bytes) -> bytes:
    """Every bare CR and bare LF made a CRLF (RFC 5321 §2.3.8: servers may reject them)."""
    return _LINE_END.sub(b"\r\n", data)


def dot_stuffed(message: bytes) -> bytes:
    """CRLF-only, dot-stuffed (RFC 5321 §4.5.2), ending in CRLF, ready for "." CRLF."""
    if isinstance(message, WireMessage):
        return message  # built that way (mail.py): skip three scans of ~60 KB per message
    n = message.count(b"\r\n")
    if n != message.count(b"\n") or n != message.count(b"\r"):
        message = crlf(message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    message = message.replace(b"\r\n.", b"\r\n..")
    return b"." + message if message.startswith(b".") else message
