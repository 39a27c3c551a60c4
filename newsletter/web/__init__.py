"""Web application: the home page, the generated feeds and a health check, plus extra routes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Route

from newsletter.web.files import FeedFiles
from newsletter.web.home import home_endpoint
from newsletter.web.sitefiles import SiteFiles
from newsletter.web.static import StaticFiles, static_dirs

__all__ = ["FeedFiles", "create_app"]


def _healthz(request: Request) -> PlainTextResponse:
    # no-store: a cached "ok" would hide an outage from the monitor.
    return PlainTextResponse("ok", headers={"cache-control": "no-store"})


def create_app(
    *,
    feeds_dir: Path,
    publication_name: str,
    feeds_url: str,
    cache_max_age: int = 300,
    extra_routes: Sequence[BaseRoute] = (),
    next_issue: Callable[[], str] | None = None,
    templates_dir: Path | None = None,
    site_dir: Path | None = None,
) -> Starlette:
    """Build the ASGI app; `feeds_url` is the public absolute URL the feeds are served under."""
    feeds_dir = Path(feeds_dir)
    files = FeedFiles(feeds_dir, max_age=cache_max_age)
    home = Route("/", home_endpoint(feeds_dir, publication_name, feeds_url, next_issue),
                 name="home")
    routes: list[BaseRoute] = [
        Route("/healthz", _healthz, name="healthz"),
        Route("/feeds/{path:path}", files, name="feeds"),
        Route("/static/{path:path}", StaticFiles(static_dirs(templates_dir),
                                                 max_age=cache_max_age), name="static"),
        *extra_routes,
    ]
    if site_dir is None:
        routes.insert(0, home)
    app = Starlette(routes=routes)
    if site_dir is not None:
        # The published pages answer whatever no route does, `/` included; the generated
        # home above stands in until the first publish.
        app.router.default = SiteFiles(Path(site_dir), max_age=cache_max_age, home=home)
    app.state.feed_files = files  # lets later routes and tests reach the same cache
    return app
