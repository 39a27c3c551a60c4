"""Versioned schema migrations, applied in order with alembic's operations on either database."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.engine import Connection

from newsletter import schema as s

Step = Callable[[Operations], None]


def _v1(op: Operations) -> None:
    """Articles, per-file parse cache, upstream feed state, collect runs."""
    for table in (s.articles, s.source_files, s.feed_sources, s.collect_runs):
        # These tables are still as v1 made them. A later step that alters one must first
        # freeze its v1 shape here, so an empty database replays history exactly.
        table.to_metadata(sa.MetaData()).create(op.get_bind())


def _v2(op: Operations) -> None:
    """Newsletter issues and the articles each one holds."""
    frozen = sa.MetaData()
    s.articles.to_metadata(frozen)  # only so the foreign key resolves; it exists already
    for table in (s.issues, s.issue_articles):
        table.to_metadata(frozen).create(op.get_bind())


def _v3(op: Operations) -> None:
    """Subscribers with their consent record, and the delivery ledger."""
    frozen = sa.MetaData()
    s.issues.to_metadata(frozen)
    for table in (s.subscribers, s.deliveries):
        table.to_metadata(frozen).create(op.get_bind())


MIGRATIONS: list[tuple[int, str, Step]] = [
    (1, "articles, source files, feed sources, collect runs", _v1),
    (2, "issues and issue articles", _v2),
    (3, "subscribers and the delivery ledger", _v3),
]


def current_version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        return 0
    return conn.execute(sa.select(sa.func.max(s.schema_version.c.version))).scalar() or 0


def migrate(conn: Connection, target: int | None = None) -> list[int]:
    """Bring the schema up to `target` (default: latest); each step commits with its version."""
    s.schema_version.create(conn, checkfirst=True)
    applied = []
    have = current_version(conn)
    for version, description, step in MIGRATIONS:
        if version <= have or (target is not None and version > target):
            continue
        step(Operations(MigrationContext.configure(conn)))
        conn.execute(s.schema_version.insert().values(
            version=version, description=description, applied_at=datetime.now(UTC)))
        conn.commit()
        applied.append(version)
    return applied
