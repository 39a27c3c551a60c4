"""The token bucket that paces every connection task of one process to `[delivery] rate`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RateLimit:
    """Token bucket shared by every connection task of one process. The clock and sleep
    can be replaced, so a test checks the pacing on time it controls."""

    def __init__(self, per_second: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.clock, self.sleep = clock, sleep
        self.next_slot = clock()

    async def wait(self) -> None:
        if not self.interval:
            return
        now = self.clock()
        slot = max(self.next_slot, now)
        self.next_slot = slot + self.interval
        if slot > now:
            await self.sleep(slot - now)
