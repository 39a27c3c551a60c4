"""Everything readers fetch, derived from the store: feeds and site, after every collect."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from newsletter import log
from newsletter.config import Settings
from newsletter.models import now_utc
from newsletter.pipeline.collecting import CollectReport, collect, publish_feeds
from newsletter.pipeline.schedule import next_issue_line
from newsletter.publish.site import SiteMeta, SiteResult, environment, write_site
from newsletter.store.database import Store

# Every article a page may show; far above what one publication collects.
_ALL = 10_000_000


@dataclass(slots=True)
class Published:
    feeds: list[Path] = field(default_factory=list)
    site: SiteResult = field(default_factory=SiteResult)


def site_meta(settings: Settings, store: Store, now: datetime) -> SiteMeta:
    p = settings.publication
    sent = store.list_issues(limit=1, statuses=("sending", "sent"))
    return SiteMeta(name=p.name, site_url=settings.site_url, feeds_url=settings.feeds_url,
                    description=p.description, language=p.language,
                    untitled_section=settings.newsletter.untitled_section,
                    per_page=settings.site.per_page,
                    home_per_section=settings.site.home_per_section,
                    next_issue=next_issue_line(settings, store, now),
                    latest_issue=(sent[0].number, sent[0].subject) if sent else None)


def publish_site(settings: Settings, store: Store, *, now: datetime | None = None) -> SiteResult:
    """Write the pages from the store; an article dated in the future waits until due."""
    now = now or now_utc()
    articles = store.latest_articles(_ALL, until=now)
    folder = settings.newsletter.templates_dir
    env = environment(Path(folder) if folder else None)
    result = write_site(articles, site_meta(settings, store, now), settings.site_dir, env)
    log.event("site.published", pages=result.pages, rendered=result.rendered,
              files_changed=len(result.written), removed=len(result.removed))
    return result


def refresh_site(settings: Settings, store: Store, *, now: datetime | None = None) -> None:
    """publish_site after an issue's status or send time changed: the home page names the
    latest issue and when the next one goes out. A full disk or a broken template of the
    operator's is logged, not raised: the change is made and must not look refused (the
    next collect publishes again)."""
    try:
        publish_site(settings, store, now=now)
    except Exception as exc:  # noqa: BLE001 - reported; the next publish tries again
        log.event("site.error", 30, detail=f"{settings.site_dir}: {exc}")


def publish(settings: Settings, store: Store, *, now: datetime | None = None) -> Published:
    """Feeds and pages from what the store holds now; only changed files are rewritten."""
    now = now or now_utc()
    return Published(feeds=publish_feeds(settings, store, now=now),
                     site=publish_site(settings, store, now=now))


def collect_and_publish(settings: Settings, store: Store, *,
                        now: datetime | None = None) -> CollectReport:
    """The one door for every collect (CLI, scheduler, dashboard, API): store, then publish.

    Publishing always follows, not only when something is new: an edit, a deletion, an
    article falling due or a new issue all change pages, and unchanged pages cost a hash.
    """
    now = now or now_utc()
    report = collect(settings, store, now=now)
    publish(settings, store, now=now)
    return report
