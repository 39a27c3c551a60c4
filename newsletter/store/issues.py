"""Issue queries: save a built issue with its articles, read issues back, change status."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from newsletter.models import (
    ISSUE_ACTIONS,
    ISSUE_STATUSES,
    Article,
    Issue,
    IssueEvent,
    IssueEventDraft,
    IssueSection,
)
from newsletter.store import schema as s
from newsletter.store.rows import row_to_article

_EDITORIAL = ("intro", "edited_at", "approved_at", "approved_by", "review_sent_at",
              "reminded_at")


def _issue_row(issue: Issue, now: datetime) -> dict[str, Any]:
    return {"number": issue.number, "status": issue.status, "subject": issue.subject,
            "preheader": issue.preheader, "created": issue.created,
            "window_start": issue.window_start, "window_end": issue.window_end,
            "html": issue.html, "text": issue.text, "send_at": issue.send_at, "updated_at": now,
            "intro": issue.intro, "edited_at": issue.edited_at,
            "approved_at": issue.approved_at, "approved_by": issue.approved_by or None,
            "review_sent_at": issue.review_sent_at, "reminded_at": issue.reminded_at}


def _article_links(issue: Issue) -> list[dict[str, Any]]:
    return [{"issue_id": issue.id, "article_id": a.id, "section": sec.name, "position": i}
            for i, (sec, a) in enumerate((sec, a) for sec in issue.sections
                                         for a in sec.articles)]


def _record_event(conn: Connection, issue_id: int, now: datetime,
                  event: IssueEventDraft) -> None:
    if event.action not in ISSUE_ACTIONS:
        raise ValueError(f"unknown issue action {event.action!r}")
    conn.execute(s.issue_events.insert().values(
        issue_id=issue_id, at=now, actor=event.actor[:200], action=event.action,
        detail=json.dumps(event.detail, ensure_ascii=False, default=str)))


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
                     html=m["html"], text=m["text"], send_at=m["send_at"], sections=sections,
                     intro=m["intro"] or "", edited_at=m["edited_at"],
                     approved_at=m["approved_at"], approved_by=m["approved_by"] or "",
                     review_sent_at=m["review_sent_at"], reminded_at=m["reminded_at"])

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
            links = _article_links(issue)
            if links:
                conn.execute(s.issue_articles.insert(), links)
        return issue

    def replace_issue_if(self, issue: Issue, now: datetime, *, statuses: tuple[str, ...],
                         event: IssueEventDraft | None = None, unedited: bool = False,
                         was_edited_at: datetime | None | bool = False) -> bool:
        """Save an edited issue (fields, article list, and its history entry) in one
        transaction, only while its status is one of `statuses` and no ledger row exists
        for it (and, with `unedited`, no editor has changed it; with `was_edited_at`, its
        edited_at is still that, None for never: no other edit came between): False, and
        nothing changed, when it has started sending (or was edited) meanwhile.

        Its content is saved; the status, send time, approval and review fields are left as
        stored: the operations that own them change them, and a copy read before they did
        must not undo it."""
        assert issue.id is not None
        row = _issue_row(issue, now)
        for name in ("status", "send_at", "approved_at", "approved_by", "review_sent_at",
                     "reminded_at"):
            del row[name]
        with self.engine.begin() as conn:
            started = sa.exists().where(s.deliveries.c.issue_id == issue.id)
            where = [s.issues.c.id == issue.id, s.issues.c.status.in_(statuses), ~started]
            if unedited or was_edited_at is None:
                where.append(s.issues.c.edited_at.is_(None))
            elif isinstance(was_edited_at, datetime):
                where.append(s.issues.c.edited_at == was_edited_at)
            changed = conn.execute(
                s.issues.update().where(*where).values(row)).rowcount == 1
            if not changed:
                return False
            conn.execute(s.issue_articles.delete().where(s.issue_articles.c.issue_id == issue.id))
            links = _article_links(issue)
            if links:
                conn.execute(s.issue_articles.insert(), links)
            if event is not None:
                _record_event(conn, issue.id, now, event)
        return True

    def set_issue_fields(self, /, number: int, now: datetime, *, expect: tuple[str, ...] = (),
                         **values: Any) -> bool:
        """Set editorial fields (approved_at, review_sent_at …) while in one of `expect`."""
        unknown = set(values) - set(_EDITORIAL) - {"send_at"}
        if unknown:
            raise ValueError(f"not an editorial field: {sorted(unknown)}")
        q = s.issues.update().where(s.issues.c.number == number).values(
            updated_at=now, **values)
        if expect:
            q = q.where(s.issues.c.status.in_(expect))
        with self.engine.begin() as conn:
            return conn.execute(q).rowcount == 1

    # -- history --------------------------------------------------------------------------

    def record_issue_event(self, number: int, now: datetime, event: IssueEventDraft) -> None:
        # Reads, then writes: on SQLite the write lock first, or a send's commit in between
        # fails the insert at once with "database is locked" (no busy wait for an upgrade).
        with self.engine.execution_options(sqlite_immediate=True).begin() as conn:
            issue_id = conn.execute(sa.select(s.issues.c.id)
                                    .where(s.issues.c.number == number)).scalar()
            if issue_id is not None:
                _record_event(conn, int(issue_id), now, event)

    def issue_history(self, number: int) -> list[IssueEvent]:
        """Who did what to the issue, oldest first."""
        e, i = s.issue_events.c, s.issues.c
        q = (sa.select(e.id, i.number, e.at, e.actor, e.action, e.detail)
             .join(s.issues, i.id == e.issue_id).where(i.number == number)
             .order_by(e.at, e.id))
        with self.engine.connect() as conn:
            return [IssueEvent(r.id, r.number, r.at, r.actor, r.action, json.loads(r.detail))
                    for r in conn.execute(q)]

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
                         send_at: datetime | None | bool = False,
                         was_edited_at: datetime | None | bool = False) -> bool:
        """Move an issue to `status` only from one of `expect` (any if empty) and, with
        `was_edited_at`, only while its edited_at is still that (None: never edited); False
        if not."""
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if send_at is not False:
            values["send_at"] = send_at
        q = s.issues.update().where(s.issues.c.number == number).values(values)
        if expect:
            q = q.where(s.issues.c.status.in_(expect))
        if was_edited_at is None:
            q = q.where(s.issues.c.edited_at.is_(None))
        elif isinstance(was_edited_at, datetime):
            q = q.where(s.issues.c.edited_at == was_edited_at)
        with self.engine.begin() as conn:
            return conn.execute(q).rowcount == 1

    def count_issues(self) -> dict[str, int]:
        """Issues per status, every status present (0 when none)."""
        counts = dict.fromkeys(ISSUE_STATUSES, 0)
        q = sa.select(s.issues.c.status, sa.func.count()).group_by(s.issues.c.status)
        with self.engine.connect() as conn:
            counts.update({status: n for status, n in conn.execute(q)})
        return counts
