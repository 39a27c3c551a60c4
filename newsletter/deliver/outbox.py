"""The embedded transport: each message written atomically as an .eml file in a folder."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from newsletter.deliver.engine import SendResult

if TYPE_CHECKING:
    from newsletter.config import Settings

_MESSAGE_ID_RE = re.compile(rb"(?im)^message-id:[ \t]*(<[^>\r\n]*>)")


class OutboxConnection:
    """Writes `<folder>/<UTC timestamp>-<sha1 of Message-ID>.eml`; readers never see a
    half-written file (temporary name, then rename in the same folder)."""

    pipelining = False  # nothing to announce ahead: each message is one file write

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def send(self, sender: str, recipient: str, message: bytes,
                   then: tuple[str, str] | None = None) -> SendResult:
        head = message.partition(b"\r\n\r\n")[0]
        m = _MESSAGE_ID_RE.search(head)
        digest = hashlib.sha1(m[1] if m else message, usedforsecurity=False).hexdigest()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.folder / f"{stamp}-{digest}.eml"
        # Written inline rather than in a thread: a local write of ~60 KB costs less than
        # the thread hand-off would, and this transport is for development and archiving.
        try:
            # Not "*.eml" while partial: readers globbing the outbox must never see it.
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=self.folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(message)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            return SendResult("deferred", None, f"outbox write failed: {exc.strerror or exc}")
        return SendResult("sent", 250, f"written to {path}")

    async def close(self) -> None:
        """Nothing to release."""


class OutboxPool:
    """Same shape as SmtpPool: connect() gives a connection that writes files."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboxPool:
        return cls(settings.mail.outbox_dir)

    async def connect(self) -> OutboxConnection:
        self.folder.mkdir(parents=True, exist_ok=True)
        return OutboxConnection(self.folder)
