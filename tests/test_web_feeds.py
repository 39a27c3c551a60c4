"""Feed file serving and the home page, exercised over real HTTP against uvicorn."""

from __future__ import annotations

import gzip
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import feedparser
import httpx
import pytest
from webserver import running

from newsletter.web import create_app

NAME = "<b>A&B</b>"
FEEDS_URL = "https://example.org/feeds/"
SECRET = "TOP-SECRET-7f3a91"


def rss_xml(title: str = "A&amp;B daily") -> str:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel>
<title>{title}</title><link>https://example.org/</link><description>News</description>
<item><title>First</title><link>https://example.org/a/1</link>
<guid>https://example.org/a/1</guid><pubDate>Mon, 03 Jun 2024 10:00:00 GMT</pubDate>
<description>Hello</description></item>
</channel></rss>
"""


def atom_xml(entries: int = 12) -> str:
    items = "".join(
        f"""<entry><title>Entry {i}</title><id>urn:example:{i}</id>
<link rel="alternate" href="https://example.org/a/{i}"/>
<updated>2024-06-0{1 + i % 9}T10:00:00Z</updated>
<summary>Summary number {i}: a sentence long enough to make the file worth compressing.</summary>
</entry>
"""
        for i in range(entries)
    )
    return f"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
<title>A&amp;B daily</title><id>urn:example:feed</id><updated>2024-06-09T10:00:00Z</updated>
<link rel="self" href="https://example.org/feeds/atom.xml"/>
<author><name>Desk</name></author>
{items}</feed>
"""


JSON_FEED = """{"version": "https://jsonfeed.org/version/1.1", "title": "A&B daily",
 "items": [{"id": "1", "url": "https://example.org/a/1", "content_text": "Hello"}]}
"""


def write_atomic(path: Path, text: str) -> None:
    """Write as the generator does: a temp file in the same folder, renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def raw_get(base: str, target: str) -> tuple[int, bytes]:
    """Send a request target byte for byte: httpx would normalise away the `..` segments."""
    url = urlsplit(base)
    assert url.hostname is not None and url.port is not None
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    return int(data.split(b" ", 2)[1]), data


@dataclass
class Site:
    base: str
    feeds: Path
    client: httpx.Client


def make_feeds(root: Path) -> Path:
    feeds = root / "feeds"
    (feeds / "sections" / "tech").mkdir(parents=True)
    (feeds / "rss.xml").write_text(rss_xml(), encoding="utf-8")
    (feeds / "atom.xml").write_text(atom_xml(), encoding="utf-8")
    (feeds / "feed.json").write_text(JSON_FEED, encoding="utf-8")
    (feeds / "sections" / "tech" / "rss.xml").write_text(rss_xml("Tech"), encoding="utf-8")
    (feeds / "sections" / "tech" / "atom.xml").write_text(atom_xml(2), encoding="utf-8")
    (feeds / ".gitkeep").write_text(SECRET, encoding="utf-8")
    # Things outside the feeds folder that no request may reach.
    (root / "pyproject.toml").write_text(SECRET, encoding="utf-8")
    (root / "secret").write_text(SECRET, encoding="utf-8")
    (feeds / "leak.xml").symlink_to(root / "secret")
    (feeds / "outside").symlink_to(root, target_is_directory=True)
    # A symlink that stays inside the root is fine.
    (feeds / "latest.xml").symlink_to(feeds / "atom.xml")
    (feeds / "topics").symlink_to(feeds / "sections", target_is_directory=True)
    return feeds


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    feeds = make_feeds(tmp_path)
    app = create_app(feeds_dir=feeds, publication_name=NAME, feeds_url=FEEDS_URL)
    with running(app) as base, httpx.Client(base_url=base, timeout=5) as client:
        yield Site(base, feeds, client)


IDENTITY = {"accept-encoding": "identity"}


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("rss.xml", "application/rss+xml; charset=utf-8"),
        ("atom.xml", "application/atom+xml; charset=utf-8"),
        ("feed.json", "application/feed+json; charset=utf-8"),
        ("sections/tech/rss.xml", "application/rss+xml; charset=utf-8"),
    ],
)
def test_serves_feed_with_headers(site: Site, path: str, content_type: str) -> None:
    r = site.client.get(f"/feeds/{path}", headers=IDENTITY)
    assert r.status_code == 200
    assert r.headers["content-type"] == content_type
    assert r.content == (site.feeds / path).read_bytes()
    assert r.headers["content-length"] == str(len(r.content))
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    mtime = int((site.feeds / path).stat().st_mtime)
    assert r.headers["last-modified"] == formatdate(mtime, usegmt=True)
    assert r.headers["cache-control"] == "public, max-age=300"
    assert r.headers["vary"] == "Accept-Encoding"
    assert "content-encoding" not in r.headers


def test_cache_max_age_is_configurable(tmp_path: Path) -> None:
    feeds = make_feeds(tmp_path)
    app = create_app(feeds_dir=feeds, publication_name="P", feeds_url=FEEDS_URL, cache_max_age=60)
    with running(app) as base, httpx.Client(base_url=base, timeout=5) as client:
        r = client.get("/feeds/rss.xml")
    assert r.headers["cache-control"] == "public, max-age=60"


def test_if_none_match_gives_304(site: Site) -> None:
    etag = site.client.get("/feeds/rss.xml").headers["etag"]
    for value in (etag, f'"nope", {etag}', f"W/{etag}", "*"):
        r = site.client.get("/feeds/rss.xml", headers={"if-none-match": value})
        assert r.status_code == 304, value
        assert r.content == b""
        assert r.headers["etag"] == etag
        assert r.headers["cache-control"] == "public, max-age=300"
    r = site.client.get("/feeds/rss.xml", headers={"if-none-match": '"other"'})
    assert r.status_code == 200 and r.content


def test_if_modified_since_gives_304(site: Site) -> None:
    last_modified = site.client.get("/feeds/rss.xml").headers["last-modified"]
    r = site.client.get("/feeds/rss.xml", headers={"if-modified-since": last_modified})
    assert r.status_code == 304 and r.content == b""
    old = "Sat, 01 Jan 2000 00:00:00 GMT"
    assert site.client.get("/feeds/rss.xml", headers={"if-modified-since": old}).status_code == 200
    bad = {"if-modified-since": "yesterday-ish"}
    assert site.client.get("/feeds/rss.xml", headers=bad).status_code == 200


def test_if_none_match_wins_over_if_modified_since(site: Site) -> None:
    last_modified = site.client.get("/feeds/rss.xml").headers["last-modified"]
    headers = {"if-none-match": '"stale"', "if-modified-since": last_modified}
    r = site.client.get("/feeds/rss.xml", headers=headers)
    assert r.status_code == 200 and r.content


def test_rewritten_file_gets_new_etag(site: Site) -> None:
    path = site.feeds / "rss.xml"
    first = site.client.get("/feeds/rss.xml")
    write_atomic(path, rss_xml("A&amp;B daily, second edition"))
    r = site.client.get("/feeds/rss.xml", headers={"if-none-match": first.headers["etag"]})
    assert r.status_code == 200
    assert r.headers["etag"] != first.headers["etag"]
    assert r.content == path.read_bytes()
    again = site.client.get("/feeds/rss.xml", headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304


def test_hot_requests_use_the_cache(tmp_path: Path) -> None:
    feeds = make_feeds(tmp_path)
    app = create_app(feeds_dir=feeds, publication_name="P", feeds_url=FEEDS_URL)
    files = app.state.feed_files
    loads: list[str] = []
    real_load = files._load

    def counting_load(path: str) -> object:
        loads.append(path)
        return real_load(path)

    files._load = counting_load  # the one place that reads, hashes and compresses
    with running(app) as base, httpx.Client(base_url=base, timeout=5) as client:
        for _ in range(3):
            assert client.get("/feeds/atom.xml").status_code == 200
        assert len(loads) == 1
        write_atomic(feeds / "atom.xml", atom_xml(13))
        assert client.get("/feeds/atom.xml").status_code == 200
        assert len(loads) == 2


def test_gzip_for_large_file_when_accepted(site: Site) -> None:
    original = (site.feeds / "atom.xml").read_bytes()
    assert len(original) > 1024
    with site.client.stream("GET", "/feeds/atom.xml", headers={"accept-encoding": "gzip"}) as r:
        raw = b"".join(r.iter_raw())
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.headers["content-length"] == str(len(raw))
    assert gzip.decompress(raw) == original
    gz_etag = r.headers["etag"]
    assert gz_etag.endswith('-gz"')

    plain = site.client.get("/feeds/atom.xml", headers=IDENTITY)
    assert "content-encoding" not in plain.headers
    assert plain.content == original
    assert plain.headers["etag"] != gz_etag
    refused = site.client.get("/feeds/atom.xml", headers={"accept-encoding": "gzip;q=0, br"})
    assert "content-encoding" not in refused.headers

    # Each variant validates only against its own tag.
    both = {"accept-encoding": "gzip", "if-none-match": gz_etag}
    assert site.client.get("/feeds/atom.xml", headers=both).status_code == 304
    mixed = {"accept-encoding": "identity", "if-none-match": gz_etag}
    assert site.client.get("/feeds/atom.xml", headers=mixed).status_code == 200


def test_small_file_is_not_gzipped(site: Site) -> None:
    assert (site.feeds / "rss.xml").stat().st_size <= 1024
    r = site.client.get("/feeds/rss.xml", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in r.headers
    assert r.content == (site.feeds / "rss.xml").read_bytes()


def test_head_matches_get(site: Site) -> None:
    for encoding in ("identity", "gzip"):
        headers = {"accept-encoding": encoding}
        get = site.client.get("/feeds/atom.xml", headers=headers)
        head = site.client.head("/feeds/atom.xml", headers=headers)
        assert head.status_code == 200
        assert head.content == b""
        for name in ("content-length", "content-type", "etag", "last-modified"):
            assert head.headers[name] == get.headers[name], name


def test_other_methods_not_allowed(site: Site) -> None:
    r = site.client.post("/feeds/rss.xml", content=b"x")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "target",
    [
        "/feeds/../pyproject.toml",
        "/feeds/../secret",
        "/feeds/%2e%2e/secret",
        "/feeds/%2E%2E/pyproject.toml",
        "/feeds/..%2fsecret",
        "/feeds/..%2Fpyproject.toml",
        "/feeds/sections/../../secret",
        "/feeds/%2Fetc%2Fpasswd",
        "/feeds//etc/passwd",
        "/feeds/rss.xml%00",
        "/feeds/%00/../secret",
        "/feeds/leak.xml",
        "/feeds/outside/secret",
        "/feeds/outside/pyproject.toml",
        "/feeds/.gitkeep",
        "/feeds/sections",
        "/feeds/sections/tech/",
        "/feeds/",
        "/feeds/missing.xml",
    ],
)
def test_escapes_and_non_files_are_404(site: Site, target: str) -> None:
    status, data = raw_get(site.base, target)
    assert status == 404, target
    assert SECRET.encode() not in data
    # httpx normalises dot segments; whatever it sends must not leak either.
    r = site.client.get(target)
    assert r.status_code == 404
    assert SECRET not in r.text


def test_symlink_inside_root_is_served(site: Site) -> None:
    r = site.client.get("/feeds/latest.xml", headers=IDENTITY)
    assert r.status_code == 200
    assert r.content == (site.feeds / "atom.xml").read_bytes()
    r = site.client.get("/feeds/topics/tech/rss.xml", headers=IDENTITY)
    assert r.status_code == 200
    assert r.content == (site.feeds / "sections" / "tech" / "rss.xml").read_bytes()


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.alternates: list[dict[str, str | None]] = []
        self.anchors: list[str | None] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "link" and found.get("rel") == "alternate":
            self.alternates.append(found)
        elif tag == "a":
            self.anchors.append(found.get("href"))
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def test_home_has_discovery_links_and_escapes_name(site: Site) -> None:
    r = site.client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert NAME not in r.text
    assert "&lt;b&gt;A&amp;B&lt;/b&gt;" in r.text
    parser = _Links()
    parser.feed(r.text)
    parser.close()
    assert parser.title == NAME
    found = {(link["type"], link["href"]) for link in parser.alternates}
    assert found == {
        ("application/rss+xml", "https://example.org/feeds/rss.xml"),
        ("application/atom+xml", "https://example.org/feeds/atom.xml"),
        ("application/feed+json", "https://example.org/feeds/feed.json"),
        ("application/rss+xml", "https://example.org/feeds/sections/tech/rss.xml"),
        ("application/atom+xml", "https://example.org/feeds/sections/tech/atom.xml"),
    }
    assert all(link["title"] and link["title"].startswith(NAME) for link in parser.alternates)
    assert set(parser.anchors) == {href for _, href in found}


def test_home_without_slash_in_feeds_url(tmp_path: Path) -> None:
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    (feeds / "atom.xml").write_text(atom_xml(1), encoding="utf-8")
    app = create_app(feeds_dir=feeds, publication_name="P", feeds_url="https://x.test/f")
    with running(app) as base, httpx.Client(base_url=base, timeout=5) as client:
        text = client.get("/").text
    assert 'href="https://x.test/f/atom.xml"' in text
    assert "rss.xml" not in text


def test_feedparser_reads_served_feeds(site: Site) -> None:
    for path, kind in (("rss.xml", "rss20"), ("atom.xml", "atom10")):
        r = site.client.get(f"/feeds/{path}")
        parsed = feedparser.parse(
            r.content, response_headers={"content-type": r.headers["content-type"]}
        )
        assert not parsed.bozo, parsed.get("bozo_exception")
        assert parsed.version == kind
        assert parsed.feed.title == "A&B daily"
        assert parsed.entries


def test_healthz(site: Site) -> None:
    r = site.client.get("/healthz")
    assert r.status_code == 200
    assert r.text == "ok"
