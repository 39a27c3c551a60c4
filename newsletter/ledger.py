"""The delivery ledger: one row per (issue, subscriber), claimed with a lease, settled once."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter import schema as s


@dataclass(frozen=True, slots=True)
class Claimed:
    """A leased ledger row with what is needed to address the message."""

    delivery_id: int
    subscriber_id: int
    email: str
    name: str
    sections: tuple[str, ...]
    attempts: int
    first_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class Settle:
    """How one claimed row ends this attempt."""

    delivery_id: int
    subscriber_id: int
    status: str  # sent, deferred, failed, skipped
    code: int | None
    reply: str
    next_attempt_at: datetime | None = None
    hard_bounce: bool = False


def _due(issue_id: int, now: datetime) -> Any:
    d = s.deliveries.c
    return sa.and_(d.issue_id == issue_id, sa.or_(
        sa.and_(d.status.in_(("queued", "deferred")), d.next_attempt_at <= now),
        # A lease that ran out belongs to a worker that died: its rows are free again.
        sa.and_(d.status == "sending", d.lease_until < now)))


class LedgerQueries:
    engine: Engine

    def enqueue(self, issue_id: int, now: datetime) -> int:
        """One set-based INSERT … SELECT of every active subscriber; existing rows stay."""
        sub = s.subscribers.c
        select = sa.select(
            sa.literal(issue_id).label("issue_id"), sub.id, sa.literal("queued"),
            sa.literal(0), sa.literal(now, s.UTCDateTime()), sa.literal(now, s.UTCDateTime()),
        ).where(sub.status == "active")
        cols = ["issue_id", "subscriber_id", "status", "attempts", "next_attempt_at",
                "updated_at"]
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(s.deliveries).from_select(cols, select).on_conflict_do_nothing(
            index_elements=["issue_id", "subscriber_id"])
        with self.engine.begin() as conn:
            # Without preserve_rowcount psycopg reports -1 for INSERT … SELECT.
            return conn.execute(stmt, execution_options={"preserve_rowcount": True}).rowcount

    def claim(self, issue_id: int, owner: str, limit: int, lease: timedelta,
              now: datetime) -> list[Claimed]:
        """Lease up to `limit` due rows; on PostgreSQL rows locked by others are skipped."""
        d = s.deliveries.c
        ids = (sa.select(d.id).where(_due(issue_id, now)).order_by(d.id).limit(limit)
               .with_for_update(skip_locked=True))
        stmt = (s.deliveries.update().where(d.id.in_(ids.scalar_subquery()))
                .values(status="sending", lease_owner=owner, lease_until=now + lease,
                        updated_at=now)
                .returning(d.id, d.subscriber_id, d.attempts, d.first_attempt_at))
        with self.engine.begin() as conn:
            rows = conn.execute(stmt).all()
            if not rows:
                return []
            sub = s.subscribers.c
            people = {r.id: r for r in conn.execute(
                sa.select(sub.id, sub.email, sub.name, sub.sections, sub.status)
                .where(sub.id.in_([r.subscriber_id for r in rows])))}
        out = []
        for r in sorted(rows, key=lambda r: r.id):
            p = people[r.subscriber_id]
            out.append(Claimed(r.id, r.subscriber_id, p.email if p.status == "active" else "",
                               p.name, tuple(json.loads(p.sections)), r.attempts,
                               r.first_attempt_at))
        return out

    def settle(self, results: Sequence[Settle], now: datetime, max_hard_bounces: int) -> None:
        """Record outcomes in one transaction; a row already sent is never downgraded."""
        if not results:
            return
        d, sub = s.deliveries.c, s.subscribers.c
        with self.engine.begin() as conn:
            for r in results:
                values: dict[str, Any] = {
                    "status": r.status, "last_code": r.code, "last_reply": r.reply[:500],
                    "attempts": d.attempts + (0 if r.status == "skipped" else 1),
                    "first_attempt_at": sa.func.coalesce(d.first_attempt_at, now),
                    "lease_owner": None, "lease_until": None, "updated_at": now}
                if r.status == "sent":
                    values["sent_at"] = now
                if r.next_attempt_at is not None:
                    values["next_attempt_at"] = r.next_attempt_at
                conn.execute(s.deliveries.update()
                             .where(d.id == r.delivery_id, d.status != "sent").values(values))
                if r.hard_bounce:
                    conn.execute(s.subscribers.update().where(sub.id == r.subscriber_id)
                                 .values(hard_bounces=sub.hard_bounces + 1, updated_at=now))
                    conn.execute(s.subscribers.update()
                                 .where(sub.id == r.subscriber_id, sub.status == "active",
                                        sub.hard_bounces >= max_hard_bounces)
                                 .values(status="bounced", updated_at=now))

    def release(self, owner: str, now: datetime, retry_at: datetime, reply: str) -> int:
        """Give back every row this worker still holds, to be tried again at `retry_at`."""
        d = s.deliveries.c
        with self.engine.begin() as conn:
            return conn.execute(
                s.deliveries.update().where(d.lease_owner == owner, d.status == "sending")
                .values(status="deferred", lease_owner=None, lease_until=None,
                        next_attempt_at=retry_at, last_reply=reply, updated_at=now)).rowcount

    def cancel_rows(self, issue_id: int, now: datetime) -> int:
        """Rows not yet sent are skipped for good; what was sent stays on record."""
        d = s.deliveries.c
        with self.engine.begin() as conn:
            return conn.execute(
                s.deliveries.update()
                .where(d.issue_id == issue_id, d.status.in_(("queued", "deferred")))
                .values(status="skipped", last_reply="issue cancelled", updated_at=now)).rowcount

    def lease_owners(self, issue_id: int) -> list[str]:
        d = s.deliveries.c
        q = sa.select(d.lease_owner).where(d.issue_id == issue_id, d.status == "sending",
                                           d.lease_owner.is_not(None)).distinct()
        with self.engine.connect() as conn:
            return [r.lease_owner for r in conn.execute(q)]

    def delivery_counts(self, issue_id: int) -> dict[str, int]:
        d = s.deliveries.c
        q = (sa.select(d.status, sa.func.count()).where(d.issue_id == issue_id)
             .group_by(d.status))
        with self.engine.connect() as conn:
            counts = {status: 0 for status in s.DELIVERY_STATUSES}
            counts.update({status: n for status, n in conn.execute(q)})
        return counts

    def next_due(self, issue_id: int) -> datetime | None:
        """When the next unsettled row of this issue becomes due (None: nothing left)."""
        d = s.deliveries.c
        waiting = sa.select(sa.func.min(d.next_attempt_at)).where(
            d.issue_id == issue_id, d.status.in_(("queued", "deferred")))
        leased = sa.select(sa.func.min(d.lease_until)).where(
            d.issue_id == issue_id, d.status == "sending")
        with self.engine.connect() as conn:
            times = [conn.execute(waiting).scalar(), conn.execute(leased).scalar()]
        return min((t for t in times if t is not None), default=None)

    def issues_with_due_rows(self, now: datetime) -> list[int]:
        d = s.deliveries.c
        q = sa.select(d.issue_id).where(
            sa.or_(sa.and_(d.status.in_(("queued", "deferred")), d.next_attempt_at <= now),
                   sa.and_(d.status == "sending", d.lease_until < now))).distinct()
        with self.engine.connect() as conn:
            return [r.issue_id for r in conn.execute(q)]
