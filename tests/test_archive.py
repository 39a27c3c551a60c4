"""The public issue archive, served for real by uvicorn: list, issue pages, 404s and feed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import feedparser
import httpx
import pytest
from webserver import running

from newsletter import pipeline
from newsletter.compose.render import Renderer, archive_feed, sent_time
from newsletter.config import Settings
from newsletter.models import Issue
from newsletter.pipeline import control, sending
from newsletter.web import create_app
from newsletter.web.archive import archive_routes
from tests.helpers.render import MASTHEAD, Tags, sample_issue
from tests.helpers.sending import seed

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
    # Built on its `created` day, sent two days later: the feed must say the latter.
    issues[1].send_at = issues[1].created + timedelta(days=2, hours=3)

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
    assert "https://ledger.example.org/manage" in hrefs
    assert all(h.startswith("https://") for h in hrefs - {"#content"})  # and the skip link


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


def test_feed_entries_are_by_the_publication_and_dated_when_sent(client: httpx.Client) -> None:
    parsed = feedparser.parse(client.get("/issues/feed.xml").content)
    assert parsed.bozo == 0
    by_link = {e.link: e for e in parsed.entries}
    for entry in parsed.entries:
        assert entry.author == MASTHEAD.name
    sent = sample_issue(number=1).created + timedelta(days=2, hours=3)
    assert by_link[f"{ARCHIVE}1"].published == sent.isoformat()
    assert by_link[f"{ARCHIVE}1"].updated == sent.isoformat()
    # Issue 2 is still sending and has no recorded start (an older row): its build time.
    assert by_link[f"{ARCHIVE}2"].published == sample_issue(number=2).created.isoformat()
    assert parsed.feed.updated == sent.isoformat()  # the newest send, not the newest build


def test_feed_is_cached_and_compressed_like_the_other_feeds(client: httpx.Client) -> None:
    plain = client.get("/issues/feed.xml", headers={"accept-encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    etag, modified = plain.headers["etag"], plain.headers["last-modified"]
    assert plain.headers["cache-control"] == "public, max-age=300"
    assert plain.headers["vary"] == "Accept-Encoding"
    sent = sample_issue(number=1).created + timedelta(days=2, hours=3)
    assert parsedate_to_datetime(modified) == sent

    packed = client.get("/issues/feed.xml", headers={"accept-encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip"
    assert packed.content == plain.content  # httpx decoded it
    assert int(packed.headers["content-length"]) < len(plain.content)
    assert packed.headers["etag"] != etag  # a different representation, a different tag

    again = client.get("/issues/feed.xml", headers={"if-none-match": etag,
                                                    "accept-encoding": "identity"})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    since = client.get("/issues/feed.xml", headers={"if-modified-since": modified,
                                                    "accept-encoding": "identity"})
    assert since.status_code == 304
    stale = client.get("/issues/feed.xml", headers={"if-none-match": '"other"'})
    assert stale.status_code == 200 and stale.content == plain.content
    head = client.head("/issues/feed.xml", headers={"accept-encoding": "identity"})
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == etag
    assert client.post("/issues/feed.xml").status_code == 405


def test_starting_a_send_records_when_and_resuming_keeps_it(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    store = pipeline.open_store(settings)
    try:
        seed(store, 3)
        pipeline.build_issue(settings, store)
        built = store.get_issue(1)
        assert built is not None and built.send_at is None
        before = datetime.now(UTC)
        sending.start_sending(settings, store, built)
        started = store.get_issue(1)
        assert started is not None and started.send_at is not None
        assert started.send_at >= before.replace(microsecond=0) - timedelta(seconds=1)
        control.pause_issue(store, 1)
        paused = store.get_issue(1)
        assert paused is not None
        sending.start_sending(settings, store, paused)  # `issue send 1` again resumes it
        resumed = store.get_issue(1)
        assert resumed is not None and resumed.send_at == started.send_at
        feed = feedparser.parse(archive_feed([resumed], pipeline.masthead(settings),
                                             pipeline.archive_url(settings)))
        assert feed.entries[0].published == sent_time(resumed).isoformat()
        assert sent_time(resumed) == started.send_at.replace(microsecond=0)
    finally:
        store.close()
