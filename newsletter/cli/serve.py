"""`serve` and `run`: bind the port first, then announce, then hand the socket to the server."""

from __future__ import annotations

import errno
import socket
from typing import Any

import click

from newsletter.cli.common import fail_cleanly, print_collect, settings_of
from newsletter.config import Settings
from newsletter.errors import NewsletterError


def listen(settings: Settings, host: str | None, port: int | None) -> socket.socket:
    """Bind the listening socket before anything is announced or started."""
    host, port = host or settings.server.host, port or settings.server.port
    where = f"port {port} on {host}"
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, OverflowError) as exc:
        raise NewsletterError(f"cannot listen on {where}: {getattr(exc, 'strerror', exc)}") \
            from None
    try:
        # As uvicorn does: a port whose last server just exited is free; a live one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except (OSError, OverflowError) as exc:
        sock.close()
        code = getattr(exc, "errno", None)
        if code == errno.EADDRINUSE:
            raise NewsletterError(f"{where} is in use (another `newsletter run` or `serve`?); "
                                  f"stop it, or choose another with --port or [server] port") \
                from None
        if code == errno.EACCES:
            raise NewsletterError(f"{where}: permission denied (ports below 1024 need "
                                  f"privileges); choose another with --port") from None
        raise NewsletterError(f"cannot listen on {where}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    return sock


def serve_on(settings: Settings, sock: socket.socket, *, scheduler: Any = None) -> None:
    """Announce where, then serve until stopped (the pipeline owns the server)."""
    from newsletter.pipeline.serving import serve as serve_app

    def announce() -> None:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"serving http://{shown}:{port}/ — feeds at /feeds/, archive at /issues/")
        if settings.secrets.admin_token:
            click.echo(f"admin dashboard: http://{shown}:{port}/admin/ (log in with the admin "
                       f"token)")
        else:
            click.echo("admin dashboard: off (no admin token: set NEWSLETTER_SECRETS_ADMIN_TOKEN"
                       " to 16 or more characters to turn it on)")

    serve_app(settings, sock, scheduler=scheduler, ready=announce)


def bounces_line(settings: Settings) -> str:
    """How bounces come back, in one line: the operator sees at start what is (not) set."""
    b = settings.bounces
    ways = []
    if b.return_path:
        local, _, domain = b.return_path.rpartition("@")
        ways.append(f"return path {local}+TOKEN@{domain}")
    if b.imap_url:
        from urllib.parse import urlsplit

        parts = urlsplit(b.imap_url)
        ways.append(f"mailbox {parts.hostname}{parts.path or '/INBOX'} every "
                    f"{b.imap_poll_minutes} min")
    hooks = [name for name, on in (("ses", b.ses_topic_arns), ("mailgun", b.mailgun_signing_key),
                                   ("postmark", b.postmark_username),
                                   ("sendgrid", b.sendgrid_public_key)) if on]
    if hooks:
        ways.append("webhooks " + ", ".join(f"/webhooks/{h}" for h in hooks))
    if not ways:
        return ("bounces: only refusals at send time are seen (set [bounces] return_path, "
                "imap_url or a provider's webhook: docs/bounces.md)")
    return "bounces: " + "; ".join(ways)


@click.command()
@click.option("--host", default=None, help="Listen address (default from [server]).")
@click.option("--port", default=None, type=int, help="Port (default from [server]).")
@click.pass_context
@fail_cleanly
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the feeds, archive and subscription pages over HTTP (no scheduler)."""
    from newsletter.pipeline import allocator

    allocator.limit_arenas()
    settings = settings_of(ctx)
    serve_on(settings, listen(settings, host, port))


@click.command()
@click.option("--host", default=None, help="Listen address (default from [server]).")
@click.option("--port", default=None, type=int, help="Port (default from [server]).")
@click.pass_context
@fail_cleanly
def run(ctx: click.Context, host: str | None, port: int | None) -> None:
    """The main job: scheduler, web server and delivery worker in one process."""
    from newsletter import pipeline
    from newsletter.pipeline import allocator
    from newsletter.pipeline.scheduling import start_scheduler

    allocator.limit_arenas()  # before any thread starts: each would get its own arena
    settings = settings_of(ctx)
    sock = listen(settings, host, port)  # a port in use stops us before anything starts
    store = pipeline.open_store(settings)
    scheduler = None
    try:
        print_collect(pipeline.collect_and_publish(settings, store))
        scheduler, active = start_scheduler(settings, store)
        click.echo("scheduler: " + ("active" if active else
                                    "standing by (another process holds the scheduler lock)"))
        where = (f"mail: .eml files in {settings.mail.outbox_dir}/"
                 if settings.mail.transport == "outbox"
                 else f"mail: SMTP via {settings.smtp.host}:{settings.smtp.port}")
        click.echo(f"{where}; feeds in {settings.feeds_dir}/")
        click.echo(bounces_line(settings))
        serve_on(settings, sock, scheduler=scheduler)
    finally:
        sock.close()
        if scheduler is not None:
            scheduler.stop()
        store.close()
