"""The public site: pages for local articles only, sections paginated, only changes rewritten."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from webserver import running

from newsletter.models import Article
from newsletter.publish.site import SiteMeta, page_url_path, write_site
from newsletter.web import create_app

SITE = "https://ledger.example.org/"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
META = SiteMeta(name="Test Ledger", site_url=SITE, feeds_url=SITE + "feeds/",
                description="News & <views>.", per_page=2, home_per_section=2,
                next_issue="Next issue: Monday 23 November, 07:00 UTC",
                latest_issue=(3, "Test Ledger No. 3"))


def local(n: int, section: str = "World", hours_ago: float = 0, **kw: object) -> Article:
    when = NOW - timedelta(hours=hours_ago or n)
    slug = f"piece-{n}"
    fields: dict[str, object] = dict(
        key=f"link:{SITE}articles/{slug}/", title=f"Piece {n}", link=f"{SITE}articles/{slug}/",
        published=when, updated=when, content_html=f"<p>Body {n}</p>", content_hash=f"h{n}",
        section=section, summary=f"Summary {n}.", authors=("Ada",), slug=slug)
    fields.update(kw)
    return Article(**fields)  # type: ignore[arg-type]


def upstream(n: int) -> Article:
    when = NOW - timedelta(hours=n)
    return Article(key=f"guid:up{n}", title=f"Elsewhere {n}", link=f"https://other.example/{n}",
                   published=when, updated=when, content_html="<p>theirs</p>",
                   content_hash=f"u{n}", section="World", source="https://other.example/feed")


def read(folder: Path, path: str) -> str:
    return (folder / path).read_text(encoding="utf-8")


def test_article_page_has_everything_a_reader_and_a_crawler_need(tmp_path: Path) -> None:
    a = local(1, image="https://img.example/1.jpg", image_credit="Photo: Bo",
              title="Tom & <Jerry>", authors=("Ada", "Bo"))
    write_site([a, local(2), local(3, section="Economy")], META, tmp_path)
    page = read(tmp_path, "articles/piece-1/index.html")
    assert "<h1>Tom &amp; &lt;Jerry&gt;</h1>" in page and "<Jerry>" not in page
    assert f'<link rel="canonical" href="{SITE}articles/piece-1/">' in page
    assert '<meta property="og:type" content="article">' in page
    assert '<meta property="og:image" content="https://img.example/1.jpg">' in page
    assert '<meta name="twitter:card" content="summary_large_image">' in page
    assert f'type="application/atom+xml" title="Test Ledger — Atom" href="{SITE}feeds/atom.xml"' \
        in page
    assert "By Ada, Bo" in page and "20 November 2026" in page
    assert f'<a href="{SITE}sections/world/">World</a>' in page
    assert 'alt="Tom &amp; &lt;Jerry&gt;"' in page and "<figcaption>Photo: Bo</figcaption>" in page
    assert "<p>Body 1</p>" in page  # the stored, already sanitised body
    # Oldest first is "previous": piece 2 is older, nothing is newer than piece 1.
    assert f'Previous: <a href="{SITE}articles/piece-2/" rel="prev">Piece 2</a>' in page
    assert 'rel="next"' not in page
    assert f'<form method="post" action="{SITE}subscribe">' in page
    assert 'name="email"' in page and 'name="website"' in page  # the honeypot
    assert "<main " in page and 'content="noindex"' not in page


def test_upstream_articles_keep_their_link_and_get_no_page(tmp_path: Path) -> None:
    outside = local(4, link="https://elsewhere.example/x/")
    shadow = local(5, link=SITE + "feeds/rss.xml")
    write_site([local(1), upstream(2), outside, shadow], META, tmp_path)
    assert page_url_path(upstream(2), SITE) is None and page_url_path(outside, SITE) is None
    assert page_url_path(shadow, SITE) is None  # may not overwrite another page
    pages = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("index.html"))
    assert pages == ["articles/piece-1/index.html", "index.html", "sections/world/index.html",
                     "sections/world/page/2/index.html"]
    section = read(tmp_path, "sections/world/index.html")
    assert '<a href="https://other.example/2">Elsewhere 2</a>' in section


def test_sections_are_newest_first_and_paginated(tmp_path: Path) -> None:
    write_site([local(n) for n in range(1, 6)], META, tmp_path)  # per_page = 2
    first = read(tmp_path, "sections/world/index.html")
    titles = re.findall(r'<li><a href="[^"]+">(Piece \d)</a>', first)
    assert titles == ["Piece 1", "Piece 2"]
    assert f'<a href="{SITE}sections/world/page/2/" rel="next">Older articles</a>' in first
    third = read(tmp_path, "sections/world/page/3/index.html")
    assert re.findall(r'<li><a href="[^"]+">(Piece \d)</a>', third) == ["Piece 5"]
    assert f'<a href="{SITE}sections/world/page/2/" rel="prev">Newer articles</a>' in third
    assert "Page 3 of 3" in third and not (tmp_path / "sections/world/page/4").exists()


def test_home_page_names_sections_issue_archive_and_feeds(tmp_path: Path) -> None:
    arts = [local(1, section="Économie"), local(2, section="World"), local(3, section=""),
            local(4, section="World"), local(5, section="World")]
    write_site(arts, META, tmp_path)
    home = read(tmp_path, "index.html")
    assert "<h1>Test Ledger</h1>" in home and "News &amp; &lt;views&gt;." in home
    assert "Next issue: Monday 23 November, 07:00 UTC" in home
    assert f'<a href="{SITE}issues/3">Test Ledger No. 3</a>' in home
    assert f'<a href="{SITE}issues/">' in home
    assert f'<a href="{SITE}sections/economie/">Économie</a>' in home  # the name, not the slug
    assert ">More</h2>" in home  # the unsectioned article, under untitled_section
    assert "Piece 5" not in home  # home_per_section = 2 of World's three
    assert f'href="{SITE}feeds/sections/world/feed.json"' in home
    assert home.count('<link rel="alternate"') == 9  # main + two sections, three formats each
    sitemap = read(tmp_path, "sitemap.xml")
    assert f"<loc>{SITE}articles/piece-3/</loc><lastmod>2026-11-20</lastmod>" in sitemap
    robots = read(tmp_path, "robots.txt")
    assert f"Sitemap: {SITE}sitemap.xml" in robots and "Disallow: /admin/" in robots


def test_only_what_changed_is_rendered_and_rewritten(tmp_path: Path) -> None:
    arts = [local(n) for n in range(1, 8)]
    cold = write_site(arts, META, tmp_path)
    assert cold.rendered == cold.pages == len(cold.written) > 10
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = write_site(arts, META, tmp_path)
    assert again.rendered == 0 and again.written == [] and again.removed == []
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before

    arts[3] = replace(arts[3], content_html="<p>Edited</p>", content_hash="edited")
    warm = write_site(arts, META, tmp_path)
    changed = sorted(p.relative_to(tmp_path).as_posix() for p in warm.written)
    assert changed == ["articles/piece-4/index.html"]  # section pages list titles only
    assert "<p>Edited</p>" in read(tmp_path, "articles/piece-4/index.html")

    # Gone from the store: its page is removed, its neighbours link past it.
    del arts[3]
    gone = write_site(arts, META, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in gone.removed] == [
        "articles/piece-4/index.html", "sections/world/page/4/index.html"]  # 6 fit on 3 pages
    assert not (tmp_path / "articles/piece-4").exists()
    assert "piece-4" not in read(tmp_path, "articles/piece-3/index.html")
    assert "piece-4" not in read(tmp_path, "sitemap.xml")


def test_a_broken_manifest_renders_everything_again(tmp_path: Path) -> None:
    arts = [local(1), local(2)]
    write_site(arts, META, tmp_path)
    (tmp_path / ".manifest.json").write_text("[not json", encoding="utf-8")
    (tmp_path / "articles/piece-1/index.html").unlink()
    result = write_site(arts, META, tmp_path)
    assert result.rendered == result.pages
    assert [p.relative_to(tmp_path).as_posix() for p in result.written] == [
        "articles/piece-1/index.html"]  # the others were already byte-identical


def test_served_pages_have_validators_gzip_and_folder_redirects(tmp_path: Path) -> None:
    site, feeds = tmp_path / "site", tmp_path / "feeds"
    feeds.mkdir()
    app = create_app(feeds_dir=feeds, site_dir=site, publication_name="Test Ledger",
                     feeds_url=SITE + "feeds/")
    with running(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        before = client.get("/")  # nothing published yet: the generated stand-in
        assert before.status_code == 200 and "No feeds have been published yet" in before.text
        write_site([local(n) for n in range(1, 4)], META, site)
        home = client.get("/", headers={"accept-encoding": "gzip"})
        assert home.status_code == 200 and "<h1>Test Ledger</h1>" in home.text
        assert home.headers["content-type"] == "text/html; charset=utf-8"
        assert home.headers["content-encoding"] == "gzip"
        page = client.get("/articles/piece-2/")
        assert page.status_code == 200 and "<h1>Piece 2</h1>" in page.text
        again = client.get("/articles/piece-2/", headers={"if-none-match": page.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        moved = client.get("/articles/piece-2")
        assert moved.status_code == 301 and moved.headers["location"] == "/articles/piece-2/"
        assert client.get("/articles/nothing/").status_code == 404
        assert client.get("/.manifest.json").status_code == 404
        assert client.get("/sitemap.xml").headers["content-type"] in (
            "application/xml; charset=utf-8", "text/xml; charset=utf-8")
        assert client.get("/robots.txt").text.startswith("User-agent: *")
        assert client.get("/healthz").text == "ok"  # routes still answer first
        assert client.post("/articles/piece-2/").status_code == 405


@pytest.mark.parametrize("name", ["index.html", "sitemap.xml", "robots.txt"])
def test_bytes_are_deterministic(tmp_path: Path, name: str) -> None:
    arts = [local(n, section=s) for n, s in ((1, "B"), (2, "A"), (3, "B"))]
    write_site(arts, META, tmp_path / "one")
    write_site(list(reversed(arts)), META, tmp_path / "two")
    assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
