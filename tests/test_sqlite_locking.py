"""SQLite: a store transaction that reads before it writes takes the write lock first.

make_engine begins transactions with a deferred BEGIN unless `sqlite_immediate` is set. In
WAL mode a deferred transaction that has read holds a snapshot; when another connection
commits a write after that read, the transaction's first write cannot become the writer
(its snapshot is stale, SQLITE_BUSY_SNAPSHOT) and fails at once with "database is locked",
without waiting out busy_timeout. A send commits hundreds of times a second, so such a
transaction failed about as often as it ran during one (the admin API's pause did,
through record_issue_event).

These tests make that commit happen deterministically, without sleeps or threads: right
after the first statement of each store transaction, when that statement is a read,
another connection tries once, without waiting, to commit a write. It can while the
store's transaction holds no write lock (a deferred BEGIN); it is refused while the store's
transaction holds the lock (BEGIN IMMEDIATE), and writes afterwards as a send would.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from newsletter.models import (
    BounceNotice,
    BouncePolicy,
    Consent,
    ImportRow,
    Issue,
    IssueEventDraft,
    IssueSection,
    Settle,
)
from newsletter.store import schema as s
from newsletter.store.articles import FileRecord
from newsletter.store.database import Store
from tests.helpers.issues import art

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
_READS = ("SELECT", "PRAGMA")
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")


class Rival:
    """Another process's writer (a send settling a batch): one row into a table of its own,
    committed only if the write lock is free this instant (busy timeout 0)."""

    def __init__(self, path: Path) -> None:
        self.raw = sqlite3.connect(path, timeout=0, isolation_level=None)
        self.raw.execute("CREATE TABLE IF NOT EXISTS rival (n INTEGER)")
        self.committed = 0  # writes that landed while a store transaction was open
        self.refused = 0  # tries refused: a store transaction held the write lock

    def try_write(self) -> bool:
        try:
            self.raw.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            assert "database is locked" in str(exc)
            self.refused += 1
            return False
        self.raw.execute("INSERT INTO rival VALUES (1)")
        self.raw.execute("COMMIT")
        self.committed += 1
        return True

    def rows(self) -> int:
        return int(self.raw.execute("SELECT count(*) FROM rival").fetchone()[0])

    def close(self) -> None:
        self.raw.close()


@contextmanager
def rival_after_first_read(store: Store, rival: Rival) -> Iterator[None]:
    """While inside: after the first statement of each transaction on the store's engine,
    if that statement read, the rival tries to commit a write."""
    fresh: set[sa.Connection] = set()  # transactions that have run no statement yet

    def begun(conn: sa.Connection) -> None:
        fresh.add(conn)

    def executed(conn: sa.Connection, _cursor: Any, statement: str, *_: Any) -> None:
        if conn in fresh:
            fresh.discard(conn)
            if statement.lstrip().upper().startswith(_READS):
                rival.try_write()

    sa.event.listen(store.engine, "begin", begun)
    sa.event.listen(store.engine, "after_cursor_execute", executed)
    try:
        yield
    finally:
        sa.event.remove(store.engine, "after_cursor_execute", executed)
        sa.event.remove(store.engine, "begin", begun)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(f"sqlite:///{tmp_path / 'n.db'}")
    yield st
    st.close()


@pytest.fixture
def rival(tmp_path: Path, store: Store) -> Iterator[Rival]:
    r = Rival(tmp_path / "n.db")
    yield r
    r.close()


def _issue(store: Store, number: int = 1) -> Issue:
    a = art(number, "World", 2)
    store.save_articles([a], [], NOW)
    saved = store.articles_by_ids([a.id])
    issue = Issue(number=number, subject=f"Issue {number}", preheader="", created=NOW,
                  window_start=NOW - timedelta(days=7), window_end=NOW,
                  sections=(IssueSection("World", tuple(saved.values())),))
    return store.save_issue(issue, NOW)


def _subscriber(store: Store, n: int, status: str = "active") -> int:
    sub = store.add_subscriber(email=f"r{n}@example.org", email_key=f"r{n}@example.org",
                               name=f"Reader {n}", status=status, now=NOW,
                               consent_method="import")
    assert sub is not None
    return sub.id


def test_the_harness_reproduces_the_failure_with_a_deferred_begin(store: Store,
                                                                   rival: Rival) -> None:
    """record_issue_event as it was: a deferred transaction that looks the issue up, then
    inserts. The rival's commit between the two fails the insert at once."""
    issue = _issue(store)
    with rival_after_first_read(store, rival), \
            pytest.raises(sa.exc.OperationalError, match="database is locked"), \
            store.engine.begin() as conn:
        issue_id = conn.execute(sa.select(s.issues.c.id)
                                .where(s.issues.c.number == issue.number)).scalar_one()
        conn.execute(s.issue_events.insert().values(
            issue_id=issue_id, at=NOW, actor="api", action="pause", detail="{}"))
    assert (rival.committed, rival.refused) == (1, 0)
    assert store.issue_history(issue.number) == []


def test_record_issue_event_holds_the_write_lock_before_it_reads(store: Store,
                                                                 rival: Rival) -> None:
    # With a plain BEGIN (engine.begin()) this raised OperationalError "database is locked",
    # as the test above shows of the same statements.
    issue = _issue(store)
    with rival_after_first_read(store, rival):
        store.record_issue_event(issue.number, NOW, IssueEventDraft("api", "pause"))
    assert [e.action for e in store.issue_history(issue.number)] == ["pause"]
    assert (rival.committed, rival.refused) == (0, 1)  # it had to wait for the event
    assert rival.try_write() and rival.rows() == 1  # and then wrote


def test_remove_subscriber_holds_the_write_lock_before_it_reads(store: Store,
                                                                rival: Rival) -> None:
    # With a plain BEGIN: OperationalError "database is locked" on the DELETE.
    gone = _subscriber(store, 1)
    kept = _subscriber(store, 2)
    issue = _issue(store)
    assert issue.id is not None
    store.enqueue(issue.id, NOW)  # a delivery row: the second one is anonymised instead
    with store.engine.begin() as conn:
        conn.execute(s.deliveries.delete().where(s.deliveries.c.subscriber_id == gone))
    with rival_after_first_read(store, rival):
        assert store.remove_subscriber(gone, NOW) == "deleted"
        assert store.remove_subscriber(kept, NOW) == "anonymised"
    assert store.get_subscriber(gone) is None
    after = store.get_subscriber(kept)
    assert after is not None and (after.status, after.name) == ("unsubscribed", "")
    assert (rival.committed, rival.refused) == (0, 2)


def test_an_import_batch_holds_the_write_lock_before_it_reads(store: Store,
                                                              rival: Rival) -> None:
    # With a plain BEGIN: OperationalError "database is locked" on the INSERT.
    _subscriber(store, 1)
    rows = [ImportRow(i, f"r{i}@example.org", f"r{i}@example.org", f"New {i}", ())
            for i in (1, 2, 3)]
    with rival_after_first_read(store, rival):
        counts = store.merge_import_batch(rows, NOW, actor="admin")
    assert (counts.added, counts.merged) == (2, 1)
    assert (rival.committed, rival.refused) == (0, 1)


def test_recording_bounces_holds_the_write_lock_before_it_reads(store: Store,
                                                                rival: Rival) -> None:
    # With a plain BEGIN: OperationalError "database is locked" on the event's INSERT.
    sub = _subscriber(store, 1)
    issue = _issue(store)
    notice = BounceNotice(sub, issue.id, "hard", "5.1.1", "550 5.1.1 unknown user", "file",
                          "r1@example.org", "report-1")
    with rival_after_first_read(store, rival):
        assert store.record_bounces([notice], NOW, BouncePolicy()) == ["suppressed"]
    # The first transaction, which looks for the key already recorded, only reads: the
    # rival's commit after it is harmless. The one that records waits for no one.
    assert (rival.committed, rival.refused) == (1, 1)
    after = store.get_subscriber(sub)
    assert after is not None and after.status == "bounced"


@dataclass
class _Watch:
    """Per transaction: whether it asked for the write lock, and what it has run so far."""

    immediate: dict[sa.Connection, bool] = field(default_factory=dict)
    read: set[sa.Connection] = field(default_factory=set)
    wrote: set[sa.Connection] = field(default_factory=set)
    found: list[str] = field(default_factory=list)  # writes after a read, lock not held


@contextmanager
def watch_transactions(store: Store) -> Iterator[_Watch]:
    """Note every deferred transaction whose first write comes after a read: each is one
    commit by a send away from failing with "database is locked"."""
    w = _Watch()

    def begun(conn: sa.Connection) -> None:
        w.immediate[conn] = bool(conn.get_execution_options().get("sqlite_immediate"))
        w.read.discard(conn)
        w.wrote.discard(conn)

    def executing(conn: sa.Connection, _cursor: Any, statement: str, *_: Any) -> None:
        verb = statement.lstrip().upper()
        if verb.startswith(_READS):
            if conn not in w.wrote:
                w.read.add(conn)
        elif verb.startswith(_WRITES):
            if conn in w.read and conn not in w.wrote and not w.immediate.get(conn):
                w.found.append(" ".join(statement.split())[:120])
            w.wrote.add(conn)
        else:
            raise AssertionError(f"a statement neither read nor write: {statement[:80]}")

    sa.event.listen(store.engine, "begin", begun)
    sa.event.listen(store.engine, "before_cursor_execute", executing)
    try:
        yield w
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", executing)
        sa.event.remove(store.engine, "begin", begun)


def test_no_store_transaction_reads_then_writes_without_the_write_lock(store: Store) -> None:
    """Every write the store makes, in one run: none comes after a read in a deferred
    transaction (a new one would fail here before it fails in a send)."""
    later = NOW + timedelta(hours=1)
    with watch_transactions(store) as w:
        # articles and collector state
        a, b = art(1, "World", 2), art(2, "Tech", 3)
        store.save_articles([a, b], [], NOW)
        store.save_articles([], [art(2, "Tech", 1)], NOW)
        store.save_file_records({"/f/a.md": FileRecord(1, 2, a.key, None)})
        store.forget_files(["/f/a.md"])
        store.save_feed_state("https://feed.example.org/", etag="x", gone=False)
        store.save_feed_state("https://feed.example.org/", etag="y", gone=False)
        store.record_collect(NOW, NOW, 2, 0, 0)
        # issues and their history
        issue = _issue(store, 7)
        assert issue.id is not None
        issue.subject = "Edited"
        assert store.replace_issue_if(issue, NOW, statuses=("draft",),
                                      event=IssueEventDraft("editor", "edit"))
        assert store.set_issue_fields(7, NOW, approved_at=NOW, approved_by="editor")
        store.record_issue_event(7, NOW, IssueEventDraft("editor", "approve"))
        assert store.set_issue_status(7, "sending", NOW, expect=("draft",), send_at=NOW)
        assert store.remove_articles([b.key, art(7, "World", 2).key]) == 1  # the issue holds 7
        # subscribers and consent
        ids = [_subscriber(store, n) for n in range(1, 6)]
        pending = _subscriber(store, 9, status="pending")
        store.record_consent(ids[0], NOW, Consent("admin", actor="admin"))
        assert store.claim_confirmation(pending, NOW, timedelta(hours=1))
        assert store.activate_subscriber(pending, NOW, consent=Consent("confirm"))
        assert store.set_subscriber_sections(ids[1], ("World",), NOW)
        store.merge_import_batch([ImportRow(1, "new@example.org", "new@example.org", "N", ()),
                                  ImportRow(2, "r1@example.org", "r1@example.org", "R", ())],
                                 NOW, actor="admin")
        # a send
        assert store.enqueue(issue.id, NOW) == 7
        claimed = store.claim(issue.id, "w1", 10, timedelta(minutes=5), NOW)
        assert len(claimed) == 7
        store.renew("w1", [c.delivery_id for c in claimed], later, NOW)
        store.settle([Settle(c.delivery_id, c.subscriber_id, "sent", 250, "250 ok")
                      for c in claimed[:4]]
                     + [Settle(claimed[4].delivery_id, claimed[4].subscriber_id, "failed",
                               550, "550 5.1.1 unknown", hard_bounce=True),
                        Settle(claimed[5].delivery_id, claimed[5].subscriber_id, "deferred",
                               451, "451 later", next_attempt_at=later)], NOW, 1)
        assert store.release("w1", NOW, later, "worker stopped") == 1
        assert store.cancel_rows(issue.id, NOW) == 2
        # what comes back
        sub = claimed[0].subscriber_id
        store.record_bounces([BounceNotice(sub, issue.id, kind, "", "x", "file", "r@x", key)
                              for kind, key in (("soft", "k1"), ("complaint", "k2"),
                                                ("hard", "k3"))], NOW, BouncePolicy())
        store.record_hard_bounce(claimed[1].subscriber_id, NOW, 5)
        assert store.unsubscribe_subscriber(claimed[2].subscriber_id, NOW)
        assert store.remove_subscriber(claimed[3].subscriber_id, NOW) == "anonymised"
        assert store.remove_subscriber(pending, NOW) in ("deleted", "anonymised")
        # dashboard sessions
        store.create_session("s1", now=NOW, expires_at=later)
        assert store.revoke_session("s1", NOW)
        store.create_session("s2", now=NOW, expires_at=NOW)
        store.revoke_all_sessions(NOW)
        store.prune_sessions(later)
        # retention: a later issue holds every reader, so this one's rows may go
        assert store.set_issue_status(7, "sent", NOW)
        nxt = _issue(store, 8)
        assert nxt.id is not None
        store.enqueue(nxt.id, NOW)
        removed, _, _ = store.prune_batch(issue.id, later, 0, 100)
        assert removed > 0
    assert w.found == []


def test_the_scheduler_drops_a_job_it_cannot_load_while_a_send_commits(
        store: Store, rival: Rival, make_settings: Any) -> None:
    # APScheduler's own _get_jobs read and then deleted in one deferred transaction: with
    # the rival's commit in between, its DELETE failed with "database is locked".
    from newsletter.pipeline.schedule import JOBS_TABLE, make_scheduler, register_jobs

    settings = make_settings()
    scheduler = make_scheduler(settings, store)
    scheduler.start(paused=True)
    try:
        register_jobs(scheduler, settings)
        loaded = {j.id for j in scheduler.get_jobs()}
        assert loaded
        with store.engine.begin() as conn:  # a job pickled by a version that is gone
            conn.execute(sa.text(f"INSERT INTO {JOBS_TABLE} (id, next_run_time, job_state) "
                                 "VALUES ('renamed', 0, :state)"), {"state": b"not a pickle"})
        with rival_after_first_read(store, rival):
            assert {j.id for j in scheduler.get_jobs()} == loaded
        assert rival.committed == 1  # the commit landed between the read and the delete
        with store.engine.connect() as conn:
            ids = {r[0] for r in conn.execute(sa.text(f"SELECT id FROM {JOBS_TABLE}"))}
        assert ids == loaded  # the broken job is gone, the others stay
    finally:
        scheduler.shutdown(wait=False)
