"""An online copy of the SQLite database (its backup API), checked before it is put in place."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from newsletter.errors import NewsletterError
from newsletter.store.retention import sqlite_file


@dataclass(frozen=True, slots=True)
class Copy:
    """A finished backup: where, how large, and what PRAGMA integrity_check said of it."""

    path: Path
    size: int
    integrity: str  # "ok", or the first problems integrity_check found


class BackupError(NewsletterError):
    """The copy could not be made or did not pass its check; nothing was put in place."""


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(tmp: Path) -> None:
    for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm"),
                     tmp.with_name(tmp.name + "-journal")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def copy_database(engine: Engine, dest: Path) -> Copy:
    """Copy the SQLite database behind `engine` to `dest` while others write to it.

    One backup step, that is one read transaction: in WAL mode a reader never blocks a
    writer, and the copy is the database as of one commit. (Copying a few pages per step
    would let writers in between steps, but a write by any other connection restarts the
    backup from the first page, so under a running send it would never finish.) The copy
    goes to a temporary file beside `dest`, passes PRAGMA integrity_check, is flushed to
    disk and only then renamed over `dest`."""
    source = sqlite_file(engine)
    if source is None:
        raise BackupError("only an SQLite database file can be copied this way")
    if dest.resolve() in {source.resolve(), *(source.resolve().with_name(source.name + x)
                                             for x in ("-wal", "-shm"))}:
        raise BackupError(f"{dest}: that is the database itself; name another file")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    _remove(tmp)
    try:
        pooled = engine.raw_connection()
        try:
            raw = pooled.driver_connection
            assert raw is not None
            target = sqlite3.connect(tmp)
            try:
                raw.backup(target, pages=-1)
                found = [row[0] for row in target.execute("PRAGMA integrity_check(20)")]
            finally:
                target.close()  # the copy's own WAL, if any, is folded in and removed
        finally:
            pooled.close()
        if found != ["ok"]:
            raise BackupError(f"{tmp}: the copy failed PRAGMA integrity_check: "
                              f"{'; '.join(found)[:500]}")
        _fsync(tmp)
        os.replace(tmp, dest)
        _fsync(dest.parent, directory=True)
    except (sqlite3.Error, OSError) as exc:  # a full disk, a folder not writable, …
        _remove(tmp)
        raise BackupError(f"{dest}: cannot write the copy: {exc}") from None
    except BaseException:
        _remove(tmp)
        raise
    return Copy(dest, dest.stat().st_size, "ok")
