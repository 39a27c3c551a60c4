"""Group commit: delivery outcomes from every connection task recorded together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from newsletter.deliver.outage import Outage
    from newsletter.models import Settle


class Recorder:
    """Group commit: results from all tasks go to the database together, and each task
    waits for its own commit before sending again, so at most one message per connection
    is ever sent but unrecorded (the bound on duplicates after a crash). With an `outage`,
    a commit the database was not there for is tried again until it is: the outcomes wait
    in memory, and their tasks (which send nothing meanwhile) with them."""

    # How long a commit waits for the other connections' results. A commit costs ~1 ms of
    # CPU however few rows it holds; without the wait nearly every row got its own.
    LINGER = 0.002

    def __init__(self, commit: Callable[[list[Settle]], Awaitable[None]],
                 busy: Callable[[], int] = lambda: 1, outage: Outage | None = None) -> None:
        self.commit = commit  # one transaction for the outcomes of every waiting task
        self.outage = outage
        self.busy = busy  # connections holding a row: once all are waiting, commit at once
        self.pending: list[tuple[Settle, asyncio.Future[None]]] = []
        self.flushing: asyncio.Task[None] | None = None
        self.everyone_waits = asyncio.Event()
        # Held around every write to this worker's own rows (settle, lease renewal): run
        # at once on two pooled connections, the two UPDATEs lock the same rows in different
        # orders and PostgreSQL aborts one as a deadlock, losing a batch of outcomes.
        self.own_rows = asyncio.Lock()

    async def record(self, outcome: Settle) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((outcome, future))
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.create_task(self._flush())
        else:
            self.nudge()
        await future

    def nudge(self) -> None:
        """Commit now if every connection that holds a row is waiting for this commit."""
        if self.pending and len(self.pending) >= self.busy():
            self.everyone_waits.set()

    async def _flush(self) -> None:
        while self.pending:
            if len(self.pending) < self.busy():
                self.everyone_waits.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.LINGER):
                        await self.everyone_waits.wait()
            batch, self.pending = self.pending, []
            outcomes = [o for o, _ in batch]
            try:
                if self.outage is None:
                    await self._commit(outcomes)
                else:
                    await self.outage.call("settle", functools.partial(self._commit, outcomes))
            except Exception as exc:  # noqa: BLE001 - every waiter must learn of it
                for _, fut in batch:
                    fut.set_exception(exc)
            else:
                for _, fut in batch:
                    fut.set_result(None)

    async def _commit(self, outcomes: list[Settle]) -> None:
        async with self.own_rows:  # not held between tries: renewals may go first
            await self.commit(outcomes)
