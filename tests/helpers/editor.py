"""An admin site serving one built issue, for the issue editor's tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import httpx

from newsletter import pipeline
from newsletter.audience import subscriptions as subs
from newsletter.config import Settings
from newsletter.models import Article
from newsletter.pipeline import control
from newsletter.pipeline.issue_links import IssueLinks
from tests.helpers.admin import TOKEN, Admin, serve

PAGE = "/admin/issues/1/edit"  # the editor page of the issue these sites build


@contextmanager
def issue_site(make_settings: Callable[..., Settings], tmp_path: Path,
               articles: Sequence[Article], *, now: datetime, extra: str = "",
               later: Sequence[Article] = (), scheduled: bool = False) -> Iterator[Admin]:
    """One confirmed reader, issue 1 built from `articles` (then `later` stored, not in it),
    a file outbox and the admin token; `scheduled`: for a day after `now` (approving it
    then keeps it waiting: nothing is sent). `extra` is TOML before the [mail] table."""
    settings = make_settings(extra + f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n')
    settings = replace(settings, secrets=replace(settings.secrets, admin_token=TOKEN))
    store = pipeline.open_store(settings)
    try:
        subs.subscribe(store, "reader@example.org", "Reader", method="admin", ip=None,
                       user_agent=None, now=now, confirmed=True)
        store.save_articles(list(articles), [], now)
        built = pipeline.build_issue(settings, store, actor="test").issue
        assert built is not None and len(built.articles) == len(articles)
        if later:
            store.save_articles(list(later), [], now)
        if scheduled:
            control.schedule_issue(store, 1, now + timedelta(days=1), actor="test")
        with serve(settings, store, tmp_path) as admin:
            yield admin
    finally:
        store.close()


@contextmanager
def editor_link(site: Admin, editor: str, now: datetime) -> Iterator[httpx.Client]:
    """A browser that opened the editor link mailed to `editor` for issue 1: it is sent to
    the page without the token, which is now in its cookie (its session for that issue)."""
    issue = site.store.get_issue(1)
    assert issue is not None
    url = IssueLinks.from_settings(site.settings, site.store).editor_url(issue, editor, now)
    assert url is not None
    with httpx.Client(base_url=site.base, timeout=30) as client:
        opened = client.get("/admin/" + url.partition("/admin/")[2])
        assert opened.status_code == 303 and opened.headers["location"] == PAGE
        yield client
