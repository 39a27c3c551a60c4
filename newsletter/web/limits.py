"""The web app's one rate limiter: a sliding window of hits per client address, in memory."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
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

    Memory follows the keys seen within the last window, not all keys ever seen: a key
    whose hits have all expired holds nothing worth keeping and is dropped (the soak's
    sign-ups from ever new addresses grew the service by ~1 KB each while they were kept
    until `max_keys`). `max_keys` still bounds a flood from many addresses inside a window,
    the least recently seen forgotten first.
    """

    def __init__(self, limit: int, window: float, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.max_keys, self.clock = limit, window, max_keys, clock
        # key -> (last seen, hit times oldest first); a list: a handful of floats each,
        # where a deque costs ~600 bytes even empty.
        self._hits: OrderedDict[str, tuple[float, list[float]]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> list[float]:
        cutoff = now - self.window
        # Least recently seen first: once the oldest was seen within the window, so were
        # all after it. Each key is dropped once, so this costs O(1) per call on average.
        while self._hits:
            seen, _ = next(iter(self._hits.values()))
            if seen > cutoff:
                break
            self._hits.popitem(last=False)
        _, hits = self._hits.pop(key, (now, []))
        expired = next((i for i, t in enumerate(hits) if t > cutoff), len(hits))
        del hits[:expired]
        self._hits[key] = (now, hits)  # moved to the end: the most recently seen
        if len(self._hits) > self.max_keys:
            self._hits.popitem(last=False)
        return hits

    def __len__(self) -> int:
        """Keys held now (some may have expired since they were last seen)."""
        return len(self._hits)

    def _wait(self, hits: list[float], now: float) -> float:
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
