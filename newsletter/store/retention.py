"""Ledger retention: old finished issues' rows removed in short batches; SQLite shrunk back."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from newsletter.store import schema as s

_D = s.deliveries.c
_I = s.issues.c
_E = s.issue_events.c
FINISHED = ("sent", "cancelled")  # issues no worker sends any more
PRUNED = "prune"  # the issue_events action recorded once an issue's rows are removed
_CHUNK = 500  # keys per IN (...) list: far below SQLite's and PostgreSQL's parameter limits
_AUTO_VACUUM = {0: "none", 1: "full", 2: "incremental"}


@dataclass(frozen=True, slots=True)
class Prunable:
    """A finished issue, last changed before the cutoff, whose rows were never pruned."""

    issue_id: int
    number: int
    status: str
    finished_at: datetime  # its last change: when it was sent or cancelled
    rows: int  # its ledger rows now: at most this many are removed


@dataclass(frozen=True, slots=True)
class FileSpace:
    """An SQLite database on disk: its two files, and how much of the main one is free."""

    path: Path
    database: int  # bytes of the main file
    wal: int  # bytes of its -wal file (0 when there is none)
    page_size: int
    free_pages: int  # pages on the freelist: reused by new rows, or given back
    auto_vacuum: str  # "none", "full" or "incremental" (which lets free pages be given back)

    @property
    def total(self) -> int:
        return self.database + self.wal


def sqlite_file(engine: Engine) -> Path | None:
    """The database file of an SQLite engine; None for PostgreSQL (or an in-memory one)."""
    name = engine.url.database
    if engine.dialect.name != "sqlite" or not name or name == ":memory:":
        return None
    return Path(name)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _with_rows_elsewhere(conn: Connection, later: Sequence[int],
                         subscribers: Sequence[int]) -> set[int]:
    """Those of `subscribers` who have a row in one of the `later` issues: each probe reads
    the (issue, subscriber) key of one issue, a range of it or an IN list, never a scan."""
    left, found = set(subscribers), set()
    for other in later:
        if not left:
            break
        if len(left) <= _CHUNK:
            where = _D.subscriber_id.in_(sorted(left))
        else:
            where = _D.subscriber_id.between(min(left), max(left))
        hit = set(conn.execute(sa.select(_D.subscriber_id)
                               .where(_D.issue_id == other, where)).scalars()) & left
        found |= hit
        left -= hit
    return found


class RetentionQueries:
    """Ledger rows of issues finished long ago, removed a batch at a time; SQLite's file
    given back to the file system, a few megabytes per transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- the ledger ------------------------------------------------------------------------

    def prunable_issues(self, before: datetime) -> list[Prunable]:
        """Sent or cancelled issues last changed before `before`, not pruned yet, that have
        ledger rows; oldest first."""
        pruned = sa.exists().where(_E.issue_id == _I.id, _E.action == PRUNED)
        q = (sa.select(_I.id, _I.number, _I.status, _I.updated_at)
             .where(_I.status.in_(FINISHED), _I.updated_at < before, ~pruned).order_by(_I.id))
        found = []
        with self.engine.connect() as conn:
            for r in conn.execute(q).all():
                rows = conn.execute(sa.select(sa.func.count()).select_from(s.deliveries)
                                    .where(_D.issue_id == r.id)).scalar_one()
                if rows:
                    found.append(Prunable(r.id, r.number, r.status, r.updated_at, int(rows)))
        return found

    def issue_pruned(self, issue_id: int, before: datetime | None) -> bool:
        """Whether this issue's rows were removed (its history says so) or are due to be:
        finished before `before` (None: retention is off)."""
        due: Any = sa.false()
        if before is not None:
            due = sa.and_(_I.status.in_(FINISHED), _I.updated_at < before)
        pruned = sa.exists().where(_E.issue_id == _I.id, _E.action == PRUNED)
        q = sa.select(_I.id).where(_I.id == issue_id, sa.or_(pruned, due))
        with self.engine.connect() as conn:
            return conn.execute(q).first() is not None

    def prune_batch(self, issue_id: int, before: datetime, after: int,
                    limit: int) -> tuple[int, int, int | None]:
        """Remove up to `limit` rows of one issue, those of subscribers after `after` in
        (issue, subscriber) key order: (removed, looked at, the key to go on from; None
        when the issue has no rows left past it).

        Each subscriber's latest row is kept (the one in the highest issue that has a row
        for them): `remove_subscriber` keeps an address anonymised, never deleted, while a
        delivery row refers to it, so that no import quietly subscribes it again. A row
        changed at or after `before` stays too. The reads (the batch, and the probes for a
        row in a later issue) take no write lock; the one write transaction deletes by key.
        """
        with self.engine.connect() as conn:
            batch = list(conn.execute(
                sa.select(_D.subscriber_id)
                .where(_D.issue_id == issue_id, _D.subscriber_id > after)
                .order_by(_D.subscriber_id).limit(limit)).scalars())
            if not batch:
                return 0, 0, None
            later = list(conn.execute(sa.select(_I.id).where(_I.id > issue_id)
                                      .order_by(_I.id)).scalars())
            doomed = sorted(_with_rows_elsewhere(conn, later, batch))
        removed = 0
        if doomed:
            with self.engine.begin() as conn:  # short: a few thousand deletes by key
                for i in range(0, len(doomed), _CHUNK):
                    removed += conn.execute(s.deliveries.delete().where(
                        _D.issue_id == issue_id, _D.subscriber_id.in_(doomed[i:i + _CHUNK]),
                        _D.updated_at < before)).rowcount
        return removed, len(batch), batch[-1]

    # -- SQLite's file ---------------------------------------------------------------------

    def file_space(self) -> FileSpace | None:
        """The SQLite file's size and free pages; None on PostgreSQL."""
        path = sqlite_file(self.engine)
        if path is None:
            return None
        with self.engine.connect() as conn:
            page_size, free, mode = (int(conn.exec_driver_sql(f"PRAGMA {name}").scalar_one())
                                     for name in ("page_size", "freelist_count",
                                                  "auto_vacuum"))
        return FileSpace(path, _size(path), _size(path.with_name(path.name + "-wal")),
                         page_size, free, _AUTO_VACUUM.get(mode, str(mode)))

    @contextmanager
    def _autocommit(self) -> Iterator[Any]:
        """The driver's own connection, outside any transaction (make_engine leaves sqlite3
        in autocommit; SQLAlchemy's AUTOCOMMIT option would not put it back as it was)."""
        pooled = self.engine.raw_connection()
        try:
            raw = pooled.driver_connection
            assert raw is not None and not raw.in_transaction
            yield raw
        finally:
            pooled.close()

    def give_back(self, pages: int) -> int:
        """Return up to `pages` free pages to the file system (incremental auto-vacuum) in
        one short write transaction; the free pages left."""
        with self._autocommit() as raw:
            # executescript steps the pragma to its end; execute() would free one page.
            raw.executescript(f"PRAGMA incremental_vacuum({int(pages)})")
            return int(raw.execute("PRAGMA freelist_count").fetchone()[0])

    def checkpoint(self) -> None:
        """Copy the WAL into the database file as far as readers allow, waiting for no one
        (PASSIVE): the file is cut to its new length once every frame is copied, and the WAL
        is cut back (journal_size_limit) when the next writer starts it over."""
        with self._autocommit() as raw:
            raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def vacuum(self) -> None:
        """Rewrite the file with incremental auto-vacuum on (a database made before it was
        the default). Holds the write lock until done: every writer waits meanwhile."""
        with self._autocommit() as raw:
            raw.execute("PRAGMA auto_vacuum=INCREMENTAL")  # VACUUM applies it
            raw.execute("VACUUM")
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
