"""Collect from every source into the store, and publish the feeds from it."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from newsletter import log
from newsletter.collect import articles as arts
from newsletter.config import Settings, Source
from newsletter.models import Article
from newsletter.models import now_utc as now_utc  # re-exported: jobs and tests read it here
from newsletter.pipeline.source_feed import FeedSource
from newsletter.pipeline.source_folder import FolderSource
from newsletter.pipeline.sourcing import CollectReport, Run, SourceKind
from newsletter.publish.feeds import FeedMeta, write_feeds
from newsletter.store.database import Store

__all__ = ["SOURCES", "CollectReport", "collect", "feed_meta", "now_utc", "open_store",
           "publish_feeds"]

# A new kind of source is a module with a SourceKind and one line here; config.SOURCE_TYPES
# names the same kinds for validation, and tests/test_registries.py keeps the two equal.
SOURCES: dict[str, SourceKind] = {
    "folder": FolderSource(),
    "feed": FeedSource(),
}


def open_store(settings: Settings) -> Store:
    return Store(settings.storage.database_url)


def collect(settings: Settings, store: Store, *, now: datetime | None = None) -> CollectReport:
    """Read every source; store what is new or changed; report each failure by name."""
    started = now or now_utc()
    report = CollectReport()
    run = Run(settings, store, started, report)
    by_kind: dict[str, list[Source]] = {}
    for src in settings.sources:
        by_kind.setdefault(src.type, []).append(src)
    found: list[Article] = []
    # Hardening: identity is global, so an upstream entry carrying one of our own articles'
    # link (or its front matter id as guid) used to overwrite that article on the next run.
    # Kinds that own their identity (the folders) run first and claim it.
    for kind in sorted(by_kind, key=lambda k: not SOURCES[k].owns_identity):
        source = SOURCES[kind]
        for a in source.collect(run, by_kind[kind]):
            if not source.owns_identity and a.key in run.owned:
                report.warnings.append(f"{a.source}: entry {a.guid or a.link} skipped: it "
                                       f"has the identity of an article in the folder")
            else:
                found.append(a)
    result = arts.save(store.articles, found, started)
    report.new, report.updated = len(result.new), len(result.updated)
    report.unchanged = result.unchanged
    store.record_collect(started, now_utc(), report.new, report.updated, len(report.errors))
    # The one report of each problem, for the CLI and the scheduler alike: the CLI used to
    # print them again after this INFO line. WARNING: a broken source is for the operator.
    for err in report.errors:
        log.event("collect.error", logging.WARNING, detail=err)
    for warning in report.warnings:
        log.event("collect.warning", logging.WARNING, detail=warning)
    log.event("collect.done", new=report.new, updated=report.updated, removed=report.removed,
              unchanged=report.unchanged, skipped_files=report.skipped_files,
              errors=len(report.errors))
    return report


def feed_meta(settings: Settings) -> FeedMeta:
    p = settings.publication
    return FeedMeta(title=p.name, site_url=settings.site_url, feeds_url=settings.feeds_url,
                    language=p.language, description=p.description or p.name)


def publish_feeds(settings: Settings, store: Store, *, now: datetime | None = None) -> list[Path]:
    """Write every feed from the store; articles dated in the future wait until due."""
    now = now or now_utc()
    limit = settings.feeds.max_entries
    chosen = {a.id: a for a in store.latest_articles(limit, until=now)}
    for section in store.sections():
        chosen.update({a.id: a for a in store.latest_articles(limit, section=section,
                                                              until=now)})
    written = write_feeds(list(chosen.values()), feed_meta(settings), settings.feeds_dir, limit)
    log.event("feeds.published", articles=len(chosen), files_changed=len(written))
    return written
