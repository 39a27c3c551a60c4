"""`newsletter issue edit` and `issue history`: shape an issue before it goes, and its audit."""

from __future__ import annotations

from datetime import UTC
from typing import Any, cast

import click

from newsletter.cli.common import cli_actor, fail_cleanly, get_issue, with_store
from newsletter.errors import BadValue

# More than this is refused before decoding (the pipeline's own limit is 20 KB).
_INTRO_READ_MAX = 1024 * 1024


def _ids(values: tuple[str, ...]) -> list[str]:
    """Ids from repeated options, each of which may itself be a comma-separated list."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _read_intro(path: str) -> str:
    """The intro file's text ('-': standard input); a file that cannot be read is one line
    naming it (BadValue, exit 2), not click's usage message."""
    try:
        with click.open_file(path, "rb") as source:  # "-": standard input
            raw = cast("bytes", source.read(_INTRO_READ_MAX + 1))
    except FileNotFoundError:
        raise BadValue(f"--intro-file {path}: no such file") from None
    except IsADirectoryError:
        raise BadValue(f"--intro-file {path}: a directory, not a file") from None
    except OSError as exc:
        raise BadValue(f"--intro-file {path}: cannot read it ({exc.strerror})") from None
    if len(raw) > _INTRO_READ_MAX:
        raise BadValue(f"--intro-file {path}: over {_INTRO_READ_MAX // 1024} KB; an intro "
                       f"is a short note")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadValue(f"--intro-file {path}: not UTF-8 text (byte {exc.start})") from None


@click.command("edit")
@click.argument("number", type=int)
@click.option("--subject", default=None, help="The new subject (one line).")
@click.option("--preheader", default=None, help="The new inbox preview text (one line).")
@click.option("--intro-file", default=None, metavar="FILE",
              help="The editor's note in Markdown, from a file ('-': standard input); an "
                   "empty file removes it.")
@click.option("--remove", multiple=True, metavar="ID", help="Take this article out (repeat).")
@click.option("--add", multiple=True, metavar="ID",
              help="Add this stored article, at the end of its section (repeat).")
@click.option("--order", default=None, metavar="ID,ID,…",
              help="The issue's article ids in the new order; ids left out are removed.")
@click.pass_context
@fail_cleanly
def issue_edit(ctx: click.Context, number: int, subject: str | None, preheader: str | None,
               intro_file: str | None, remove: tuple[str, ...], add: tuple[str, ...],
               order: str | None) -> None:
    """Edit issue N before it is sent: subject, preheader, intro note and its articles.

    Article ids are in `newsletter issue show N`. Sections follow the order of their first
    article, and a section's articles keep the order given, so sections stay whole. An edit
    that would not fit the email's size limit is refused, and nothing is saved.
    """
    from newsletter.pipeline import editing

    settings, store = with_store(ctx)
    changes: dict[str, Any] = {}
    if subject is not None:
        changes["subject"] = subject
    if preheader is not None:
        changes["preheader"] = preheader
    if intro_file is not None:
        changes["intro"] = _read_intro(intro_file)
    if order is not None or remove or add:
        ids, ignored = _articles(get_issue(store, number).articles, order, remove, add, number)
        for line in ignored:
            click.echo(f"ignored: {line}", err=True)
        changes["articles"] = ids
    if not changes:
        raise BadValue("nothing to change: give --subject, --preheader, --intro-file, "
                       "--remove, --add or --order")
    result = editing.edit_issue(settings, store, number, changes, cli_actor())
    if not result.changed:
        click.echo(result.message)
        return
    click.echo(f"edited issue {number}:")
    for line in result.changes:
        click.echo(f"  {line}")
    if result.note:
        click.echo(f"  ({result.note})")


def _articles(current: tuple[Any, ...], order: str | None, remove: tuple[str, ...],
              add: tuple[str, ...], number: int) -> tuple[list[str], list[str]]:
    """The issue's ids after --order, --remove and --add, and a line for each --add that
    changes nothing (already there, or also given to --remove)."""
    ids = [a.id for a in current]
    if order is not None:
        ids = _ids((order,))
    gone = _ids(remove)
    stray = [i for i in gone if i not in ids]
    if stray:
        raise BadValue(f"--remove {', '.join(stray)}: not in issue {number}"
                       + (" (or left out by --order)" if order is not None else ""))
    ignored, added, both = [], [], set()
    where = "in --order" if order is not None else f"in issue {number}"
    for i in dict.fromkeys(_ids(add)):
        if i in gone:
            both.add(i)
            ignored.append(f"--add {i} --remove {i}: both given, so it stays as it is")
        elif i in ids:
            ignored.append(f"--add {i}: already {where} (--order moves an article)")
        else:
            added.append(i)
    kept = [i for i in ids if i not in set(gone) - both]
    return kept + added, ignored


@click.command("history")
@click.argument("number", type=int)
@click.pass_context
@fail_cleanly
def issue_history(ctx: click.Context, number: int) -> None:
    """Who did what to issue N (builds, edits, approvals, sends), oldest first."""
    from newsletter.pipeline import editing

    _settings, store = with_store(ctx)
    entries = editing.issue_history(store, number)
    if not entries:
        click.echo(f"issue {number}: no history recorded (built before histories were kept)")
    for e in entries:
        click.echo(f"{e.at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC  {e.action:<10} "
                   f"{e.actor}: {e.summary}")
