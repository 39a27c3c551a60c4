"""Keeping the database in shape: ledger retention, SQLite's file shrunk back, online backups."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from newsletter import log
from newsletter.config import Settings
from newsletter.errors import NewsletterError
from newsletter.models import Issue, IssueEventDraft
from newsletter.pipeline.collecting import now_utc
from newsletter.store.backup import Copy, copy_database
from newsletter.store.database import Store, open_engine
from newsletter.store.retention import FileSpace, sqlite_file

# Rows removed per write transaction: on SQLite a few tens of milliseconds with the lock
# held, then the lock is let go for PAUSE so a worker's settle (waiting in its busy
# handler) gets in between two batches.
PRUNE_BATCH = 5000
PAUSE = 0.05
VACUUM_STEP = 1024  # free pages given back per transaction (4 MiB at the default page size)
POSTGRES_BACKUP = ("newsletter backup copies the embedded SQLite database; for PostgreSQL "
                   "use pg_dump --format=custom (docs/deploy.md, Backups)")


@dataclass(frozen=True, slots=True)
class PrunedIssue:
    number: int
    status: str
    finished_at: datetime
    rows: int  # removed (in a dry run: at most this many would be)
    kept: int = 0  # kept as a subscriber's latest row (or changed since the cutoff)


@dataclass(slots=True)
class PruneReport:
    """What `db prune` and the daily job did (or, in a dry run, would do)."""

    retention_days: int
    cutoff: datetime | None  # None: retention is off
    dry_run: bool = False
    issues: list[PrunedIssue] = field(default_factory=list)
    before: FileSpace | None = None  # SQLite only
    after: FileSpace | None = None
    stopped: bool = False  # the service is stopping: the rest waits for the next run

    @property
    def rows(self) -> int:
        return sum(i.rows for i in self.issues)


def prune_ledger(settings: Settings, store: Store, *, now: datetime | None = None,
                 dry_run: bool = False, stop: threading.Event | None = None,
                 batch: int = PRUNE_BATCH, pause: float = PAUSE,
                 actor: str = "scheduler") -> PruneReport:
    """Remove the delivery rows of issues finished more than [storage] ledger_retention_days
    ago (each subscriber's latest row stays), a batch per short transaction; then, on SQLite
    with incremental auto-vacuum, give the freed pages back to the file system. The issue,
    its html and text, its history and its delivery counts stay. Safe to stop at any point
    and to run again."""
    days = settings.storage.ledger_retention_days
    now = now or now_utc()
    report = PruneReport(days, now - timedelta(days=days) if days else None, dry_run)
    report.before = report.after = store.retention.file_space()
    if report.cutoff is None:
        return report
    stop = stop or threading.Event()
    for issue in store.retention.prunable_issues(report.cutoff):
        if dry_run:
            report.issues.append(PrunedIssue(issue.number, issue.status, issue.finished_at,
                                             issue.rows))
            continue
        removed = looked = 0
        after: int | None = 0
        while after is not None:
            if stop.is_set():
                report.stopped = True
                break
            n, seen, after = store.retention.prune_batch(issue.issue_id, report.cutoff,
                                                         after, batch)
            removed, looked = removed + n, looked + seen
            if after is not None and n:
                stop.wait(pause)  # the write lock is free: senders go first
        if removed or not report.stopped:
            report.issues.append(PrunedIssue(issue.number, issue.status, issue.finished_at,
                                             removed, looked - removed))
        if report.stopped:
            break
        store.record_issue_event(issue.number, now_utc(), IssueEventDraft(actor, "prune", {
            "rows": removed, "kept": looked - removed, "retention_days": days}))
        log.event("ledger.pruned_issue", number=issue.number, rows=removed,
                  kept=looked - removed)
    if not dry_run and report.before is not None:
        report.after = _shrink(store, stop, pause)
    log.event("ledger.pruned", dry_run=dry_run, issues=len(report.issues), rows=report.rows,
              stopped=report.stopped, **_sizes(report))
    return report


def _shrink(store: Store, stop: threading.Event, pause: float) -> FileSpace | None:
    """Give SQLite's free pages back, VACUUM_STEP a transaction (only a database with
    incremental auto-vacuum can), then checkpoint without waiting for anyone."""
    space = store.retention.file_space()
    if space is not None and space.auto_vacuum == "incremental":
        left = space.free_pages
        while left and not stop.is_set():
            left = store.retention.give_back(VACUUM_STEP)
            if left:
                stop.wait(pause)
    store.retention.checkpoint()
    return store.retention.file_space()


def _sizes(report: PruneReport) -> dict[str, int]:
    if report.before is None or report.after is None:
        return {}
    return {"bytes_before": report.before.total, "bytes_after": report.after.total}


def check_resendable(settings: Settings, store: Store, issue: Issue) -> None:
    """A sent issue whose rows are (or may be being) pruned cannot be sent again: without
    its rows the ledger no longer knows who has it, and everyone would get it twice."""
    if issue.status != "sent" or issue.id is None:
        return
    days = settings.storage.ledger_retention_days
    if store.retention.issue_pruned(issue.id, now_utc() - timedelta(days=days) if days
                                    else None):
        raise NewsletterError(f"issue {issue.number} was sent more than the ledger keeps "
                              f"([storage] ledger_retention_days): its delivery rows are "
                              f"pruned, so it cannot be sent again")


def vacuum(store: Store) -> tuple[FileSpace, FileSpace]:
    """One VACUUM of an SQLite database made before incremental auto-vacuum was the
    default: rewrites the file (needs as much free disk again) holding the write lock the
    whole time. Refused on PostgreSQL, and while an issue is being sent."""
    before = store.retention.file_space()
    if before is None:
        raise NewsletterError("--vacuum is for SQLite; PostgreSQL's autovacuum reclaims the "
                              "space (docs/deploy.md)")
    sending = store.list_issues(limit=5, statuses=("sending",))
    if sending:
        raise NewsletterError(f"issue {sending[0].number} is being sent: VACUUM would hold "
                              f"the database's write lock meanwhile; run it when none is")
    store.retention.vacuum()
    after = store.retention.file_space()
    assert after is not None
    log.event("database.vacuumed", bytes_before=before.total, bytes_after=after.total)
    return before, after


def backup(settings: Settings, dest: Path) -> Copy:
    """A consistent copy of the SQLite database at `dest` while the service runs."""
    url = settings.storage.database_url
    if not url.startswith("sqlite"):
        raise NewsletterError(POSTGRES_BACKUP)
    engine = open_engine(url)
    try:
        source = sqlite_file(engine)
        if source is None or not source.is_file():
            raise NewsletterError(f"{source or url}: no database file to copy")
        if dest.is_dir():
            dest = dest / f"{source.stem}-{now_utc():%Y%m%dT%H%M%SZ}{source.suffix}"
        copy = copy_database(engine, dest)
    finally:
        engine.dispose()
    log.event("database.backup", path=str(copy.path), bytes=copy.size,
              integrity=copy.integrity)
    return copy
