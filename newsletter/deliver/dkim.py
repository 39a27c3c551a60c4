"""DKIM signatures (rsa-sha256, relaxed/relaxed) signed with OpenSSL through cryptography."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from newsletter.errors import ConfigError

if TYPE_CHECKING:
    from newsletter.config import Mail

# Content-Transfer-Encoding is present only on single-part messages (the notices): signed so
# that the body's bytes cannot be made to read differently.
DEFAULT_HEADERS = ("from", "to", "subject", "date", "message-id", "reply-to", "list-id",
                   "list-unsubscribe", "list-unsubscribe-post", "mime-version", "content-type",
                   "content-transfer-encoding")
_WSP_RE = re.compile(rb"[ \t]+")
_TAG_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_FIELD_NAME_RE = re.compile(rb"[!-9;-~]+")


def relaxed_header(line: bytes) -> bytes:
    """RFC 6376 §3.4.2: lower-case name, unfold, runs of WSP to one SP, no WSP at the ends of
    the value or around the colon; ends with CRLF."""
    name, _, value = line.partition(b":")
    value = _WSP_RE.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4 for a CRLF body: WSP runs to one SP, none at line ends, no empty lines
    at the end, a final CRLF when anything is left."""
    if (body.endswith(b"\r\n") and not body.endswith(b"\r\n\r\n") and body != b"\r\n"
            and b"\t" not in body and b"  " not in body and b" \r\n" not in body):
        return body  # already canonical (mail.py's QP output is): skip three 60 KB rewrites
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    body = _WSP_RE.sub(b" ", body).replace(b" \r\n", b"\r\n")
    while body.endswith(b"\r\n\r\n"):
        body = body[:-2]
    return b"" if body == b"\r\n" else body


def split_fields(head: bytes) -> list[tuple[str, bytes]]:
    """(lower-case name, raw field with its folded lines and final CRLF), in order."""
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            folded, raw = fields[-1]
            fields[-1] = (folded, raw + line + b"\r\n")
            continue
        name = line.partition(b":")[0].rstrip(b" \t")
        if not _FIELD_NAME_RE.fullmatch(name):
            raise ValueError(f"not a header field: {line[:40]!r}")
        fields.append((name.decode("ascii").lower(), line + b"\r\n"))
    return fields


class DkimSigner:
    """Signs each message in ~0.3 ms: one SHA-256 of the body, one OpenSSL RSA signature."""

    def __init__(self, selector: str, domain: str, private_key_pem: bytes,
                 headers: Sequence[str] = DEFAULT_HEADERS, *,
                 clock: Callable[[], float] = time.time) -> None:
        if not _TAG_RE.fullmatch(selector) or not _TAG_RE.fullmatch(domain):
            raise ValueError(f"invalid DKIM selector or domain: {selector!r}, {domain!r}")
        key = serialization.load_pem_private_key(private_key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the DKIM key must be an RSA private key")
        if key.key_size < 1024:  # receivers ignore shorter keys (RFC 8301)
            raise ValueError(f"the DKIM key has {key.key_size} bits; at least 1024 are needed")
        names = [h.strip().lower() for h in headers]
        if "from" not in names:
            raise ValueError("DKIM must sign the From header (RFC 6376 §5.4)")
        self.selector, self.domain, self._key, self._names = selector, domain, key, names
        self._clock = clock

    def public_record(self) -> str:
        """The TXT record to publish at <selector>._domainkey.<domain>."""
        der = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")

    def sign(self, message: bytes) -> bytes:
        """The `DKIM-Signature:` field (CRLF-terminated) to put first in a CRLF message."""
        head, sep, body = message.partition(b"\r\n\r\n")
        if not sep:
            head, body = message, b""
        return self.sign_fields(split_fields(head + b"\r\n"), body)

    def sign_fields(self, fields: Sequence[tuple[str, bytes]], body: bytes, *,
                    body_is_canonical: bool = False) -> bytes:
        """Like sign() for a message already split: (lower-case name, raw field) pairs.

        body_is_canonical: the caller guarantees relaxed_body(body) == body (mail.py's QP
        output does), which saves scanning the body again per message.
        """
        canonical = body if body_is_canonical else relaxed_body(body)
        bh = base64.b64encode(hashlib.sha256(canonical).digest()).decode("ascii")
        # RFC 6376 §5.4.2: a name listed once signs the last field of that name.
        last: dict[str, bytes] = {}
        for name, raw in fields:
            last[name] = raw
        signed = [n for n in self._names if n in last]
        if "from" not in signed:
            raise ValueError("the message has no From header to sign")
        tags = ["v=1;", "a=rsa-sha256;", "c=relaxed/relaxed;", f"d={self.domain};",
                f"s={self.selector};", f"t={int(self._clock())};", *_fold_h(signed),
                f"bh={bh};", "b="]
        header = _fold_tags("DKIM-Signature:", tags)
        data = b"".join(relaxed_header(last[n]) for n in signed)
        # The signature field itself, b= empty, canonicalised, without its final CRLF.
        data += relaxed_header(header.encode("ascii"))[:-2]
        sig = self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        b = base64.b64encode(sig).decode("ascii")
        # Folding inside b= is safe: verifiers delete the value and its whitespace.
        col = len(header) - header.rfind("\n") - 1
        first = max(0, 76 - col)
        rest = [b[i:i + 76] for i in range(first, len(b), 76)]
        return (header + b[:first] + "".join("\r\n " + r for r in rest) + "\r\n").encode("ascii")


def _fold_h(names: list[str]) -> list[str]:
    """h= split into tokens that may be folded after a colon (FWS is allowed there)."""
    parts = [n + ":" for n in names]
    parts[-1] = parts[-1][:-1] + ";"
    parts[0] = "h=" + parts[0]
    return parts


def _fold_tags(prefix: str, tokens: list[str]) -> str:
    out, col = prefix, len(prefix)
    for i, tok in enumerate(tokens):
        glue = "" if i and tokens[i - 1].endswith(":") else " "
        if col + len(glue) + len(tok) > 78:
            out += "\r\n" + (glue or " ")
            col = 1
        else:
            out += glue
            col += len(glue)
        out += tok
        col += len(tok)
    return out


def signer_from_settings(mail: Mail) -> DkimSigner | None:
    """[mail] dkim_* as a signer (domain defaults to the From domain); None when
    dkim_key_path is empty; ConfigError naming the key when it cannot be used."""
    if not mail.dkim_key_path:
        return None
    domain = mail.dkim_domain or mail.from_address.rpartition("@")[2]
    if not mail.dkim_selector:
        raise ConfigError("mail.dkim_selector: required when mail.dkim_key_path is set")
    try:
        pem = Path(mail.dkim_key_path).read_bytes()
        return DkimSigner(mail.dkim_selector, domain, pem)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"mail.dkim_key_path: {mail.dkim_key_path}: {exc}") from None
