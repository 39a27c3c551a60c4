"""Issue queries: save a built issue with its articles, read issues back, change status."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from newsletter.models import ISSUE_STATUSES, Article, Issue, IssueSection
from newsletter.store import schema as s
from newsletter.store.rows import row_to_article


def _issue_row(issue: Issue, now: datetime) -> dict[str, Any]:
    return {"number": issue.number, "status": issue.status, "subject": issue.subject,
            "preheader": issue.preheader, "created": issue.created,
            "window_start": issue.window_start, "window_end": issue.window_end,
            "html": issue.html, "text": issue.text, "send_at": issue.send_at, "updated_at": now}


class IssueQueries:
    """Issues with the articles they hold, and their status."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _load_sections(self, conn: Connection, issue_id: int) -> tuple[IssueSection, ...]:
        q = (sa.select(s.articles, s.issue_articles.c.section.label("issue_section"))
             .join(s.issue_articles, s.issue_articles.c.article_id == s.articles.c.id)
             .where(s.issue_articles.c.issue_id == issue_id)
             .order_by(s.issue_articles.c.position))
        sections: dict[str, list[Article]] = {}
        for row in conn.execute(q):
            sections.setdefault(row.issue_section, []).append(row_to_article(row))
        return tuple(IssueSection(name, tuple(arts)) for name, arts in sections.items())

    def _row_to_issue(self, conn: Connection, row: Any, with_articles: bool) -> Issue:
        m = row._mapping
        sections = self._load_sections(conn, m["id"]) if with_articles else ()
        return Issue(id=m["id"], number=m["number"], status=m["status"], subject=m["subject"],
                     preheader=m["preheader"], created=m["created"],
                     window_start=m["window_start"], window_end=m["window_end"],
                     html=m["html"], text=m["text"], send_at=m["send_at"], sections=sections)

    def save_issue(self, issue: Issue, now: datetime) -> Issue:
        """Insert, or replace in place when it has an id; its article list is rewritten."""
        with self.engine.begin() as conn:
            row = _issue_row(issue, now)
            if issue.id is None:
                issue.id = conn.execute(s.issues.insert().values(row)
                                        .returning(s.issues.c.id)).scalar_one()
            else:
                conn.execute(s.issues.update().where(s.issues.c.id == issue.id).values(row))
                conn.execute(s.issue_articles.delete()
                             .where(s.issue_articles.c.issue_id == issue.id))
            links = [{"issue_id": issue.id, "article_id": a.id, "section": sec.name,
                      "position": i}
                     for i, (sec, a) in enumerate((sec, a) for sec in issue.sections
                                                  for a in sec.articles)]
            if links:
                conn.execute(s.issue_articles.insert(), links)
        return issue

    def get_issue(self, number: int, *, with_articles: bool = True) -> Issue | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(s.issues).where(s.issues.c.number == number)).first()
            return self._row_to_issue(conn, row, with_articles) if row else None

    def list_issues(self, *, limit: int = 50, statuses: tuple[str, ...] = (),
                    with_articles: bool = False) -> list[Issue]:
        q = sa.select(s.issues).order_by(s.issues.c.number.desc()).limit(limit)
        if statuses:
            q = q.where(s.issues.c.status.in_(statuses))
        with self.engine.connect() as conn:
            return [self._row_to_issue(conn, r, with_articles) for r in conn.execute(q).all()]

    def latest_issue(self, *, exclude: tuple[str, ...] = ("cancelled",)) -> Issue | None:
        q = (sa.select(s.issues).where(s.issues.c.status.not_in(exclude))
             .order_by(s.issues.c.number.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
            return self._row_to_issue(conn, row, True) if row else None

    def next_issue_number(self) -> int:
        with self.engine.connect() as conn:
            return (conn.execute(sa.select(sa.func.max(s.issues.c.number))).scalar() or 0) + 1

    def set_issue_status(self, number: int, status: str, now: datetime, *,
                         expect: tuple[str, ...] = (),
                         send_at: datetime | None | bool = False) -> bool:
        """Move an issue to `status` only from one of `expect` (any if empty); False if not."""
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if send_at is not False:
            values["send_at"] = send_at
        q = s.issues.update().where(s.issues.c.number == number).values(values)
        if expect:
            q = q.where(s.issues.c.status.in_(expect))
        with self.engine.begin() as conn:
            return conn.execute(q).rowcount == 1

    def count_issues(self) -> dict[str, int]:
        """Issues per status, every status present (0 when none)."""
        counts = dict.fromkeys(ISSUE_STATUSES, 0)
        q = sa.select(s.issues.c.status, sa.func.count()).group_by(s.issues.c.status)
        with self.engine.connect() as conn:
            counts.update({status: n for status, n in conn.execute(q)})
        return counts
