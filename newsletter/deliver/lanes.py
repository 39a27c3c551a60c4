"""What the engine sends through: a transport's pool and connections, and each task's lane."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from newsletter.models import Claimed


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a transport says about one message; the ledger turns it into a row status."""

    status: Literal["sent", "deferred", "failed", "unknown"]
    code: int | None
    reply: str
    close: bool = False  # the connection is no longer usable (421, dropped, timed out)


class Connection(Protocol):
    # True when send() honours `then`: the envelope of the next send() on this connection,
    # announced ahead of time; a connection left with one announced is closed unused.
    pipelining: bool

    async def send(self, sender: str, recipient: str, message: bytes,
                   then: tuple[str, str] | None = None) -> SendResult: ...

    async def close(self) -> None: ...


class Pool(Protocol):
    """Opens connections; raising here means no message can go out right now."""

    async def connect(self) -> Connection: ...


@dataclass(slots=True)
class Lane:
    """One connection task: its connection and, taken early, the next row it will send,
    whose envelope may already be announced on that connection."""

    conn: Connection | None = None
    next: Claimed | None = None
    last: bool = False  # the queue's end marker was taken early: stop after `next`
    announced: int | None = None  # delivery id whose envelope the connection sent ahead

    async def drop(self) -> None:
        if self.conn is not None:
            await _close(self.conn)
        self.conn, self.announced = None, None

    async def unannounce(self, row: Claimed) -> None:
        """`row` will not be sent after all: a connection that announced it is closed (the
        server may be waiting for its data, and only closing ends that without a message)."""
        if self.announced == row.delivery_id:
            await self.drop()


async def _close(conn: Connection) -> None:
    with contextlib.suppress(Exception):  # a connection that fails to close is gone anyway
        await conn.close()
