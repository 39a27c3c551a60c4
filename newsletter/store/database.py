"""SQLAlchemy Core access to articles and collector state, portable across SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.models import Article
from newsletter.store import migrations
from newsletter.store import schema as s
from newsletter.store import urls as dburl
from newsletter.store.issues import IssueQueries
from newsletter.store.ledger import LedgerQueries
from newsletter.store.subscribers import SubscriberQueries


def make_engine(url: str) -> Engine:
    """An engine with SQLite tuned for one writer and many readers (WAL, busy timeout) and
    with real transactions, DDL included."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite begins transactions only before INSERT/UPDATE/DELETE, so DDL and reads
            # ran outside them (a failed migration step stayed half-applied); the "begin"
            # event below issues BEGIN itself. SQLAlchemy's recipe for pysqlite.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # Deferred by default, so readers never wait for the writer. A transaction that
            # reads and then writes asks for the write lock first (sqlite_immediate): a
            # read transaction that must become a writer fails at once, without busy wait,
            # when another connection wrote meanwhile.
            options = conn.get_execution_options()
            if options.get("isolation_level") == "AUTOCOMMIT":
                return  # e.g. for VACUUM, which refuses to run in a transaction
            # Straight to the driver: exec_driver_sql runs SQLAlchemy's whole execution path,
            # ~0.1 ms, on every transaction (the delivery ledger commits hundreds a second).
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.execute("BEGIN IMMEDIATE" if options.get("sqlite_immediate") else "BEGIN")
    return engine


def open_engine(url: str) -> Engine:
    """make_engine for an operator's URL: every way it can be wrong is a DatabaseError."""
    dburl.parse(url)
    try:
        return make_engine(url)
    except ImportError as exc:  # the driver library (psycopg) is not installed
        raise dburl.DatabaseError(f"database {dburl.mask(url)}: cannot load its driver: "
                                  f"{exc}") from None
    except (OSError, sa.exc.ArgumentError) as exc:  # e.g. the SQLite folder is not writable
        raise dburl.connect_error(url, exc) from None


def connect(engine: Engine, url: str) -> sa.Connection:
    """A connection, or DatabaseError with the driver's reason (refused, no such database)."""
    try:
        return engine.connect()
    except sa.exc.DBAPIError as exc:
        raise dburl.connect_error(url, exc) from None


@dataclass(slots=True)
class FileRecord:
    mtime_ns: int
    size: int
    article_key: str | None
    error: str | None


def _article_row(a: Article, collected_at: datetime) -> dict[str, Any]:
    return {
        "id": a.id, "key": a.key, "source": a.source, "guid": a.guid, "link": a.link,
        "slug": a.slug, "title": a.title, "summary": a.summary, "content_html": a.content_html,
        "authors": json.dumps(list(a.authors), ensure_ascii=False),
        "section": a.section, "tags": json.dumps(list(a.tags), ensure_ascii=False),
        "image": a.image, "image_credit": a.image_credit, "published": a.published,
        "updated": a.updated, "content_hash": a.content_hash, "collected_at": collected_at,
    }


def row_to_article(row: Any) -> Article:
    m = row._mapping
    return Article(
        id=m["id"], key=m["key"], source=m["source"], guid=m["guid"], link=m["link"],
        slug=m["slug"], title=m["title"], summary=m["summary"], content_html=m["content_html"],
        authors=tuple(json.loads(m["authors"])), section=m["section"],
        tags=tuple(json.loads(m["tags"])), image=m["image"], image_credit=m["image_credit"],
        published=m["published"], updated=m["updated"], content_hash=m["content_hash"],
    )


class Store(IssueQueries, LedgerQueries, SubscriberQueries):
    """One database: created and migrated on open, shared by every entry point."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = open_engine(url)
        if migrate:
            try:
                with connect(self.engine, url) as conn:
                    migrations.migrate(conn)
            except sa.exc.DBAPIError as exc:  # e.g. a read-only file, or no CREATE privilege
                self.engine.dispose()
                raise dburl.connect_error(url, exc, doing="cannot update its schema") from None
            except BaseException:
                self.engine.dispose()  # no caller holds this Store to close it
                raise

    def close(self) -> None:
        self.engine.dispose()

    # -- articles -------------------------------------------------------------------------

    def article_hashes(self, keys: Iterable[str]) -> dict[str, tuple[str, datetime]]:
        """key → (content_hash, published) for the keys already stored."""
        keys = list(keys)
        out: dict[str, tuple[str, datetime]] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = sa.select(s.articles.c.key, s.articles.c.content_hash,
                              s.articles.c.published).where(s.articles.c.key.in_(chunk))
                out.update({r.key: (r.content_hash, r.published) for r in conn.execute(q)})
        return out

    def save_articles(self, new: Sequence[Article], changed: Sequence[Article],
                      now: datetime) -> None:
        """Insert new articles and update changed ones in place, in one transaction."""
        with self.engine.begin() as conn:
            if new:
                conn.execute(s.articles.insert(), [_article_row(a, now) for a in new])
            for a in changed:
                row = _article_row(a, now)
                del row["id"], row["key"]
                conn.execute(s.articles.update().where(s.articles.c.key == a.key).values(row))

    def latest_articles(self, limit: int, *, section: str | None = None,
                        until: datetime | None = None) -> list[Article]:
        q = sa.select(s.articles)
        if section is not None:
            q = q.where(s.articles.c.section == section)
        if until is not None:
            q = q.where(s.articles.c.published <= until)
        q = q.order_by(s.articles.c.published.desc(), s.articles.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [row_to_article(r) for r in conn.execute(q)]

    def sections(self) -> list[str]:
        q = sa.select(s.articles.c.section).where(s.articles.c.section != "").distinct()
        with self.engine.connect() as conn:
            return sorted(r.section for r in conn.execute(q))

    def count_articles(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(s.articles)).scalar_one()

    # -- folder parse cache ---------------------------------------------------------------

    def file_records(self, prefix: str) -> dict[str, FileRecord]:
        q = sa.select(s.source_files).where(s.source_files.c.path.startswith(prefix,
                                                                             autoescape=True))
        with self.engine.connect() as conn:
            return {r.path: FileRecord(r.mtime_ns, r.size, r.article_key, r.error)
                    for r in conn.execute(q)}

    def save_file_records(self, records: dict[str, FileRecord]) -> None:
        if not records:
            return
        with self.engine.begin() as conn:
            paths = list(records)
            for i in range(0, len(paths), 500):
                conn.execute(s.source_files.delete().where(
                    s.source_files.c.path.in_(paths[i:i + 500])))
            conn.execute(s.source_files.insert(), [
                {"path": p, "mtime_ns": r.mtime_ns, "size": r.size,
                 "article_key": r.article_key, "error": r.error} for p, r in records.items()])

    def remove_articles(self, keys: Iterable[str]) -> int:
        """Delete these articles unless an issue holds one (its mail links to the page)."""
        keys = list(keys)
        held = sa.select(s.issue_articles.c.article_id)
        removed = 0
        with self.engine.begin() as conn:
            for i in range(0, len(keys), 500):
                removed += conn.execute(s.articles.delete().where(
                    s.articles.c.key.in_(keys[i:i + 500]),
                    s.articles.c.id.not_in(held))).rowcount
        return removed

    def forget_files(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        with self.engine.begin() as conn:
            for i in range(0, len(paths), 500):
                conn.execute(s.source_files.delete().where(
                    s.source_files.c.path.in_(paths[i:i + 500])))

    # -- upstream feed state --------------------------------------------------------------

    def feed_states(self) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            return {r.url: dict(r._mapping) for r in conn.execute(sa.select(s.feed_sources))}

    def save_feed_state(self, url: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(s.feed_sources.update().where(s.feed_sources.c.url == url)
                                .values(**values)).rowcount
            if not done:
                conn.execute(s.feed_sources.insert().values(url=url, **values))

    # -- runs -----------------------------------------------------------------------------

    def record_collect(self, started: datetime, finished: datetime, new: int, updated: int,
                       failed: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(s.collect_runs.insert().values(
                started_at=started, finished_at=finished, new=new, updated=updated,
                failed=failed))

    def last_collect(self) -> dict[str, Any] | None:
        q = sa.select(s.collect_runs).order_by(s.collect_runs.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return dict(row._mapping) if row else None
