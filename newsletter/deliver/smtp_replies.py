"""SMTP replies read in order from a session aiosmtplib set up, so commands can be pipelined."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from aiosmtplib.errors import SMTPReadTimeoutError, SMTPResponseException, SMTPServerDisconnected

_MAX_LINE = 2048  # RFC 5321 allows 512; a longer "line" is not SMTP
_MAX_BUFFER = 1 << 16


class Reply(NamedTuple):
    code: int
    message: str


class ReplyReader(asyncio.Protocol):
    """Takes over the transport once EHLO, STARTTLS and AUTH are done (aiosmtplib's part).

    aiosmtplib reads one reply per command written and drops anything else that arrives, so
    it cannot pipeline (RFC 2920). This reader queues every complete reply in order, so a
    message's data, its final dot and the next message's MAIL, RCPT and DATA go out in one
    write and their four replies are read together: one round trip per message, not four.

    `scrub` cleans each reply's text before anything else sees it (credentials a relay may
    echo), so no later step can cut a secret in half and keep the rest.
    """

    def __init__(self, transport: asyncio.Transport,
                 scrub: Callable[[str], str] = lambda text: text) -> None:
        self.transport = transport
        self._scrub = scrub
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # the lines so far of a multi-line reply
        self._replies: deque[Reply] = deque()
        self._want = 0
        self._waiter: asyncio.Future[None] | None = None
        self.error: SMTPServerDisconnected | SMTPResponseException | None = None
        transport.set_protocol(self)

    @property
    def usable(self) -> bool:
        return self.error is None and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if not self.usable:
            raise self.error or SMTPServerDisconnected("connection already closed")
        self.transport.write(data)

    async def read(self, count: int, timeout: float) -> list[Reply]:
        """The next `count` replies; fewer if the session ended first (self.error says why).
        Raises SMTPReadTimeoutError when they do not come within `timeout` seconds."""
        if len(self._replies) < count and self.error is None:
            self._want = count
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                raise SMTPReadTimeoutError("timed out waiting for the server's reply") from None
            finally:
                self._waiter = None
        return [self._replies.popleft() for _ in range(min(count, len(self._replies)))]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end + 1])
            del self._buffer[:end + 1]
            code = line[:3]
            if len(line) > _MAX_LINE or not code.isdigit() or line[3:4] not in b" -\r\n":
                shown = self._scrub(line.decode("utf-8", "replace"))[:80]  # cut after scrubbing
                self._fail(SMTPResponseException(-1, "malformed reply: " + shown))
                return
            self._lines.append(line[4:].strip())
            if line[3:4] != b"-":  # the last line of this reply
                text = b"\n".join(self._lines).decode("utf-8", "replace")
                self._replies.append(Reply(int(code), self._scrub(text)))
                self._lines = []
        if len(self._buffer) > _MAX_BUFFER:
            self._fail(SMTPResponseException(-1, "reply line too long"))
            return
        self._wake()

    def eof_received(self) -> bool:
        self._lost("the server closed the connection")
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(f"connection lost: {exc}" if exc else "connection closed")

    def _lost(self, why: str) -> None:
        if self.error is None:
            self.error = SMTPServerDisconnected(why)
        self._wake()

    def _fail(self, exc: SMTPResponseException) -> None:
        self.error = exc
        self.transport.abort()  # the stream is out of step: nothing more from it is trusted
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done() and (
                len(self._replies) >= self._want or self.error is not None):
            waiter.set_result(None)
