"""What every command shares: clean operator errors, the loaded settings, an open store."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from newsletter.config import Settings, load_settings
from newsletter.errors import NewsletterError

if TYPE_CHECKING:
    from newsletter.models import Issue, Subscriber
    from newsletter.store.database import Store

F = TypeVar("F", bound=Callable[..., Any])


def fail_cleanly(fn: F) -> F:
    """Operator errors, and a database out of reach, become one line on stderr and exit
    status 2, not a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NewsletterError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except Exception as exc:
            line = _outage(exc)
            if line is None:
                raise  # a bug: its traceback is what a report needs
            click.echo(f"error: {line}", err=True)
            sys.exit(2)

    return cast(F, wrapper)


def _outage(exc: Exception) -> str | None:
    """One line when `exc` is the database gone away after it opened (every command, not
    only those that thought of it); None for anything else."""
    if "sqlalchemy" not in sys.modules:
        return None  # no database was used: the store need not be loaded to say so
    from newsletter.pipeline.outages import describe, unreachable

    if not unreachable(exc):
        return None
    ctx = click.get_current_context(silent=True)
    settings = ctx.find_root().obj.get("settings") if ctx and ctx.find_root().obj else None
    return describe(exc, settings.storage.database_url if settings else "")


def settings_of(ctx: click.Context) -> Settings:
    obj = ctx.find_root().obj
    if "settings" not in obj:
        try:
            obj["settings"] = load_settings(obj["config"])
        except NewsletterError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    settings: Settings = obj["settings"]
    return settings


def with_store(ctx: click.Context) -> tuple[Settings, Store]:
    """The settings and a store that closes when the command ends."""
    from newsletter import pipeline

    settings = settings_of(ctx)
    store = pipeline.open_store(settings)
    ctx.call_on_close(store.close)
    return settings, store


def cli_actor() -> str:
    """Who ran the command, as consent records and issue histories name them."""
    import getpass
    import os

    try:
        return f"cli {getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (a bare container)
        return f"cli uid {os.getuid()}"


def get_issue(store: Store, number: int) -> Issue:
    found = store.get_issue(number)
    if found is None:
        raise NewsletterError(f"issue {number}: no such issue (see `newsletter issue list`)")
    return found


def find_subscriber(store: Store, email: str) -> Subscriber:
    """The subscriber with this address (any spelling of it), or a one-line error."""
    from newsletter.audience.subscriptions import AddressError, normalise_address

    try:  # smtputf8=True: any address that got stored can be found
        _address, key = normalise_address(email, smtputf8=True)
    except AddressError as exc:
        raise NewsletterError(f"{email!r}: {exc.reason}") from None
    sub = store.get_subscriber_by_key(key)
    if sub is None:
        raise NewsletterError(f"{email}: no such subscriber")
    return sub


def print_collect(report: Any) -> None:
    # Each error and warning is already on stderr once, as collect's WARNING log line.
    from newsletter.words import plural

    click.echo(f"collected: {report.new} new, {report.updated} updated, "
               f"{report.unchanged} unchanged, {plural(report.skipped_files, 'file')} unchanged "
               f"on disk, {len(report.errors)} failed")
