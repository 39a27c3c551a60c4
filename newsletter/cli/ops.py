"""Operator commands: schedule, pause, resume and cancel issues; status; delivery worker."""

from __future__ import annotations

import functools
import signal
import threading
from datetime import datetime
from typing import TYPE_CHECKING

import click

from newsletter.cli.common import cli_actor, fail_cleanly, with_store
from newsletter.errors import NewsletterError

if TYPE_CHECKING:
    from newsletter.config import Settings
    from newsletter.models import Issue
    from newsletter.store.database import Store


def parse_time(value: str, zone: str) -> datetime:
    """ISO 8601; a time without an offset is read in the schedule's time zone."""
    from zoneinfo import ZoneInfo

    from newsletter.models import example_send_time, now_utc

    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        example = example_send_time(zone, now_utc())
        raise NewsletterError(f"--at: expected a time like {example[:16]} or {example}, "
                              f"got {value!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=ZoneInfo(zone))


@click.command("schedule")
@click.argument("number", type=int)
@click.option("--at", "at", required=True, help="Send time (ISO 8601; default zone is "
                                                "[schedule] timezone).")
@click.pass_context
@fail_cleanly
def schedule(ctx: click.Context, number: int, at: str) -> None:
    """Send issue N at a given time (the running service's sweeper sends it)."""
    from newsletter.pipeline import control
    from newsletter.pipeline.publishing import refresh_site

    settings, store = with_store(ctx)
    it = control.schedule_issue(store, number, parse_time(at, settings.schedule.timezone),
                                actor=cli_actor())
    refresh_site(settings, store)  # the home page says when the next issue goes out
    click.echo(f"issue {number} scheduled for {it.send_at:%Y-%m-%d %H:%M %Z}")
    if settings.newsletter.review and it.approved_at is None:
        click.echo(f"review mode: it goes out once approved (`newsletter issue approve "
                   f"{number}`)")

def _transition(verb: str) -> click.Command:
    @click.command(verb, help=f"{verb.capitalize()} issue N.")
    @click.argument("number", type=int)
    @click.pass_context
    @fail_cleanly
    def action(ctx: click.Context, number: int) -> None:
        from newsletter.pipeline import control
        from newsletter.pipeline.publishing import refresh_site

        settings, store = with_store(ctx)
        it = getattr(control, f"{verb}_issue")(store, number, actor=cli_actor())
        refresh_site(settings, store)  # a scheduled issue paused, resumed or cancelled
        click.echo(f"issue {number}: {it.status}")

    return action


# Added to `newsletter issue` by the root group.
ISSUE_COMMANDS = [schedule, *(_transition(verb) for verb in ("pause", "resume", "cancel"))]


@click.command()
@click.pass_context
@fail_cleanly
def status(ctx: click.Context) -> None:
    """Next scheduled runs, the last collect, and recent issues with delivery counts."""
    from zoneinfo import ZoneInfo

    from newsletter.pipeline import control
    from newsletter.pipeline.schedule import planned_runs

    settings, store = with_store(ctx)
    zone = ZoneInfo(settings.schedule.timezone)
    now = datetime.now(zone)
    click.echo(f"schedule ({settings.schedule.timezone}):")
    next_issue = None
    for run in planned_runs(settings, store, now):
        # Not stored yet (the service has not run): the trigger says when it will fire.
        shown = run.next_run.strftime("%Y-%m-%d %H:%M %Z") if run.next_run else "never"
        extra = f", not sent if over {run.grace // 60} min late" if run.grace else ""
        click.echo(f"  {run.job_id:<8} {run.trigger}  next: {shown}{extra}")
        if run.job_id == "issue" and run.next_run:
            next_issue = run.next_run
    click.echo(_next_issue_line(settings, store, next_issue, now))
    view = control.overview(store)
    last = view.last_collect
    click.echo(f"articles: {view.articles}; last collect: " + (
        f"{last['finished_at']:%Y-%m-%d %H:%M} UTC ({last['new']} new, {last['failed']} "
        f"failed)" if last else "never"))
    click.echo("recent issues:" if view.issues else "no issues yet")
    lines = (settings.bounces.complaint_rate_warning,
             settings.bounces.hard_bounce_rate_warning)
    for it, counts in view.issues:
        total = sum(counts.values())
        back = view.came_back.get(it.number)
        came = (f", came back {back.hard} hard/{back.soft} soft/{back.complaints} complaints"
                if back and (back.hard or back.soft or back.complaints) else "")
        click.echo(f"  {it.number:>4} {it.status:<10} sent {counts['sent']}/{total}, "
                   f"deferred {counts['deferred']}, failed {counts['failed']}{came}  "
                   f"{it.subject}")
        for warning in back.warnings(*lines) if back else ():
            click.echo(f"       warning: {warning}")


def _next_issue_line(settings: Settings, store: Store, cron_next: datetime | None,
                     now: datetime) -> str:
    """What goes next: the cron's next run and the earliest issue scheduled by hand (`issue
    schedule`, the dashboard, an approval), soonest first."""
    from newsletter.pipeline.schedule import scheduled_issues
    from newsletter.words import friendly_time

    planned = scheduled_issues(store)
    cron = friendly_time(cron_next, now) if cron_next else ""
    if not planned:
        return f"next issue: {cron}" if cron else \
            "next issue: none scheduled ([schedule] issue_cron is empty)"
    it = planned[0]
    assert it.send_at is not None
    when = it.send_at.astimezone(now.tzinfo)
    line = f"issue {it.number} scheduled for {friendly_time(when, now)}"
    if when < now:
        line += " (due: the running service's next sweep sends it)"
    if settings.newsletter.review and it.approved_at is None:
        line += f", once approved (`newsletter issue approve {it.number}`)"
    if cron_next is not None and cron_next < when:
        return f"next issue: {cron}; then {line}"
    return f"next issue: {line}"


@click.command()
@click.option("--poll", default=2.0, show_default=True, help="Seconds between ledger checks.")
@click.option("--once", is_flag=True, help="Work through what is due, then exit.")
@click.pass_context
@fail_cleanly
def worker(ctx: click.Context, poll: float, once: bool) -> None:
    """A delivery worker: sends due ledger rows of every issue being sent, until stopped."""
    from newsletter.pipeline import allocator, collecting, outages, sending

    allocator.limit_arenas()
    settings, store = with_store(ctx)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def due_now() -> list[Issue]:
        sending_now = store.list_issues(limit=50, statuses=("sending",))
        for it in sending_now:  # a crashed sibling on this host frees its rows at once
            sending.release_dead_local_workers(store, it)
        due = set(store.issues_with_due_rows(collecting.now_utc()))
        return [it for it in sending_now if it.id in due]

    def send(number: int) -> None:
        sending.run_worker(settings, store, sending.get_sendable(store, number), stop=stop)
        allocator.trim()  # a send's batches leave freed pages behind

    # A database outage is waited out, not the end of the worker: each step is safe to run
    # again (the ledger knows what was sent), and delivery waits out its own.
    url = settings.storage.database_url
    while not stop.is_set():
        for it in outages.patiently(due_now, what="worker", stop=stop, url=url) or []:
            if not stop.is_set():
                outages.patiently(functools.partial(send, it.number), what="worker",
                                  stop=stop, url=url)
        if once:
            return
        stop.wait(poll)
