"""Serve the published site's pages (folders as index.html) with the feeds' caching rules."""

from __future__ import annotations

from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from newsletter.web.files import FeedFiles
from newsletter.web.hosts import local_location, redirect


class SiteFiles:
    """The app's fallback: a path no route answers is looked up in the site folder.

    `/` and any `…/` are that folder's index.html, as nginx's `index` does; a folder asked
    for without its slash is redirected to it, so relative links keep working. Until the
    site is first published, `/` is answered by `home` instead.
    """

    def __init__(self, root: Path, *, max_age: int = 300, home: ASGIApp | None = None) -> None:
        self.files = FeedFiles(root, max_age=max_age)
        self.home = home

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope.get("path", "/")
        rel = path.lstrip("/")
        if rel == "" or rel.endswith("/"):
            rel += "index.html"
        if self.files.locate(rel) is None:
            if path == "/" and self.home is not None:
                await self.home(scope, receive, send)
                return
            if not path.endswith("/") and self.files.locate(rel + "/index.html") is not None:
                # A path of our own folder plus "/", never a host: `//articles/x` once
                # redirected to `//articles/x/`, which a browser reads as the host "articles".
                await redirect(send, local_location(path + "/"), 301)
                return
        await self.files({**scope, "path_params": {"path": rel}}, receive, send)
