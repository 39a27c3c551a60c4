"""The bounce mailbox, polled over IMAP: each message recorded first, marked or moved after."""

# Order matters for "a crash reprocesses, never loses": a message is flagged \Seen (or moved
# to [bounces] imap_move_to) only once what it reported is committed to the store, and the
# store records each report once (by Message-ID), so reading it again changes nothing.

from __future__ import annotations

import contextlib
import imaplib
import re
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from newsletter import log
from newsletter.config import Settings
from newsletter.errors import NewsletterError
from newsletter.pipeline.bounces import Ingestor, IngestSummary
from newsletter.store.database import Store

_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
TIMEOUT = 60.0


@dataclass(frozen=True)
class Mailbox:
    """[bounces] imap_url, taken apart."""

    secure: bool
    host: str
    port: int
    user: str
    folder: str

    @classmethod
    def from_url(cls, url: str) -> Mailbox:
        parts = urlsplit(url)
        secure = parts.scheme == "imaps"
        folder = unquote(parts.path.strip("/")) or "INBOX"
        return cls(secure, parts.hostname or "", parts.port or (993 if secure else 143),
                   unquote(parts.username or ""), folder)


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check(result: tuple[str, list[Any]], doing: str) -> list[Any]:
    status, data = result
    if status != "OK":
        raise NewsletterError(f"bounce mailbox: {doing} failed: {data!r:.200}")
    return data


def connect(settings: Settings) -> tuple[imaplib.IMAP4, Mailbox]:
    box = Mailbox.from_url(settings.bounces.imap_url)
    where = f"bounce mailbox {box.host}:{box.port}"
    conn: imaplib.IMAP4
    try:
        if box.secure:
            conn = imaplib.IMAP4_SSL(box.host, box.port, ssl_context=ssl.create_default_context(),
                                     timeout=TIMEOUT)
        else:
            conn = imaplib.IMAP4(box.host, box.port, timeout=TIMEOUT)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise NewsletterError(f"{where}: cannot connect: {_words(exc)}") from None
    try:
        conn.login(box.user, settings.bounces.imap_password)
    except (OSError, imaplib.IMAP4.error) as exc:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            conn.shutdown()
        # Never the password: imaplib's LOGIN error repeats only the server's words.
        raise NewsletterError(f"{where}: cannot log in as {box.user}: {_words(exc)}") from None
    return conn, box


def _words(exc: BaseException) -> str:
    """The server's own words, not the repr of the bytes imaplib keeps them in."""
    first = exc.args[0] if exc.args else exc
    text = first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)
    return " ".join(text.split())[:300] or type(exc).__name__


def poll_mailbox(settings: Settings, store: Store) -> IngestSummary:
    """Read unprocessed messages (at most [bounces] imap_batch), record each, then mark it."""
    ingestor = Ingestor(settings, store)
    conn, box = connect(settings)
    b = settings.bounces
    try:
        _check(conn.select(_quote(box.folder)), f"selecting {box.folder}")
        # Moving empties the folder as it goes: every message there is unprocessed.
        query = "ALL" if b.imap_move_to else "UNSEEN"
        found = _check(conn.uid("SEARCH", query), "searching")
        first = found[0] if found and isinstance(found[0], bytes) else b""
        uids = first.split()
        moving = bool(b.imap_move_to)
        can_move = moving and "MOVE" in conn.capabilities
        for uid in uids[:b.imap_batch]:
            _one(conn, ingestor, uid.decode(), b.max_message_bytes, box)
            _mark(conn, uid.decode(), b.imap_move_to if moving else "", can_move)
        if moving and not can_move and uids:
            conn.expunge()
        if len(uids) > b.imap_batch:
            log.event("bounces.imap_more", waiting=len(uids) - b.imap_batch,
                      action="read at the next poll")
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):  # over either way
            conn.logout()
    summary = ingestor.finish()
    log.event("bounces.polled", mailbox=f"{box.host}/{box.folder}", summary=summary.line())
    return summary


def _one(conn: imaplib.IMAP4, ingestor: Ingestor, uid: str, limit: int, box: Mailbox) -> None:
    where = f"imap {box.host}/{box.folder} uid {uid}"
    data = _check(conn.uid("FETCH", uid, "(RFC822.SIZE)"), f"sizing uid {uid}")
    size = _SIZE.search(data[0] if isinstance(data[0], bytes) else b"")
    if size and int(size[1]) > limit:
        ingestor.too_large(where, int(size[1]))
        return
    data = _check(conn.uid("FETCH", uid, "(BODY.PEEK[])"), f"fetching uid {uid}")
    raw = next((part[1] for part in data if isinstance(part, tuple) and len(part) == 2), None)
    if not isinstance(raw, bytes):
        log.event("bounces.unreadable", level=30, where=where, error="no message body returned")
        return
    ingestor.message(raw, source="imap", where=where)


def _mark(conn: imaplib.IMAP4, uid: str, move_to: str, can_move: bool) -> None:
    if not move_to:
        _check(conn.uid("STORE", uid, "+FLAGS.SILENT", r"(\Seen)"), f"flagging uid {uid}")
    elif can_move:
        _check(conn.uid("MOVE", uid, _quote(move_to)), f"moving uid {uid}")
    else:
        _check(conn.uid("COPY", uid, _quote(move_to)), f"copying uid {uid}")
        _check(conn.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)"), f"deleting uid {uid}")
