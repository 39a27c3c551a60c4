"""The jobs APScheduler runs, by the names stored with them: collect, issue, send, sweep…"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from newsletter import log
from newsletter.pipeline.scheduling import Runtime, runtime

T = TypeVar("T")


def _patiently(rt: Runtime, job: str, fn: Callable[[], T]) -> T | None:
    """`fn()` through a database outage (tried again with backoff, one warning), so a job
    is late rather than lost; None if the service stops first. Each step is safe to repeat:
    the ledger and the stored state say what is done."""
    from newsletter.pipeline.outages import patiently

    return patiently(fn, what=f"job {job}", stop=rt.stopping,
                     url=rt.settings.storage.database_url)


def job_collect() -> None:
    from newsletter.pipeline import collecting, publishing

    rt = runtime()
    # Feeds and pages are republished every time (unchanged files are left alone): an
    # article falling due, edited or deleted changes them as much as a new one.
    _patiently(rt, "collect", lambda: publishing.collect_and_publish(
        rt.settings, rt.store, now=collecting.now_utc()))


def job_issue() -> None:
    """The cron's issue: built from what is new, then sent; in review mode mailed to the
    editors instead (by the build, as every build in review mode is), sent once approved."""
    from newsletter import pipeline

    rt = runtime()
    result = _patiently(rt, "issue", lambda: pipeline.build_issue(rt.settings, rt.store))
    if result is None:
        return
    log.event("schedule.issue", message=result.message)
    if result.issue is not None and result.issue.status == "draft" \
            and not rt.settings.newsletter.review:
        _send(rt, result.issue.number, start=True)
    _republish(rt)


def _republish(rt: Runtime) -> None:
    """The home page names the latest issue and when the next one is due."""
    from newsletter.pipeline import publishing

    _patiently(rt, "publish", lambda: publishing.publish_site(rt.settings, rt.store))


def job_send(number: int) -> None:
    """An operator's 'send now', run by the scheduler so the web request returns at once
    (the request already started it, as its operator)."""
    _send(runtime(), number, start=True)


def _send(rt: Runtime, number: int, *, start: bool) -> None:
    from newsletter.pipeline import sending

    def send() -> None:
        issue = sending.get_sendable(rt.store, number)
        if start and issue.status != "sent":
            sending.start_sending(rt.settings, rt.store, issue, actor="scheduler")
            issue = sending.get_sendable(rt.store, number)
        if issue.status == "sending":
            sending.run_worker(rt.settings, rt.store, issue, stop=rt.stopping)

    from newsletter.pipeline import allocator

    with rt.sending:  # one delivery at a time per process; other processes use the ledger
        _patiently(rt, "send", send)
    allocator.trim()  # a send's batches leave freed pages behind


def job_sweep() -> None:
    """Send scheduled issues that are due (unless long overdue, or awaiting approval in
    review mode), retry deferred rows, and remind editors of drafts left waiting."""
    from newsletter.pipeline import allocator

    _patiently(runtime(), "sweep", _sweep)
    allocator.trim()  # what the web requests since freed (one call a minute, a few ms)


def _sweep() -> None:
    from newsletter.pipeline import collecting, control, publishing, review

    rt = runtime()
    now = collecting.now_utc()
    late = timedelta(minutes=rt.settings.schedule.late_limit_minutes)
    come = [(i, i.send_at) for i in rt.store.list_issues(limit=20, statuses=("scheduled",))
            if i.send_at is not None and i.send_at <= now]
    for issue, send_at in come:
        if now - send_at > late:
            control.pause_issue(rt.store, issue.number, actor="scheduler")
            log.event("schedule.overdue", level=30, number=issue.number,
                      send_at=send_at.isoformat(), action="paused: resume or send it by hand")
    if any(now - send_at > late for _, send_at in come):
        # The home page still promises them: republished before any send (which takes long).
        publishing.refresh_site(rt.settings, rt.store, now=now)
    for issue, send_at in come:
        if now - send_at > late:
            continue
        if rt.settings.newsletter.review and issue.approved_at is None:
            continue  # waits for its approval, which sends it (its reminder goes below)
        _send(rt, issue.number, start=True)
    due = set(rt.store.issues_with_due_rows(now))
    for issue in rt.store.list_issues(limit=50, statuses=("sending",)):
        if issue.id in due:
            _send(rt, issue.number, start=False)
    review.remind_editors(rt.settings, rt.store, now)


def job_prune() -> None:
    """Remove the delivery rows of issues finished longer ago than [storage]
    ledger_retention_days, in short batches that let sends go first."""
    from newsletter.pipeline.maintenance import prune_ledger

    rt = runtime()
    _patiently(rt, "prune", lambda: prune_ledger(rt.settings, rt.store, stop=rt.stopping))


def job_bounces() -> None:
    """Read the bounce mailbox; an unreachable one is one warning, tried again next time."""
    from newsletter.errors import NewsletterError
    from newsletter.pipeline.bounce_imap import poll_mailbox

    rt = runtime()
    try:
        _patiently(rt, "bounces", lambda: poll_mailbox(rt.settings, rt.store))
    except NewsletterError as exc:
        log.event("bounces.poll_failed", level=30, error=str(exc),
                  action=f"tried again in {rt.settings.bounces.imap_poll_minutes} minutes")
