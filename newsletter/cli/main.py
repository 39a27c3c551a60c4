"""The `newsletter` command line: parses options, calls the pipeline, prints results."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from newsletter import log
from newsletter.config import DEFAULT_CONFIG, Settings, effective_settings, load_settings
from newsletter.errors import NewsletterError
from newsletter.words import plural

# `issue send`: 0 every due row recorded; 1 stopped early, the rest deferred; 2 an operator
# error; 128 + the signal (130 for Ctrl-C) when interrupted, rows given back at once.
SEND_STOPPED_EARLY = 1


def fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Operator errors become one line on stderr and exit status 2, not a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NewsletterError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def settings_of(ctx: click.Context) -> Settings:
    obj = ctx.find_root().obj
    if "settings" not in obj:
        try:
            obj["settings"] = load_settings(obj["config"])
        except NewsletterError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    return obj["settings"]


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


def _print_collect(report: Any) -> None:
    # Each error and warning is already on stderr once, as collect's WARNING log line.
    click.echo(f"collected: {report.new} new, {report.updated} updated, "
               f"{report.unchanged} unchanged, {plural(report.skipped_files, 'file')} unchanged "
               f"on disk, {len(report.errors)} failed")


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
    _print_collect(report)
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


@cli.command()
@click.option("--host", default=None, help="Listen address (default from [server]).")
@click.option("--port", default=None, type=int, help="Port (default from [server]).")
@click.pass_context
@fail_cleanly
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the feeds, archive and subscription pages over HTTP (no scheduler)."""
    from newsletter.cli.serve import listen, serve_on

    settings = settings_of(ctx)
    serve_on(settings, listen(settings, host, port))


@cli.command()
@click.option("--host", default=None, help="Listen address (default from [server]).")
@click.option("--port", default=None, type=int, help="Port (default from [server]).")
@click.pass_context
@fail_cleanly
def run(ctx: click.Context, host: str | None, port: int | None) -> None:
    """The main job: scheduler, web server and delivery worker in one process."""
    from newsletter import pipeline
    from newsletter.cli.serve import listen, serve_on
    from newsletter.scheduler import SingleScheduler

    settings = settings_of(ctx)
    sock = listen(settings, host, port)  # a port in use stops us before anything starts
    store = pipeline.open_store(settings)
    try:
        _print_collect(pipeline.collect_and_publish(settings, store))
        scheduler = SingleScheduler(settings, store)
        active = scheduler.start()
        click.echo("scheduler: " + ("active" if active else
                                    "standing by (another process holds the scheduler lock)"))
        where = (f"mail: .eml files in {settings.mail.outbox_dir}/"
                 if settings.mail.transport == "outbox"
                 else f"mail: SMTP via {settings.smtp.host}:{settings.smtp.port}")
        click.echo(f"{where}; feeds in {settings.feeds_dir}/")
        serve_on(settings, sock, scheduler=scheduler)
    finally:
        sock.close()
        if "scheduler" in locals():
            scheduler.stop()
        store.close()


@cli.group()
def issue() -> None:
    """Build, inspect and preview newsletter issues."""


def _with_store(ctx: click.Context) -> tuple[Settings, Any]:
    from newsletter import pipeline

    settings = settings_of(ctx)
    store = pipeline.open_store(settings)
    ctx.call_on_close(store.close)
    return settings, store


@issue.command("build")
@click.option("--force", is_flag=True, help="Build even when nothing is new.")
@click.pass_context
@fail_cleanly
def issue_build(ctx: click.Context, force: bool) -> None:
    """Build the next issue from the articles published since the previous one."""
    from newsletter import pipeline

    settings, store = _with_store(ctx)
    result = pipeline.build_issue(settings, store, force=force)
    click.echo(result.message + (" (--force builds one anyway)" if result.nothing_new else ""))


@issue.command("list")
@click.option("--limit", default=20, show_default=True)
@click.pass_context
@fail_cleanly
def issue_list(ctx: click.Context, limit: int) -> None:
    """List recent issues, newest first."""
    _settings, store = _with_store(ctx)
    issues = store.list_issues(limit=limit)
    if not issues:
        click.echo("no issues yet: run `newsletter issue build`")
    for it in issues:
        click.echo(f"{it.number:>5}  {it.status:<10} {it.created:%Y-%m-%d %H:%M}  {it.subject}")


def _get_issue(store: Any, number: int) -> Any:
    from newsletter.errors import NewsletterError

    found = store.get_issue(number)
    if found is None:
        raise NewsletterError(f"issue {number}: no such issue (see `newsletter issue list`)")
    return found


@issue.command("show")
@click.argument("number", type=int)
@click.pass_context
@fail_cleanly
def issue_show(ctx: click.Context, number: int) -> None:
    """Show an issue's subject, status and articles by section."""
    _settings, store = _with_store(ctx)
    it = _get_issue(store, number)
    click.echo(f"Issue {it.number} — {it.status}\nSubject:   {it.subject}\n"
               f"Preheader: {it.preheader}\nWindow:    {it.window_start:%Y-%m-%d %H:%M} → "
               f"{it.window_end:%Y-%m-%d %H:%M} UTC\nHTML:      {len(it.html.encode())} bytes")
    for section in it.sections:
        click.echo(f"\n{section.name}")
        for a in section.articles:
            click.echo(f"  {a.published:%Y-%m-%d}  {a.title}\n              {a.link}")


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

    settings, store = _with_store(ctx)
    html_path, text_path = pipeline.write_preview(settings, _get_issue(store, number), out)
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
@click.option("--dry-run", is_flag=True, help="Build every message, send none.")
@click.option("--to", "to", default=None, metavar="ADDRESS",
              help="Send one test copy to ADDRESS, outside the ledger.")
@click.pass_context
@fail_cleanly
def issue_send(ctx: click.Context, number: int, dry_run: bool, to: str | None) -> None:
    """Send issue N to every active subscriber (resumes where a previous run stopped)."""
    from newsletter.pipeline import sending

    settings, store = _with_store(ctx)
    it = sending.get_sendable(store, number)
    if to:
        click.echo(f"test copy sent to {to}: {sending.send_test_copy(settings, it, to)}")
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
        sending.start_sending(settings, store, it)
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
    _settings, store = _with_store(ctx)
    it = _get_issue(store, number)
    click.echo(f"issue {number}: {it.status} — {it.subject}")
    assert it.id is not None
    _print_counts(number, store.delivery_counts(it.id))


def _add_groups() -> None:
    from newsletter.cli.ops import register
    from newsletter.cli.subscribers import subscribers

    cli.add_command(subscribers)
    register(issue, cli)


_add_groups()


def main() -> None:
    cli(prog_name="newsletter")


if __name__ == "__main__":
    main()
