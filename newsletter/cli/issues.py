"""`newsletter issue …`: build, list, show, preview, send and inspect issues."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from newsletter.cli.common import cli_actor, fail_cleanly, get_issue, with_store
from newsletter.cli.issue_edit import issue_edit, issue_history
from newsletter.errors import BadValue
from newsletter.words import plural

if TYPE_CHECKING:
    from newsletter.config import Settings
    from newsletter.models import Issue
    from newsletter.store.database import Store

# `issue send`: 0 every due row recorded; 1 stopped early, the rest deferred; 2 an operator
# error; 128 + the signal (130 for Ctrl-C) when interrupted, rows given back at once.
SEND_STOPPED_EARLY = 1


@click.group()
def issue() -> None:
    """Build, inspect and preview newsletter issues."""


@issue.command("build")
@click.option("--force", is_flag=True, help="Build even when nothing is new.")
@click.pass_context
@fail_cleanly
def issue_build(ctx: click.Context, force: bool) -> None:
    """Build the next issue from the articles published since the previous one."""
    from newsletter import pipeline

    settings, store = with_store(ctx)
    result = pipeline.build_issue(settings, store, force=force, actor=cli_actor())
    click.echo(result.message + (" (--force builds one anyway)" if result.nothing_new else ""))


@issue.command("list")
@click.option("--limit", default=20, show_default=True)
@click.pass_context
@fail_cleanly
def issue_list(ctx: click.Context, limit: int) -> None:
    """List recent issues, newest first."""
    _settings, store = with_store(ctx)
    issues = store.list_issues(limit=limit)
    if not issues:
        click.echo("no issues yet: run `newsletter issue build`")
    for it in issues:
        click.echo(f"{it.number:>5}  {it.status:<10} {it.created:%Y-%m-%d %H:%M}  {it.subject}")


@issue.command("show")
@click.argument("number", type=int)
@click.pass_context
@fail_cleanly
def issue_show(ctx: click.Context, number: int) -> None:
    """Show an issue's subject, status, review and approval, and articles by section."""
    settings, store = with_store(ctx)
    it = get_issue(store, number)
    click.echo(f"Issue {it.number} — {it.status}\nSubject:   {it.subject}\n"
               f"Preheader: {it.preheader}\nWindow:    {it.window_start:%Y-%m-%d %H:%M} → "
               f"{it.window_end:%Y-%m-%d %H:%M} UTC\nHTML:      {len(it.html.encode())} bytes")
    if it.intro:
        click.echo(f"Intro:     {plural(len(it.intro.splitlines()), 'line')} of Markdown")
    if it.edited_at:
        click.echo(f"Edited:    {it.edited_at:%Y-%m-%d %H:%M} UTC (`issue history "
                   f"{it.number}` says who and what)")
    for line in _review_lines(settings.newsletter.review, it):
        click.echo(line)
    for section in it.sections:  # ids first: `issue edit` takes them
        click.echo(f"\n{section.name}")
        for a in section.articles:
            click.echo(f"  {a.id}  {a.published:%Y-%m-%d}  {a.title}\n"
                       f"{'':24}{a.link}")


def _review_lines(review: bool, it: Issue) -> list[str]:
    """Whether the editors were asked and who approved it, when: in review mode, or when an
    issue bears either (built in review mode before it was turned off)."""
    if not (review or it.review_sent_at or it.approved_at):
        return []
    asked = "not requested"
    if it.review_sent_at:
        asked = f"requested {it.review_sent_at:%Y-%m-%d %H:%M %Z}" + (
            f", reminder {it.reminded_at:%Y-%m-%d %H:%M %Z}" if it.reminded_at else "")
    approved = "no" + (f" (`newsletter issue approve {it.number}` releases it)"
                       if review and it.status in ("draft", "scheduled", "paused") else "")
    if it.approved_at:
        approved = f"by {it.approved_by}, {it.approved_at:%Y-%m-%d %H:%M %Z}"
    return [f"Review:    {asked}", f"Approved:  {approved}"]


@issue.command("review")
@click.argument("number", type=int)
@click.pass_context
@fail_cleanly
def issue_review(ctx: click.Context, number: int) -> None:
    """Mail issue N to the editors for review (again), with fresh links (review mode)."""
    from newsletter.pipeline import review

    settings, store = with_store(ctx)
    asked = review.review_by_hand(settings, store, number, actor=cli_actor())
    if not asked.reached:
        click.echo(f"error: issue {number}: {asked.line()}", err=True)
        sys.exit(SEND_STOPPED_EARLY)
    click.echo(f"issue {number}: {asked.line()}: {', '.join(asked.reached)}")


@issue.command("preview")
@click.argument("number", type=int)
@click.option("--open", "open_", is_flag=True, help="Open the HTML in a web browser.")
@click.option("--out", default="var/preview", show_default=True,
              type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
@fail_cleanly
def issue_preview(ctx: click.Context, number: int, open_: bool, out: Path) -> None:
    """Write the issue's HTML and text (with sample personal values) and print the paths."""
    from newsletter import pipeline

    settings, store = with_store(ctx)
    html_path, text_path = pipeline.write_preview(settings, get_issue(store, number), out)
    click.echo(f"html: {html_path}\ntext: {text_path}")
    if open_:
        import webbrowser

        webbrowser.open(html_path.resolve().as_uri())


def _print_counts(number: int, counts: dict[str, int]) -> None:
    total = sum(counts.values())
    parts = ", ".join(f"{k} {v}" for k, v in counts.items() if v or k in ("sent", "failed"))
    click.echo(f"issue {number}: {plural(total, 'delivery', 'deliveries')} — {parts}")


@issue.command("send")
@click.argument("number", type=int)
@click.option("--dry-run", is_flag=True, help="Build every message, send none (with --to or "
                                              "--seed: list who would get a test copy).")
@click.option("--to", "to", multiple=True, metavar="ADDRESS",
              help="Send one test copy to ADDRESS (repeatable), outside the ledger, subject "
                   "prefixed [TEST].")
@click.option("--seed", is_flag=True, help="Send one test copy to each address of "
                                           "[newsletter] seed_list (with --to: to both).")
@click.option("--to-new-subscribers", "new_subscribers", is_flag=True,
              help="Send an issue already sent to those who subscribed since (nobody gets "
                   "it twice).")
@click.pass_context
@fail_cleanly
def issue_send(ctx: click.Context, number: int, dry_run: bool, to: tuple[str, ...],
               seed: bool = False, new_subscribers: bool = False) -> None:
    """Send issue N to every active subscriber (resumes where a previous run stopped)."""
    from newsletter.pipeline import review, sending

    settings, store = with_store(ctx)
    it = sending.get_sendable(store, number)
    if (to or seed) and new_subscribers:
        raise BadValue("--to-new-subscribers sends the issue itself: give it without --to "
                       "and --seed")
    if (to or seed) and dry_run:  # a dry run never sends, not even a test copy
        who = review.copy_addresses(settings, to, seed=seed)
        click.echo(f"dry run: a [TEST] copy of issue {number} would go to "
                   f"{plural(len(who), 'address', 'addresses')}: {', '.join(who)}; nothing "
                   f"sent")
        return
    if to or seed:
        _test_copies(settings, store, number, list(to), seed)
        return
    if dry_run and it.status == "sent":
        assert it.id is not None
        click.echo(f"dry run: issue {number} was sent already; --to-new-subscribers would "
                   f"send it to the {plural(store.ledger.count_unqueued(it.id), 'subscriber')} "
                   f"who joined since; nothing sent")
        return
    if dry_run:
        report = sending.dry_run(settings, store, it)
        click.echo(f"dry run: {plural(report.recipients, 'message')} in "
                   f"{plural(report.variants, 'variant')}, "
                   f"{report.total_bytes / 1e6:.1f} MB; {report.skipped} skipped (no chosen "
                   f"section in this issue); nothing sent")
        return
    assert it.id is not None
    stop = threading.Event()
    signals: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:  # Ctrl-C: stop like a worker does
        signals.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    early: list[str] = []  # why the run stopped before the end, if it did
    try:
        sending.start_sending(settings, store, it, actor=cli_actor(),
                              new_subscribers=new_subscribers)
        issue_id = it.id
        with _progress(lambda: store.delivery_counts(issue_id)) as update:
            if settings.delivery.workers > 1:
                sending.run_workers(settings, store, it, on_counts=update, stop=stop,
                                    on_stopped=early.append)
            else:
                summary = sending.run_worker(settings, store, it, stop=stop,
                                             on_progress=lambda _s: update(None))
                if summary.stopped:
                    early.append(summary.stopped + ("" if summary.halted else
                                                    "; the rest is deferred"))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    counts = store.delivery_counts(it.id)
    _print_counts(number, counts)
    if signals:
        click.echo(f"interrupted: {counts['sent']} sent so far, nothing lost; "
                   f"`newsletter issue send {number}` resumes", err=True)
        sys.exit(128 + signals[0])
    if early:
        click.echo(f"stopped early: {early[0]}; `newsletter issue send {number}` resumes "
                   f"(or `newsletter run` retries deferred rows)", err=True)
        sys.exit(SEND_STOPPED_EARLY)
    after = store.get_issue(number, with_articles=False)
    if after and after.status == "sent":
        click.echo(f"issue {number} is sent")
    elif counts["deferred"]:
        click.echo(f"{counts['deferred']} deferred: retried automatically by `newsletter run`, "
                   f"or run this command again")


def _test_copies(settings: Settings, store: Store, number: int, to: list[str],
                 seed: bool) -> None:
    """[TEST] copies to `to` and, with `seed` or without `to`, the seed list; exit status 1
    if any was refused."""
    from newsletter.pipeline import review

    outcomes = review.send_test_copies(settings, store, number, to, seed=seed,
                                       actor=cli_actor())
    for o in outcomes:
        click.echo(f"test copy sent to {o.address}: {o.reply}" if o.sent else
                   f"test copy to {o.address} not sent: {o.reply}", err=not o.sent)
    if not all(o.sent for o in outcomes):
        sys.exit(SEND_STOPPED_EARLY)


@issue.command("approve")
@click.argument("number", type=int)
@click.pass_context
@fail_cleanly
def issue_approve(ctx: click.Context, number: int) -> None:
    """Approve issue N: it is sent now, or at its scheduled time if that is still ahead."""
    from newsletter.pipeline import review
    from newsletter.pipeline.publishing import refresh_site

    settings, store = with_store(ctx)
    approval = review.approve_issue(store, number, actor=cli_actor())
    it = approval.issue
    if not approval.send_now:
        assert it.send_at is not None
        refresh_site(settings, store)  # now the home page may name its time
        click.echo(f"issue {number} approved by {it.approved_by}: scheduled for "
                   f"{it.send_at:%Y-%m-%d %H:%M %Z}")
        return
    click.echo(f"issue {number} approved by {it.approved_by}: sending now")
    ctx.invoke(issue_send, number=number)  # the same delivery as `issue send N`


class _progress:  # noqa: N801 - used as a context manager like a function
    """A rich progress bar on a terminal; silent otherwise (logs and the summary remain)."""

    def __init__(self, counts_fn: Callable[[], dict[str, int]]) -> None:
        self.counts_fn = counts_fn
        self.total = sum(counts_fn().values())
        self.bar: Any = None
        self.calls = 0

    def __enter__(self) -> Callable[[dict[str, int] | None], None]:
        if sys.stdout.isatty() and self.total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bar = Progress(TextColumn("sending"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[detail]}"))
            self.task = self.bar.add_task("send", total=self.total, detail="")
            self.bar.start()
        return self.update

    def update(self, counts: dict[str, int] | None) -> None:
        """Called with fresh counts, or with None per message (then read every 50th)."""
        self.calls += 1
        if self.bar is None or (counts is None and self.calls % 50):
            return
        counts = counts or self.counts_fn()
        settled = counts["sent"] + counts["failed"] + counts["skipped"] + counts["deferred"]
        rate = counts["sent"] / max(self.bar.tasks[0].elapsed or 0.0, 1e-3)
        self.bar.update(self.task, completed=settled,
                        detail=f"sent {counts['sent']} · failed {counts['failed']} · deferred "
                               f"{counts['deferred']} · {rate:,.0f}/s")

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@issue.command("status")
@click.argument("number", type=int)
@click.pass_context
@fail_cleanly
def issue_status(ctx: click.Context, number: int) -> None:
    """Print the delivery ledger's counts for issue N."""
    from newsletter.audience.rates import percent
    from newsletter.pipeline.bounces import issue_rates

    settings, store = with_store(ctx)
    it = get_issue(store, number)
    click.echo(f"issue {number}: {it.status} — {it.subject}")
    assert it.id is not None
    _print_counts(number, store.delivery_counts(it.id))
    # Why rows were skipped; "no chosen section here": the reader chose only sections this
    # issue does not have, so there was nothing to send them.
    if reasons := store.skipped_reasons(it.id):
        click.echo("skipped: " + ", ".join(f"{n} {why or 'no reason recorded'}"
                                           for why, n in reasons.items()))
    rates = issue_rates(store, it.id)
    click.echo(f"came back: {plural(rates.hard, 'hard bounce')} ({percent(rates.hard_rate)}), "
               f"{plural(rates.soft, 'soft bounce')}, {plural(rates.complaints, 'complaint')} "
               f"({percent(rates.complaint_rate)}) of {rates.sent} sent")
    b = settings.bounces
    for warning in rates.warnings(b.complaint_rate_warning, b.hard_bounce_rate_warning):
        click.echo(f"warning: {warning}", err=True)


issue.add_command(issue_edit)
issue.add_command(issue_history)
