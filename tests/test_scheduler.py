"""Schedules: jobs from config, coalesced catch-up, the late-issue rule, one active scheduler."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from newsletter import pipeline
from newsletter import scheduler as sched
from newsletter.config import Settings
from newsletter.models import Article
from newsletter.pipeline import schedule, scheduling
from newsletter.store import schema as s
from newsletter.store.database import Store
from newsletter.words import friendly_time
from tests.helpers.schedule import register_stopped, set_stored_next_run

NOW = datetime.now(UTC)


def seed(store: Store, readers: int = 3) -> None:
    with store.engine.begin() as conn:
        conn.execute(s.subscribers.insert(), [
            {"email": f"r{i}@example.org", "email_key": f"r{i}@example.org", "name": "",
             "status": "active", "sections": json.dumps([]), "hard_bounces": 0,
             "created_at": NOW, "updated_at": NOW} for i in range(readers)])
    when = NOW - timedelta(hours=2)
    store.save_articles([Article(key="link:a", title="A piece", link="https://x.example/a",
                                 published=when, updated=when, content_html="<p>a</p>",
                                 content_hash="a", section="World")], [], NOW)


def wait_for(check: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def schedule_settings(make_settings: Callable[..., Settings], tmp_path: Path, cron: str,
                      late: int) -> Settings:
    return make_settings(f"""
[mail]
outbox_dir = "{tmp_path / 'outbox'}"
[schedule]
timezone = "Europe/Oslo"
collect_minutes = 0
issue_cron = "{cron}"
late_limit_minutes = {late}
sweep_minutes = 60
""")


def test_jobs_follow_the_config_and_keep_missed_runs(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = schedule_settings(make_settings, tmp_path, "0 9 * * fri", 60)
    store = pipeline.open_store(settings)
    scheduler = schedule.make_scheduler(settings, store)
    scheduler.start(paused=True)
    schedule.register_jobs(scheduler, settings)
    issue_job = scheduler.get_job("issue")
    assert {j.id for j in scheduler.get_jobs()} == {"issue", "sweep", "prune"}
    assert issue_job.next_run_time.weekday() == 4 and issue_job.next_run_time.hour == 9
    assert str(issue_job.next_run_time.tzinfo) == "Europe/Oslo"
    assert issue_job.misfire_grace_time == 3600
    # Unchanged config at the next start: the stored (possibly missed) run time is kept.
    past = datetime.now(UTC) - timedelta(days=3)
    issue_job.modify(next_run_time=past)
    schedule.register_jobs(scheduler, settings)
    assert scheduler.get_job("issue").next_run_time == past
    # A changed schedule replaces the job.
    changed = schedule_settings(make_settings, tmp_path, "30 7 * * mon", 60)
    schedule.register_jobs(scheduler, changed)
    job = scheduler.get_job("issue")
    assert job.next_run_time > datetime.now(UTC) and job.next_run_time.weekday() == 0
    scheduler.shutdown(wait=False)
    store.close()


class MissedRun:
    """Jobs registered and stored; the issue job's next run moved `missed_by` into the past;
    then the service starts as `newsletter run` starts it."""

    def __init__(self, settings: Settings, store: Store, missed_by: timedelta) -> None:
        register_stopped(settings, store)
        set_stored_next_run(store, "issue", datetime.now(UTC) - missed_by)
        self.service = scheduling.SingleScheduler(settings, store)
        assert self.service.start()

    def stop(self) -> None:
        self.service.stop()


def test_down_for_a_week_sends_one_issue_not_seven(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    # Daily at 09:00, down for a week, late limit 8 days: one catch-up run, one issue.
    settings = schedule_settings(make_settings, tmp_path, "0 9 * * *", 8 * 24 * 60)
    store = pipeline.open_store(settings)
    seed(store)
    service = MissedRun(settings, store, timedelta(days=7))
    try:
        wait_for(lambda: any(i.status == "sent" for i in store.list_issues()))
    finally:
        service.stop()
    issues = store.list_issues()
    assert [(i.number, i.status) for i in issues] == [(1, "sent")]
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 3
    store.close()


def test_issue_too_late_waits_for_an_operator(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = schedule_settings(make_settings, tmp_path, "0 9 * * *", 60)
    store = pipeline.open_store(settings)
    seed(store)
    service = MissedRun(settings, store, timedelta(hours=5))
    try:
        wait_for(lambda: bool(store.list_issues()))
    finally:
        service.stop()
    [issue] = store.list_issues()
    assert issue.status == "draft"  # built for the operator, not sent
    assert not (tmp_path / "outbox").exists() or not list((tmp_path / "outbox").glob("*"))
    store.close()


def test_sweep_sends_due_scheduled_issues_and_pauses_overdue_ones(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    from newsletter.pipeline import control

    settings = schedule_settings(make_settings, tmp_path, "", 60)
    store = pipeline.open_store(settings)
    seed(store)
    first = pipeline.build_issue(settings, store).issue
    assert first is not None
    # Scheduled while the time was still ahead; it has come by now.
    due = datetime.now(UTC) - timedelta(minutes=5)
    control.schedule_issue(store, 1, due, now=due - timedelta(days=1))
    scheduling._RUNTIME = scheduling.Runtime(settings, store)
    try:
        sched.job_sweep()
        assert store.get_issue(1).status == "sent"
        second = pipeline.build_issue(settings, store, force=True).issue
        assert second is not None and second.number == 2
        late = datetime.now(UTC) - timedelta(hours=3)
        control.schedule_issue(store, 2, late, now=late - timedelta(days=1))
        sched.job_sweep()
        assert store.get_issue(2).status == "paused"  # overdue: an operator decides
    finally:
        scheduling._RUNTIME = None
    store.close()


def test_an_overdue_issue_the_sweep_pauses_leaves_the_home_page(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """The home page promised the scheduled issue; the sweep finds it too late and pauses
    it: the page is republished at once, no longer naming it (no cron: nothing else due)."""
    from newsletter.pipeline import control, publishing

    settings = schedule_settings(make_settings, tmp_path, "", 60)
    store = pipeline.open_store(settings)
    seed(store)
    assert pipeline.build_issue(settings, store).issue is not None
    late = datetime.now(UTC) - timedelta(hours=3)
    then = late - timedelta(days=1)  # scheduled, and the site published, a day before
    control.schedule_issue(store, 1, late, now=then)
    publishing.publish_site(settings, store, now=then)
    home = settings.site_dir / "index.html"

    def next_line() -> str:
        found = re.search(r'<p class="next-issue">([^<]*)</p>', home.read_text("utf-8"))
        return html.unescape(found[1]) if found else ""

    zone = ZoneInfo(settings.schedule.timezone)
    assert next_line() == f"Next issue: {friendly_time(late.astimezone(zone), then)}"
    scheduling._RUNTIME = scheduling.Runtime(settings, store)
    try:
        sched.job_sweep()
    finally:
        scheduling._RUNTIME = None
    assert store.get_issue(1).status == "paused"  # type: ignore[union-attr]
    assert next_line() == ""
    assert not (tmp_path / "outbox").exists() or not list((tmp_path / "outbox").glob("*"))
    store.close()


def test_only_one_scheduler_per_database(make_settings: Callable[..., Settings],
                                         tmp_path: Path) -> None:
    settings = schedule_settings(make_settings, tmp_path, "0 9 * * *", 60)
    store_a, store_b = pipeline.open_store(settings), pipeline.open_store(settings)
    a = scheduling.SingleScheduler(settings, store_a, retry_seconds=0.05)
    b = scheduling.SingleScheduler(settings, store_b, retry_seconds=0.05)
    try:
        assert a.start() is True
        assert b.start() is False and b.scheduler is None
        a.stop()  # the holder goes away: the standby takes over
        wait_for(lambda: b.scheduler is not None, 5)
    finally:
        a.stop()
        b.stop()
    store_a.close()
    store_b.close()


@pytest.mark.parametrize("cron", ["61 * * * *", "0 9 * * funday"])
def test_bad_cron_stops_the_start(make_settings: Callable[..., Settings], tmp_path: Path,
                                  cron: str) -> None:
    from newsletter.errors import ConfigError

    with pytest.raises(ConfigError, match="schedule.issue_cron"):
        schedule_settings(make_settings, tmp_path, cron, 60)


PG_SCHEDULE = """
[schedule]
collect_minutes = 0
issue_cron = "0 9 * * *"
sweep_minutes = 60
"""


def lock_holder(url: str) -> int | None:
    """The backend holding this schema's scheduler lock, as any other session sees it."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND classid::bigint = :key AND objsubid = 2"
                " AND objid = hashtext(current_schema())::oid"),
                {"key": scheduling.SingleScheduler.ADVISORY_KEY}).scalar()
    finally:
        engine.dispose()


def test_a_scheduler_whose_lock_session_dies_stands_down(
        make_settings: Callable[..., Settings], pg_url: str) -> None:
    from apscheduler.schedulers.base import STATE_STOPPED

    settings = make_settings(PG_SCHEDULE, database_url=pg_url)
    store_a, store_b = Store(pg_url), Store(pg_url)
    a = scheduling.SingleScheduler(settings, store_a, retry_seconds=0.05)
    b = scheduling.SingleScheduler(settings, store_b, retry_seconds=0.05)
    admin = sa.create_engine(pg_url)
    try:
        assert a.start() is True and b.start() is False
        acting = a.scheduler
        killed = lock_holder(pg_url)
        assert killed is not None
        with admin.connect() as conn:  # as a PostgreSQL restart or an operator would
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"),
                                {"pid": killed}).scalar()
        wait_for(lambda: acting.state == STATE_STOPPED, 10)  # it noticed and stopped acting
        # Both stand by now and race for the free lock: one wins, the holder of a new session.
        wait_for(lambda: [x.scheduler is not None for x in (a, b)].count(True) == 1, 10)
        assert lock_holder(pg_url) not in (None, killed)
        winner, other = (a, b) if a.scheduler is not None else (b, a)
        assert winner.scheduler is not acting
        winner.stop()  # and when that one goes away, the other takes over
        wait_for(lambda: other.scheduler is not None, 10)
    finally:
        a.stop()
        b.stop()
        admin.dispose()
    store_a.close()
    store_b.close()


def test_each_schema_has_its_own_scheduler(make_settings: Callable[..., Settings],
                                           make_pg_url: Callable[[], str]) -> None:
    """Staging and prod (or parallel test runs) in one PostgreSQL database."""
    stores = [Store(make_pg_url()) for _ in range(2)]
    services = [scheduling.SingleScheduler(make_settings(PG_SCHEDULE, database_url=st.url), st)
                for st in stores]
    try:
        assert [service.start() for service in services] == [True, True]
    finally:
        for service in services:
            service.stop()
        for st in stores:
            st.close()
