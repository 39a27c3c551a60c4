"""Database upkeep commands: `db prune` (ledger retention, SQLite's file shrunk) and `backup`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from newsletter.cli.common import cli_actor, fail_cleanly, settings_of, with_store
from newsletter.errors import NewsletterError
from newsletter.words import plural

if TYPE_CHECKING:
    from newsletter.store.retention import FileSpace


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def _space_line(before: FileSpace, after: FileSpace | None) -> str:
    what = f"database file {before.path} (with its WAL): {megabytes(before.total)}"
    if after is None:
        return what
    return f"{what} → {megabytes(after.total)}"


@click.group("db")
def db() -> None:
    """Database upkeep: prune old delivery rows."""


@db.command("prune")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--vacuum", is_flag=True,
              help="SQLite: then VACUUM once, so that a database made before this version "
                   "shrinks from now on (rewrites the file and locks it while it runs).")
@click.pass_context
@fail_cleanly
def prune(ctx: click.Context, dry_run: bool, vacuum: bool) -> None:
    """Remove the delivery rows of issues finished more than [storage]
    ledger_retention_days ago, in short batches (the service may run meanwhile)."""
    from newsletter.pipeline import maintenance

    if dry_run and vacuum:
        raise NewsletterError("--vacuum changes the file: leave out --dry-run to run it")
    settings, store = with_store(ctx)
    report = maintenance.prune_ledger(settings, store, dry_run=dry_run, actor=cli_actor())
    if report.cutoff is None:
        click.echo("[storage] ledger_retention_days = 0: delivery rows are kept for ever")
    for it in report.issues:
        finished = f"{it.status} {it.finished_at:%Y-%m-%d}"
        if dry_run:
            click.echo(f"  issue {it.number} ({finished}): up to "
                       f"{plural(it.rows, 'row')} would go")
        else:
            click.echo(f"  issue {it.number} ({finished}): {plural(it.rows, 'row')} removed, "
                       f"{it.kept:,} kept (each reader's latest)")
    if report.cutoff is not None:
        done = "would remove up to" if dry_run else "removed"
        click.echo(f"{'dry run' if dry_run else 'pruned'}: {done} "
                   f"{plural(report.rows, 'delivery row')} of "
                   f"{plural(len(report.issues), 'issue')} finished before "
                   f"{report.cutoff:%Y-%m-%d} ({report.retention_days} days)"
                   + ("; nothing removed" if dry_run else ""))
    if report.before is None:
        click.echo("database: PostgreSQL; autovacuum reuses the space (docs/deploy.md)")
    else:
        click.echo(_space_line(report.before, None if dry_run else report.after))
        end = report.after or report.before
        if end.auto_vacuum != "incremental" and end.free_pages and not vacuum:
            click.echo(f"  {megabytes(end.free_pages * end.page_size)} free inside the file is "
                       f"reused by new rows; `newsletter db prune --vacuum` (once) makes "
                       f"the file shrink")
    if report.stopped:
        click.echo("stopped before the end: run it again to go on")
    if vacuum:
        click.echo("VACUUM: rewriting the whole file; nothing can write to the database "
                   "until it is done", err=True)
        before, after = maintenance.vacuum(store)
        click.echo(f"vacuumed: {_space_line(before, after)}; incremental from now on")


@click.command("backup")
@click.argument("path", type=click.Path(path_type=Path))
@click.pass_context
@fail_cleanly
def backup(ctx: click.Context, path: Path) -> None:
    """Copy the SQLite database to PATH (a file, or a folder to name one in) while the
    service runs, and check the copy (PRAGMA integrity_check)."""
    from newsletter.pipeline import maintenance

    copy = maintenance.backup(settings_of(ctx), path)
    click.echo(f"backup: {copy.path}, {megabytes(copy.size)}, integrity {copy.integrity}")
