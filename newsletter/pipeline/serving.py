"""The web application served on an already bound socket until the process is stopped."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from newsletter.config import Settings


def serve(settings: Settings, sock: socket.socket, *, scheduler: Any = None,
          ready: Callable[[], None] = lambda: None) -> None:
    """Serve every route on `sock` (closed at the end); `ready` runs once the app is built."""
    from newsletter.pipeline.collecting import open_store
    from newsletter.pipeline.webapp import web_app

    store = open_store(settings)
    try:
        app = web_app(settings, store, scheduler=scheduler)
        ready()
        # None leaves uvicorn's default (FORWARDED_ALLOW_IPS, else the loopback addresses).
        config = uvicorn.Config(app, log_level="warning",
                                forwarded_allow_ips=settings.server.forwarded_allow_ips or None)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        store.close()
