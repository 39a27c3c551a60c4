"""Exactly one running APScheduler per database, and what its jobs find when they run."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger

from newsletter import log
from newsletter.config import Settings
from newsletter.pipeline.schedule import SEND_FUNCTION, make_scheduler, register_jobs
from newsletter.store.database import Store
from newsletter.store.leader import ADVISORY_KEY, DatabaseLock


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


def runtime() -> Runtime:
    if _RUNTIME is None:
        raise RuntimeError("scheduler job ran outside `newsletter run`")
    return _RUNTIME


def _on_missed(event: JobExecutionEvent) -> None:
    """The issue's send time passed too long ago (the service was down): build it, send no."""
    if event.job_id != "issue" or _RUNTIME is None:
        return
    from newsletter.pipeline.building import build_issue
    from newsletter.pipeline.outages import describe, unreachable

    due = event.scheduled_run_time.isoformat()
    try:
        result = build_issue(_RUNTIME.settings, _RUNTIME.store)
    except Exception as exc:
        if not unreachable(exc):
            raise
        log.event("schedule.missed", level=30, due=due,
                  error=describe(exc, _RUNTIME.settings.storage.database_url),
                  action="not built (the database is unreachable): build it by hand")
        return
    log.event("schedule.missed", level=30, due=due, message=result.message,
              action="left as a draft for an operator")


def _on_error(event: JobExecutionEvent) -> None:
    log.event("schedule.job_failed", level=40, job=event.job_id, error=repr(event.exception))


class SingleScheduler:
    """Exactly one active scheduler per database (store.leader's lock). Processes that lose
    the race stand by and take over if the holder dies; a holder whose lock session dies
    stands down and stands by."""

    ADVISORY_KEY = ADVISORY_KEY

    def __init__(self, settings: Settings, store: Store, retry_seconds: float = 10.0) -> None:
        self.settings, self.store, self.retry = settings, store, retry_seconds
        self.scheduler: BackgroundScheduler | None = None
        self._lock = DatabaseLock(store.engine)
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None

    def start(self) -> bool:
        """Start now if the lock is free (True); otherwise keep trying in the background."""
        global _RUNTIME
        _RUNTIME = Runtime(self.settings, self.store)
        active = self._lock.try_take()
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
                    if self._lock.try_take():
                        self._run()
                elif not self._lock.alive():
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
        self._lock.release()

    def _run(self) -> None:
        scheduler = make_scheduler(self.settings, self.store)
        _survive_outages(scheduler, self.settings.storage.database_url)
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
        scheduler.add_job(SEND_FUNCTION, DateTrigger(), args=[number], id=f"send-{number}",
                          replace_existing=True, misfire_grace_time=None)

    def stop(self) -> None:
        self._stop.set()
        if _RUNTIME is not None:
            _RUNTIME.stopping.set()
        if self._watch is not None:
            self._watch.join()  # from here on only this thread changes the state
            self._watch = None
        self._stand_down()


def _survive_outages(scheduler: BackgroundScheduler, url: str) -> None:
    """APScheduler waits out a failed read of due jobs, but a failed write after a job was
    handed to its executor (the next run time, the removal of a one-off job) ends its loop
    thread: no job would run again in this process. Such a round is tried again later (the
    job whose write failed may then run once more: every job is safe to repeat)."""
    from newsletter.pipeline.outages import describe, unreachable

    process = scheduler._process_jobs

    def process_jobs() -> float | None:
        try:
            wait: float | None = process()
        except Exception as exc:
            if not unreachable(exc):
                raise
            log.event("schedule.store_unreachable", level=30, error=describe(exc, url),
                      action=f"tried again in {scheduler.jobstore_retry_interval:g} s")
            return float(scheduler.jobstore_retry_interval)
        return wait

    scheduler._process_jobs = process_jobs


def start_scheduler(settings: Settings, store: Store) -> tuple[SingleScheduler, bool]:
    """`newsletter run`'s scheduler: (the service, whether this process is the active one)."""
    service = SingleScheduler(settings, store)
    return service, service.start()
