"""The public issue archive, served for real by uvicorn: list, issue pages, 404s and feed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import feedparser
import httpx
import pytest
from webserver import running

from newsletter.compose.render import Renderer
from newsletter.models import Issue
from newsletter.web import create_app
from newsletter.web.archive import archive_routes
from tests.helpers.render import MASTHEAD, Tags, sample_issue

ARCHIVE = "https://ledger.example.org/issues/"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[httpx.Client]:
    issues = {
        1: sample_issue(number=1, status="sent"),
        2: sample_issue(number=2, status="sending"),
        3: sample_issue(number=3, status="draft"),
        4: sample_issue(number=4, status="cancelled"),
    }
    issues[2].subject = "Second <issue> & co"

    def list_issues() -> list[Issue]:
        return list(issues.values())

    routes = archive_routes(list_issues=list_issues, get_issue=issues.get, renderer=Renderer(),
                            masthead=MASTHEAD, archive_base_url=ARCHIVE)
    (tmp_path / "feeds").mkdir()
    app = create_app(feeds_dir=tmp_path / "feeds", publication_name=MASTHEAD.name,
                     feeds_url="https://ledger.example.org/feeds/", extra_routes=routes)
    with running(app) as base, httpx.Client(base_url=base, timeout=5) as http:
        yield http


def test_list_shows_public_issues_newest_first(client: httpx.Client) -> None:
    r = client.get("/issues/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    hrefs = [a["href"] for a in Tags(r.text).attrs("a")]
    numbered = [h for h in hrefs if h.startswith(ARCHIVE) and h[len(ARCHIVE):].isdigit()]
    assert numbered == [f"{ARCHIVE}2", f"{ARCHIVE}1"]  # no draft, no cancelled issue
    assert "Second &lt;issue&gt; &amp; co" in r.text
    assert f'href="{ARCHIVE}feed.xml"' in r.text


def test_list_without_trailing_slash_redirects(client: httpx.Client) -> None:
    r = client.get("/issues", follow_redirects=True)
    assert r.status_code == 200 and r.url.path == "/issues/"


@pytest.mark.parametrize("number", [1, 2])
def test_issue_page(client: httpx.Client, number: int) -> None:
    r = client.get(f"/issues/{number}")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "%%" not in r.text
    assert "Harbour authority approves the new container terminal" in r.text
    assert f'<link rel="canonical" href="{ARCHIVE}{number}">' in r.text
    hrefs = {a["href"] for a in Tags(r.text).attrs("a")}
    assert "https://ledger.example.org/preferences" in hrefs
    assert all(h.startswith("https://") for h in hrefs)


@pytest.mark.parametrize("path", ["/issues/3", "/issues/4", "/issues/99", "/issues/0",
                                  "/issues/abc"])
def test_unknown_or_unpublished_issue_is_404(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert "Harbour" not in r.text


def test_feed(client: httpx.Client) -> None:
    r = client.get("/issues/feed.xml")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/atom+xml; charset=utf-8"
    parsed = feedparser.parse(r.content)
    assert parsed.bozo == 0
    assert [e.link for e in parsed.entries] == [f"{ARCHIVE}2", f"{ARCHIVE}1"]
    assert parsed.entries[0].title == "Second <issue> & co"
    # Every entry's link is a page the archive serves.
    for entry in parsed.entries:
        assert client.get(entry.link.removeprefix("https://ledger.example.org")).status_code \
            == 200
