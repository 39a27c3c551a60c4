"""`serve` and `run`: bind the port first, then announce, then hand the socket to uvicorn."""

from __future__ import annotations

import errno
import socket
from typing import Any

import click

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
    import uvicorn

    from newsletter import pipeline

    store = pipeline.open_store(settings)
    app = pipeline.web_app(settings, store, scheduler=scheduler)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving http://{shown}:{port}/ — feeds at /feeds/, archive at /issues/")
    if settings.secrets.admin_token:
        click.echo(f"admin dashboard: http://{shown}:{port}/admin/ (log in with the admin token)")
    else:
        click.echo("admin dashboard: off (no admin token: set NEWSLETTER_SECRETS_ADMIN_TOKEN "
                   "to 16 or more characters to turn it on)")
    try:
        # None leaves uvicorn's default (FORWARDED_ALLOW_IPS, else the loopback addresses).
        config = uvicorn.Config(app, log_level="warning",
                                forwarded_allow_ips=settings.server.forwarded_allow_ips or None)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        store.close()
