"""Bounce and complaint queries: record each once, apply the suppression policy, count, list."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.models import BOUNCE_KINDS, BOUNCE_SOURCES, BounceEvent, BounceNotice, BouncePolicy
from newsletter.store import schema as s

_B = s.bounce_events.c
_C = s.subscribers.c
_D = s.deliveries.c
_I = s.issues.c
# Outcomes of record_bounces, one per notice.
DUPLICATE, COUNTED, SUPPRESSED = "duplicate", "counted", "suppressed"
MAILABLE = ("pending", "active")
# Longer than any issue keeps sending ([delivery] give_up_after is 4 days by default).
RETRY_SPAN = timedelta(days=30)


class BounceQueries:
    """What comes back after a send: stored once per key, applied in the same transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record_bounces(self, notices: Sequence[BounceNotice], now: datetime,
                       policy: BouncePolicy) -> list[str]:
        """Store each notice and apply it: a hard bounce counts toward max_hard_bounces,
        soft ones suppress at soft_limit distinct issues within soft_window, a complaint
        marks the subscriber complained at once. One transaction; a key already stored is
        a DUPLICATE and changes nothing."""
        keys = [n.key for n in notices]
        with self.engine.connect() as conn:  # a report read again takes no write lock
            known = set(conn.execute(sa.select(_B.key).where(_B.key.in_(keys))).scalars())
        if len(known) == len(set(keys)):
            return [DUPLICATE] * len(notices)
        for attempt in range(3):
            try:
                # Reads, then writes: on SQLite take the write lock first (store.make_engine).
                with self.engine.execution_options(sqlite_immediate=True).begin() as conn:
                    return [_apply(conn, n, now, policy) for n in notices]
            except sa.exc.IntegrityError:
                # Another process stored one of these keys between our read and our insert
                # (PostgreSQL): worked out again, that one is now a duplicate.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def issue_for_token(self, issue_number: int, subscriber_id: int) -> int | None:
        """The issue id when that issue was sent (or is being sent) to that subscriber."""
        q = (sa.select(_I.id).select_from(s.issues.join(s.deliveries, _D.issue_id == _I.id))
             .where(_I.number == issue_number, _D.subscriber_id == subscriber_id))
        with self.engine.connect() as conn:
            found = conn.execute(q).scalar()
        return None if found is None else int(found)

    def issue_number(self, issue_id: int) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(_I.number).where(_I.id == issue_id)).scalar_one())

    def recent_delivery(self, email_key: str, since: datetime) -> tuple[int, int] | None:
        """(subscriber id, issue id) of the latest message sent to this address after
        `since`, or None: an unsigned bounce counts only for an address we mailed lately.

        The ledger has no index by subscriber (it would tax every send), so this probes the
        (issue, subscriber) key of each issue that went out lately: a few index lookups
        however long the ledger grows."""
        with self.engine.connect() as conn:
            subscriber_id = conn.execute(sa.select(_C.id).where(_C.email_key == email_key)) \
                .scalar()
            if subscriber_id is None:
                return None
            # An issue started up to RETRY_SPAN before `since` may still have sent since.
            issues = conn.execute(sa.select(_I.id).where(
                _I.send_at.is_not(None), _I.send_at >= since - RETRY_SPAN)).scalars().all()
            if not issues:
                return None
            row = conn.execute(
                sa.select(_D.issue_id).where(_D.issue_id.in_(issues),
                                             _D.subscriber_id == subscriber_id,
                                             _D.sent_at.is_not(None), _D.sent_at >= since)
                .order_by(_D.sent_at.desc()).limit(1)).first()
        return None if row is None else (int(subscriber_id), int(row.issue_id))

    def bounce_counts(self, issue_id: int) -> dict[str, int]:
        """Events of this issue by kind, every kind present (0 when none)."""
        return self.bounce_counts_by_issue([issue_id]).get(issue_id, dict.fromkeys(BOUNCE_KINDS, 0))

    def bounce_counts_by_issue(self, issue_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """{issue id: {kind: events}} for these issues, from the (issue_id, kind) index."""
        out = {i: dict.fromkeys(BOUNCE_KINDS, 0) for i in issue_ids}
        if not issue_ids:
            return out
        q = (sa.select(_B.issue_id, _B.kind, sa.func.count())
             .where(_B.issue_id.in_(list(issue_ids))).group_by(_B.issue_id, _B.kind))
        with self.engine.connect() as conn:
            for issue_id, kind, n in conn.execute(q):
                out[int(issue_id)][kind] = int(n)
        return out

    def bounce_totals(self) -> dict[str, int]:
        """Events of every issue by kind."""
        counts = dict.fromkeys(BOUNCE_KINDS, 0)
        with self.engine.connect() as conn:
            counts.update({k: int(n) for k, n in conn.execute(
                sa.select(_B.kind, sa.func.count()).group_by(_B.kind))})
        return counts

    def list_bounces(self, *, kind: str | None = None, subscriber_id: int | None = None,
                     issue_number: int | None = None, limit: int = 50,
                     before_id: int | None = None) -> list[BounceEvent]:
        """Recorded events, newest first; `before_id` pages on."""
        q = (sa.select(_B.id, _B.subscriber_id, _C.email, _I.number.label("issue_number"),
                       _B.kind, _B.status, _B.diagnostic, _B.source, _B.recipient,
                       _B.received_at)
             .select_from(s.bounce_events.join(s.subscribers, _C.id == _B.subscriber_id)
                          .outerjoin(s.issues, _I.id == _B.issue_id))
             .order_by(_B.id.desc()).limit(limit))
        if kind is not None:
            q = q.where(_B.kind == kind)
        if subscriber_id is not None:
            q = q.where(_B.subscriber_id == subscriber_id)
        if issue_number is not None:
            q = q.where(_I.number == issue_number)
        if before_id is not None:
            q = q.where(_B.id < before_id)
        with self.engine.connect() as conn:
            return [BounceEvent(**r._mapping) for r in conn.execute(q)]


def _apply(conn: sa.Connection, n: BounceNotice, now: datetime, policy: BouncePolicy) -> str:
    if n.kind not in BOUNCE_KINDS or n.source not in BOUNCE_SOURCES:
        raise ValueError(f"unknown bounce kind or source: {n.kind!r}, {n.source!r}")
    if conn.execute(sa.select(_B.id).where(_B.key == n.key)).first() is not None:
        return DUPLICATE
    conn.execute(s.bounce_events.insert().values(
        subscriber_id=n.subscriber_id, issue_id=n.issue_id, kind=n.kind, status=n.status[:20],
        diagnostic=n.diagnostic[:1000], source=n.source, recipient=n.recipient[:320],
        key=n.key[:200], received_at=now))
    sub = s.subscribers.update().where(_C.id == n.subscriber_id)
    changed: Any
    if n.kind == "complaint":
        changed = conn.execute(sub.where(_C.status != "complained")
                               .values(status="complained", updated_at=now))
    elif n.kind == "hard":
        conn.execute(sub.values(hard_bounces=_C.hard_bounces + 1, updated_at=now))
        changed = conn.execute(sub.where(_C.hard_bounces >= policy.max_hard_bounces,
                                         _C.status.in_(MAILABLE))
                               .values(status="bounced", updated_at=now))
    else:
        # A message delayed three times is one problem, not three: count distinct issues.
        per_issue = sa.func.coalesce(_B.issue_id, -_B.id)
        soft = conn.execute(sa.select(sa.func.count(sa.distinct(per_issue))).where(
            _B.subscriber_id == n.subscriber_id, _B.kind == "soft",
            _B.received_at >= now - policy.soft_window)).scalar_one()
        if soft < policy.soft_limit:
            return COUNTED
        changed = conn.execute(sub.where(_C.status.in_(MAILABLE))
                               .values(status="bounced", updated_at=now))
    return SUPPRESSED if changed.rowcount else COUNTED
