"""The kept delivery counts against a full recount: every transition, kills, no ledger reads."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from smtpserver import SmtpTestServer

from newsletter import pipeline
from newsletter.cli.main import cli
from newsletter.config import Settings
from newsletter.models import DELIVERY_STATUSES, Issue, Settle
from newsletter.pipeline import sending
from newsletter.store import counting, migrations
from newsletter.store import schema as s
from newsletter.store.database import Store
from tests.helpers.admin import TOKEN, login, serve
from tests.helpers.sending import seed as seed_readers
from tests.helpers.sending import send_killed_until_done, smtp_settings
from tests.helpers.waiting import wait_for

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)
Counts = dict[int, dict[str, int]]


def _zeros() -> dict[str, int]:
    return dict.fromkeys(DELIVERY_STATUSES, 0)


def kept_and_recounted(store: Store) -> tuple[Counts, Counts]:
    """The kept counts and a full recount of the ledger, read in one snapshot while writers
    may be running (PostgreSQL: one REPEATABLE READ transaction; SQLite: one read
    transaction of the WAL)."""
    c, d = s.delivery_counts.c, s.deliveries.c
    options = {"isolation_level": "REPEATABLE READ"} if store.engine.dialect.name == "postgresql" \
        else {}
    kept: Counts = {}
    recounted: Counts = {}
    with store.engine.connect().execution_options(**options) as conn, conn.begin():
        for issue_id, *sums in conn.execute(
                sa.select(c.issue_id, *(sa.func.sum(c[x]) for x in DELIVERY_STATUSES))
                .group_by(c.issue_id)):
            kept[issue_id] = {x: int(n) for x, n in zip(DELIVERY_STATUSES, sums, strict=True)}
        for issue_id, status, n in conn.execute(
                sa.select(d.issue_id, d.status, sa.func.count()).group_by(d.issue_id, d.status)):
            recounted.setdefault(issue_id, _zeros())[status] = n
    return kept, recounted


def assert_agree(store: Store, *, writers: bool = False) -> Counts:
    """The kept counts equal a recount; with no `writers` running, the store's own reads
    (delivery_counts, delivery_totals) say the same."""
    kept, recounted = kept_and_recounted(store)
    for issue_id in kept.keys() - recounted.keys():  # every row of it removed, or none made
        recounted[issue_id] = _zeros()
    assert kept == recounted
    if writers:
        return recounted
    totals = _zeros()
    for counts in recounted.values():
        for status, n in counts.items():
            totals[status] += n
    assert store.delivery_totals() == totals
    for issue_id, counts in recounted.items():
        assert store.delivery_counts(issue_id) == counts
    return recounted


def seeded(url: str, active: int) -> tuple[Store, int]:
    store = Store(url)
    rows = [{"email": f"r{i}@example.org", "email_key": f"r{i}@example.org", "name": "",
             "status": "active", "sections": "[]", "hard_bounces": 0,
             "created_at": T0, "updated_at": T0} for i in range(active)]
    with store.engine.begin() as conn:
        conn.execute(s.subscribers.insert(), rows)
    return store, _issue(store, 1)


def _issue(store: Store, number: int) -> int:
    issue = store.save_issue(Issue(number=number, subject="S", preheader="", created=T0,
                                   window_start=T0, window_end=T0, sections=()), T0)
    assert issue.id is not None
    return issue.id


def test_the_counts_columns_are_the_statuses() -> None:
    assert tuple(c.name for c in s.delivery_counts.c)[2:] == DELIVERY_STATUSES


def test_counts_follow_every_transition(db_url: str) -> None:
    store, issue_id = seeded(db_url, active=6)
    assert store.delivery_counts(issue_id) == _zeros()
    assert store.enqueue(issue_id, T0) == 6
    assert assert_agree(store)[issue_id]["queued"] == 6
    assert store.enqueue(issue_id, T0) == 0  # ON CONFLICT DO NOTHING: nothing to count
    a = store.claim(issue_id, "a", 4, LEASE, T0)
    assert assert_agree(store)[issue_id] == {**_zeros(), "queued": 2, "sending": 4}
    # Each way an attempt can end, in one group commit; a hard bounce with it.
    outcomes = [Settle(a[0].delivery_id, a[0].subscriber_id, "sent", 250, "ok"),
                Settle(a[1].delivery_id, a[1].subscriber_id, "deferred", 451, "busy",
                       next_attempt_at=T0 + timedelta(hours=1)),
                Settle(a[2].delivery_id, a[2].subscriber_id, "failed", 550, "5.1.1 gone",
                       hard_bounce=True),
                Settle(a[3].delivery_id, a[3].subscriber_id, "skipped", None, "no section")]
    store.settle(outcomes, T0, 1)
    after = {**_zeros(), "queued": 2, "sent": 1, "deferred": 1, "failed": 1, "skipped": 1}
    assert assert_agree(store)[issue_id] == after
    # A replayed commit (its reply lost, then tried again): nothing moves twice.
    store.settle(outcomes, T0 + timedelta(seconds=5), 1)
    assert assert_agree(store)[issue_id] == after
    b = store.claim(issue_id, "b", 10, LEASE, T0)
    assert len(b) == 2
    assert store.release("b", T0, T0, "stopping") == 2  # sending → deferred
    assert assert_agree(store)[issue_id] == {**after, "queued": 0, "deferred": 3}
    later = T0 + timedelta(hours=2)
    c = store.claim(issue_id, "c", 10, LEASE, later)  # the three deferred rows, due again
    assert len(c) == 3 and assert_agree(store)[issue_id]["sending"] == 3
    # Worker c dies; its lease runs out and d takes the rows over: sending → sending.
    d = store.claim(issue_id, "d", 10, LEASE, later + LEASE + timedelta(seconds=1))
    assert {r.delivery_id for r in d} == {r.delivery_id for r in c}
    assert assert_agree(store)[issue_id]["sending"] == 3
    # c's late outcome for a row d holds is still recorded (settle does not check the owner).
    store.settle([Settle(c[0].delivery_id, c[0].subscriber_id, "sent", 250, "ok")], later, 1)
    assert assert_agree(store)[issue_id] == {**after, "queued": 0, "deferred": 0,
                                             "sending": 2, "sent": 2}
    store.release("d", later, later, "stopping")
    assert store.cancel_rows(issue_id, later) == 2  # deferred → skipped
    assert assert_agree(store)[issue_id] == {**after, "queued": 0, "deferred": 0,
                                             "sent": 2, "skipped": 3}
    # An operator's own SQL moves the counts too: failed rows queued again by hand.
    with store.engine.begin() as conn:
        conn.execute(s.deliveries.update().where(s.deliveries.c.status == "failed")
                     .values(status="queued"))
    assert assert_agree(store)[issue_id]["queued"] == 1
    # A row moved to another issue leaves one count and joins the other.
    other = _issue(store, 2)
    with store.engine.begin() as conn:
        conn.execute(s.deliveries.update().where(s.deliveries.c.id == a[0].delivery_id)
                     .values(issue_id=other))
    assert assert_agree(store)[other] == {**_zeros(), "sent": 1}
    # Retention removes rows: the counts stay, the record of what was sent.
    before = store.delivery_counts(issue_id)
    with store.engine.begin() as conn:
        conn.execute(s.deliveries.delete().where(s.deliveries.c.issue_id == issue_id))
    assert store.delivery_counts(issue_id) == before and sum(before.values()) == 5
    store.close()


def test_migration_8_counts_the_rows_already_there(db_url: str) -> None:
    store = Store(db_url, migrate=False)
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        with store.engine.connect() as conn:
            assert migrations.migrate(conn, target=7)[-1] == 7
        rows = [{"email": f"r{i}@example.org", "email_key": f"r{i}@example.org", "name": "",
                 "status": "active", "sections": "[]", "hard_bounces": 0,
                 "created_at": T0, "updated_at": T0} for i in range(8)]
        with store.engine.begin() as conn:
            conn.execute(s.subscribers.insert(), rows)
        first, second = _issue(store, 1), _issue(store, 2)
        store.enqueue(first, now)
        store.enqueue(second, now)
        d = s.deliveries.c
        ids = sorted(r.delivery_id for r in store.claim(first, "a", 8, LEASE, now))
        with store.engine.begin() as conn:  # as v7's settle left them
            for i, (status, at) in enumerate([("sent", now - timedelta(seconds=30)),
                                              ("sent", now - timedelta(seconds=30)),
                                              ("sent", now - timedelta(hours=3)),
                                              ("failed", None), ("deferred", None)]):
                conn.execute(s.deliveries.update().where(d.id == ids[i])
                             .values(status=status, sent_at=at))
        with store.engine.connect() as conn:
            assert migrations.migrate(conn) == [8]
        assert assert_agree(store)[first] == {**_zeros(), "sent": 3, "failed": 1,
                                              "deferred": 1, "sending": 3}
        assert store.delivery_counts(second)["queued"] == 8
        # The sends of the last hour are in the ring; the one three hours ago is not.
        assert store.sent_between(now - timedelta(minutes=1), now) == 2
        assert store.sent_between(now - timedelta(minutes=59), now) == 2
        store.settle([Settle(ids[5], 0, "sent", 250, "ok")], now, 1)
        assert assert_agree(store)[first]["sent"] == 4
        assert store.sent_between(now - timedelta(minutes=1), now) == 3
    finally:
        store.close()


def test_the_send_rate_reads_a_ring_of_seconds(db_url: str) -> None:
    store, issue_id = seeded(db_url, active=6)
    store.enqueue(issue_id, T0)
    rows = store.claim(issue_id, "a", 6, LEASE, T0)

    def sent(i: int, at: datetime) -> None:
        store.settle([Settle(rows[i].delivery_id, rows[i].subscriber_id, "sent", 250, "ok")],
                     at, 1)

    def between(a: float, b: float) -> int:
        return store.sent_between(T0 + timedelta(seconds=a), T0 + timedelta(seconds=b))

    sent(0, T0 + timedelta(seconds=10, microseconds=999_999))
    sent(1, T0 + timedelta(seconds=10))
    sent(2, T0 + timedelta(seconds=40))
    sent(3, T0 + timedelta(seconds=70))
    # After the start's second, up to and including the end's.
    assert (between(9, 70), between(10, 70), between(40, 100), between(70, 130)) == (4, 2, 1, 0)
    sent(0, T0 + timedelta(seconds=75))  # a replay: already sent, not counted again
    assert between(0, 100) == 4
    # Longer than the ring: the ledger answers instead, rightly.
    assert between(-counting.SEND_SLOTS, 100) == 4
    # A ring's turn later the slot of second 10 holds a newer second: the window of second
    # 10 is no longer in the ring and the ledger answers it.
    turn = counting.SEND_SLOTS
    sent(4, T0 + timedelta(seconds=turn + 10))
    assert between(9, 70) == 4 and between(turn + 9, turn + 70) == 1
    # A clock behind writes an older second into that slot: it is left out, not mixed in.
    sent(5, T0 + timedelta(seconds=10))
    assert between(turn + 9, turn + 70) == 1
    store.close()


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every statement any engine of this process sends while inside (the web app's
    threads and the CLI's own store included)."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", note)


def test_status_and_metrics_read_no_ledger_row(make_settings: Callable[..., Settings],
                                               db_url: str, tmp_path: Path) -> None:
    """/metrics, /admin/api/status, the dashboard and `newsletter status` read the kept
    counts: no statement of theirs names the ledger, so their cost does not grow with it."""
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n',
                             database_url=db_url)
    settings = replace(settings, secrets=replace(settings.secrets, admin_token=TOKEN))
    store = pipeline.open_store(settings)
    seed_readers(store, 5)
    issue = pipeline.build_issue(settings, store).issue
    assert issue is not None and issue.id is not None
    sending.start_sending(settings, store, issue)
    sending.run_worker(settings, store, issue)
    with serve(settings, store, tmp_path) as site, login(site) as browser, \
            statements() as seen:
        metrics = site.api.get("/metrics")
        status = site.api.get("/admin/api/status")
        dashboard = browser.get("/admin/")
        cli_status = CliRunner().invoke(cli, ["--config", str(settings.path), "status"])
    assert metrics.status_code == status.status_code == dashboard.status_code == 200
    assert cli_status.exit_code == 0, cli_status.output
    assert 'newsletter_deliveries{status="sent"} 5.0' in metrics.text
    assert status.json()["issues"][0]["counts"]["sent"] == 5
    assert "sent 5/5" in cli_status.output
    assert [q for q in seen if re.search(r"\bdeliveries\b", q)] == []
    assert any("delivery_counts" in q for q in seen) and any("delivery_sends" in q for q in seen)
    store.close()


# -- kills ---------------------------------------------------------------------------------------

def _finished(store: Store, issue_id: int) -> int:
    """Rows of the issue sent or failed, counted in the ledger itself."""
    d = s.deliveries.c
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(s.deliveries).where(
            d.issue_id == issue_id, d.status.in_(("sent", "failed")))).scalar_one())


@pytest.mark.postgres
@pytest.mark.slow
def test_counts_match_a_recount_after_workers_are_killed(
        make_settings: Callable[..., Settings], pg_url: str, tmp_path: Path) -> None:
    """Three `newsletter worker` processes on PostgreSQL, two SIGKILLed mid-send (and
    replaced): after each kill and at the end the kept counts equal a full recount, the
    sends ring holds every message sent once, and the workers wrote several shards."""
    total = 3000
    refused = {f"reader{i}@example.org": 550 for i in range(7, total, 300)}  # failed at RCPT
    with SmtpTestServer(rcpt_codes=refused, data_codes={"reader11@example.org": 554}) as srv:
        settings = smtp_settings(make_settings, srv, "retry_max = 2\nbatch_size = 100",
                                 database_url=pg_url)
        store = Store(pg_url)
        seed_readers(store, total)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None and issue.id is not None
        sending.start_sending(settings, store, issue)
        cmd = [sys.executable, "-m", "newsletter", "--config", str(settings.path),
               "--log-level", "WARNING", "worker", "--poll", "0.2"]
        workers = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for _ in range(3)]
        try:
            for share in (25, 60):
                wait_for(lambda share=share: len(srv.messages) >= total * share // 100, 240,
                         f"{share}% received")
                victim = workers.pop(0)
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait(timeout=10)
                # What the killed process had not committed is in neither; the others run.
                assert_agree(store, writers=True)
                workers.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL))
            wait_for(lambda: _finished(store, issue.id) == total, 300,
                     "every row sent or failed")
        finally:
            for proc in workers:
                proc.send_signal(signal.SIGTERM)
            for proc in workers:
                proc.wait(timeout=30)
        failed = len(refused) + 1
        assert assert_agree(store)[issue.id] == {**_zeros(), "sent": total - failed,
                                                 "failed": failed}
        with store.engine.connect() as conn:
            shards = conn.execute(sa.select(sa.func.count()).select_from(s.delivery_counts)
                                  .where(s.delivery_counts.c.issue_id == issue.id)).scalar_one()
            ring = conn.execute(sa.select(sa.func.sum(s.delivery_sends.c.n))).scalar_one()
        assert shards >= 3  # the enqueue's session and at least two workers'
        assert ring == total - failed  # each row made sent once, whatever was sent twice
        assert store.get_issue(issue.number, with_articles=False).status == "sent"
        store.close()


@pytest.mark.slow
def test_counts_match_a_recount_after_sqlite_sends_are_killed(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """`newsletter issue send` on SQLite SIGKILLed at random moments and started again
    until done: the counts equal a recount after every kill and at the end."""
    total = 600  # killed after at most 200 more each time: at least twice before the end
    with SmtpTestServer(rcpt_codes={"reader5@example.org": 550}) as srv:
        settings = smtp_settings(make_settings, srv, "retry_max = 2")
        store = pipeline.open_store(settings)
        seed_readers(store, total)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None and issue.id is not None
        kills = send_killed_until_done(settings, issue.number, srv, random.Random(19), 200,
                                       lambda: assert_agree(store))
        assert kills >= 2
        assert assert_agree(store)[issue.id] == {**_zeros(), "sent": total - 1, "failed": 1}
        with store.engine.connect() as conn:
            ring = conn.execute(sa.select(sa.func.sum(s.delivery_sends.c.n))).scalar_one()
        assert ring == total - 1
        store.close()
