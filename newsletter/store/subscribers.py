"""Subscriber queries: add, look up, list, change status and preferences, stream, import."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.models import (
    CONSENT_ACTIONS,
    SUBSCRIBER_STATUSES,
    BatchCounts,
    Consent,
    ConsentEvent,
    ImportRow,
    Subscriber,
)
from newsletter.store import schema as s

_C = s.subscribers.c
_E = s.consent_events.c
_CHUNK = 500  # keys per IN (...) list: far below SQLite's and PostgreSQL's parameter limits


def _to_subscriber(row: Any) -> Subscriber:
    m = dict(row._mapping)
    m["sections"] = tuple(json.loads(m["sections"] or "[]"))
    return Subscriber(**m)


def _sections_json(sections: Sequence[str]) -> str:
    return json.dumps(list(sections), ensure_ascii=False)


def _record(conn: sa.Connection, subscriber_id: int, now: datetime, consent: Consent) -> None:
    if consent.action not in CONSENT_ACTIONS:
        raise ValueError(f"unknown consent action {consent.action!r}")
    conn.execute(s.consent_events.insert().values(subscriber_id=subscriber_id, at=now,
                                                  **asdict(consent)))


class SubscriberQueries:
    """Subscribers and their consent history."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- single subscribers ---------------------------------------------------------------

    def add_subscriber(self, *, email: str, email_key: str, name: str, status: str,
                       now: datetime, consent_method: str, consent_ip: str | None = None,
                       consent_user_agent: str | None = None, sections: Sequence[str] = (),
                       confirmed: bool = False,
                       consent: Consent | None = None) -> Subscriber | None:
        """Insert one subscriber (and its consent record, if given, in the same transaction);
        None when the address (its email_key) is already stored."""
        row = {"email": email, "email_key": email_key, "name": name, "status": status,
               "sections": _sections_json(sections), "consent_at": now,
               "consent_method": consent_method, "consent_ip": consent_ip,
               "consent_user_agent": consent_user_agent,
               "confirmed_at": now if confirmed else None, "hard_bounces": 0,
               "created_at": now, "updated_at": now}
        try:
            with self.engine.begin() as conn:
                new_id = conn.execute(s.subscribers.insert().values(row)
                                      .returning(_C.id)).scalar_one()
                if consent is not None:
                    _record(conn, new_id, now, consent)
        except sa.exc.IntegrityError:
            return None  # lost a race with another insert of the same address
        return self.get_subscriber(new_id)

    def get_subscriber(self, subscriber_id: int) -> Subscriber | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(s.subscribers).where(_C.id == subscriber_id)).first()
        return _to_subscriber(row) if row else None

    def get_subscriber_by_key(self, email_key: str) -> Subscriber | None:
        """By the case-folded key that normalise_address() returns with the address."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(s.subscribers).where(_C.email_key == email_key)).first()
        return _to_subscriber(row) if row else None

    def list_subscribers(self, *, status: str | None = None, limit: int = 100,
                         offset: int = 0) -> list[Subscriber]:
        q = sa.select(s.subscribers).order_by(_C.id).limit(limit).offset(offset)
        if status is not None:
            q = q.where(_C.status == status)
        with self.engine.connect() as conn:
            return [_to_subscriber(r) for r in conn.execute(q)]

    def count_subscribers(self) -> dict[str, int]:
        """Subscribers per status, every status present (0 when none)."""
        counts = dict.fromkeys(SUBSCRIBER_STATUSES, 0)
        q = sa.select(_C.status, sa.func.count()).group_by(_C.status)
        with self.engine.connect() as conn:
            counts.update({status: n for status, n in conn.execute(q)})
        return counts

    def update_subscriber(self, /, subscriber_id: int, now: datetime, *,
                             expect: Sequence[str] = (), consent: Consent | None = None,
                             **values: Any) -> bool:
        """Set columns of one subscriber only while its status is in `expect` (any if empty);
        `consent` is recorded in the same transaction when the row changed.

        The status condition sits in the UPDATE itself, so a concurrent unsubscribe cannot
        be overwritten by a decision made on a row read a moment earlier.
        """
        if "sections" in values:
            values["sections"] = _sections_json(values["sections"])
        q = s.subscribers.update().where(_C.id == subscriber_id).values(updated_at=now, **values)
        if expect:
            q = q.where(_C.status.in_(tuple(expect)))
        with self.engine.begin() as conn:
            changed = conn.execute(q).rowcount == 1
            if changed and consent is not None:
                _record(conn, subscriber_id, now, consent)
            return changed

    def activate_subscriber(self, subscriber_id: int, now: datetime, *,
                            expect: Sequence[str] = ("pending",),
                            consent: Consent | None = None) -> bool:
        """Make active (a confirmed opt-in); a fresh start also forgets earlier bounces."""
        return self.update_subscriber(subscriber_id, now, expect=expect, consent=consent,
                                      status="active", confirmed_at=now, hard_bounces=0)

    def record_consent(self, subscriber_id: int, now: datetime, consent: Consent) -> None:
        with self.engine.begin() as conn:
            _record(conn, subscriber_id, now, consent)

    def consent_history(self, subscriber_id: int) -> list[ConsentEvent]:
        """Every consent recorded for one subscriber, oldest first."""
        q = (sa.select(s.consent_events).where(_E.subscriber_id == subscriber_id)
             .order_by(_E.at, _E.id))
        with self.engine.connect() as conn:
            return [ConsentEvent(**r._mapping) for r in conn.execute(q)]

    def unsubscribe_subscriber(self, subscriber_id: int, now: datetime) -> bool:
        """Unsubscribe at once; False when already out (complained keeps its stronger mark)."""
        return self.update_subscriber(subscriber_id, now, expect=("pending", "active", "bounced"),
                                      status="unsubscribed", unsubscribed_at=now)

    def set_subscriber_status(self, subscriber_id: int, status: str, now: datetime, *,
                              expect: Sequence[str] = ()) -> bool:
        """Admin or feedback-loop status change; unsubscribing records when."""
        if status not in SUBSCRIBER_STATUSES:
            raise ValueError(f"unknown subscriber status {status!r}")
        extra: dict[str, Any] = {}
        if status == "unsubscribed":
            extra["unsubscribed_at"] = now
        return self.update_subscriber(subscriber_id, now, expect=expect, status=status, **extra)

    def set_subscriber_sections(self, subscriber_id: int, sections: Sequence[str],
                                now: datetime) -> bool:
        return self.update_subscriber(subscriber_id, now, sections=tuple(sections))

    def mark_confirmation_sent(self, subscriber_id: int, now: datetime) -> None:
        self.update_subscriber(subscriber_id, now, confirmation_sent_at=now)

    def claim_confirmation(self, subscriber_id: int, now: datetime, window: timedelta, *,
                           expect: Sequence[str] = ("pending",)) -> bool:
        """Record that a confirmation goes out now, unless one went out within `window`.

        One conditional UPDATE: of fifty simultaneous requests for one address exactly one
        sees rowcount 1, so at most one email is sent per window.
        """
        q = (s.subscribers.update()
             .where(_C.id == subscriber_id, _C.status.in_(tuple(expect)),
                    sa.or_(_C.confirmation_sent_at.is_(None),
                           _C.confirmation_sent_at <= now - window))
             .values(confirmation_sent_at=now, updated_at=now))
        with self.engine.begin() as conn:
            return conn.execute(q).rowcount == 1

    def record_hard_bounce(self, subscriber_id: int, now: datetime,
                           threshold: int) -> str | None:
        """Count a permanent failure; at `threshold` a mailable subscriber becomes bounced."""
        with self.engine.begin() as conn:
            conn.execute(s.subscribers.update().where(_C.id == subscriber_id)
                         .values(hard_bounces=_C.hard_bounces + 1, updated_at=now))
            conn.execute(s.subscribers.update()
                         .where(_C.id == subscriber_id, _C.hard_bounces >= threshold,
                                _C.status.in_(("pending", "active")))
                         .values(status="bounced", updated_at=now))
            return conn.execute(sa.select(_C.status).where(_C.id == subscriber_id)).scalar()

    def remove_subscriber(self, subscriber_id: int, now: datetime) -> str:
        """Delete the row: "deleted"; "anonymised" when deliveries refer to it; or "missing".

        Delivery rows are the send history of past issues and point at the subscriber, so
        such a row stays, unsubscribed, with its name and consent IP/user agent blanked; the
        address itself stays too, so no later import can quietly subscribe it again. Ledger
        retention (store/retention.py) never removes a subscriber's latest row, so this holds
        for an address last mailed long ago too.
        """
        # Reads, then writes: on SQLite take the write lock first (see store.make_engine).
        with self.engine.execution_options(sqlite_immediate=True).begin() as conn:
            if conn.execute(sa.select(_C.id).where(_C.id == subscriber_id)).first() is None:
                return "missing"
            used = conn.execute(sa.select(s.deliveries.c.id).where(
                s.deliveries.c.subscriber_id == subscriber_id).limit(1)).first()
            if used is None:
                conn.execute(s.subscribers.delete().where(_C.id == subscriber_id))
                return "deleted"
            conn.execute(s.subscribers.update().where(_C.id == subscriber_id).values(
                name="", consent_ip=None, consent_user_agent=None, updated_at=now,
                status=sa.case((_C.status == "complained", "complained"),
                               else_="unsubscribed"),
                unsubscribed_at=sa.func.coalesce(_C.unsubscribed_at, now)))
            conn.execute(s.consent_events.update().where(_E.subscriber_id == subscriber_id)
                         .values(ip=None, user_agent=None))
            return "anonymised"

    # -- streaming ------------------------------------------------------------------------

    def iter_subscribers(self, *, batch: int = 1000,
                         statuses: Sequence[str] = ()) -> Iterator[Subscriber]:
        """Every subscriber (or those in `statuses`) by id, one short query per batch.

        Keyset paging instead of one long cursor: no read transaction stays open while the
        caller works, which would hold back SQLite's WAL checkpoints.
        """
        last = 0
        while True:
            q = sa.select(s.subscribers).where(_C.id > last).order_by(_C.id).limit(batch)
            if statuses:
                q = q.where(_C.status.in_(tuple(statuses)))
            with self.engine.connect() as conn:
                rows = [_to_subscriber(r) for r in conn.execute(q)]
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1].id

    def iter_active(self, batch: int = 1000) -> Iterator[Subscriber]:
        return self.iter_subscribers(batch=batch, statuses=("active",))

    # -- bulk import ----------------------------------------------------------------------

    def merge_import_batch(self, rows: Sequence[ImportRow], now: datetime, *,
                           actor: str = "") -> BatchCounts:
        """Insert new addresses, refresh active ones' names, leave every other one as it is:
        one transaction, with a consent record per added address.

        A SELECT of the batch's keys then an executemany INSERT is portable across SQLite
        and PostgreSQL; if a web sign-up inserts one of the keys in between, the INSERT
        fails and the whole batch is simply worked out again.
        """
        for attempt in range(3):
            try:
                return self._merge_once(rows, now, actor)
            except sa.exc.IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _merge_once(self, rows: Sequence[ImportRow], now: datetime, actor: str) -> BatchCounts:
        counts = BatchCounts()
        latest: dict[str, ImportRow] = {}
        for row in rows:  # the last occurrence of an address in the batch wins
            if row.email_key in latest:
                counts.merged += 1
            latest[row.email_key] = row
        keys = list(latest)
        # On SQLite the write lock comes first, so no sign-up can land between SELECT and
        # INSERT (see store.make_engine); PostgreSQL raises IntegrityError and retries.
        with self.engine.execution_options(sqlite_immediate=True).begin() as conn:
            existing: dict[str, Any] = {}
            for i in range(0, len(keys), _CHUNK):
                q = sa.select(_C.id, _C.email_key, _C.status, _C.name).where(
                    _C.email_key.in_(keys[i:i + _CHUNK]))
                existing.update({r.email_key: r for r in conn.execute(q)})
            inserts, renames = [], []
            for key, row in latest.items():
                found = existing.get(key)
                if found is None:
                    inserts.append({
                        "email": row.email, "email_key": key, "name": row.name,
                        "status": "active", "sections": _sections_json(row.sections),
                        "consent_at": now, "consent_method": "import", "hard_bounces": 0,
                        "created_at": now, "updated_at": now})
                elif found.status != "active":
                    # Pending too: a form sign-up waits for the person's own confirmation,
                    # which a file of addresses cannot give for them.
                    counts.skipped.append((row.line, found.status))
                else:
                    counts.merged += 1
                    if row.name and row.name != found.name:
                        renames.append({"b_id": found.id, "b_name": row.name})
            if inserts:
                conn.execute(s.subscribers.insert(), inserts)
                counts.added = len(inserts)
                added = [r["email_key"] for r in inserts]
                for i in range(0, len(added), _CHUNK):
                    # Every key was absent a moment ago in this transaction: these rows
                    # are the ones just inserted.
                    conn.execute(s.consent_events.insert().from_select(
                        ["subscriber_id", "at", "action", "actor", "reason"],
                        sa.select(_C.id, sa.literal(now, s.UTCDateTime), sa.literal("import"),
                                  sa.literal(actor), sa.literal(""))
                        .where(_C.email_key.in_(added[i:i + _CHUNK]))))
            if renames:
                conn.execute(s.subscribers.update().where(_C.id == sa.bindparam("b_id"))
                             .values(name=sa.bindparam("b_name"), updated_at=now), renames)
        return counts
