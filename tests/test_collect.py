"""Collect end to end: real files, a real local feed server, a real SQLite file."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import feedparser
from feedserver import FeedServer

from newsletter import pipeline
from newsletter.config import Settings

ARTICLE = """---
title: "{title}"
date: 2026-11-{day:02d}T08:00:00+01:00
authors: [Ada Writer]
section: Economy
summary: A summary.
---
Body of {title}. <script>alert(1)</script><a href="javascript:alert(2)">x</a>
"""

RSS = b"""<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel><title>Partner</title><link>https://partner.example.net/</link>
<description>d</description>
<item><title>Partner piece</title><link>https://partner.example.net/p1</link>
<guid>partner-1</guid><pubDate>Tue, 10 Nov 2026 10:00:00 +0000</pubDate>
<description>&lt;p onclick="x()"&gt;Partner body&lt;/p&gt;</description></item>
</channel></rss>"""


def write(folder: Path, name: str, title: str, day: int = 10) -> Path:
    path = folder / name
    path.write_text(ARTICLE.format(title=title, day=day), encoding="utf-8")
    return path


def test_collect_is_idempotent_and_updates_in_place(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    folder = tmp_path / "articles"
    first = write(folder, "one.md", "First piece")
    write(folder, "two.md", "Second piece", day=11)
    store = pipeline.open_store(settings)
    report = pipeline.collect(settings, store)
    assert (report.new, report.updated, report.errors) == (2, 0, [])
    stored = {a.title: a for a in store.latest_articles(10)}
    assert "<script" not in stored["First piece"].content_html
    assert "javascript:" not in stored["First piece"].content_html
    assert stored["First piece"].link == "https://ledger.example.org/articles/first-piece/"

    again = pipeline.collect(settings, store)
    assert (again.new, again.updated, again.skipped_files) == (0, 0, 2)
    assert store.count_articles() == 2

    # An edit keeps the identity (same slug), updates in place and moves `updated`.
    first.write_text(first.read_text().replace("Body of", "Edited body of"), encoding="utf-8")
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    before = datetime.now(UTC)
    edited = pipeline.collect(settings, store)
    assert (edited.new, edited.updated) == (1 - 1, 1)
    article = {a.title: a for a in store.latest_articles(10)}["First piece"]
    assert "Edited body" in article.content_html
    assert article.id == stored["First piece"].id
    assert article.updated >= before
    assert store.count_articles() == 2
    store.close()


def test_broken_file_is_reported_and_the_rest_collected(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    folder = tmp_path / "articles"
    write(folder, "good.md", "Good piece")
    (folder / "broken.md").write_text("---\ntitle: [unclosed\n---\nbody\n", encoding="utf-8")
    store = pipeline.open_store(settings)
    report = pipeline.collect(settings, store)
    assert report.new == 1
    assert len(report.errors) == 1 and "broken.md" in report.errors[0]
    # Still broken on the next run: still reported, without being parsed again.
    again = pipeline.collect(settings, store)
    assert len(again.errors) == 1 and "broken.md" in again.errors[0]
    # Deleting a file takes its article out (no issue holds it); the broken one changes nothing.
    write(folder, "other.md", "Other piece")
    pipeline.collect(settings, store)
    (folder / "good.md").unlink()
    gone = pipeline.collect(settings, store)
    assert gone.removed == 1 and len(gone.errors) == 1
    assert [a.title for a in store.latest_articles(10)] == ["Other piece"]
    store.close()


def test_colliding_slugs_are_refused(make_settings: Callable[..., Settings],
                                     tmp_path: Path) -> None:
    settings = make_settings()
    folder = tmp_path / "articles"
    write(folder, "a.md", "Café Society")
    write(folder, "b.md", "CAFÉ society")  # same slug once case and accents are folded
    store = pipeline.open_store(settings)
    report = pipeline.collect(settings, store)
    assert report.new == 1
    assert len(report.errors) == 1 and "collides with" in report.errors[0]
    store.close()


def test_feed_source_with_conditional_get(make_settings: Callable[..., Settings]) -> None:
    with FeedServer() as srv:
        srv.add("/feed.xml", RSS, content_type="application/rss+xml", etag='"v1"')
        srv.add("/dead.xml", b"<html>not a feed</html>", content_type="text/html")
        settings = make_settings(f"""
[collect]
allow_private_networks = true
[[sources]]
type = "feed"
url = "{srv.url('/feed.xml')}"
section = "Partners"
[[sources]]
type = "feed"
url = "{srv.url('/dead.xml')}"
""", folder=False)
        store = pipeline.open_store(settings)
        report = pipeline.collect(settings, store)
        assert report.new == 1
        assert len(report.errors) == 1 and "/dead.xml" in report.errors[0]
        [article] = store.latest_articles(5)
        assert article.guid.endswith("partner-1") and article.section == "Partners"
        assert "onclick" not in article.content_html
        srv.requests.clear()
        again = pipeline.collect(settings, store)
        assert again.new == 0
        hits = srv.requests_for("/feed.xml")
        assert len(hits) == 1 and hits[0].status == 304
        store.close()


def test_publish_feeds_roundtrip(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    folder = tmp_path / "articles"
    write(folder, "a.md", "Tariffs & <Trade>")
    write(folder, "future.md", "Not yet", day=28)
    (folder / "future.md").write_text(
        (folder / "future.md").read_text().replace("2026-11-28", "2999-11-28"), encoding="utf-8")
    store = pipeline.open_store(settings)
    pipeline.collect(settings, store)
    written = pipeline.publish_feeds(settings, store)
    assert (tmp_path / "feeds/atom.xml") in written
    assert (tmp_path / "feeds/sections/economy/rss.xml").exists()
    parsed = feedparser.parse((tmp_path / "feeds/atom.xml").read_bytes())
    assert parsed.bozo == 0
    assert [e.title for e in parsed.entries] == ["Tariffs & <Trade>"]  # the future one waits
    assert pipeline.publish_feeds(settings, store) == []  # unchanged: no file rewritten
    store.close()
