"""The `newsletter` command line: the root group, assembled from the command modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from newsletter import log
from newsletter.cli import maintenance, ops, serve
from newsletter.cli.bounces import bounces
from newsletter.cli.common import fail_cleanly, print_collect, settings_of
from newsletter.cli.issues import issue
from newsletter.cli.subscribers import subscribers
from newsletter.config import DEFAULT_CONFIG, effective_settings
from newsletter.words import plural


@click.group()
@click.option("--config", "config", envvar="NEWSLETTER_CONFIG", default=DEFAULT_CONFIG,
              # No dir_okay=False: click's usage error is several lines; load_settings says
              # "cannot read: Is a directory" on one, like every other configuration error.
              show_default=True, type=click.Path(path_type=Path),
              help="TOML configuration file (also NEWSLETTER_CONFIG).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.version_option(package_name="newsletter")
@click.pass_context
def cli(ctx: click.Context, config: Path, log_level: str) -> None:
    """Collect articles, publish feeds, and send the newsletter."""
    ctx.obj = {"config": config}
    log.setup(log_level)


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@click.option("--connect", is_flag=True,
              help="Also connect to the database (without changing it).")
@click.pass_context
@fail_cleanly
def config_check(ctx: click.Context, connect: bool) -> None:
    """Validate the configuration and print the effective settings, secrets masked."""
    from newsletter.store import urls as dburl

    settings = settings_of(ctx)
    dburl.check(settings.storage.database_url)
    if connect:
        from newsletter.store.database import connect as connect_to
        from newsletter.store.database import open_engine

        engine = open_engine(settings.storage.database_url)
        try:
            connect_to(engine, settings.storage.database_url).close()
        finally:
            engine.dispose()
    click.echo(f"# {settings.path}: valid" + ("; database reachable" if connect else ""))
    click.echo(json.dumps(effective_settings(settings), indent=2, ensure_ascii=False))


@config_group.command("example")
def config_example() -> None:
    """Print a commented configuration with every key and its default."""
    from newsletter.config_docs import example_toml

    click.echo(example_toml(), nl=False)


@cli.command()
@click.pass_context
@fail_cleanly
def collect(ctx: click.Context) -> None:
    """Read every source once and store new or changed articles."""
    from newsletter import pipeline

    settings = settings_of(ctx)
    store = pipeline.open_store(settings)
    try:
        report = pipeline.collect_and_publish(settings, store)
    finally:
        store.close()
    print_collect(report)
    sys.exit(0 if report.ok else 1)


@cli.command()
@click.pass_context
@fail_cleanly
def feeds(ctx: click.Context) -> None:
    """Write the feeds (main and per section) and the site's pages from the store."""
    from newsletter import pipeline

    settings = settings_of(ctx)
    store = pipeline.open_store(settings)
    try:
        done = pipeline.publish(settings, store)
    finally:
        store.close()
    click.echo(f"feeds: {plural(len(done.feeds), 'file')} changed in {settings.feeds_dir}/")
    click.echo(f"site: {plural(len(done.site.written), 'file')} changed in "
               f"{settings.site_dir}/")


for command in ops.ISSUE_COMMANDS:
    issue.add_command(command)
for command in (issue, subscribers, bounces, ops.status, ops.worker, serve.serve, serve.run,
                maintenance.db, maintenance.backup):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="newsletter")


if __name__ == "__main__":
    main()
