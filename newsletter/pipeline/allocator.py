"""glibc's allocator set for a service that runs for months: two arenas, free pages returned."""

from __future__ import annotations

import ctypes
import os
import sys
from functools import cache

# mallopt's parameter number for the arena limit (malloc.h); the MALLOC_ARENA_MAX variable
# sets the same thing before the process starts.
M_ARENA_MAX = -8
ARENAS = 2


@cache
def _glibc() -> ctypes.CDLL | None:
    """The process's own C library when it is glibc (musl and others have no malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # symbols already loaded in this process: its libc's
        libc.gnu_get_libc_version  # noqa: B018 - glibc's alone
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas() -> bool:
    """At most ARENAS malloc arenas, unless the operator set MALLOC_ARENA_MAX.

    glibc gives each thread that allocates its own arena (up to 8 per core) and keeps the
    freed memory of each: a web server's thread pool, the scheduler's threads and a send
    each fragment their own. In the soak (docs/benchmarks.md) that, not live objects, was
    most of the growth: malloc's in-use bytes stayed flat while RSS rose. Called first
    thing by the long-running commands, before their threads start.
    """
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, ARENAS))


def trim() -> bool:
    """Give the free pages malloc holds back to the system (a few ms: after a send and on
    the scheduler's sweep, never per request)."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
