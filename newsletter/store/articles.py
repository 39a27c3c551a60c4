"""Article and collector-state queries: articles, the folder parse cache, feed state, runs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.models import Article
from newsletter.store import schema as s
from newsletter.store.rows import article_row, row_to_article


@dataclass(slots=True)
class FileRecord:
    """What the folder source last saw of one file, so an unchanged file is not parsed again."""

    mtime_ns: int
    size: int
    article_key: str | None
    error: str | None


class ArticleQueries:
    """Articles and what the collectors remember between runs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

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
                conn.execute(s.articles.insert(), [article_row(a, now) for a in new])
            for a in changed:
                row = article_row(a, now)
                # collected_at stays when it was first collected: an edit is not a new
                # article (articles_for_next_issue reads it).
                del row["id"], row["key"], row["collected_at"]
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

    def search_articles(self, text: str, limit: int) -> list[Article]:
        """The newest `limit` articles whose title or section holds `text` (any case; `%`
        and `_` are plain characters); the newest articles when `text` is empty."""
        q = sa.select(s.articles)
        if text:
            q = q.where(sa.or_(s.articles.c.title.icontains(text, autoescape=True),
                               s.articles.c.section.icontains(text, autoescape=True)))
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

    def articles_by_ids(self, ids: Iterable[str]) -> dict[str, Article]:
        """id → article for the ids stored; ids not stored are left out."""
        ids = list(dict.fromkeys(ids))
        out: dict[str, Article] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                q = sa.select(s.articles).where(s.articles.c.id.in_(ids[i:i + 500]))
                out.update((a.id, a) for a in map(row_to_article, conn.execute(q)))
        return out

    def articles_between(self, start: datetime, end: datetime) -> list[Article]:
        q = (sa.select(s.articles).where(s.articles.c.published > start)
             .where(s.articles.c.published <= end)
             .order_by(s.articles.c.published.desc(), s.articles.c.id))
        with self.engine.connect() as conn:
            return [row_to_article(r) for r in conn.execute(q)]

    def articles_for_next_issue(self, *, after: datetime, through: int, oldest: datetime,
                                until: datetime) -> list[Article]:
        """The articles of the issue that follows one built at `after`: every article due by
        `until` and in no issue numbered up to `through` (a cancelled issue holds none), that
        was published after `after`, or collected after it and dated no earlier than `oldest`.

        Collected after it: stamped later, or by a collect that finished later. A collect
        stamps its start on what it stores, so one running while the issue was built may
        store articles dated before the build after the build read: those are new too."""
        a = s.articles.c
        oldest = min(oldest, after)
        straddling = (sa.select(sa.func.min(s.collect_runs.c.started_at))
                      .where(s.collect_runs.c.finished_at > after).scalar_subquery())
        held = (sa.select(s.issue_articles.c.article_id)
                .join(s.issues, s.issues.c.id == s.issue_articles.c.issue_id)
                .where(s.issues.c.number <= through, s.issues.c.status != "cancelled"))
        q = (sa.select(s.articles)
             .where(a.published >= oldest, a.published <= until, a.id.not_in(held),
                    sa.or_(a.published > after, a.collected_at > after,
                           a.collected_at >= straddling))
             .order_by(a.published.desc(), a.id))
        with self.engine.connect() as conn:
            return [row_to_article(r) for r in conn.execute(q)]

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

    def save_feed_state(self, /, url: str, **values: Any) -> None:
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
