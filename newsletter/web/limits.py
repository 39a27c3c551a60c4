"""The web app's one rate limiter: a sliding window of hits per client address, in memory."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable


def rate_key(ip: str) -> str:
    """The IPv6 /64 a host usually gets whole, so rotating within it does not evade limits."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class SlidingWindow:
    """At most `limit` hits per key in any `window` seconds, per process.

    Memory is bounded: at most `max_keys` keys are tracked, the least recently seen
    forgotten first, so a flood from many addresses cannot exhaust it.
    """

    def __init__(self, limit: int, window: float, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.max_keys, self.clock = limit, window, max_keys, clock
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        hits = self._hits.pop(key, None) or deque()
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        self._hits[key] = hits  # moved to the end: the most recently seen
        if len(self._hits) > self.max_keys:
            self._hits.popitem(last=False)
        return hits

    def _wait(self, hits: deque[float], now: float) -> float:
        return max(hits[0] + self.window - now, 1.0) if len(hits) >= self.limit else 0.0

    def hit(self, key: str) -> float:
        """Record a hit; 0 if allowed, else the seconds until one would be (not recorded)."""
        now = self.clock()
        with self._lock:
            hits = self._recent(key, now)
            wait = self._wait(hits, now)
            if not wait:
                hits.append(now)
            return wait

    def blocked(self, key: str) -> float:
        """Seconds until `key` may hit again, recording nothing; 0 when it may now.

        With record(), this counts only some requests, e.g. wrong tokens: a right one
        never uses up the allowance.
        """
        now = self.clock()
        with self._lock:
            return self._wait(self._recent(key, now), now)

    def record(self, key: str) -> None:
        now = self.clock()
        with self._lock:
            self._recent(key, now).append(now)
