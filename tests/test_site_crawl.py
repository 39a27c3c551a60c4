"""A fresh clone's site has no dead links: home, feeds, archive and a mailed issue, crawled."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import feedparser
import httpx
import pytest
from webserver import running

from newsletter import pipeline
from newsletter.audience.subscriptions import issue_links
from newsletter.audience.tokens import load_or_create_secret
from newsletter.compose.render import personalize
from newsletter.config import load_settings
from newsletter.pipeline.webapp import web_app
from tests.helpers.checkout import fresh_copy

FEEDS = ("rss.xml", "atom.xml", "feed.json")
class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"a": "href", "link": "href", "img": "src", "script": "src", "form": "action"}
        for name, value in attrs:
            if name == wanted.get(tag) and value and tag != "form":
                self.found.append(value)


def links_in(page: str) -> list[str]:
    parser = _Links()
    parser.feed(page)
    return parser.found


def feed_items(body: bytes, name: str) -> list[tuple[str, str]]:
    """(link, title) of every item; JSON Feed read as JSON, the others by feedparser."""
    if name == "feed.json":
        return [(i["url"], i["title"]) for i in json.loads(body)["items"]]
    return [(e.link, e.title) for e in feedparser.parse(body).entries]


def test_fresh_clone_site_has_no_dead_links(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    repo = fresh_copy(tmp_path / "repo")
    monkeypatch.chdir(repo)  # the shipped config's paths are relative, as on a real clone
    settings = load_settings(repo / "config" / "newsletter.toml", environ={})
    site = settings.site_url  # http://127.0.0.1:8000/, which the test server is not
    store = pipeline.open_store(settings)
    try:
        pipeline.collect_and_publish(settings, store)
        built = pipeline.build_issue(settings, store)
        assert built.issue is not None
        now = datetime.now(UTC)
        reader = store.add_subscriber(email="reader@example.org", email_key="reader@example.org",
                                      name="Reader", status="active", now=now,
                                      consent_method="test", confirmed=True)
        assert reader is not None
        # Sent, as the cron would: the archive and the home page now show issue 1.
        assert store.set_issue_status(1, "sent", now, expect=("draft",))
        pipeline.publish(settings, store)
        unsubscribe, preferences = issue_links(site, load_or_create_secret(settings), now)(
            reader.id, reader.email)
        mailed = personalize(built.issue.html, unsubscribe_url=unsubscribe,
                             preferences_url=preferences, name="Reader")

        with running(web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=30, follow_redirects=True) as client:

            def local(url: str) -> str | None:
                """The path to ask our server for, or None for another host's link."""
                url = html.unescape(url).split("#", 1)[0]
                if url.startswith(site):
                    return "/" + url[len(site):]
                return url if url.startswith("/") and not url.startswith("//") else None

            seen: dict[str, int] = {}
            pages: dict[str, str] = {}

            def visit(urls: Iterable[str], origin: str) -> None:
                for url in urls:
                    path = local(url)
                    if path is None or path in seen:
                        continue
                    r = client.get(path)
                    seen[path] = r.status_code
                    assert r.status_code == 200, f"{path} (linked from {origin}): {r.status_code}"
                    if r.headers["content-type"].startswith("text/html"):
                        pages[path] = r.text
                        visit(links_in(r.text), path)  # the whole site, page by page

            home = client.get("/").text
            assert "<h1>The Policy Ledger</h1>" in home and 'href="' + site + "issues/1" in home
            visit(links_in(home), "/")
            feeds = [p for p in seen if p.endswith(FEEDS)]
            assert len(feeds) >= 3 * 4  # main + three sections
            for path in feeds:
                items = feed_items(client.get(path).content, path.rsplit("/", 1)[1])
                assert items, path
                visit([link for link, _ in items], path)
                for link, title in items:
                    # Each item's page is the article's, titled as the feed says.
                    page = pages[local(link) or ""]
                    assert f"<h1>{html.escape(title, quote=False)}</h1>" in page, link
            visit(["/issues/", "/issues/1"], "the archive")
            visit(links_in(mailed), "issue 1 as mailed")

            articles = [p for p in seen if p.startswith("/articles/")]
            assert len(articles) == store.count_articles() == 7
            assert "/sections/world-news/" in seen and "/sitemap.xml" not in seen
            assert all(status == 200 for status in seen.values())
            for path in ("/sitemap.xml", "/robots.txt"):
                assert client.get(path).status_code == 200
            listed = [loc for loc in client.get("/sitemap.xml").text.split("<loc>")[1:]]
            assert len(listed) == 1 + 7 + 3  # home, articles, one page per section
    finally:
        store.close()
