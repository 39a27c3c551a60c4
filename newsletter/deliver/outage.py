"""Delivery through a database outage: ledger calls tried again, rows sent only under lease."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import TypeVar

from newsletter import log

T = TypeVar("T")


def one_line(exc: BaseException) -> str:
    """An error's first line: the driver's reason, never the statement or its parameters."""
    lines = str(exc).strip().splitlines()
    return " ".join(lines[0].split())[:300] if lines else type(exc).__name__


class Outage:
    """Whether the ledger answered its last call, and when to call it again if it did not.

    Only the errors `transient` accepts count (the database out of reach: refused, restarting,
    a connection cut); any other error (a constraint, a bug) is the caller's to raise."""

    FIRST = 0.1  # seconds: a cut connection is replaced at once, so the first retry is soon
    LONGEST = 10.0  # the doubling's ceiling: a database that is back is used within seconds

    def __init__(self, transient: Callable[[BaseException], bool], issue_id: int) -> None:
        self.transient, self.issue_id = transient, issue_id
        self.up = asyncio.Event()  # cleared while the ledger cannot be reached
        self.up.set()
        self.failures = 0  # in a row
        self.count = 0  # outages so far
        self.down_since = 0.0
        self.retry_at = 0.0  # monotonic: while down, no ledger call before this

    def failed(self, call: str, exc: BaseException) -> bool:
        """Note a failed ledger call. True: an outage, call again from `retry_at`; False:
        something else, which the caller raises."""
        if not self.transient(exc):
            return False
        now = time.monotonic()
        if self.up.is_set():
            self.up.clear()
            self.count += 1
            self.down_since = now
            log.event("deliver.db_unreachable", level=30, issue=self.issue_id, call=call,
                      error=one_line(exc), action="sending paused, trying again with backoff; "
                      "outcomes are kept until recorded")
        self.failures += 1
        self.retry_at = now + min(self.FIRST * 2 ** min(self.failures - 1, 16), self.LONGEST)
        return True

    def answered(self) -> None:
        """A ledger call succeeded: the database is back, if it was away."""
        self.failures = 0
        if not self.up.is_set():
            self.up.set()
            log.event("deliver.db_back", level=30, issue=self.issue_id,
                      after=f"{time.monotonic() - self.down_since:.1f}s")

    async def attempt(self, call: str, fn: Callable[[], Awaitable[T]]) -> T | None:
        """`fn()` once: its result, or None after an outage (noted; try from `retry_at`)."""
        try:
            result = await fn()
        except Exception as exc:
            if not self.failed(call, exc):
                raise
            return None
        self.answered()
        return result

    async def call(self, call: str, fn: Callable[[], Awaitable[T]]) -> T:
        """`fn()` until it succeeds, waiting out any outage; other errors are raised. For
        what must reach the ledger: an outcome is never dropped, however long it takes."""
        while True:
            try:
                result = await fn()
            except Exception as exc:
                if not self.failed(call, exc):
                    raise
                await asyncio.sleep(max(self.retry_at - time.monotonic(), 0.0))
            else:
                self.answered()
                return result


class Leases:
    """The rows this run holds, each with how long its lease is known to last.

    The lease keeps other workers off a row. While the database is away it cannot be renewed,
    and once it may have run out another worker may take the row and send it. So a row is
    sent only while its last confirmed lease has a quarter of its length to spare (renewals
    come every third, so a healthy run never waits), and one a renewal did not give back is
    never sent."""

    def __init__(self, lease: timedelta) -> None:
        self.length = lease.total_seconds()
        self.spare = self.length / 4
        self.until: dict[int, float] = {}  # held row → monotonic end of its confirmed lease
        self.lost: set[int] = set()  # lease ran out and another worker took them: never send
        self.wanted = False  # a row waits for its lease to be confirmed: renew now
        self._confirmed = asyncio.Event()  # set, then replaced, at each confirmation

    def __contains__(self, delivery_id: object) -> bool:
        return delivery_id in self.until

    def __bool__(self) -> bool:
        return bool(self.until)

    def ids(self) -> list[int]:
        return list(self.until)

    def drop(self, delivery_id: int) -> None:
        """Settled, or lost: no longer ours to renew or release."""
        self.until.pop(delivery_id, None)

    def confirm(self, ids: Iterable[int], asked_at: float) -> None:
        """The ledger leased `ids` to us for a lease counted from `asked_at`, a time taken
        before the call (the database may have written it any moment after)."""
        until = asked_at + self.length
        for delivery_id in ids:
            self.until[delivery_id] = until
        self.wanted = False
        self._confirmed.set()
        self._confirmed = asyncio.Event()

    def sendable(self, delivery_id: int) -> bool:
        return (delivery_id not in self.lost
                and self.until.get(delivery_id, 0.0) - time.monotonic() >= self.spare)

    async def wait(self, seconds: float) -> None:
        """Ask for a renewal and wait for the next confirmation, `seconds` at most."""
        self.wanted = True
        confirmed = self._confirmed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await confirmed.wait()
