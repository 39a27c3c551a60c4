"""Ledger retention: old finished issues' rows pruned in batches, promises kept, files shrunk."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from smtpserver import SmtpTestServer

from newsletter import pipeline
from newsletter.cli.main import cli
from newsletter.config import Settings, load_settings
from newsletter.errors import ConfigError, NewsletterError
from newsletter.pipeline import maintenance, schedule, scheduling, sending
from newsletter.store import retention
from newsletter.store import schema as s
from newsletter.store.database import Store
from tests.helpers.schedule import register_stopped, set_stored_next_run
from tests.helpers.sending import smtp_toml

NOW = datetime.now(UTC)
DAY = timedelta(days=1)


def add_subscribers(store: Store, ids: Iterable[int], status: str = "active") -> None:
    with store.engine.begin() as conn:
        conn.execute(s.subscribers.insert(), [
            {"id": i, "email": f"r{i}@example.org", "email_key": f"r{i}@example.org",
             "name": f"Reader {i}", "status": status, "sections": "[]", "hard_bounces": 0,
             "created_at": NOW - 500 * DAY, "updated_at": NOW - 500 * DAY} for i in ids])


def add_issue(store: Store, number: int, status: str, finished: datetime, readers: range, *,
              reply: str = "250 ok") -> int:
    """An issue as a send leaves it, finished at `finished`, with one row per reader (one
    INSERT … SELECT, as an enqueue writes them)."""
    sub = s.subscribers.c
    with store.engine.begin() as conn:
        issue_id = int(conn.execute(s.issues.insert().values(
            number=number, status=status, subject=f"Issue {number}", preheader="",
            created=finished - DAY, window_start=finished - 8 * DAY, window_end=finished - DAY,
            html="<p>kept for the archive</p>", text="kept", send_at=finished - DAY,
            updated_at=finished).returning(s.issues.c.id)).scalar_one())
        sent = sa.literal(finished - DAY, s.UTCDateTime())
        conn.execute(s.deliveries.insert().from_select(
            ["issue_id", "subscriber_id", "status", "attempts", "next_attempt_at",
             "first_attempt_at", "last_code", "last_reply", "sent_at", "updated_at"],
            sa.select(sa.literal(issue_id), sub.id, sa.literal("sent"), sa.literal(1), sent,
                      sent, sa.literal(250), sa.literal(reply), sent,
                      sa.literal(finished, s.UTCDateTime()))
            .where(sub.id >= readers.start, sub.id < readers.stop)))
    return issue_id


def ledger(store: Store, issue_id: int) -> set[int]:
    with store.engine.connect() as conn:
        return set(conn.execute(sa.select(s.deliveries.c.subscriber_id)
                                .where(s.deliveries.c.issue_id == issue_id)).scalars())


def settings_for(make_settings: Callable[..., Settings], db_url: str,
                 extra: str = "") -> Settings:
    return make_settings(extra, database_url=db_url)


def test_prune_keeps_what_sends_consent_and_bounces_need(
        make_settings: Callable[..., Settings], db_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "_CHUNK", 3)  # both kinds of probe, on a small ledger
    settings = settings_for(make_settings, db_url)
    store = pipeline.open_store(settings)
    add_subscribers(store, range(1, 41))
    old = add_issue(store, 1, "sent", NOW - 400 * DAY, range(1, 31))
    cancelled = add_issue(store, 2, "cancelled", NOW - 300 * DAY, range(1, 26))
    recent = add_issue(store, 3, "sent", NOW - 2 * DAY, range(1, 21))
    paused = add_issue(store, 4, "paused", NOW - 400 * DAY, range(1, 6))
    with store.engine.begin() as conn:  # a row touched lately stays, whatever its issue
        conn.execute(s.deliveries.update().where(s.deliveries.c.issue_id == old,
                                                 s.deliveries.c.subscriber_id == 2)
                     .values(updated_at=NOW - DAY))

    dry = maintenance.prune_ledger(settings, store, dry_run=True)
    assert [(i.number, i.rows) for i in dry.issues] == [(1, 30), (2, 25)]
    assert len(ledger(store, old)) == 30

    done = maintenance.prune_ledger(settings, store, batch=4, pause=0)
    # Each reader's latest row stays: 26–30 were last mailed issue 1, 21–25 issue 2.
    assert ledger(store, old) == {2, 26, 27, 28, 29, 30}
    assert ledger(store, cancelled) == {21, 22, 23, 24, 25}
    assert ledger(store, recent) == set(range(1, 21))  # not finished long enough ago
    assert ledger(store, paused) == set(range(1, 6))  # not finished
    assert [(i.number, i.rows, i.kept) for i in done.issues] == [(1, 24, 6), (2, 20, 5)]
    assert [e.action for e in store.issue_history(1)] == ["prune"]
    assert store.issue_history(1)[0].detail == {"rows": 24, "kept": 6, "retention_days": 180}
    # The issue itself stays, for the archive.
    kept = store.get_issue(1)
    assert kept is not None and kept.status == "sent" and kept.html == "<p>kept for the archive</p>"
    # Pruned issues are done: the next run finds nothing.
    assert maintenance.prune_ledger(settings, store, pause=0).issues == []

    # Removing someone last mailed long ago still keeps the address, anonymised.
    assert store.remove_subscriber(28, NOW) == "anonymised"
    add_subscribers(store, [99], status="pending")
    assert store.remove_subscriber(99, NOW) == "deleted"  # never mailed
    # The unsigned-bounce lookup reads recent issues only.
    assert store.recent_delivery("r3@example.org", NOW - 7 * DAY) == (3, recent)
    # A pruned issue cannot go out again: the ledger no longer knows who has it.
    with pytest.raises(NewsletterError, match="cannot be sent again"):
        sending.start_sending(settings, store, kept)
    assert ledger(store, old) == {2, 26, 27, 28, 29, 30}
    store.close()


def with_retention(settings: Settings, days: int) -> Settings:
    text = settings.path.read_text(encoding="utf-8")
    settings.path.write_text(text.replace("[storage]\n", f"[storage]\nledger_retention_days = "
                                                         f"{days}\n"), encoding="utf-8")
    return load_settings(settings.path, environ={})


def test_retention_setting(make_settings: Callable[..., Settings]) -> None:
    assert make_settings().storage.ledger_retention_days == 180
    assert "prune" in schedule.job_specs(make_settings())
    off = with_retention(make_settings(), 0)
    assert "prune" not in schedule.job_specs(off)
    store = pipeline.open_store(off)
    assert maintenance.prune_ledger(off, store).cutoff is None
    store.close()
    with pytest.raises(ConfigError, match="at least bounces.unsigned_window_days"):
        with_retention(make_settings(), 3)
    trigger = schedule.job_specs(make_settings('[schedule]\ntimezone = "Europe/Oslo"\n'))[
        "prune"][1]
    fire = trigger.get_next_fire_time(None, NOW)
    assert (fire.hour, fire.minute, str(fire.tzinfo)) == (3, 40, "Europe/Oslo")


def test_the_scheduler_runs_the_daily_prune(make_settings: Callable[..., Settings],
                                            tmp_path: Path) -> None:
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n'
                             f"[schedule]\ncollect_minutes = 0\n")
    store = pipeline.open_store(settings)
    add_subscribers(store, range(1, 6))
    old = add_issue(store, 1, "sent", NOW - 200 * DAY, range(1, 6))
    add_issue(store, 2, "sent", NOW - DAY, range(1, 6))
    register_stopped(settings, store)
    set_stored_next_run(store, "prune", NOW - timedelta(hours=1))  # due: runs at start
    service = scheduling.SingleScheduler(settings, store)
    assert service.start()
    try:
        deadline = time.monotonic() + 20
        while [e.action for e in store.issue_history(1)] != ["prune"]:
            assert time.monotonic() < deadline, "the prune job did not run"
            time.sleep(0.05)
    finally:
        service.stop()
    assert ledger(store, old) == set()
    assert store.issue_history(1)[0].actor == "scheduler"
    store.close()


def test_db_prune_command(make_settings: Callable[..., Settings], db_url: str) -> None:
    settings = settings_for(make_settings, db_url)
    store = pipeline.open_store(settings)
    add_subscribers(store, range(1, 11))
    add_issue(store, 1, "sent", NOW - 365 * DAY, range(1, 11))
    add_issue(store, 2, "sent", NOW - DAY, range(1, 11))
    store.close()
    runner = CliRunner()
    args = ["--config", str(settings.path), "db", "prune"]
    dry = runner.invoke(cli, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "issue 1 (sent " in dry.output and "up to 10 rows would go" in dry.output
    assert "dry run: would remove up to 10 delivery rows of 1 issue" in dry.output
    done = runner.invoke(cli, args)
    assert done.exit_code == 0, done.output
    assert "10 rows removed, 0 kept" in done.output
    assert "pruned: removed 10 delivery rows of 1 issue finished before" in done.output
    if db_url.startswith("sqlite"):
        assert "database file " in done.output and " MB → " in done.output
    else:
        assert "database: PostgreSQL; autovacuum" in done.output
        vacuum = runner.invoke(cli, [*args, "--vacuum"])
        assert vacuum.exit_code == 2 and "--vacuum is for SQLite" in vacuum.output
    again = runner.invoke(cli, args)
    assert "pruned: removed 0 delivery rows of 0 issues" in again.output


def fill(store: Store, readers: int) -> int:
    """An old issue, and a recent one to the same readers: the old one's rows all go."""
    add_subscribers(store, range(1, readers + 1))
    reply = "250 2.0.0 Ok: queued as " + "X" * 150
    old = add_issue(store, 1, "sent", NOW - 400 * DAY, range(1, readers + 1), reply=reply)
    add_issue(store, 2, "sent", NOW - DAY, range(1, readers + 1), reply=reply)
    return old


def test_sqlite_file_shrinks_after_a_prune(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    store = pipeline.open_store(settings)
    fill(store, 20_000)
    report = maintenance.prune_ledger(settings, store, pause=0)
    assert report.rows == 20_000
    assert report.before is not None and report.after is not None
    assert report.before.auto_vacuum == "incremental"  # a database made by this version
    assert report.after.free_pages == 0
    assert report.after.database < report.before.database * 0.7
    store.close()


def test_an_older_database_shrinks_after_one_vacuum(make_settings: Callable[..., Settings],
                                                    tmp_path: Path) -> None:
    made = sqlite3.connect(tmp_path / "n.db")  # as versions without auto_vacuum made it
    made.execute("PRAGMA journal_mode=WAL")
    made.execute("CREATE TABLE made_before (x)")
    made.close()
    settings = make_settings()
    store = pipeline.open_store(settings)
    fill(store, 10_000)
    store.close()
    runner = CliRunner()
    args = ["--config", str(settings.path), "db", "prune"]
    out = runner.invoke(cli, args)
    assert out.exit_code == 0, out.output
    assert "free inside the file is reused by new rows" in out.output
    assert "`newsletter db prune --vacuum` (once)" in out.output
    vacuum = runner.invoke(cli, [*args, "--vacuum"])
    assert vacuum.exit_code == 0, vacuum.output
    assert "vacuumed: database file" in vacuum.output
    store = pipeline.open_store(settings)
    space = store.retention.file_space()
    assert space is not None and space.auto_vacuum == "incremental" and space.free_pages == 0
    store.close()


def test_prune_alongside_a_send(make_settings: Callable[..., Settings], db_url: str) -> None:
    """The prune's write transactions are short and let go between batches: a send
    running meanwhile settles every message (on SQLite none waits out its busy timeout)."""
    with SmtpTestServer() as srv:
        settings = settings_for(make_settings, db_url,
                                smtp_toml(srv, "concurrency = 3", "batch_size = 20"))
        store = pipeline.open_store(settings)
        old = fill(store, 30_000)
        with store.engine.begin() as conn:  # the readers of the new issue
            conn.execute(s.subscribers.update().where(s.subscribers.c.id > 300)
                         .values(status="unsubscribed"))
        store.save_articles([_article()], [], NOW)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None and issue.id is not None
        sending.start_sending(settings, store, issue)
        result: dict[str, Any] = {}
        pruner = threading.Thread(target=lambda: result.update(report=maintenance.prune_ledger(
            settings, store, batch=1000)))
        pruner.start()
        summary = sending.run_worker(settings, store, issue)
        pruner.join()
        assert summary.sent == 300 and summary.failed == 0
        assert len({m.rcpt_tos[0] for m in srv.messages}) == 300
        assert store.get_issue(issue.number).status == "sent"
        assert result["report"].rows == 30_000 and ledger(store, old) == set()
        store.close()


def _article() -> Any:
    from newsletter.models import Article

    when = NOW - timedelta(hours=1)
    return Article(key="link:https://ledger.example.org/a/", title="A piece",
                   link="https://ledger.example.org/a/", published=when, updated=when,
                   content_html="<p>a</p>", content_hash="a", section="World",
                   summary="About it.")
