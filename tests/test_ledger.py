"""Ledger queries on SQLite and PostgreSQL: set-based enqueue, leases, settling, bounces, locks."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from newsletter.deliver.engine import Policy, SendResult, settle_for
from newsletter.models import ISSUE_STATUSES, Issue, Settle
from newsletter.store import schema as s
from newsletter.store.database import Store
from newsletter.store.leader import DatabaseLock

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def seeded(url: str, active: int = 5, other: int = 2) -> tuple[Store, int]:
    store = Store(url)
    rows = [{"email": f"r{i}@example.org", "email_key": f"r{i}@example.org", "name": f"R {i}",
             "status": "active" if i < active else "unsubscribed", "sections": "[]",
             "hard_bounces": 0, "created_at": T0, "updated_at": T0}
            for i in range(active + other)]
    with store.engine.begin() as conn:
        conn.execute(s.subscribers.insert(), rows)
    issue = store.save_issue(Issue(number=1, subject="S", preheader="", created=T0,
                                   window_start=T0, window_end=T0, sections=()), T0)
    assert issue.id is not None
    return store, issue.id


def test_enqueue_is_set_based_and_idempotent(db_url: str) -> None:
    store, issue_id = seeded(db_url)
    assert store.enqueue(issue_id, T0) == 5
    assert store.enqueue(issue_id, T0) == 0  # unique (issue, subscriber): no second row
    assert store.delivery_counts(issue_id)["queued"] == 5
    store.close()


def test_claims_do_not_overlap_and_expired_leases_return(db_url: str) -> None:
    store, issue_id = seeded(db_url)
    store.enqueue(issue_id, T0)
    a = store.claim(issue_id, "a", 3, timedelta(minutes=5), T0)
    b = store.claim(issue_id, "b", 3, timedelta(minutes=5), T0)
    assert len(a) == 3 and len(b) == 2
    assert not {r.delivery_id for r in a} & {r.delivery_id for r in b}
    assert store.claim(issue_id, "c", 10, timedelta(minutes=5), T0) == []
    # Worker "a" dies: after its lease runs out its rows are claimable again, and only those.
    later = T0 + timedelta(minutes=6)
    store.settle([Settle(r.delivery_id, r.subscriber_id, "sent", 250, "ok") for r in b], T0, 1)
    c = store.claim(issue_id, "c", 10, timedelta(minutes=5), later)
    assert {r.delivery_id for r in c} == {r.delivery_id for r in a}
    store.close()


def test_settle_never_downgrades_a_sent_row(db_url: str) -> None:
    store, issue_id = seeded(db_url, active=1, other=0)
    store.enqueue(issue_id, T0)
    [row] = store.claim(issue_id, "a", 1, timedelta(minutes=5), T0)
    store.settle([Settle(row.delivery_id, row.subscriber_id, "sent", 250, "ok")], T0, 1)
    store.settle([Settle(row.delivery_id, row.subscriber_id, "deferred", 451, "late",
                         next_attempt_at=T0)], T0, 1)
    assert store.delivery_counts(issue_id)["sent"] == 1
    store.close()


def test_settle_stores_times_as_every_other_write_does(db_url: str) -> None:
    # Settle bypasses SQLAlchemy's statement layer; its times must still be stored in the
    # column's own format (SQLite: fixed-width text compared as strings by the claim) and
    # come back as the same aware instants, whole seconds included.
    store, issue_id = seeded(db_url, active=2, other=0)
    store.enqueue(issue_id, T0)  # written through SQLAlchemy: the reference format
    a, b = store.claim(issue_id, "a", 2, timedelta(minutes=5), T0)
    retry = T0 + timedelta(minutes=5)
    store.settle([Settle(a.delivery_id, a.subscriber_id, "sent", 250, "ok"),
                  Settle(b.delivery_id, b.subscriber_id, "deferred", 451, "busy",
                         next_attempt_at=retry)], T0, 1)
    d = s.deliveries.c
    with store.engine.connect() as conn:
        typed = {r.id: r for r in conn.execute(
            sa.select(d.id, d.sent_at, d.updated_at, d.first_attempt_at, d.next_attempt_at))}
        raw = conn.execute(sa.select(sa.cast(d.updated_at, sa.Text),
                                     sa.cast(d.next_attempt_at, sa.Text))
                           .where(d.id == b.delivery_id)).one()
    assert typed[a.delivery_id].sent_at == T0 and typed[a.delivery_id].first_attempt_at == T0
    assert typed[b.delivery_id].sent_at is None and typed[b.delivery_id].next_attempt_at == retry
    if store.engine.dialect.name == "sqlite":
        assert raw == ("2026-11-20 09:00:00.000000", "2026-11-20 09:05:00.000000")
    # The deferred row is due exactly at its retry time, not a moment before or after.
    assert store.claim(issue_id, "b", 5, timedelta(minutes=5), retry - timedelta(seconds=1)) == []
    assert [r.delivery_id for r in store.claim(issue_id, "b", 5, timedelta(minutes=5), retry)] \
        == [b.delivery_id]
    store.close()


def test_backoff_give_up_and_hard_bounce(db_url: str) -> None:
    store, issue_id = seeded(db_url, active=2, other=0)
    store.enqueue(issue_id, T0)
    policy = Policy(retry_initial=timedelta(minutes=5), retry_max=timedelta(minutes=30),
                    give_up_after=timedelta(days=4), max_hard_bounces=1)
    r1, r2 = store.claim(issue_id, "a", 2, timedelta(minutes=5), T0)
    deferred = settle_for(r1, SendResult("deferred", 451, "busy"), policy, T0)
    assert deferred.status == "deferred" and deferred.next_attempt_at == T0 + timedelta(minutes=5)
    bounced = settle_for(r2, SendResult("failed", 550, "no such user"), policy, T0)
    assert bounced.hard_bounce
    store.settle([deferred, bounced], T0, 1)
    with store.engine.connect() as conn:
        status = conn.execute(sa.select(s.subscribers.c.status)
                              .where(s.subscribers.c.id == r2.subscriber_id)).scalar()
    assert status == "bounced"
    # Not due yet; then due, with the wait doubling each attempt up to the cap.
    assert store.claim(issue_id, "a", 5, timedelta(minutes=5), T0) == []
    [again] = store.claim(issue_id, "a", 5, timedelta(minutes=5), T0 + timedelta(minutes=5))
    assert again.attempts == 1
    second = settle_for(again, SendResult("deferred", 451, "busy"), policy, T0)
    assert second.next_attempt_at == T0 + timedelta(minutes=10)
    # Past the give-up time a deferral becomes a failure, with the reason kept.
    late = settle_for(again, SendResult("deferred", 451, "busy"), policy,
                      T0 + timedelta(days=4, minutes=1))
    assert late.status == "failed" and "gave up" in late.reply
    store.close()


def test_a_replayed_settle_counts_a_hard_bounce_once(db_url: str) -> None:
    # A commit whose reply was lost is retried by the engine: the same outcome settles twice.
    store, issue_id = seeded(db_url, active=1, other=0)
    store.enqueue(issue_id, T0)
    [row] = store.claim(issue_id, "a", 1, timedelta(minutes=5), T0)
    bounced = settle_for(row, SendResult("failed", 550, "550 5.1.1 no such user"), Policy(), T0)
    store.settle([bounced], T0, 2)
    store.settle([bounced], T0, 2)
    with store.engine.connect() as conn:
        hard, status = conn.execute(sa.select(s.subscribers.c.hard_bounces, s.subscribers.c.status)
                                    .where(s.subscribers.c.id == row.subscriber_id)).one()
    assert (hard, status) == (1, "active")  # one of the two max_hard_bounces, not both
    assert [(e.kind, e.status, e.source) for e in store.list_bounces()] == [
        ("hard", "5.1.1", "smtp")]
    store.close()


def test_release_defers_what_a_worker_holds(db_url: str) -> None:
    store, issue_id = seeded(db_url)
    store.enqueue(issue_id, T0)
    store.claim(issue_id, "a", 4, timedelta(minutes=5), T0)
    assert store.release("a", T0, T0 + timedelta(minutes=5), "421 busy") == 4
    counts = store.delivery_counts(issue_id)
    assert counts["deferred"] == 4 and counts["queued"] == 1 and counts["sending"] == 0
    assert store.next_due(issue_id) == T0
    store.close()


def test_workers_poll_only_issues_being_sent_with_a_row_due(db_url: str) -> None:
    store, first = seeded(db_url, active=3, other=0)

    def issue(number: int, status: str) -> int:
        made = store.save_issue(Issue(number=number, subject="S", preheader="", created=T0,
                                      window_start=T0, window_end=T0, sections=()), T0)
        assert made.id is not None
        store.enqueue(made.id, T0)
        store.set_issue_status(number, status, T0)
        return made.id

    store.enqueue(first, T0)
    store.set_issue_status(1, "sending", T0)  # queued rows, due: polled
    later = issue(2, "sending")
    paused = issue(3, "paused")  # due rows, but not being sent
    done = issue(4, "sending")
    lease = timedelta(minutes=5)
    rows = store.claim(later, "a", 10, lease, T0)
    store.settle([Settle(r.delivery_id, r.subscriber_id, "deferred", 451, "busy",
                         next_attempt_at=T0 + timedelta(hours=1)) for r in rows], T0, 1)
    store.settle([Settle(r.delivery_id, r.subscriber_id, "sent", 250, "ok")
                  for r in store.claim(done, "a", 10, lease, T0)], T0, 1)
    held = store.claim(first, "a", 10, lease, T0)  # all of issue 1 leased to a live worker
    assert len(held) == 3 and paused
    assert store.issues_with_due_rows(T0) == []
    # The lease runs out (the worker died): issue 1 is due again; issue 2's retry is not yet.
    assert store.issues_with_due_rows(T0 + timedelta(minutes=6)) == [first]
    assert sorted(store.issues_with_due_rows(T0 + timedelta(hours=2))) == sorted([first, later])
    store.close()


def test_totals_for_metrics_name_every_status_and_count_sends_in_a_window(db_url: str) -> None:
    store, issue_id = seeded(db_url, active=3, other=0)
    assert store.delivery_totals() == dict.fromkeys(s.DELIVERY_STATUSES, 0)
    assert store.count_issues() == {**dict.fromkeys(ISSUE_STATUSES, 0), "draft": 1}
    store.enqueue(issue_id, T0)
    rows = store.claim(issue_id, "a", 3, timedelta(minutes=5), T0)
    sent_at = T0 + timedelta(seconds=30)
    store.settle([Settle(r.delivery_id, r.subscriber_id, "sent", 250, "ok") for r in rows[:2]],
                 sent_at, 1)
    assert store.delivery_totals() == {**dict.fromkeys(s.DELIVERY_STATUSES, 0),
                                       "sent": 2, "sending": 1}
    # After the start, up to and including the end: what /metrics calls the last minute.
    assert store.sent_between(sent_at - timedelta(seconds=60), sent_at) == 2
    assert store.sent_between(sent_at, sent_at + timedelta(seconds=60)) == 0
    # The query groups are the Store's own methods, over its one engine.
    assert store.ledger.sent_between(T0, sent_at) == 2
    assert store.ledger.engine is store.subscribers.engine is store.engine
    store.close()


def test_the_scheduler_lock_has_one_holder_until_released(db_url: str) -> None:
    first, second = Store(db_url), Store(db_url, migrate=False)
    a, b = DatabaseLock(first.engine), DatabaseLock(second.engine)
    try:
        assert a.try_take() and a.held and a.alive()
        assert not b.try_take() and not b.held
        a.release()
        assert not a.held
        # PostgreSQL frees an advisory lock once the server has ended the closed session.
        deadline = time.monotonic() + 10
        while not b.try_take() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.held
        assert not a.try_take()
    finally:
        a.release()
        b.release()
        first.close()
        second.close()
