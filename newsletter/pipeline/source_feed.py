"""The `feed` source kind: upstream RSS/Atom URLs fetched together, conditional GET and backoff."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from newsletter.collect import articles as arts
from newsletter.collect.sources.upstream import FeedState, FetchLimits, fetch_all
from newsletter.config import Source
from newsletter.errors import SourceError
from newsletter.models import Article
from newsletter.pipeline.sourcing import Run


class FeedSource:
    """Every feed of the run fetched concurrently; what each server said is kept per URL."""

    owns_identity: ClassVar[bool] = False

    def collect(self, run: Run, sources: list[Source]) -> list[Article]:
        store, report, now = run.store, run.report, run.started
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
        c = run.settings.collect
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
                values.update(etag=res.etag, last_modified=res.last_modified,
                              last_success_at=now)
            # Deferred results carry their error text too: test for them first, so a server
            # asking us to wait (429/503 + Retry-After) is a warning now as on later runs,
            # and does not make `newsletter collect` fail.
            if res.status == "deferred":
                report.warnings.append(f"{res.url}: deferred until {res.retry_after} "
                                       f"({res.error})")
            elif res.error or res.status == "gone":
                report.errors.append(f"{res.url}: "
                                     f"{res.error or 'gone (410): remove this source'}")
            store.save_feed_state(res.url, **values)
            for draft in res.drafts:
                try:
                    found.append(arts.build_article(draft, source=names.get(res.url, res.url),
                                                    rules=None))
                except (SourceError, ValueError) as exc:
                    report.warnings.append(f"{res.url}: entry skipped: {exc}")
        return found
