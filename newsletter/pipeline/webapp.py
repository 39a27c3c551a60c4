"""The web application with every route, wired to the store and settings."""

from __future__ import annotations

from newsletter.config import Settings


def web_app(settings: Settings):  # noqa: ANN201 - Starlette type kept out of import time
    from newsletter.web import create_app

    return create_app(feeds_dir=settings.feeds_dir, publication_name=settings.publication.name,
                      feeds_url=settings.feeds_url, cache_max_age=settings.feeds.cache_max_age)
