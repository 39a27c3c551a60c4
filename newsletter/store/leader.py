"""One holder per database: a lock file beside SQLite, a session advisory lock on PostgreSQL."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

import sqlalchemy as sa
from sqlalchemy.engine import Engine

ADVISORY_KEY = 0x6E6C7472  # "nltr"
# The two-key form: the schema is the second key, so staging and prod (or parallel tests)
# in one database each get their own holder.
_PG_TRY_LOCK = f"SELECT pg_try_advisory_lock({ADVISORY_KEY}, hashtext(current_schema()))"


class DatabaseLock:
    """Taken with try_take(); held until release() or, on PostgreSQL, until its session dies."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._held: sa.Connection | IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._held is not None

    def try_take(self) -> bool:
        """Take the lock if it is free; False (holding nothing) if another holds it."""
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            try:
                got = conn.exec_driver_sql(_PG_TRY_LOCK).scalar()
                conn.commit()
            except BaseException:
                conn.close()
                raise
            if got:
                self._held = conn  # the lock lives as long as this session
                return True
            conn.close()
            return False
        db = self.engine.url.database or ""
        path = Path(db).with_suffix(".scheduler.lock") if db and db != ":memory:" \
            else Path("var/scheduler.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._held = handle
        return True

    def alive(self) -> bool:
        """Whether the session holding the advisory lock still exists (a restart of
        PostgreSQL or pg_terminate_backend ends it and frees the lock for anyone)."""
        if not isinstance(self._held, sa.Connection):
            return True  # a lock file is held for as long as this process keeps it open
        try:
            self._held.exec_driver_sql("SELECT 1")
            self._held.rollback()
        except sa.exc.DBAPIError:
            return False
        return True

    def release(self) -> None:
        held, self._held = self._held, None
        if isinstance(held, sa.Connection):
            held.invalidate()  # ends the session and its lock; the pool would keep both
        if held is not None:
            held.close()
