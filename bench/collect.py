"""Collect 10,000 Markdown articles cold then warm, and time feed generation for 50 and 1,000."""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from newsletter import pipeline
from newsletter.config import load_settings
from newsletter.publish.feeds import render_feeds

ARTICLE = """---
title: "Article {n}: notes on trade, tariffs and the harbour economy"
date: {date}
authors: [Writer {a}, Second Writer]
section: {section}
summary: Short summary of article {n}.
tags: [trade, ports]
---
Paragraph one of article {n}, with *emphasis* and a [link](https://example.org/{n}).

Paragraph two explains what changed, why it matters and who pays for it.

- a point
- another point
"""


def write_articles(folder: Path, count: int) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    sections = ["World News", "Economy", "Technology", "Culture"]
    for n in range(count):
        date = (start + timedelta(minutes=37 * n)).isoformat()
        (folder / f"article-{n:05d}.md").write_text(
            ARTICLE.format(n=n, date=date, a=n % 17, section=sections[n % 4]), encoding="utf-8")


def timed(fn):  # noqa: ANN001, ANN201
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--articles", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "articles").mkdir()
        write_articles(root / "articles", args.articles)
        cfg = root / "n.toml"
        cfg.write_text(f"""
[publication]
name = "Bench"
base_url = "https://bench.example.org/"
[storage]
database_url = "sqlite:///{root / 'n.db'}"
[[sources]]
type = "folder"
path = "{root / 'articles'}"
[feeds]
output_dir = "{root / 'feeds'}"
""", encoding="utf-8")
        settings = load_settings(cfg, environ={})
        store = pipeline.open_store(settings)
        cold, r1 = timed(lambda: pipeline.collect(settings, store))
        warm, r2 = timed(lambda: pipeline.collect(settings, store))
        assert r1.new == args.articles and r2.skipped_files == args.articles, (r1, r2)
        print(f"collect {args.articles} Markdown files")
        print(f"  cold: {cold:8.3f} s  ({args.articles / cold:,.0f} files/s)")
        print(f"  warm: {warm:8.3f} s  ({args.articles / warm:,.0f} files/s)")
        print(f"  cold/warm ratio: {cold / warm:.1f}x (target >= 20x)")
        meta = pipeline.feed_meta(settings)
        for n in (50, 1000):
            arts = store.latest_articles(n)
            rounds = 20 if n == 50 else 3
            def render(arts=arts, n=n, rounds=rounds):  # noqa: ANN001, ANN202
                return [render_feeds(arts, meta, max_entries=n) for _ in range(rounds)]

            t, _ = timed(render)
            print(f"feed generation, {n:5d} entries (RSS + Atom + JSON): "
                  f"{t / rounds * 1000:8.1f} ms")
        t, _ = timed(lambda: pipeline.publish_feeds(settings, store))
        print(f"publish_feeds (main + 4 sections, 50 entries each, from the store): "
              f"{t * 1000:.1f} ms")
        store.close()


if __name__ == "__main__":
    main()
