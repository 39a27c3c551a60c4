"""`newsletter bounces …`: ingest bounce messages, poll the bounce mailbox, list what came back."""

from __future__ import annotations

import sys

import click

from newsletter.cli.common import fail_cleanly, find_subscriber, with_store
from newsletter.errors import NewsletterError
from newsletter.models import BOUNCE_KINDS

EX_TEMPFAIL = 75  # sysexits.h: Postfix's pipe and local delivery defer the message


@click.group()
def bounces() -> None:
    """Bounces and complaints: ingest them, list them."""


@bounces.command("ingest")
@click.argument("paths", nargs=-1, required=True, metavar="PATH... | -")
@click.pass_context
@fail_cleanly
def bounces_ingest(ctx: click.Context, paths: tuple[str, ...]) -> None:
    """Read bounce messages: a file holding one message, an mbox file, or a Maildir; '-'
    reads one message from standard input (for an MTA alias:
    bounces: "|newsletter bounces ingest -"). Prints one summary line; exits 0 when every
    message was read, whatever it turned out to be, 1 when a path could not be read, 75
    (EX_TEMPFAIL: an MTA retries later) when the configuration or the database is
    unusable."""
    from newsletter.config import load_settings
    from newsletter.errors import ConfigError, DatabaseError
    from newsletter.pipeline import open_store
    from newsletter.pipeline.bounce_files import ingest_paths

    try:
        settings = load_settings(ctx.find_root().obj["config"])
        store = open_store(settings)
        ctx.call_on_close(store.close)
        summary, errors = ingest_paths(settings, store, list(paths), stdin=sys.stdin.buffer)
    except (ConfigError, DatabaseError) as exc:
        # EX_TEMPFAIL: an MTA piping a bounce in keeps it queued and tries again once the
        # operator has fixed this; any other status would bounce the bounce into nowhere.
        click.echo(f"error: {exc}", err=True)
        sys.exit(EX_TEMPFAIL)
    for line in errors:
        click.echo(f"error: {line}", err=True)
    click.echo(summary.line())  # a rate warning is already on stderr, as its log line
    if errors:
        sys.exit(1)


@bounces.command("poll")
@click.pass_context
@fail_cleanly
def bounces_poll(ctx: click.Context) -> None:
    """Read the bounce mailbox ([bounces] imap_url) once now, as the scheduler does."""
    from newsletter.pipeline.bounce_imap import poll_mailbox

    settings, store = with_store(ctx)
    if not settings.bounces.imap_url:
        raise NewsletterError("[bounces] imap_url is not set: no mailbox to poll")
    click.echo(poll_mailbox(settings, store).line())


@bounces.command("list")
@click.option("--kind", type=click.Choice(BOUNCE_KINDS), default=None)
@click.option("--issue", "issue_number", type=int, default=None, help="Only this issue's.")
@click.option("--email", default=None, help="Only this subscriber's.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.pass_context
@fail_cleanly
def bounces_list(ctx: click.Context, kind: str | None, issue_number: int | None,
                 email: str | None, limit: int) -> None:
    """Recorded bounces and complaints, newest first."""
    _settings, store = with_store(ctx)
    subscriber_id = None if email is None else find_subscriber(store, email).id
    events = store.list_bounces(kind=kind, subscriber_id=subscriber_id,
                                issue_number=issue_number, limit=limit)
    if not events:
        click.echo("no bounces or complaints recorded" + (" that match" if kind or email
                                                           or issue_number else ""))
    for e in events:
        issue = f"#{e.issue_number}" if e.issue_number is not None else "-"
        click.echo(f"{e.received_at:%Y-%m-%d %H:%M}  {e.kind:<9} {e.status or '-':<7} "
                   f"{issue:>5}  {e.source:<8} {e.email}  {e.diagnostic}")
