"""`newsletter subscribers …`: add, import, export, list and remove subscribers."""

from __future__ import annotations

import shutil
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

import click

from newsletter.cli.common import cli_actor, fail_cleanly, find_subscriber, settings_of
from newsletter.errors import NewsletterError
from newsletter.words import plural

if TYPE_CHECKING:
    from newsletter.audience.subscribers_csv import ImportReport
    from newsletter.config import Settings
    from newsletter.store.database import Store as SubscriberStore


def _open(ctx: click.Context) -> tuple[Settings, SubscriberStore]:
    from newsletter.store.database import Store as SubscriberStore

    settings = settings_of(ctx)
    store = SubscriberStore(settings.storage.database_url)
    ctx.call_on_close(store.close)
    return settings, store


def _now() -> datetime:
    return datetime.now(UTC)


@click.group()
def subscribers() -> None:
    """Manage subscribers: add, import, export, list, remove."""


_actor = cli_actor  # who ran the command, for the consent record


@subscribers.command("add")
@click.argument("email")
@click.option("--name", default="", help="Display name.")
@click.option("--confirmed", is_flag=True,
              help="The person has already opted in: make a new or pending address active "
                   "at once, without a confirmation mail.")
@click.option("--resubscribe", is_flag=True,
              help="Subscribe again an address that unsubscribed, bounced or complained, "
                   "because the person asked to; needs --reason. Recorded with who and why.")
@click.option("--reason", default="",
              help="Why (who asked, when, how): required with --resubscribe, recorded.")
@click.pass_context
@fail_cleanly
def add(ctx: click.Context, email: str, name: str, confirmed: bool, resubscribe: bool,
        reason: str) -> None:
    """Add EMAIL; without --confirmed a confirmation mail goes out and it waits for the
    person to confirm. An address that opted out is refused unless --resubscribe."""
    from newsletter.audience import consent, subscriptions, tokens
    from newsletter.pipeline.notices import subscriber_confirmation

    settings, store = _open(ctx)
    now = _now()
    try:
        outcome = consent.admin_add(
            store, email, name, actor=_actor(), now=now, hint=consent.HINT_CLI,
            confirmed=confirmed, resubscribe=resubscribe, reason=reason,
            smtputf8=settings.mail.smtputf8,
            resend_window=timedelta(minutes=settings.subscriptions.confirm_resend_minutes))
    except subscriptions.AddressError as exc:
        raise NewsletterError(f"{email!r}: {exc.reason}") from None
    sub = outcome.subscriber
    messages = {
        "new": "added, active" if sub.status == "active" else "added, pending confirmation",
        "pending": "already pending confirmation",
        "active": "already active",
        "activated": "confirmed: now active",
        "reactivated": f"subscribed again (was {outcome.previous_status}); recorded with "
                       f"your reason",
    }
    click.echo(f"{sub.email}: {messages[outcome.state]}")
    if outcome.send_confirmation:
        # The same mail, through the same transport, as the subscribe form and the API send.
        send = subscriber_confirmation(settings, tokens.load_or_create_secret(settings))
        why = consent.mail_confirmation(store, sub, send, now)
        if why is not None:
            raise NewsletterError(f"{sub.email}: stored as pending, but the confirmation "
                                  f"mail was not sent: {why}")
        click.echo(f"confirmation mail sent to {sub.email} (the link is valid "
                   f"{settings.subscriptions.confirm_hours} h)")
    elif sub.status == "pending" and sub.confirmation_sent_at is not None:
        click.echo(f"no new confirmation mail: one went out at "
                   f"{sub.confirmation_sent_at:%Y-%m-%d %H:%M} UTC")


@subscribers.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 50_000))
@click.pass_context
@fail_cleanly
def import_(ctx: click.Context, file: Path, batch_size: int) -> None:
    """Import a CSV with columns email, name, sections (a|b); bad rows are listed, and so
    are addresses left as they were (opted out, or awaiting the person's confirmation).

    FILE may be '-' for standard input.
    """
    from newsletter.audience.subscribers_csv import import_csv

    settings, store = _open(ctx)
    if str(file) == "-":
        report = _import_stdin(store, batch_size, settings.mail.smtputf8)
    else:
        report = import_csv(store, file, now=_now(), batch_size=batch_size,
                            smtputf8=settings.mail.smtputf8, actor=_actor())
    for line, reason in sorted(report.errors + report.skipped_rows):
        click.echo(f"{file}:{line}: {reason}", err=True)
    if report.invalid > len(report.errors):
        click.echo(f"… and {report.invalid - len(report.errors)} more invalid rows", err=True)
    click.echo(f"imported {report.summary()}")
    sys.exit(1 if report.invalid else 0)


def _import_stdin(store: SubscriberStore, batch_size: int, smtputf8: bool) -> ImportReport:
    """Standard input, spooled to a private file: the import reads its file twice (the
    UTF-8 check first, so a bad file changes nothing)."""
    from newsletter.audience.subscribers_csv import import_csv

    with tempfile.NamedTemporaryFile(prefix="newsletter-import-", suffix=".csv") as spool:
        with click.open_file("-", "rb") as src:
            shutil.copyfileobj(src, spool)
        spool.flush()
        try:
            return import_csv(store, spool.name, now=_now(), batch_size=batch_size,
                              smtputf8=smtputf8, actor=_actor())
        except NewsletterError as exc:
            raise NewsletterError(str(exc).replace(spool.name, "-")) from None


@subscribers.command("export")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to this file instead of standard output ('-': standard output).")
@click.pass_context
@fail_cleanly
def export(ctx: click.Context, output: Path | None) -> None:
    """Write every subscriber as CSV (formula-like cells neutralised)."""
    from newsletter.audience.subscribers_csv import export_csv

    _settings, store = _open(ctx)
    if output is None or str(output) == "-":
        # click.open_file("-") wraps standard output as get_text_stream (deprecated in
        # click 8.5) did: the stream's own encoding, corrected where it is misconfigured.
        with click.open_file("-", "w") as out:
            count = export_csv(store, cast("TextIO", out))
    else:
        # Written beside the target and renamed, so a failed export leaves no half file.
        tmp = output.with_name(f".{output.name}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                count = export_csv(store, f)
            tmp.replace(output)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise NewsletterError(f"{output}: cannot write: {exc.strerror or exc}") from None
        click.echo(f"exported {plural(count, 'subscriber')} to {output}", err=True)


@subscribers.command("list")
@click.option("--status", type=click.Choice(["pending", "active", "unsubscribed", "bounced",
                                             "complained"]))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0))
@click.pass_context
@fail_cleanly
def list_(ctx: click.Context, status: str | None, limit: int, offset: int) -> None:
    """List subscribers (oldest first) and the count per status."""
    _settings, store = _open(ctx)
    for sub in store.list_subscribers(status=status, limit=limit, offset=offset):
        name = f"  {sub.name}" if sub.name else ""
        click.echo(f"{sub.id:>7}  {sub.status:<12} {sub.email}{name}")
    counts = store.count_subscribers()
    click.echo(", ".join(f"{n} {s}" for s, n in counts.items()), err=True)


@subscribers.command("remove")
@click.argument("email")
@click.pass_context
@fail_cleanly
def remove(ctx: click.Context, email: str) -> None:
    """Delete EMAIL; if issues were already sent to it, keep it anonymised and unsubscribed."""
    _settings, store = _open(ctx)
    sub = find_subscriber(store, email)  # any stored address: removing must always work
    result = store.remove_subscriber(sub.id, _now())
    if result == "anonymised":
        click.echo(f"{sub.email}: kept as unsubscribed with its name removed, because past "
                   f"deliveries refer to it (and so that no import adds it again)")
    else:
        click.echo(f"{sub.email}: {result}")


@subscribers.command("history")
@click.argument("email")
@click.pass_context
@fail_cleanly
def history(ctx: click.Context, email: str) -> None:
    """Show every consent recorded for EMAIL (when, what, who, why; oldest first), then
    the bounces and complaints recorded for it."""
    _settings, store = _open(ctx)
    sub = find_subscriber(store, email)
    click.echo(f"{sub.email}: {sub.status}")
    for e in store.consent_history(sub.id):
        was = f" (was {e.previous_status})" if e.previous_status else ""
        who = e.actor or "the person"
        why = f": {e.reason}" if e.reason else ""
        click.echo(f"{e.at:%Y-%m-%d %H:%M} UTC  {e.action}{was} by {who}{why}")
    for b in reversed(store.list_bounces(subscriber_id=sub.id, limit=100)):
        issue = f" of issue {b.issue_number}" if b.issue_number is not None else ""
        code = f" {b.status}" if b.status else ""
        click.echo(f"{b.received_at:%Y-%m-%d %H:%M} UTC  {b.kind}{code}{issue} via {b.source}"
                   f"{': ' + b.diagnostic if b.diagnostic else ''}")
