"""The scheduler's lock: an advisory lock on PostgreSQL (one per schema), a file beside SQLite."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

import sqlalchemy as sa
from sqlalchemy.engine import Engine

ADVISORY_KEY = 0x6E6C7472  # "nltr"
# The two-key form: the schema is the second key, so staging and prod (or parallel tests) in
# one database each get their scheduler.
_PG_TRY_LOCK = f"SELECT pg_try_advisory_lock({ADVISORY_KEY}, hashtext(current_schema()))"


class SchedulerLock:
    """At most one holder per database; the holder keeps it until release() or until its
    database session dies (a restart of PostgreSQL, pg_terminate_backend)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session: sa.Connection | None = None
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._session is not None or self._file is not None

    def acquire(self) -> bool:
        """Take the lock if it is free (True); False when another process holds it."""
        if self.held:
            return True
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            try:
                got = conn.exec_driver_sql(_PG_TRY_LOCK).scalar()
                conn.commit()
            except BaseException:
                conn.close()
                raise
            if got:
                self._session = conn  # the lock lives as long as this session
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
        self._file = handle
        return True

    def alive(self) -> bool:
        """Whether the lock is still ours: the session holding the advisory lock still exists
        (a lock file is held for as long as this process keeps it open)."""
        if self._session is None:
            return True
        try:
            self._session.exec_driver_sql("SELECT 1")
            self._session.rollback()
        except sa.exc.DBAPIError:
            return False
        return True

    def release(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.invalidate()  # ends the session and its lock; the pool would keep both
            session.close()
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()
