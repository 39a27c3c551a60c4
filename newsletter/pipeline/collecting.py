"""Collect from every source into the store, and publish the feeds from it."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from newsletter import log
from newsletter.collect import articles as arts
from newsletter.collect.sources.files import iter_article_files, read_article_file
from newsletter.collect.sources.upstream import FeedState, FetchLimits, fetch_all
from newsletter.config import Settings, Source
from newsletter.errors import SourceError
from newsletter.models import Article, now_utc
from newsletter.publish.feeds import FeedMeta, write_feeds
from newsletter.store.database import FileRecord, Store


@dataclass(slots=True)
class CollectReport:
    new: int = 0
    updated: int = 0
    removed: int = 0  # articles whose file is gone
    unchanged: int = 0
    skipped_files: int = 0  # unchanged on disk since the last run: not parsed again
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def open_store(settings: Settings) -> Store:
    return Store(settings.storage.database_url)


def _link_rules(settings: Settings) -> arts.LinkRules:
    return arts.LinkRules(settings.publication.base_url, settings.publication.article_path)


def _collect_folder(settings: Settings, store: Store, source: Source, report: CollectReport,
                    local_keys: set[str]) -> list[Article]:
    root = Path(source.path)
    if not root.is_dir():
        report.errors.append(f"{root}: articles folder not found")
        return []
    root_key = str(root.resolve()) + os.sep
    prefix = len(str(root)) + 1
    records = store.file_records(root_key)
    paths = [(root_key + str(p)[prefix:], p) for p in iter_article_files(root, report.errors)]
    # Only files still on disk own a link. Hardening: a renamed (or deleted and re-created)
    # article used to collide for ever with the record of its old file name.
    present = {key for key, _ in paths}
    owner = {r.article_key: p for p, r in records.items() if r.article_key and p in present}
    rules = _link_rules(settings)
    changed: dict[str, FileRecord] = {}
    found: list[Article] = []
    for key, path in paths:  # key: resolving each file would dominate a warm run
        try:
            st = os.stat(path)
        except OSError as exc:
            report.errors.append(f"{path}: cannot read: {exc.strerror}")
            continue
        old = records.get(key)
        if old and old.mtime_ns == st.st_mtime_ns and old.size == st.st_size:
            report.skipped_files += 1
            if old.error:  # still broken: keep telling the operator until it is fixed
                report.errors.append(old.error)
            continue
        record = FileRecord(st.st_mtime_ns, st.st_size, None, None)
        try:
            draft = read_article_file(path, root, max_bytes=settings.collect.max_file_bytes)
            article = arts.build_article(draft, source=source.name or str(root), rules=rules,
                                         default_section=source.section)
            other = owner.get(article.key)
            if other and other != key:
                raise SourceError(str(path), f"its link {article.link} collides with {other}")
            owner[article.key] = key
            record.article_key = article.key
            found.append(article)
        except SourceError as exc:
            record.error = str(exc)
            report.errors.append(record.error)
        changed[key] = record
    store.save_file_records(changed)
    _forget_deleted(store, records, present, owner, report)
    local_keys.update(owner)
    return found


def _forget_deleted(store: Store, records: dict[str, FileRecord], present: set[str],
                    owner: dict[str, str], report: CollectReport) -> None:
    """A deleted file takes its article out of the store, hence out of feeds and pages.

    A renamed file keeps its article (the new name owns the same identity). An article an
    issue holds stays: the mail already sent links to its page, which must keep working.
    """
    gone = [p for p in records if p not in present]
    if gone and not present:
        # Every file gone at once looks like an unmounted or emptied disk, not an editor.
        report.warnings.append(f"{next(iter(records)).rsplit(os.sep, 1)[0]}: no article files "
                               f"left; their {len(gone)} articles are kept")
        return
    keys = {records[p].article_key for p in gone} - set(owner) - {None}
    if keys:
        report.removed += store.remove_articles(sorted(k for k in keys if k))
    if gone:
        store.forget_files(gone)


def _collect_feeds(settings: Settings, store: Store, sources: list[Source], now: datetime,
                   report: CollectReport) -> list[Article]:
    saved = store.feed_states()
    todo: list[tuple[FeedState, str]] = []
    for src in sources:
        state = saved.get(src.url, {})
        if state.get("gone"):
            report.errors.append(f"{src.url}: the server said 410 Gone; remove this source")
            continue
        retry = state.get("retry_after")
        if retry and retry > now:
            report.warnings.append(f"{src.url}: waiting until {retry:%Y-%m-%d %H:%M} UTC "
                                   f"as the server asked (Retry-After)")
            continue
        todo.append((FeedState(url=src.url, etag=state.get("etag"),
                               last_modified=state.get("last_modified")), src.section))
    c = settings.collect
    limits = FetchLimits(timeout=c.timeout, deadline=c.deadline, max_bytes=c.max_feed_bytes,
                         max_redirects=c.max_redirects,
                         allow_private_networks=c.allow_private_networks,
                         max_entries=c.max_entries_per_feed)
    results = asyncio.run(fetch_all(todo, limits, concurrency=c.concurrency)) if todo else []
    found: list[Article] = []
    names = {s.url: s.name or s.url for s in sources}
    for res in results:
        report.warnings.extend(res.warnings)
        values: dict[str, object] = {"last_status": res.status, "last_fetched_at": now,
                                     "last_error": res.error, "retry_after": res.retry_after,
                                     "gone": res.status == "gone"}
        if res.status in ("ok", "not_modified"):
            values.update(etag=res.etag, last_modified=res.last_modified, last_success_at=now)
        # Deferred results carry their error text too: test for them first, so a server
        # asking us to wait (429/503 + Retry-After) is a warning now as on later runs, and
        # does not make `newsletter collect` fail.
        if res.status == "deferred":
            report.warnings.append(f"{res.url}: deferred until {res.retry_after} ({res.error})")
        elif res.error or res.status == "gone":
            report.errors.append(f"{res.url}: {res.error or 'gone (410): remove this source'}")
        store.save_feed_state(res.url, **values)
        for draft in res.drafts:
            try:
                found.append(arts.build_article(draft, source=names.get(res.url, res.url),
                                                rules=None))
            except (SourceError, ValueError) as exc:
                report.warnings.append(f"{res.url}: entry skipped: {exc}")
    return found


def collect(settings: Settings, store: Store, *, now: datetime | None = None) -> CollectReport:
    """Read every source; store what is new or changed; report each failure by name."""
    started = now or now_utc()
    report = CollectReport()
    found: list[Article] = []
    local_keys: set[str] = set()  # identities owned by article files
    for src in settings.sources:
        if src.type == "folder":
            found += _collect_folder(settings, store, src, report, local_keys)
    feeds = [s for s in settings.sources if s.type == "feed"]
    if feeds:
        # Hardening: identity is global, so an upstream entry carrying one of our own
        # articles' link (or its front matter id as guid) used to overwrite that article
        # on the next run. Articles of the folders own their identity.
        for a in _collect_feeds(settings, store, feeds, started, report):
            if a.key in local_keys:
                report.warnings.append(f"{a.source}: entry {a.guid or a.link} skipped: it "
                                       f"has the identity of an article in the folder")
            else:
                found.append(a)
    result = arts.save(store, found, started)
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
