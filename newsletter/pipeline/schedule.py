"""The schedule from the configuration: job triggers, stored jobs, and when each runs next."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from newsletter import crontab
from newsletter.config import Settings
from newsletter.models import Issue
from newsletter.pipeline.rhythm import issue_rhythm, prepared_rhythm
from newsletter.store.database import Store
from newsletter.words import friendly_time

JOBS_TABLE = "apscheduler_jobs"
FIXED_JOBS = ("collect", "issue", "sweep", "bounces", "prune")
# The functions the scheduler runs, by the textual reference APScheduler stores with each
# job: a database written before stays valid, and this module needs no entry point.
JOB_FUNCTIONS = {job_id: f"newsletter.scheduler:job_{job_id}" for job_id in FIXED_JOBS}
SEND_FUNCTION = "newsletter.scheduler:job_send"
PRUNE_AT = (3, 40)  # hour, minute of the daily ledger prune, in [schedule] timezone


def job_specs(settings: Settings) -> dict[str, tuple[str, Any, int | None]]:
    """id → (function reference, trigger, misfire grace in seconds; None = however late)."""
    sch = settings.schedule
    zone = ZoneInfo(sch.timezone)
    specs: dict[str, tuple[str, Any, int | None]] = {
        "sweep": (JOB_FUNCTIONS["sweep"], IntervalTrigger(minutes=sch.sweep_minutes,
                                                          timezone=zone), None),
    }
    if sch.collect_minutes:
        specs["collect"] = (JOB_FUNCTIONS["collect"], IntervalTrigger(
            minutes=sch.collect_minutes, timezone=zone), None)
    if settings.bounces.imap_url:
        specs["bounces"] = (JOB_FUNCTIONS["bounces"], IntervalTrigger(
            minutes=settings.bounces.imap_poll_minutes, timezone=zone), None)
    if settings.storage.ledger_retention_days:
        # Daily, at an hour few send at; late runs still run (once: coalesced).
        specs["prune"] = (JOB_FUNCTIONS["prune"], CronTrigger(
            hour=PRUNE_AT[0], minute=PRUNE_AT[1], timezone=zone), None)
    if sch.issue_cron:
        specs["issue"] = (JOB_FUNCTIONS["issue"], CronTrigger.from_crontab(
            crontab.standard(sch.issue_cron), timezone=zone), sch.late_limit_minutes * 60)
    return specs


class _SharedEngineJobStore(SQLAlchemyJobStore):  # type: ignore[misc]  # untyped library
    """The Store owns the engine. APScheduler disposes its engine while its own thread may
    still be reading jobs (the thread is joined afterwards), orphaning a connection."""

    def shutdown(self) -> None:
        pass

    def _get_jobs(self, *conditions: Any) -> list[Any]:
        # APScheduler reads the jobs and deletes those it cannot load in one deferred
        # transaction: on SQLite a send's commit in between fails that delete at once
        # ("database is locked"). Here the read is a transaction of its own and the delete
        # (rare: after an upgrade renames a job function) takes the write lock first.
        table = self.jobs_t
        query = (table.select().with_only_columns(table.c.id, table.c.job_state)
                 .order_by(table.c.next_run_time).where(*conditions))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        jobs, broken = [], []
        for row in rows:
            try:
                jobs.append(self._reconstitute_job(row.job_state))
            except BaseException:
                self._logger.exception('Unable to restore job "%s" -- removing it', row.id)
                broken.append(row.id)
        if broken:
            with self.engine.execution_options(sqlite_immediate=True).begin() as conn:
                conn.execute(table.delete().where(table.c.id.in_(broken)))
        return jobs


def make_scheduler(settings: Settings, store: Store) -> BackgroundScheduler:
    return BackgroundScheduler(
        jobstores={"default": _SharedEngineJobStore(engine=store.engine, tablename=JOBS_TABLE)},
        # The daily prune can take a while on a large backlog: a thread of its own, so
        # sends, collects and the sweep keep the three they had.
        executors={"default": ThreadPoolExecutor(4)},
        # Coalesce: a week of downtime means one late run, not seven.
        job_defaults={"coalesce": True, "max_instances": 1},
        timezone=ZoneInfo(settings.schedule.timezone))


def register_jobs(scheduler: BackgroundScheduler, settings: Settings) -> None:
    """Bring stored jobs in line with the config. A job whose trigger is unchanged keeps its
    stored next run time, so runs missed while the service was down are seen as missed."""
    specs = job_specs(settings)
    for job in scheduler.get_jobs():
        if job.id in FIXED_JOBS and job.id not in specs:
            job.remove()
    for job_id, (func, trigger, grace) in specs.items():
        existing = scheduler.get_job(job_id)
        if existing is not None and repr(existing.trigger) == repr(trigger):
            if existing.misfire_grace_time != grace:
                existing.modify(misfire_grace_time=grace)
            continue
        scheduler.add_job(func, trigger, id=job_id, name=job_id, replace_existing=True,
                          misfire_grace_time=grace)


def next_runs(settings: Settings, store: Store) -> list[tuple[str, datetime | None]]:
    """The effective schedule as stored (readable from any process, acting on nothing)."""
    scheduler = make_scheduler(settings, store)
    scheduler.start(paused=True)
    try:
        return [(job.id, job.next_run_time) for job in scheduler.get_jobs()]
    finally:
        scheduler.shutdown(wait=False)


@dataclass(frozen=True)
class PlannedRun:
    """One configured job for `newsletter status`: its trigger and when it runs next."""

    job_id: str
    trigger: str
    next_run: datetime | None  # in the schedule's zone; None: never
    grace: int | None  # seconds late after which the run is skipped


def planned_runs(settings: Settings, store: Store, now: datetime) -> list[PlannedRun]:
    """Every configured job: the stored next run, else (not stored yet) the trigger's."""
    zone = ZoneInfo(settings.schedule.timezone)
    stored = dict(next_runs(settings, store))
    found = []
    for job_id, (_func, trigger, grace) in job_specs(settings).items():
        when = stored.get(job_id) or trigger.get_next_fire_time(None, now.astimezone(zone))
        found.append(PlannedRun(job_id, str(trigger), when.astimezone(zone) if when else None,
                                grace))
    return found


def next_issue_time(settings: Settings, now: datetime | None = None) -> datetime | None:
    """When the issue cron next fires, in the schedule's zone; None without a cron."""
    sch = settings.schedule
    if not sch.issue_cron:
        return None
    zone = ZoneInfo(sch.timezone)
    trigger = CronTrigger.from_crontab(crontab.standard(sch.issue_cron), timezone=zone)
    fire: datetime | None = trigger.get_next_fire_time(None, (now or datetime.now(zone))
                                                        .astimezone(zone))
    return fire


def scheduled_issues(store: Store) -> list[Issue]:
    """Issues scheduled for a date (`issue schedule`, the dashboard, an approval), soonest
    first."""
    found = [(it.send_at, it.number, it) for it in store.list_issues(
        limit=50, statuses=("scheduled",)) if it.send_at is not None]
    return [it for _at, _number, it in sorted(found, key=lambda row: row[:2])]


def next_issue_at(settings: Settings, store: Store, now: datetime | None = None, *,
                  cron_next: datetime | None = None) -> datetime | None:
    """When the next issue goes out, as far as it can be promised, in the schedule's zone:
    the earliest of an issue scheduled for a date and the cron's next run (`cron_next`, the
    scheduler's stored one, else the trigger's). In review mode neither the cron's build nor
    an unapproved issue has a send time (it goes once the editors approve it): only an
    approved scheduled issue does. None: no time can be promised."""
    zone = ZoneInfo(settings.schedule.timezone)
    now = (now or datetime.now(zone)).astimezone(zone)
    review = settings.newsletter.review
    # One past its time goes at the next sweep, unless so late that the sweep pauses it.
    late = now - timedelta(minutes=settings.schedule.late_limit_minutes)
    times = [max(it.send_at, now) for it in scheduled_issues(store)
             if it.send_at is not None and it.send_at >= late
             and (it.approved_at is not None or not review)]
    if not review:
        cron = cron_next or next_issue_time(settings, now)
        times += [cron] if cron else []
    return min(times).astimezone(zone) if times else None


def next_issue_line(settings: Settings, store: Store, now: datetime | None = None, *,
                    cron_next: datetime | None = None) -> str:
    """What the home page and the dashboard say: 'Next issue: Monday 7 December, 07:00 UTC'
    (next_issue_at); in review mode without an approved issue, how issues are prepared and
    that each goes once approved; '' when there is nothing to say."""
    zone = ZoneInfo(settings.schedule.timezone)
    now = (now or datetime.now(zone)).astimezone(zone)
    when = next_issue_at(settings, store, now, cron_next=cron_next)
    if when is not None:
        return f"Next issue: {friendly_time(when, now)}"
    prepared = prepared_rhythm(issue_rhythm(settings, now)) if settings.newsletter.review \
        else ""
    return f"{prepared}; each is sent once the editors approve it." if prepared else ""
