"""Riding out a database outage: work tried again with backoff, one line to the operator."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from newsletter import log
from newsletter.store.database import Store
from newsletter.store.engine import outage_error, ping, unreachable

__all__ = ["database_check", "describe", "patiently", "unreachable"]

T = TypeVar("T")

FIRST_WAIT = 0.5  # seconds: a cut connection is replaced at once, so try again soon
LONGEST_WAIT = 30.0  # the doubling's ceiling, so a database that is back is used soon


def describe(exc: BaseException, url: str = "") -> str:
    """One line for the operator, the database URL's password masked."""
    return str(outage_error(exc, url))


def patiently(fn: Callable[[], T], *, what: str, stop: threading.Event | None = None,
              url: str = "") -> T | None:
    """`fn()`, run again after a database outage (waits doubling from FIRST_WAIT to
    LONGEST_WAIT, one warning when it starts and one when it ends) until it completes. None
    when `stop` is set first. Any other error is raised: only an unreachable database is
    waited out, never a refused statement or a bug. `fn` must be safe to run again."""
    wait, since = FIRST_WAIT, 0.0
    while True:
        try:
            result = fn()
        except Exception as exc:
            if not unreachable(exc):
                raise
            if not since:
                since = time.monotonic()
                log.event("db.unreachable", level=30, during=what,
                          error=describe(exc, url), action="trying again with backoff")
            if stop is None:
                time.sleep(wait)
            elif stop.wait(wait):
                return None
            wait = min(wait * 2, LONGEST_WAIT)
            continue
        if since:
            log.event("db.back", level=30, during=what, after=f"{time.monotonic() - since:.1f}s")
        return result


def database_check(store: Store) -> Callable[[], str | None]:
    """For the health check: None while the database answers `SELECT 1`, else why not (in
    words safe for anyone to read; the driver's reason goes to the log, once per outage)."""
    down = threading.Event()

    def check() -> str | None:
        try:
            ping(store.engine)
        except Exception as exc:
            if not down.is_set():
                down.set()
                log.event("web.db_unreachable", level=30, error=describe(exc, store.url),
                          action="/healthz answers 503 until it is back")
            return "database unreachable" if unreachable(exc) else "database error"
        if down.is_set():
            down.clear()
            log.event("web.db_back", level=30)
        return None

    return check
