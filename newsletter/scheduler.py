"""One APScheduler 3 per database, its jobs kept in that database: collect, issue, sweep."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from newsletter import log
from newsletter.config import Settings
from newsletter.store.database import Store

JOBS_TABLE = "apscheduler_jobs"
_FIXED_JOBS = ("collect", "issue", "sweep")


@dataclass(slots=True)
class Runtime:
    """What jobs need; set once per process because stored jobs hold only a function name."""

    settings: Settings
    store: Store
    sending: threading.Lock = field(default_factory=threading.Lock)
    # Set when the process shuts down: a delivery in progress stops after the messages in
    # flight and gives its rows back, rather than holding the shutdown until it is done.
    stopping: threading.Event = field(default_factory=threading.Event)


_RUNTIME: Runtime | None = None


def _rt() -> Runtime:
    if _RUNTIME is None:
        raise RuntimeError("scheduler job ran outside `newsletter run`")
    return _RUNTIME


def job_collect() -> None:
    from newsletter.pipeline import collecting, publishing

    rt = _rt()
    # Feeds and pages are republished every time (unchanged files are left alone): an
    # article falling due, edited or deleted changes them as much as a new one.
    publishing.collect_and_publish(rt.settings, rt.store, now=collecting.now_utc())


def job_issue() -> None:
    """The cron's issue: built from what is new, then sent."""
    from newsletter import pipeline

    rt = _rt()
    result = pipeline.build_issue(rt.settings, rt.store)
    log.event("schedule.issue", message=result.message)
    if result.issue is not None and result.issue.status == "draft":
        _send(rt, result.issue.number, start=True)
    _republish(rt)


def _republish(rt: Runtime) -> None:
    """The home page names the latest issue and when the next one is due."""
    from newsletter.pipeline import publishing

    publishing.publish_site(rt.settings, rt.store)


def job_send(number: int) -> None:
    """An operator's 'send now', run by the scheduler so the web request returns at once."""
    _send(_rt(), number, start=True)


def _send(rt: Runtime, number: int, *, start: bool) -> None:
    from newsletter.pipeline import sending

    with rt.sending:  # one delivery at a time per process; other processes use the ledger
        issue = sending.get_sendable(rt.store, number)
        if start and issue.status != "sent":
            sending.start_sending(rt.settings, rt.store, issue)
            issue = sending.get_sendable(rt.store, number)
        if issue.status == "sending":
            sending.run_worker(rt.settings, rt.store, issue, stop=rt.stopping)


def job_sweep() -> None:
    """Send scheduled issues that are due (unless long overdue) and retry deferred rows."""
    from newsletter.pipeline import collecting, control

    rt = _rt()
    now = collecting.now_utc()
    late = timedelta(minutes=rt.settings.schedule.late_limit_minutes)
    for issue in rt.store.list_issues(limit=20, statuses=("scheduled",)):
        if issue.send_at is None or issue.send_at > now:
            continue
        if now - issue.send_at > late:
            control.pause_issue(rt.store, issue.number)
            log.event("schedule.overdue", level=30, number=issue.number,
                      send_at=issue.send_at.isoformat(),
                      action="paused: resume or send it by hand")
            continue
        _send(rt, issue.number, start=True)
    due = set(rt.store.issues_with_due_rows(now))
    for issue in rt.store.list_issues(limit=50, statuses=("sending",)):
        if issue.id in due:
            _send(rt, issue.number, start=False)


def _on_missed(event: JobExecutionEvent) -> None:
    """The issue's send time passed too long ago (the service was down): build it, send no."""
    if event.job_id != "issue" or _RUNTIME is None:
        return
    from newsletter import pipeline

    result = pipeline.build_issue(_RUNTIME.settings, _RUNTIME.store)
    log.event("schedule.missed", level=30, due=event.scheduled_run_time.isoformat(),
              message=result.message, action="left as a draft for an operator")


def _on_error(event: JobExecutionEvent) -> None:
    log.event("schedule.job_failed", level=40, job=event.job_id, error=repr(event.exception))


def job_specs(settings: Settings) -> dict[str, tuple[Callable[..., Any], Any, int | None]]:
    """id → (function, trigger, misfire grace in seconds; None = run however late)."""
    sch = settings.schedule
    zone = ZoneInfo(sch.timezone)
    specs: dict[str, tuple[Callable[..., Any], Any, int | None]] = {
        "sweep": (job_sweep, IntervalTrigger(minutes=sch.sweep_minutes, timezone=zone), None),
    }
    if sch.collect_minutes:
        specs["collect"] = (job_collect, IntervalTrigger(minutes=sch.collect_minutes,
                                                         timezone=zone), None)
    if sch.issue_cron:
        specs["issue"] = (job_issue, CronTrigger.from_crontab(sch.issue_cron, timezone=zone),
                          sch.late_limit_minutes * 60)
    return specs


class _SharedEngineJobStore(SQLAlchemyJobStore):
    """The Store owns the engine. APScheduler disposes its engine while its own thread may
    still be reading jobs (the thread is joined afterwards), orphaning a connection."""

    def shutdown(self) -> None:
        pass


def make_scheduler(settings: Settings, store: Store) -> BackgroundScheduler:
    return BackgroundScheduler(
        jobstores={"default": _SharedEngineJobStore(engine=store.engine, tablename=JOBS_TABLE)},
        executors={"default": ThreadPoolExecutor(3)},
        # Coalesce: a week of downtime means one late run, not seven.
        job_defaults={"coalesce": True, "max_instances": 1},
        timezone=ZoneInfo(settings.schedule.timezone))


def register_jobs(scheduler: BackgroundScheduler, settings: Settings) -> None:
    """Bring stored jobs in line with the config. A job whose trigger is unchanged keeps its
    stored next run time, so runs missed while the service was down are seen as missed."""
    specs = job_specs(settings)
    for job in scheduler.get_jobs():
        if job.id in _FIXED_JOBS and job.id not in specs:
            job.remove()
    for job_id, (func, trigger, grace) in specs.items():
        existing = scheduler.get_job(job_id)
        if existing is not None and repr(existing.trigger) == repr(trigger):
            if existing.misfire_grace_time != grace:
                existing.modify(misfire_grace_time=grace)
            continue
        scheduler.add_job(func, trigger, id=job_id, name=job_id, replace_existing=True,
                          misfire_grace_time=grace)


class SingleScheduler:
    """Exactly one active scheduler per database: a lock file beside SQLite, an advisory lock
    on PostgreSQL (one per schema). Processes that lose the race stand by and take over if
    the holder dies; a holder whose lock session dies stands down and stands by."""

    ADVISORY_KEY = 0x6E6C7472  # "nltr"
    # The two-key form: the schema is the second key, so staging and prod (or parallel
    # tests) in one database each get their scheduler.
    _PG_TRY_LOCK = f"SELECT pg_try_advisory_lock({ADVISORY_KEY}, hashtext(current_schema()))"

    def __init__(self, settings: Settings, store: Store, retry_seconds: float = 10.0) -> None:
        self.settings, self.store, self.retry = settings, store, retry_seconds
        self.scheduler: BackgroundScheduler | None = None
        self._held: Any = None
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None

    def _try_lock(self) -> bool:
        if self.store.engine.dialect.name == "postgresql":
            conn = self.store.engine.connect()
            try:
                got = conn.exec_driver_sql(self._PG_TRY_LOCK).scalar()
                conn.commit()
            except BaseException:
                conn.close()
                raise
            if got:
                self._held = conn  # the lock lives as long as this session
                return True
            conn.close()
            return False
        db = self.store.engine.url.database or ""
        path = Path(db).with_suffix(".scheduler.lock") if db and db != ":memory:" \
            else Path("var/scheduler.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._held = handle
        return True

    def _lock_alive(self) -> bool:
        """Whether the session holding the advisory lock still exists (a restart of
        PostgreSQL or pg_terminate_backend ends it and frees the lock for anyone)."""
        if not isinstance(self._held, sa.Connection):
            return True  # a lock file is held for as long as this process keeps it open
        try:
            self._held.exec_driver_sql("SELECT 1")
            self._held.rollback()
        except sa.exc.DBAPIError:
            return False
        return True

    def start(self) -> bool:
        """Start now if the lock is free (True); otherwise keep trying in the background."""
        global _RUNTIME
        _RUNTIME = Runtime(self.settings, self.store)
        active = self._try_lock()
        if active:
            self._run()
        else:
            log.event("schedule.standby", reason="another scheduler holds the lock")
        self._watch = threading.Thread(target=self._watch_lock, name="scheduler-lock",
                                       daemon=True)
        self._watch.start()
        return active

    def _watch_lock(self) -> None:
        """Every retry interval: the holder checks its lock, a standby tries to take it."""
        while not self._stop.wait(self.retry):
            try:
                if self.scheduler is None:
                    if self._try_lock():
                        self._run()
                elif not self._lock_alive():
                    log.event("schedule.lock_lost", level=40,
                              action="scheduler stopped; standing by to take over again")
                    self._stand_down()
            except Exception as exc:  # the database is away: try again later, holding nothing
                log.event("schedule.lock_check_failed", level=30, error=repr(exc))
                self._stand_down()

    def _stand_down(self) -> None:
        scheduler, self.scheduler = self.scheduler, None  # send_now refuses from here on
        if scheduler is not None:
            scheduler.shutdown(wait=True)  # jobs already running finish; the ledger's
            # leases keep their deliveries apart from the new scheduler's
        held, self._held = self._held, None
        if isinstance(held, sa.Connection):
            held.invalidate()  # ends the session and its lock; the pool would keep both
        if held is not None:
            held.close()

    def _run(self) -> None:
        scheduler = make_scheduler(self.settings, self.store)
        scheduler.add_listener(_on_missed, EVENT_JOB_MISSED)
        scheduler.add_listener(_on_error, EVENT_JOB_ERROR)
        scheduler.start(paused=True)
        try:
            register_jobs(scheduler, self.settings)
        except BaseException:
            scheduler.shutdown(wait=False)  # the watch thread may try again: leave no thread
            raise
        scheduler.resume()
        self.scheduler = scheduler
        log.event("schedule.started", jobs=",".join(j.id for j in scheduler.get_jobs()))

    def send_now(self, number: int) -> None:
        scheduler = self.scheduler
        if scheduler is None:
            raise RuntimeError("this process is not the active scheduler")
        scheduler.add_job(job_send, DateTrigger(), args=[number], id=f"send-{number}",
                          replace_existing=True, misfire_grace_time=None)

    def stop(self) -> None:
        self._stop.set()
        if _RUNTIME is not None:
            _RUNTIME.stopping.set()
        if self._watch is not None:
            self._watch.join()  # from here on only this thread changes the state
            self._watch = None
        self._stand_down()


def next_issue_time(settings: Settings, now: datetime | None = None) -> datetime | None:
    """When the issue cron next fires, in the schedule's zone; None without a cron."""
    sch = settings.schedule
    if not sch.issue_cron:
        return None
    zone = ZoneInfo(sch.timezone)
    trigger = CronTrigger.from_crontab(sch.issue_cron, timezone=zone)
    fire: datetime | None = trigger.get_next_fire_time(None, (now or datetime.now(zone))
                                                        .astimezone(zone))
    return fire


def next_issue_line(settings: Settings, now: datetime | None = None) -> str:
    """'Next issue: Monday 7 December, 07:00 UTC', or '' when no issue is scheduled."""
    from newsletter.words import friendly_time

    when = next_issue_time(settings, now)
    return f"Next issue: {friendly_time(when, now or datetime.now(when.tzinfo))}" if when \
        else ""


def next_runs(settings: Settings, store: Store) -> list[tuple[str, datetime | None]]:
    """The effective schedule as stored (readable from any process, acting on nothing)."""
    scheduler = make_scheduler(settings, store)
    scheduler.start(paused=True)
    try:
        return [(job.id, job.next_run_time) for job in scheduler.get_jobs()]
    finally:
        scheduler.shutdown(wait=False)
