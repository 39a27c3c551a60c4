"""HMAC-SHA256 signed, expiring, purpose-bound tokens: subscriber links, dashboard sessions."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from newsletter import log
from newsletter.config import Settings
from newsletter.errors import ConfigError

# Every kind of signed value the service makes; a token of one is refused as another.
PURPOSES = ("confirm", "unsubscribe", "preferences", "preferences-form",
            "admin-session", "admin-csrf", "admin-flash", "verp", "draft-preview",
            "issue-editor")
MIN_SECRET_CHARS = 16
_MAC_BYTES = 32
_SEP = "\n"  # cannot occur in a purpose or subject (checked), so the payload parses one way
_DOMAIN = b"newsletter-token-v1\x00"  # keeps these MACs apart from any other use of the key
# Clocks of two servers sharing a key disagree a little; beyond this a token is not yet valid.
_CLOCK_SKEW = timedelta(minutes=5)

Extra = str | Callable[[str, str], str | None]


class TokenError(ValueError):
    """A token that does not verify; `reason` is one of the short phrases below, for logs."""

    REASONS = ("malformed", "bad signature", "expired", "wrong purpose")

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text.isascii():
        raise TokenError("malformed")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed") from None
    # The decoder ignores unused trailing bits and stray characters: insist on the one
    # canonical spelling so that every change to a token's text is a different token.
    if _b64encode(data) != text:
        raise TokenError("malformed")
    return data


def _mac(secret: bytes, payload: bytes, extra: str) -> bytes:
    message = _DOMAIN + payload + b"\x00" + extra.encode("utf-8")
    return hmac.digest(secret, message, "sha256")  # one-shot: OpenSSL without an HMAC object


def _check_part(what: str, value: str) -> None:
    if not value or _SEP in value:
        raise ValueError(f"token {what} must be non-empty and on one line: {value!r}")


def sign(secret: bytes, purpose: str, subject: str, now: datetime, *, extra: str = "") -> str:
    """A URL-safe token for `subject`; `extra` is covered by the MAC but not carried in it.

    Pass e.g. the subscriber's email_key as `extra` so the token dies when the address changes.
    """
    return signer(secret, purpose, now)(subject, extra)


def signer(secret: bytes, purpose: str, now: datetime) -> Callable[[str, str], str]:
    """sign() for many subjects with one purpose and time, (subject, extra) → token: the
    delivery loop signs two links per message, so the constant parts are prepared once."""
    _check_part("purpose", purpose)
    head = (purpose + _SEP).encode("utf-8")
    tail = (_SEP + str(int(now.timestamp()))).encode("utf-8")

    def sign_one(subject: str, extra: str = "") -> str:
        _check_part("subject", subject)
        payload = head + subject.encode("utf-8") + tail
        return _b64encode(payload + _mac(secret, payload, extra))

    return sign_one


def mac_of(secret: bytes, purpose: str, subject: str, now: datetime) -> bytes:
    """The MAC sign() puts in a token, alone: for a short code carried elsewhere (a VERP
    return path), where only a prefix of it fits and no expiry is needed."""
    _check_part("purpose", purpose)
    _check_part("subject", subject)
    payload = f"{purpose}{_SEP}{subject}{_SEP}{int(now.timestamp())}".encode()
    return _mac(secret, payload, "")


def verify(secret: bytes, token: str, purpose: str, max_age: timedelta, now: datetime, *,
           extra: Extra = "") -> str:
    """The subject of a valid token; raise TokenError otherwise.

    `extra` may be a function of the token's (not yet trusted) purpose and subject that
    returns the value signed in, e.g. the subscriber's current email_key; None means no such
    subject exists.
    """
    if not isinstance(token, str) or len(token) > 1024:
        raise TokenError("malformed")
    raw = _b64decode(token)
    if len(raw) <= _MAC_BYTES:
        raise TokenError("malformed")
    payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    try:
        got_purpose, subject, issued_text = payload.decode("utf-8").split(_SEP)
        issued = int(issued_text)
    except ValueError:  # bad UTF-8, wrong number of parts or not a number
        raise TokenError("malformed") from None
    bound = extra(got_purpose, subject) if callable(extra) else extra
    if bound is None:
        raise TokenError("bad signature")  # nobody it could belong to: forged or removed
    if not hmac.compare_digest(mac, _mac(secret, payload, bound)):
        raise TokenError("bad signature")
    # Only a genuine token gets a more specific answer than "bad signature".
    if got_purpose != purpose:
        raise TokenError("wrong purpose")
    age = now.timestamp() - issued
    if age > max_age.total_seconds() or age < -_CLOCK_SKEW.total_seconds():
        raise TokenError("expired")
    return subject


def issued_at(token: str) -> int | None:
    """The issue time (Unix seconds) written in a token, unverified; for diagnostics only."""
    try:
        return int(_b64decode(token)[:-_MAC_BYTES].decode("utf-8").split(_SEP)[2])
    except (TokenError, ValueError, IndexError):
        return None


def _key_file(settings: Settings) -> Path:
    url = settings.storage.database_url
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
    if not path or path.startswith(":memory:"):
        raise ConfigError("secrets.secret_key: not set, and the database is not an SQLite "
                          "file to keep a generated key beside; set "
                          "NEWSLETTER_SECRETS_SECRET_KEY (e.g. `openssl rand -hex 32`)")
    return Path(path).parent / "secret_key"


def _read_key_file(path: Path) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 32:
        raise ConfigError(f"{path}: expected 64 hex digits (a generated secret key); delete "
                          f"it to generate a new one (every emailed link stops working)")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.event("secret_key_permissions", level=logging.WARNING, path=path,
                  hint="readable by other users: chmod 600")
    return key


def load_or_create_secret(settings: Settings) -> bytes:
    """The token key: [secrets] secret_key if set, else var/secret_key beside the database.

    The generated file is published with a hard link so that two processes starting at
    once agree on one key instead of each writing its own.
    """
    configured = settings.secrets.secret_key
    if configured:
        if len(configured) < MIN_SECRET_CHARS:
            raise ConfigError(f"secrets.secret_key: expected at least {MIN_SECRET_CHARS} "
                              f"characters (e.g. `openssl rand -hex 32`)")
        return configured.encode("utf-8")
    path = _key_file(settings)
    if path.exists():
        return _read_key_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".secret_key.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            log.event("secret_key_created", path=path)
        except FileExistsError:
            pass  # another process won the race: use its key
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key_file(path)
