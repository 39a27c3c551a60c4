"""Home page: the publication's name, when the next issue is due, and links to every feed."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import HTMLResponse

# (file name, media type, label) in the order readers should see them.
FEED_KINDS = (
    ("rss.xml", "application/rss+xml", "RSS"),
    ("atom.xml", "application/atom+xml", "Atom"),
    ("feed.json", "application/feed+json", "JSON Feed"),
)

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ name }}</title>
{% for feed in feeds -%}
<link rel="alternate" type="{{ feed.media_type }}" title="{{ feed.title }}" href="{{ feed.href }}">
{% endfor -%}
</head>
<body>
<h1>{{ name }}</h1>
{% if next_issue -%}
<p class="next-issue">{{ next_issue }}</p>
{% endif -%}
{% if feeds -%}
<h2>Feeds</h2>
<ul>
{% for feed in feeds -%}
<li><a href="{{ feed.href }}" type="{{ feed.media_type }}">{{ feed.title }}</a></li>
{% endfor -%}
</ul>
{% else -%}
<p>No feeds have been published yet.</p>
{% endif -%}
</body>
</html>
"""

# Autoescape on: the publication name and section slugs come from configuration and files.
_env = Environment(autoescape=True, keep_trailing_newline=True)
_page = _env.from_string(_TEMPLATE)


@dataclass(frozen=True, slots=True)
class FeedLink:
    """One discoverable feed: what it is called, its media type and its absolute URL."""

    title: str
    media_type: str
    href: str
    section: str = ""  # empty for the publication-wide feeds


def _base(feeds_url: str) -> str:
    # Without the trailing slash, joining would replace the last path segment.
    return feeds_url if feeds_url.endswith("/") else feeds_url + "/"


def discover_feeds(feeds_dir: Path, feeds_url: str, publication_name: str) -> list[FeedLink]:
    """Feeds present on disk: the main set, then each `sections/<slug>/` set by slug."""
    base = _base(feeds_url)
    links: list[FeedLink] = []

    def add(folder: Path, prefix: str, section: str) -> None:
        for name, media_type, label in FEED_KINDS:
            if (folder / name).is_file():
                what = f"{section} ({label})" if section else label
                links.append(
                    FeedLink(
                        title=f"{publication_name} — {what}",
                        media_type=media_type,
                        href=base + prefix + name,
                        section=section,
                    )
                )

    add(feeds_dir, "", "")
    sections = feeds_dir / "sections"
    try:
        slugs = sorted(
            entry.name
            for entry in os.scandir(sections)
            if entry.is_dir() and not entry.name.startswith(".")
        )
    except OSError:
        slugs = []  # no sections published (yet)
    for slug in slugs:
        add(sections / slug, f"sections/{quote(slug)}/", slug)
    return links


def render_home(publication_name: str, feeds: list[FeedLink], next_issue: str = "") -> str:
    """The home page HTML, everything escaped."""
    return _page.render(name=publication_name, feeds=feeds, next_issue=next_issue)


def home_endpoint(
    feeds_dir: Path, publication_name: str, feeds_url: str,
    next_issue: Callable[[], str] | None = None,
) -> Callable[[Request], HTMLResponse]:
    """A Starlette endpoint for `/`; the folder is scanned per request so new feeds appear."""

    # Sync on purpose: Starlette runs it in a worker thread, keeping the directory scan off
    # the event loop.
    def home(request: Request) -> HTMLResponse:
        feeds = discover_feeds(feeds_dir, feeds_url, publication_name)
        line = next_issue() if next_issue else ""  # "Next issue: Monday 7 December, …"
        return HTMLResponse(render_home(publication_name, feeds, line))

    return home
