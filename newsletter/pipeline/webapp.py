"""The web application with every route, wired to the store and settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from newsletter.config import Settings
from newsletter.store import Store

if TYPE_CHECKING:
    from starlette.applications import Starlette


def web_app(settings: Settings, store: Store, *, scheduler: Any = None) -> Starlette:
    from newsletter.pipeline.issues import archive_url, masthead, renderer
    from newsletter.pipeline.sending import confirmation_sender
    from newsletter.tokens import load_or_create_secret
    from newsletter.web import create_app
    from newsletter.web.archive import archive_routes
    from newsletter.web.subscribe import SubscribeDeps, subscribe_routes

    routes = archive_routes(
        list_issues=lambda: store.list_issues(limit=50, statuses=("sending", "sent"),
                                              with_articles=True),
        get_issue=store.get_issue, renderer=renderer(settings), masthead=masthead(settings),
        archive_base_url=archive_url(settings))
    deps = SubscribeDeps.from_settings(settings, store=store,
                                       secret=load_or_create_secret(settings),
                                       send_confirmation=confirmation_sender(settings))
    routes += subscribe_routes(deps=deps)
    return create_app(feeds_dir=settings.feeds_dir, publication_name=settings.publication.name,
                      feeds_url=settings.feeds_url, cache_max_age=settings.feeds.cache_max_age,
                      extra_routes=routes)
