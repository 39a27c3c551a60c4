"""The allocator settings of the long-running commands: arenas limited, free pages returned."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from newsletter.pipeline import allocator

glibc = pytest.mark.skipif(allocator._glibc() is None, reason="needs glibc's malloc")


def _run(code: str, **env: str) -> str:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, check=True, env={"PATH": "/usr/bin:/bin", **env}).stdout


@glibc
def test_trim_gives_back_the_free_pages_of_a_fragmented_heap() -> None:
    """Freed blocks between live ones stay in the process until trimmed: the growth the
    soak showed while malloc's in-use bytes stayed flat."""
    out = _run("""
        from newsletter.pipeline import allocator
        def rss():
            return next(int(l.split()[1]) for l in open("/proc/self/status")
                        if l.startswith("VmRSS")) / 1024
        blocks = [bytes(4000) + bytes([i % 256]) for i in range(20_000)]  # ~80 MiB
        kept = blocks[::16]  # one in 16 stays: the heap's top cannot simply shrink
        del blocks
        before = rss()
        assert allocator.trim()
        print(before - rss(), len(kept))
    """, PYTHONPATH=".")
    freed, kept = out.split()
    assert float(freed) > 40 and int(kept) > 1000  # MiB returned of ~75 MiB free


@glibc
def test_arenas_are_limited_unless_the_operator_chose() -> None:
    code = "from newsletter.pipeline import allocator; print(allocator.limit_arenas())"
    assert _run(code, PYTHONPATH=".").strip() == "True"
    assert _run(code, PYTHONPATH=".", MALLOC_ARENA_MAX="4").strip() == "False"
