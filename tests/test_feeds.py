"""Tests for RSS, Atom and JSON Feed rendering and writing."""

from __future__ import annotations

import html
import json
import os
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

import feedparser
import pytest
from lxml import etree

from newsletter.models import Article
from newsletter.publish.feeds import FEED_FILES, FeedMeta, render_feeds, section_slug, write_feeds

PLUS2 = timezone(timedelta(hours=2))
MINUS5 = timezone(timedelta(hours=-5))
META = FeedMeta(
    title='The <Daily> & "Co" — Zürich',
    site_url="https://example.org/",
    feeds_url="https://example.org/feeds/",
    language="de-CH",
    description="News & notes",
    subtitle="Subtitle <here>",
)
RFC822 = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}$"
)
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
ATOM = "{http://www.w3.org/2005/Atom}"


def make(n: int, **overrides: object) -> Article:
    fields: dict[str, object] = {
        "key": f"link:https://example.org/a/{n}",
        "title": f"Fish & Chips <{n}> \"quoted\" 'single' — Ünïcødé",
        "link": f"https://example.org/a/{n}",
        "published": datetime(2024, 1, n, 9, 30, tzinfo=PLUS2),
        "updated": datetime(2024, 1, n, 12, 0, 5, tzinfo=MINUS5),
        "content_html": f"<p>Body {n} with <em>markup</em> &amp; a &lt; b — ü</p>",
        "content_hash": f"hash{n}",
        "summary": f'Summary {n}: <not a tag> & "quotes" ü',
        "authors": ("Ann Ö", "Bob Smith"),
        "section": "Tech & AI" if n % 2 else "Kultur",
        "tags": ("python", "feeds"),
        "image": f"https://example.org/img/{n}.jpg",
        "image_credit": f"Photo {n}",
    }
    fields.update(overrides)
    return Article(**fields)  # type: ignore[arg-type]


@pytest.fixture
def articles() -> list[Article]:
    return [
        make(1),
        make(2, guid="tag:example.org,2024:2"),
        make(3, authors=(), tags=(), image="", summary=""),
        make(4, guid="https://example.org/a/4"),
    ]


def entries_of(feed: bytes) -> tuple[feedparser.FeedParserDict, list]:
    parsed = feedparser.parse(feed)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    return parsed, parsed.entries


def by_link(entries: list) -> dict[str, object]:
    return {e.link: e for e in entries}


@pytest.mark.parametrize("filename", ["rss.xml", "atom.xml"])
def test_xml_round_trip_through_feedparser(articles: list[Article], filename: str) -> None:
    parsed, entries = entries_of(render_feeds(articles, META)[filename])
    assert parsed.feed.title == META.title
    assert parsed.feed.link == META.site_url
    assert len(entries) == len(articles)
    found = by_link(entries)
    for article in articles:
        entry = found[article.link]
        assert entry.title == article.title
        assert entry.id == (article.guid or article.link)
        assert [a["name"] for a in entry.get("authors", [])] == list(article.authors)
        terms = [t["term"] for t in entry.tags]
        assert terms[0] == article.section
        assert terms[1:] == list(article.tags)
        if article.summary:
            # RSS description is HTML, so the plain-text summary comes back escaped.
            got = entry.summary if filename == "atom.xml" else html.unescape(entry.summary)
            assert got == article.summary
        assert entry.content[0]["type"] == "text/html"
        assert entry.content[0]["value"] == article.content_html
        if article.image:
            assert entry.media_content[0]["url"] == article.image
            assert entry.media_credit[0]["content"] == article.image_credit
        else:
            assert "media_content" not in entry
        assert _aware(entry.published) == article.published
        assert _aware(entry.updated) == article.updated


def _aware(text: str) -> datetime:
    """Parse the date exactly as published (RFC 3339 or RFC 822), offset included."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = parsedate_to_datetime(text)
    assert value.tzinfo is not None, text
    return value


def test_rss_details(articles: list[Article]) -> None:
    root = etree.fromstring(render_feeds(articles, META)["rss.xml"])
    channel = root.find("channel")
    assert channel.findtext("link") == META.site_url
    assert channel.findtext("description") == META.description
    self_link = channel.find(f"{ATOM}link")
    assert self_link.get("rel") == "self"
    assert self_link.get("href") == "https://example.org/feeds/rss.xml"
    assert channel.findtext("generator") == "newsletter"
    assert RFC822.match(channel.findtext("lastBuildDate"))
    for item in channel.findall("item"):
        assert RFC822.match(item.findtext("pubDate"))
        assert RFC3339.match(item.findtext(f"{ATOM}updated"))
        assert item.find("author") is None  # RSS <author> would need an email
        guid = item.find("guid")
        expected = "true" if guid.text == item.findtext("link") else "false"
        assert guid.get("isPermaLink") == expected
    permalinks = [g.get("isPermaLink") for g in channel.iter("guid")]
    assert "true" in permalinks and "false" in permalinks


def test_atom_details(articles: list[Article]) -> None:
    raw = render_feeds(articles, META)["atom.xml"]
    assert b"CDATA" not in raw
    root = etree.fromstring(raw)
    links = {link.get("rel"): link.get("href") for link in root.findall(f"{ATOM}link")}
    assert links == {"self": "https://example.org/feeds/atom.xml", "alternate": META.site_url}
    assert root.findtext(f"{ATOM}subtitle") == META.subtitle
    assert RFC3339.match(root.findtext(f"{ATOM}updated"))
    for entry in root.findall(f"{ATOM}entry"):
        assert entry.find(f"{ATOM}content").get("type") == "html"
        assert RFC3339.match(entry.findtext(f"{ATOM}published"))
        assert RFC3339.match(entry.findtext(f"{ATOM}updated"))


def test_json_feed(articles: list[Article]) -> None:
    raw = render_feeds(articles, META, path="sections/kultur/")["feed.json"]
    assert "Zürich".encode() in raw  # ensure_ascii=False
    feed = json.loads(raw)
    assert list(feed)[:4] == ["version", "title", "home_page_url", "feed_url"]
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert feed["title"] == META.title
    assert feed["home_page_url"] == META.site_url
    assert feed["feed_url"] == "https://example.org/feeds/sections/kultur/feed.json"
    assert feed["language"] == META.language
    items = {item["url"]: item for item in feed["items"]}
    for article in articles:
        item = items[article.link]
        assert item["id"] == (article.guid or article.link)
        assert item["title"] == article.title
        assert item["content_html"] == article.content_html
        assert item.get("summary", "") == article.summary
        assert item.get("image", "") == article.image
        assert datetime.fromisoformat(item["date_published"]) == article.published
        assert datetime.fromisoformat(item["date_modified"]) == article.updated
        assert RFC3339.match(item["date_published"])
        assert [a["name"] for a in item.get("authors", [])] == list(article.authors)
        assert item["tags"] == [article.section, *article.tags]


def test_self_links_follow_path(articles: list[Article]) -> None:
    path = "sections/tech-ai/"
    out = render_feeds(articles, META, path=path)
    rss, _ = entries_of(out["rss.xml"])
    atom, _ = entries_of(out["atom.xml"])
    for parsed, name in ((rss, "rss.xml"), (atom, "atom.xml")):
        selfs = [link.href for link in parsed.feed.links if link.rel == "self"]
        assert selfs == [META.feeds_url + path + name]
    assert json.loads(out["feed.json"])["feed_url"] == META.feeds_url + path + "feed.json"


def test_render_is_deterministic(articles: list[Article]) -> None:
    first = render_feeds(articles, META)
    time.sleep(1.1)  # anything tied to the wall clock would now differ
    assert render_feeds(list(reversed(articles)), META) == first


def test_ids_unique_and_newest_first_with_cap() -> None:
    same_time = datetime(2024, 2, 1, tzinfo=UTC)
    many = [make(n) for n in range(1, 21)] + [
        make(25, link="https://example.org/t/b", key="link:b", published=same_time),
        make(26, link="https://example.org/t/a", key="link:a", published=same_time),
    ]
    out = render_feeds(many, META, max_entries=5)
    for name in ("rss.xml", "atom.xml"):
        _, entries = entries_of(out[name])
        ids = [e.id for e in entries]
        assert len(ids) == 5 == len(set(ids))
        stamps = [_aware(e.published) for e in entries]
        assert stamps == sorted(stamps, reverse=True)
        assert stamps[0] == same_time
        assert stamps[2] == make(20).published
    items = json.loads(out["feed.json"])["items"]
    assert len(items) == 5
    # The tie is broken by article id, whatever the input order was.
    tied = sorted(many[-2:], key=lambda a: a.id)
    assert [i["url"] for i in items[:2]] == [a.link for a in tied]


def test_feed_updated_is_latest_entry_update(articles: list[Article]) -> None:
    root = etree.fromstring(render_feeds(articles, META)["atom.xml"])
    newest = max(a.updated for a in articles)
    assert datetime.fromisoformat(root.findtext(f"{ATOM}updated")) == newest


@pytest.mark.parametrize("filename", ["rss.xml", "atom.xml"])
def test_empty_feeds_are_valid(filename: str) -> None:
    out = render_feeds([], META)
    parsed, entries = entries_of(out[filename])
    assert entries == []
    assert parsed.feed.title == META.title
    assert out == render_feeds([], META)
    assert json.loads(out["feed.json"])["items"] == []


def test_section_slug() -> None:
    assert section_slug("Tech & AI") == "tech-ai"
    assert section_slug("  Über Café ") == "uber-cafe"
    assert section_slug("Straße Øst") == "strasse-ost"
    assert section_slug("ﬁnance—2024") == "finance-2024"  # NFKD splits the ligature
    assert section_slug("") == ""
    cjk = section_slug("日本")
    assert re.fullmatch(r"[a-z0-9-]+", cjk) and cjk != section_slug("中国")


def test_write_feeds(tmp_path: Path, articles: list[Article]) -> None:
    written = write_feeds(articles, META, tmp_path, max_entries=10)
    expected = {
        tmp_path / p / f for p in ("", "sections/tech-ai/", "sections/kultur/") for f in FEED_FILES
    }
    assert set(written) == expected
    assert all(p.is_file() for p in expected)
    # Mode comes from the umask like any other file, not 0600 from a temp-file helper.
    umask = os.umask(0o022)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in expected)
    section = json.loads((tmp_path / "sections/kultur/feed.json").read_bytes())
    assert {i["url"] for i in section["items"]} == {
        a.link for a in articles if a.section == "Kultur"
    }
    _, entries = entries_of((tmp_path / "sections/tech-ai/rss.xml").read_bytes())
    assert {e.link for e in entries} == {a.link for a in articles if a.section == "Tech & AI"}
    rss, _ = entries_of((tmp_path / "sections/tech-ai/rss.xml").read_bytes())
    assert rss.feed.links[1].href == META.feeds_url + "sections/tech-ai/rss.xml"

    # Backdate the files so an unnecessary rewrite would be visible in the mtime.
    for path in expected:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert write_feeds(articles, META, tmp_path, max_entries=10) == []
    assert all(p.stat().st_mtime_ns == 1_000_000_000 for p in expected)

    # Changing one Kultur article rewrites the main and Kultur feeds only.
    changed = [
        make(2, guid="tag:example.org,2024:2", title="New title"),
        *articles[::2],
        articles[3],
    ]
    rewritten = write_feeds(changed, META, tmp_path, max_entries=10)
    assert {p.parent for p in rewritten} == {tmp_path, tmp_path / "sections/kultur"}

    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p not in expected]
    assert leftovers == []  # no temp files left behind


def test_write_feeds_keeps_other_files(tmp_path: Path, articles: list[Article]) -> None:
    other = tmp_path / "sections/old/rss.xml"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"keep")
    write_feeds(articles, META, tmp_path, max_entries=10)
    assert other.read_bytes() == b"keep"


def test_feeds_url_without_slash_is_normalised() -> None:
    meta = FeedMeta("T", "https://example.org/", "https://example.org/feeds", "en", "d")
    assert meta.feeds_url == "https://example.org/feeds/"
    with pytest.raises(ValueError):
        FeedMeta("T", "/relative", "https://example.org/feeds/", "en", "d")


@pytest.mark.parametrize("filename", ["rss.xml", "atom.xml"])
def test_sparse_article_still_valid(filename: str) -> None:
    bare = make(5, title="", content_html="", summary="", authors=(), section="", tags=())
    _, entries = entries_of(render_feeds([bare], META)[filename])
    assert entries[0].title == bare.link
    assert "tags" not in entries[0]


def test_empty_description_falls_back_to_title(articles: list[Article]) -> None:
    meta = FeedMeta("Plain", "https://example.org/", "https://example.org/feeds/", "en", "")
    out = render_feeds(articles, meta)
    for name in ("rss.xml", "atom.xml"):
        parsed, _ = entries_of(out[name])
        assert parsed.feed.subtitle == "Plain"
    assert "description" not in json.loads(out["feed.json"])
