"""Send an issue: variants built once, the ledger filled in one statement, workers deliver."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from newsletter import log
from newsletter.audience.bounces import verp_address
from newsletter.audience.subscriptions import issue_links
from newsletter.audience.tokens import load_or_create_secret
from newsletter.config import Settings
from newsletter.deliver.engine import Plan, Policy, Summary, deliver
from newsletter.deliver.headers import message_id
from newsletter.deliver.mail import identity_from_settings
from newsletter.errors import NewsletterError
from newsletter.models import Claimed, Issue, IssueEventDraft, now_utc
from newsletter.pipeline.outages import patiently, unreachable
from newsletter.pipeline.transports import pool_from_settings
from newsletter.pipeline.variants import Variants
from newsletter.store.database import Store
from newsletter.words import plural

T = TypeVar("T")
SENDABLE = ("draft", "scheduled", "sending", "paused")


def policy(settings: Settings) -> Policy:
    d = settings.delivery
    return Policy(batch_size=d.batch_size, lease=timedelta(seconds=d.lease_seconds),
                  retry_initial=timedelta(seconds=d.retry_initial),
                  retry_max=timedelta(seconds=d.retry_max),
                  give_up_after=timedelta(seconds=d.give_up_after),
                  max_hard_bounces=d.max_hard_bounces, concurrency=settings.smtp.concurrency,
                  rate=settings.smtp.rate / max(d.workers, 1),
                  ledger_inline=settings.storage.database_url.startswith("sqlite"),
                  transient=unreachable)


def make_plan(settings: Settings, store: Store, issue: Issue, *,
              now: datetime | None = None, stop: threading.Event | None = None) -> Plan:
    assert issue.id is not None
    identity = identity_from_settings(settings)
    secret = load_or_create_secret(settings)
    base = settings.site_url
    stamp_time = now or now_utc()

    links = issue_links(base, secret, stamp_time)

    def urls_for(row: Claimed) -> tuple[str, str]:
        return links(row.subscriber_id, row.email)

    def message_id_for(row: Claimed) -> str:
        return message_id(issue.number, row.subscriber_id, identity.message_id_domain)

    def halt() -> str | None:
        if stop is not None and stop.is_set():
            return "worker stopping; its rows are free for the next run"
        current = store.get_issue(issue.number, with_articles=False)
        status = current.status if current else "deleted"
        return None if status in ("sending", "sent") else f"issue {issue.number} is {status}"

    return_path = settings.bounces.return_path
    sender_for = None
    if return_path:
        def sender_for(row: Claimed) -> str:
            return verp_address(return_path, secret, issue.number, row.subscriber_id)

    return Plan(issue_id=issue.id, envelope_from=settings.mail.from_address,
                variant_for=Variants(settings, issue, identity), urls_for=urls_for,
                message_id_for=message_id_for, halt=halt, sender_for=sender_for)


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed (a dependency except on Windows): delivery is
    event-loop bound, and uvloop's loop and transports cost ~20% less CPU per message."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def get_sendable(store: Store, number: int) -> Issue:
    issue = store.get_issue(number)
    if issue is None:
        raise NewsletterError(f"issue {number}: no such issue (see `newsletter issue list`)")
    if issue.status not in SENDABLE + ("sent",):
        raise NewsletterError(f"issue {number} is {issue.status}: it cannot be sent")
    return issue


class AlreadySent(NewsletterError):
    """A sent issue asked to be sent again without saying it is meant for those who joined
    since: `newcomers` of them would get it."""

    def __init__(self, number: int, newcomers: int) -> None:
        self.newcomers = newcomers
        who = (f"would go to the {plural(newcomers, 'subscriber')} who joined since (nobody "
               f"gets it twice); to do that, say so: `newsletter issue send {number} "
               f"--to-new-subscribers` (the API: {{\"new_subscribers\": true}})"
               if newcomers else
               "would reach nobody: every active subscriber has it")
        super().__init__(f"issue {number} was sent already: sending it again {who}")


def newcomers(settings: Settings, store: Store, number: int) -> int:
    """Whom a sent issue would go to if sent again: the active subscribers who joined since
    (nobody gets it twice). NewsletterError when it cannot be sent again."""
    from newsletter.pipeline.maintenance import check_resendable

    issue = get_sendable(store, number)
    assert issue.id is not None
    check_resendable(settings, store, issue)  # pruned rows: it cannot tell who has it
    return store.ledger.count_unqueued(issue.id)


class IssueChanged(NewsletterError):
    """A send that named the version it meant found the issue edited since."""

    def __init__(self, number: int) -> None:
        super().__init__(f"issue {number} was not sent: it was changed since that version "
                         f"was read; read the latest, then send again")


def start_sending(settings: Settings, store: Store, issue: Issue, *,
                  actor: str = "unknown", new_subscribers: bool = False,
                  version: str | None = None) -> int:
    """Mark the issue as sending and fill its ledger (one row per active subscriber). In
    review mode ([newsletter] review) an issue nobody approved is refused: whoever calls,
    nothing unapproved goes out. A sent issue goes to those who joined since only when
    `new_subscribers` says so (AlreadySent otherwise). With `version` (editing.version_of)
    it goes only while the issue is still that version, an edit committed a moment before
    included: the status moves only if the edit time read with `issue` is still the row's."""
    now = now_utc()
    assert issue.id is not None
    from newsletter.pipeline.editing import is_version
    from newsletter.pipeline.maintenance import check_resendable

    if version is not None and not is_version(issue, version):
        raise IssueChanged(issue.number)

    check_resendable(settings, store, issue)  # its ledger may be pruned: all would get it
    if issue.status == "sent":
        newcomers = store.ledger.count_unqueued(issue.id)
        if not new_subscribers or not newcomers:
            raise AlreadySent(issue.number, newcomers)
    # The first start records when the issue went out (the archive feed dates entries by it);
    # resuming a paused send keeps that time.
    first = not any(store.delivery_counts(issue.id).values())
    if first and settings.newsletter.review and issue.approved_at is None:
        raise NewsletterError(f"issue {issue.number} awaits approval (review mode): "
                              f"`newsletter issue approve {issue.number}` sends it")
    # A sent issue is sending again while its newcomers' rows are delivered (and retried).
    moved = store.set_issue_status(issue.number, "sending", now,
                                   expect=SENDABLE + (("sent",) if new_subscribers else ()),
                                   send_at=now if first else False,
                                   was_edited_at=issue.edited_at if version else False)
    if version is not None and not moved and issue.status != "sending":
        raise IssueChanged(issue.number)
    added = store.enqueue(issue.id, now)
    log.event("issue.enqueued", number=issue.number, rows=added)
    if issue.status != "sending":  # started or resumed now, not a worker joining in
        detail: dict[str, object] = {"status": {"from": issue.status, "to": "sending"},
                                     "rows": added, "resumed": not first}
        if issue.status == "sent":
            detail["new_subscribers"] = True
        store.record_issue_event(issue.number, now, IssueEventDraft(actor, "send", detail))
    from newsletter.pipeline.publishing import refresh_site

    refresh_site(settings, store, now=now)  # the latest issue; a failure stops no sending
    return added


def finish_if_done(store: Store, issue: Issue) -> bool:
    """An issue whose ledger has nothing left to try is sent."""
    assert issue.id is not None
    if store.next_due(issue.id) is None:
        return store.set_issue_status(issue.number, "sent", now_utc(), expect=("sending",))
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_dead_local_workers(store: Store, issue: Issue) -> int:
    """Rows leased by a process of this host that no longer exists are free at once; rows of
    other hosts wait for their lease to run out."""
    assert issue.id is not None
    host = socket.gethostname()
    freed = 0
    now = now_utc()
    for owner in store.lease_owners(issue.id):
        name, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        if name == host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            freed += store.release(owner, now, now, "worker died; rows released")
    if freed:
        log.event("deliver.released", issue=issue.number, rows=freed)
    return freed


def run_worker(settings: Settings, store: Store, issue: Issue, *,
               on_progress: Callable[[Summary], None] | None = None,
               stop: threading.Event | None = None) -> Summary:
    """Deliver every due row of the issue from this process, then mark it sent if done.
    Setting `stop` (SIGTERM) ends the run within a few seconds: messages in flight finish
    and every row still held is given back at once. A database outage is waited out (the
    delivery pauses, its outcomes kept until recorded), unless `stop` is set meanwhile."""
    url = settings.storage.database_url
    patiently(lambda: release_dead_local_workers(store, issue), what="sending", stop=stop,
              url=url)
    pool = pool_from_settings(settings)
    summary = run_loop(deliver(store, make_plan(settings, store, issue, stop=stop), pool,
                                  policy(settings),
                                  owner=worker_id(), on_progress=on_progress))
    patiently(lambda: finish_if_done(store, issue), what="sending", stop=stop, url=url)
    log.event("issue.delivered", number=issue.number, sent=summary.sent,
              deferred=summary.deferred, failed=summary.failed, skipped=summary.skipped)
    return summary


@dataclass(slots=True)
class DryRun:
    recipients: int = 0
    skipped: int = 0
    variants: int = 0
    total_bytes: int = 0


def dry_run(settings: Settings, store: Store, issue: Issue) -> DryRun:
    """Build every message the send would build, and send none."""
    plan = make_plan(settings, store, issue)
    report = DryRun()
    now = now_utc()
    for sub in store.iter_active(1000):
        row = Claimed(0, sub.id, sub.email, sub.name, tuple(sub.sections), 0, None)
        stamp = plan.variant_for(row.sections)
        if stamp is None:
            report.skipped += 1
            continue
        unsubscribe, preferences = plan.urls_for(row)
        report.total_bytes += len(stamp.render(
            to_address=row.email, to_name=row.name, message_id=plan.message_id_for(row),
            unsubscribe_url=unsubscribe, preferences_url=preferences, date=now))
        report.recipients += 1
    report.variants = len(plan.variant_for.seen)  # type: ignore[attr-defined]
    return report


def send_one(settings: Settings, address: str, message: bytes, *, what: str) -> str:
    """One message outside the ledger, through the configured transport; raises if refused."""

    async def go() -> str:
        conn = await pool_from_settings(settings).connect()
        try:
            result = await conn.send(settings.mail.from_address, address, message)
        finally:
            await conn.close()
        if result.status != "sent":
            raise NewsletterError(f"{what} to {address} not sent: {result.reply}")
        return result.reply

    return run_loop(go())


# A sending process that stopped early (server trouble, rows deferred) exits with this.
CHILD_STOPPED_EARLY = 3


def _child(config_path: str, number: int, level: str = "WARNING",
           halt_all: Any = None) -> None:
    from newsletter.config import load_settings
    from newsletter.log import setup

    setup(level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if halt_all is not None:  # the parent's word (its Ctrl-C): the same clean stop
        def relay() -> None:
            halt_all.wait()
            stop.set()

        threading.Thread(target=relay, name="halt-relay", daemon=True).start()
    settings = load_settings(config_path)
    url = settings.storage.database_url
    store = Store(url, migrate=False)  # the parent migrated it; this one connects when used
    try:
        issue = patiently(lambda: get_sendable(store, number), what="sending", stop=stop,
                          url=url)
        summary = run_worker(settings, store, issue, stop=stop) if issue else None
    finally:
        store.close()
    if summary is not None and summary.stopped and not summary.halted:
        raise SystemExit(CHILD_STOPPED_EARLY)


def run_workers(settings: Settings, store: Store, issue: Issue, *,
                on_counts: Callable[[dict[str, int]], None] | None = None,
                stop: threading.Event | None = None,
                on_stopped: Callable[[str], None] | None = None) -> dict[str, int]:
    """`delivery.workers` processes share the ledger; the parent only watches the counts.
    Setting `stop` stops them all cleanly; `on_stopped` hears of a process that stopped
    early because of the server (its rows deferred)."""
    import logging
    import multiprocessing

    level = logging.getLevelName(logging.getLogger("newsletter").getEffectiveLevel())
    ctx = multiprocessing.get_context("spawn")
    halt_all = ctx.Event()
    procs = [ctx.Process(target=_child, args=(str(settings.path), issue.number, level,
                                              halt_all), daemon=True)
             for _ in range(settings.delivery.workers)]
    # Started with SIGINT ignored, which they inherit: Ctrl-C at a terminal reaches the whole
    # process group, and a child still starting up would die of it mid-import. This process
    # hears it and tells them through `halt_all`.
    main = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for proc in procs:
            proc.start()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    assert issue.id is not None
    told = False
    while any(p.is_alive() for p in procs):
        if stop is not None and stop.is_set() and not told:
            told = True
            halt_all.set()  # each finishes what is in flight and frees its rows
        if on_counts:
            try:
                on_counts(store.delivery_counts(issue.id))
            except Exception as exc:  # the workers wait out an outage; the display with them
                if not unreachable(exc):
                    raise
        for proc in procs:
            proc.join(timeout=0.5 / len(procs))
    issue_id = issue.id

    def finish() -> dict[str, int]:
        finish_if_done(store, issue)
        return store.delivery_counts(issue_id)

    counts = patiently(finish, what="sending", stop=stop,
                       url=settings.storage.database_url) or {}
    if on_counts and counts:
        on_counts(counts)
    early = [p for p in procs if p.exitcode == CHILD_STOPPED_EARLY]
    if early and on_stopped:
        on_stopped(f"{len(early)} of {len(procs)} sending processes stopped early because "
                   f"of the server (see the log)")
    bad = [p.exitcode for p in procs if p.exitcode and p.exitcode != CHILD_STOPPED_EARLY]
    if bad:
        raise NewsletterError(f"{len(bad)} sending process(es) failed (exit codes {bad}); "
                              f"run the send again to resume — nothing is lost")
    return counts
