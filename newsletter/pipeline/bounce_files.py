"""Bounce messages from files: one message, an mbox, a Maildir, or standard input."""

from __future__ import annotations

import mailbox
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from newsletter import log
from newsletter.config import Settings
from newsletter.errors import DatabaseError, NewsletterError
from newsletter.pipeline.bounces import Ingestor, IngestSummary
from newsletter.store.database import Store

# Postfix's local(8) puts the envelope recipient here for an alias command
# (`bounces: "|newsletter bounces ingest -"`): the VERP address even when no header has it.
# (pipe(8) sets no such variable; its D and O flags write it into the headers instead.)
ENVELOPE_VARIABLES = ("ORIGINAL_RECIPIENT", "RECIPIENT")
FILE_BATCH = 200  # reports recorded per transaction when reading files


class Unreadable(Exception):
    """A path that is not a message, an mbox or a Maildir, or cannot be read."""


def kind_of(path: Path) -> str:
    """"maildir", "mbox" or "message" (one message in a file)."""
    if path.is_dir():
        if all((path / sub).is_dir() for sub in ("cur", "new")):
            return "maildir"
        raise Unreadable(f"{path}: a folder that is not a Maildir (no cur/ and new/ inside)")
    try:
        with path.open("rb") as f:
            head = f.read(5)
    except OSError as exc:
        raise Unreadable(f"{path}: cannot read: {exc.strerror or exc}") from None
    return "mbox" if head == b"From " else "message"


def _read_capped(f: BinaryIO | Any, limit: int) -> bytes:
    """At most limit + 1 bytes: enough to know a message is too large without holding it."""
    return f.read(limit + 1)


def messages(path: Path, limit: int) -> Iterator[tuple[str, bytes]]:
    """(where, raw bytes) of each message at `path`; a message over `limit` comes back cut
    at limit + 1 bytes, which the ingestor refuses by size."""
    kind = kind_of(path)
    if kind == "message":
        with path.open("rb") as f:
            yield str(path), _read_capped(f, limit)
        return
    box: mailbox.Mailbox[mailbox.Message]
    box = mailbox.Maildir(path, factory=None, create=False) if kind == "maildir" \
        else mailbox.mbox(path, factory=None, create=False)
    try:
        for key in sorted(box.iterkeys()) if kind == "maildir" else box.iterkeys():
            try:
                with box.get_file(key) as f:
                    raw = _read_capped(f, limit)
            except (OSError, KeyError) as exc:  # removed by another reader meanwhile
                log.event("bounces.unreadable", level=30, where=f"{path} {key}",
                          error=str(exc))
                continue
            yield f"{path} {'message' if kind == 'maildir' else 'mbox message'} {key}", raw
    finally:
        box.close()


def ingest_paths(settings: Settings, store: Store, paths: list[str], *,
                 stdin: BinaryIO | None = None,
                 environ: dict[str, str] | None = None) -> tuple[IngestSummary, list[str]]:
    """Ingest every message at every path ('-': one message from `stdin`). Returns the
    summary and one line per path that could not be read; the others are read all the same."""
    try:
        return _ingest_paths(settings, store, paths, stdin, environ)
    except NewsletterError:
        raise
    except Exception as exc:  # the store went away mid-run: what was recorded stays
        raise DatabaseError(f"bounces not recorded: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}; nothing is lost, run the "
                            f"ingestion again") from None


def _ingest_paths(settings: Settings, store: Store, paths: list[str], stdin: BinaryIO | None,
                  environ: dict[str, str] | None) -> tuple[IngestSummary, list[str]]:
    ingestor = Ingestor(settings, store, batch=FILE_BATCH)
    limit = settings.bounces.max_message_bytes
    errors: list[str] = []
    env = dict(os.environ if environ is None else environ)
    for name in paths:
        if name == "-":
            if stdin is None:
                errors.append("-: no standard input")
                continue
            envelope = next((env[v] for v in ENVELOPE_VARIABLES if env.get(v)), None)
            ingestor.message(_read_capped(stdin, limit), source="stdin",
                             where="standard input", envelope_to=envelope)
            continue
        path = Path(name)
        if not path.exists():
            errors.append(f"{name}: no such file or folder")
            continue
        try:
            for where, raw in messages(path, limit):
                ingestor.message(raw, source="file", where=where)
        except Unreadable as exc:
            errors.append(str(exc))
        except (OSError, mailbox.Error) as exc:
            errors.append(f"{name}: cannot read: {exc}")
    return ingestor.finish(), errors
