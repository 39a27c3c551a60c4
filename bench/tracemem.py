"""Run `python -m newsletter …` with tracemalloc on, writing what grew between snapshots."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import runpy
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

# Usage: TRACEMEM_OUT=DIR [TRACEMEM_EVERY=s] python bench/tracemem.py --config … run …
# Every TRACEMEM_EVERY seconds (after a full collection) DIR/snap-N.txt gets the RSS, the bytes
# tracemalloc sees (Python's own allocations), SQLite's and malloc's own accounts, the top
# growth by line since the first snapshot and since the previous one, and the object counts
# by type that changed. RSS growing while the traced bytes stay flat points below Python.


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


def _native() -> str:
    parts = []
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallinfo2.restype = _Mallinfo2
        m = libc.mallinfo2()
        parts.append(f"malloc arena {m.arena >> 20} MiB, in use {m.uordblks >> 20} MiB, free "
                     f"{m.fordblks >> 20} MiB, mmapped {m.hblkhd >> 20} MiB")
    except (OSError, AttributeError):
        pass
    try:
        import _sqlite3

        lib = ctypes.CDLL(_sqlite3.__file__)  # resolves the libsqlite3 it is linked to
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        parts.append(f"sqlite memory used {lib.sqlite3_memory_used() / 2**20:.1f} MiB")
    except (OSError, AttributeError):
        pass
    return "; ".join(parts)


def _rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _types() -> Counter[str]:
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


def _watch(out: Path, every: float) -> None:
    first = prev = None
    first_types = prev_types = Counter[str]()
    n = 0
    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    while True:
        time.sleep(every)
        n += 1
        gc.collect()
        if os.environ.get("TRACEMEM_TRIM"):  # what malloc_trim gives back, to tell free from used
            ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
        types = _types()
        lines = [f"t={n * every:.0f}s rss {_rss():.1f} MiB; Python blocks "
                 f"{sys.getallocatedblocks():,}; {_native()}"]
        if not tracemalloc.is_tracing():  # TRACEMEM_FRAMES=0: the counts alone, at full speed
            _write(out, n, lines, types, first_types, prev_types)
            first_types = first_types or types
            prev_types = types
            continue
        snap = tracemalloc.take_snapshot().filter_traces(keep)
        cur, peak = tracemalloc.get_traced_memory()
        lines[0] += f"; traced {cur / 2**20:.1f} MiB (peak {peak / 2**20:.1f})"
        for name, base, base_types in (("first", first, first_types),
                                       ("previous", prev, prev_types)):
            if base is None:
                continue
            lines.append(f"\n== growth since the {name} snapshot, by line ==")
            for stat in snap.compare_to(base, "traceback")[:15]:
                lines.append(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
                lines += [f"      {frame}" for frame in stat.traceback.format()[-12:]]
            lines.append(f"\n== object counts changed since the {name} snapshot ==")
            diff = Counter(types)
            diff.subtract(base_types)
            lines += [f"{v:+8d} {k}" for k, v in diff.most_common(25) if v]
        (out / f"snap-{n:03d}.txt").write_text("\n".join(lines) + "\n")
        if first is None:
            first, first_types = snap, types
        prev, prev_types = snap, types


def _write(out: Path, n: int, lines: list[str], types: Counter[str],
           *bases: Counter[str]) -> None:
    for name, base in zip(("first", "previous"), bases, strict=True):
        if base:
            diff = Counter(types)
            diff.subtract(base)
            lines.append(f"\n== object counts changed since the {name} snapshot ==")
            lines += [f"{v:+8d} {k}" for k, v in diff.most_common(25) if v]
    (out / f"snap-{n:03d}.txt").write_text("\n".join(lines) + "\n")


def main() -> None:
    out = Path(os.environ["TRACEMEM_OUT"])
    out.mkdir(parents=True, exist_ok=True)
    frames = int(os.environ.get("TRACEMEM_FRAMES", "12"))
    if frames:
        tracemalloc.start(frames)
    threading.Thread(target=_watch, args=(out, float(os.environ.get("TRACEMEM_EVERY", "300"))),
                     daemon=True, name="tracemem").start()
    sys.argv = ["newsletter", *sys.argv[1:]]
    runpy.run_module("newsletter", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
