"""Web application: the home page, the generated feeds and a health check, plus extra routes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from newsletter.web.files import FeedFiles
from newsletter.web.health import Health
from newsletter.web.home import home_endpoint
from newsletter.web.hosts import HostCheck, SlashRedirect
from newsletter.web.sitefiles import SiteFiles
from newsletter.web.static import StaticFiles, static_dirs

__all__ = ["FeedFiles", "create_app"]


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
    allowed_hosts: Sequence[str] | None = None,
    health: Callable[[], str | None] | None = None,
) -> Starlette:
    """Build the ASGI app; `feeds_url` is the public absolute URL the feeds are served under.

    `allowed_hosts`: the only Host names answered (400 otherwise; /healthz answers any);
    None answers every name. `health`: None while the database answers, else why not
    (/healthz then answers 503; feeds and pages are served all the same).
    """
    feeds_dir = Path(feeds_dir)
    files = FeedFiles(feeds_dir, max_age=cache_max_age)
    checker = Health(health)
    home = Route("/", home_endpoint(feeds_dir, publication_name, feeds_url, next_issue),
                 name="home")
    routes: list[BaseRoute] = [
        Route("/healthz", checker.endpoint, name="healthz"),
        Route("/feeds/{path:path}", files, name="feeds"),
        Route("/static/{path:path}", StaticFiles(static_dirs(templates_dir),
                                                 max_age=cache_max_age), name="static"),
        *extra_routes,
    ]
    if site_dir is None:
        routes.insert(0, home)
    checks = [] if allowed_hosts is None else [
        Middleware(HostCheck, allowed_hosts=allowed_hosts)]
    app = Starlette(routes=routes, middleware=checks)
    if site_dir is not None:
        # The published pages answer whatever no route does, `/` included; the generated
        # home above stands in until the first publish.
        app.router.default = SiteFiles(Path(site_dir), max_age=cache_max_age, home=home)
    # Starlette's own slash redirect takes its host from the Host header; ours is a path.
    app.router.redirect_slashes = False
    app.router.default = SlashRedirect(app.router.routes, then=app.router.default)
    app.state.feed_files = files  # lets later routes and tests reach the same cache
    app.state.health = checker
    return app
