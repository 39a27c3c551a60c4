"""Versioned schema migrations, applied in order with alembic's operations on either database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsletter.store import counting
from newsletter.store import schema as s

if TYPE_CHECKING:  # alembic is imported only when a step runs: every process start checks
    from alembic.operations import Operations  # the version, few ever migrate

Step = Callable[["Operations"], None]


def _v1(op: Operations) -> None:
    """Articles, per-file parse cache, upstream feed state, collect runs."""
    for table in (s.articles, s.source_files, s.feed_sources, s.collect_runs):
        # These tables are still as v1 made them. A later step that alters one must first
        # freeze its v1 shape here, so an empty database replays history exactly.
        table.to_metadata(sa.MetaData()).create(op.get_bind())


# Columns that steps after v2 add to `issues`: v2 creates the table without them, so an
# empty database replays history exactly (the step that adds them comes later).
_ISSUES_LATER = {7: ("intro", "edited_at", "approved_at", "approved_by", "review_sent_at",
                     "reminded_at")}


def _unbound(column: sa.Column[Any]) -> sa.Column[Any]:
    """A fresh Column like `column` (name, type, nullability, server default), for a table
    frozen as it stood at an earlier version or for add_column."""
    default = column.server_default
    return sa.Column(column.name, column.type, primary_key=column.primary_key,
                     nullable=column.nullable, unique=column.unique,
                     autoincrement=column.autoincrement,
                     server_default=getattr(default, "arg", None))


def _frozen_issues(frozen: sa.MetaData, version: int) -> sa.Table:
    """The issues table as it stood after step `version`."""
    later = {name for v, names in _ISSUES_LATER.items() if v > version for name in names}
    return sa.Table(s.issues.name, frozen,
                    *(_unbound(c) for c in s.issues.columns if c.name not in later))


def _v2(op: Operations) -> None:
    """Newsletter issues and the articles each one holds."""
    frozen = sa.MetaData()
    s.articles.to_metadata(frozen)  # only so the foreign key resolves; it exists already
    _frozen_issues(frozen, 2).create(op.get_bind())
    s.issue_articles.to_metadata(frozen).create(op.get_bind())


def _v3(op: Operations) -> None:
    """Subscribers with their consent record, and the delivery ledger."""
    frozen = sa.MetaData()
    s.issues.to_metadata(frozen)
    for table in (s.subscribers, s.deliveries):
        table.to_metadata(frozen).create(op.get_bind())


BACKFILLED = "recorded before consent history was kept"


def _v4(op: Operations) -> None:
    """Consent history, started from each subscriber's stored consent and confirmation."""
    frozen = sa.MetaData()
    sub = s.subscribers.to_metadata(frozen)
    events = s.consent_events.to_metadata(frozen)
    events.create(op.get_bind())
    columns = ["subscriber_id", "at", "action", "actor", "reason", "ip", "user_agent"]
    op.get_bind().execute(events.insert().from_select(columns, sa.select(
        sub.c.id, sub.c.consent_at, sub.c.consent_method, sa.literal(""),
        sa.literal(BACKFILLED), sub.c.consent_ip, sub.c.consent_user_agent,
    ).where(sub.c.consent_at.is_not(None), sub.c.consent_method.is_not(None))))
    # A form sign-up that was confirmed: the person's own opt-in, the one that counts.
    op.get_bind().execute(events.insert().from_select(columns[:5], sa.select(
        sub.c.id, sub.c.confirmed_at, sa.literal("confirm"), sa.literal(""),
        sa.literal(BACKFILLED),
    ).where(sub.c.confirmed_at.is_not(None), sub.c.consent_method == "form")))


def _v5(op: Operations) -> None:
    """Bounce and complaint events."""
    frozen = sa.MetaData()
    s.subscribers.to_metadata(frozen)
    s.issues.to_metadata(frozen)
    s.bounce_events.to_metadata(frozen).create(op.get_bind())


def _v6(op: Operations) -> None:
    """Dashboard sessions, kept in the database so logout holds across processes."""
    s.admin_sessions.to_metadata(sa.MetaData()).create(op.get_bind())


def _v7(op: Operations) -> None:
    """Editors shape an issue: its intro, edits, review and approval, and who did what."""
    for name in _ISSUES_LATER[7]:
        op.add_column("issues", _unbound(s.issues.c[name]))
    frozen = sa.MetaData()
    s.issues.to_metadata(frozen)  # for the foreign key
    s.issue_events.to_metadata(frozen).create(op.get_bind())


def _v8(op: Operations) -> None:
    """Per-issue delivery counts and per-second sends, kept by triggers, counted once here."""
    frozen = sa.MetaData()
    s.issues.to_metadata(frozen)  # for the foreign key
    for table in (s.delivery_counts, s.delivery_sends):  # still as v8 made them
        table.to_metadata(frozen).create(op.get_bind())
    counting.install_v8(op.get_bind(), datetime.now(UTC))


MIGRATIONS: list[tuple[int, str, Step]] = [
    (1, "articles, source files, feed sources, collect runs", _v1),
    (2, "issues and issue articles", _v2),
    (3, "subscribers and the delivery ledger", _v3),
    (4, "consent history", _v4),
    (5, "bounce and complaint events", _v5),
    (6, "dashboard sessions", _v6),
    (7, "issue intro, edits, review, approval and history", _v7),
    (8, "delivery counts kept by triggers", _v8),
]


# The two-key advisory lock: this constant names the migration lock, the schema is the second
# key, so several schemas in one database (staging and prod, parallel tests) do not wait on
# each other.
PG_LOCK_KEY = 0x6E6C6D67  # "nlmg"
_PG_LOCK_ARGS = f"{PG_LOCK_KEY}, hashtext(current_schema())"


def current_version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    return conn.execute(sa.select(sa.func.max(s.schema_version.c.version))).scalar() or 0


def _pending(have: int, target: int | None) -> list[tuple[int, str, Step]]:
    return [m for m in MIGRATIONS if m[0] > have and (target is None or m[0] <= target)]


def migrate(conn: Connection, target: int | None = None) -> list[int]:
    """Bring the schema up to `target` (default: latest). Each step commits with its version;
    a step that fails leaves the database at the version before it."""
    pending = _pending(current_version(conn), target)
    conn.commit()  # steps run in transactions of their own, begun under the lock
    if not pending:
        return []
    if conn.dialect.name == "postgresql":
        with _pg_lock(conn):
            return _apply(conn, pending)
    # SQLite: make_engine begins these with BEGIN IMMEDIATE, so the write lock is held
    # before the version is re-read and processes starting together take turns.
    conn.execution_options(sqlite_immediate=True)
    try:
        return _apply(conn, pending)
    finally:
        conn.execution_options(sqlite_immediate=False)


@contextmanager
def _pg_lock(conn: Connection) -> Iterator[None]:
    """Processes opening one empty database at once migrate one after the other."""
    conn.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_LOCK_ARGS})")
    conn.commit()
    try:
        yield
    finally:
        if not conn.invalidated:  # a lost session took its lock with it
            conn.rollback()  # an aborted transaction would refuse the unlock
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_LOCK_ARGS})")
            conn.commit()


def _apply(conn: Connection, pending: list[tuple[int, str, Step]]) -> list[int]:
    applied = []
    try:
        for version, description, step in pending:
            # Re-read inside this step's transaction: another process may have applied it
            # while this one waited for the lock.
            s.schema_version.create(conn, checkfirst=True)
            if version <= current_version(conn):
                conn.commit()
                continue
            from alembic.migration import MigrationContext
            from alembic.operations import Operations

            step(Operations(MigrationContext.configure(conn)))
            conn.execute(s.schema_version.insert().values(
                version=version, description=description, applied_at=datetime.now(UTC)))
            conn.commit()
            applied.append(version)
    except BaseException:
        conn.rollback()  # on SQLite too, where make_engine makes the step's DDL transactional
        raise
    return applied
