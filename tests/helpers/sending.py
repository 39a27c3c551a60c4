"""Seeded subscribers and SMTP settings shared by the delivery tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from smtpserver import SmtpTestServer

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.models import Article, Issue
from newsletter.pipeline import sending
from newsletter.store import schema as s
from newsletter.store.database import Store

NOW = datetime.now(UTC)


def seed(store: Store, n: int, *, prefs: dict[int, list[str]] | None = None,
         inactive: int = 0) -> list[str]:
    prefs = prefs or {}
    rows = [{"email": f"reader{i}@example.org", "email_key": f"reader{i}@example.org",
             "name": f"Reader {i}", "status": "active" if i < n else "unsubscribed",
             "sections": json.dumps(prefs.get(i, [])), "hard_bounces": 0,
             "created_at": NOW, "updated_at": NOW} for i in range(n + inactive)]
    with store.engine.begin() as conn:
        for i in range(0, len(rows), 5000):
            conn.execute(s.subscribers.insert(), rows[i:i + 5000])
    arts = [Article(key=f"link:https://ledger.example.org/{sec}/", title=f"{sec} piece",
                    link=f"https://ledger.example.org/{sec}/", published=NOW - timedelta(hours=1),
                    updated=NOW - timedelta(hours=1), content_html="<p>b</p>",
                    content_hash=sec, section=sec, summary=f"About {sec}.")
            for sec in ("World", "Economy")]
    store.save_articles(arts, [], NOW)
    return [f"reader{i}@example.org" for i in range(n)]


def smtp_settings(make_settings: Callable[..., Settings], srv: SmtpTestServer,
                  extra: str = "") -> Settings:
    return make_settings(f"""
[mail]
transport = "smtp"
from_address = "news@ledger.example.org"
[smtp]
host = "{srv.host}"
port = {srv.port}
security = "none"
concurrency = 3
timeout = 5
[delivery]
retry_initial = 1
lease_seconds = 10
{extra}
""")


def start(settings: Settings, readers: int) -> tuple[Store, Issue]:
    store = pipeline.open_store(settings)
    seed(store, readers)
    issue = pipeline.build_issue(settings, store).issue
    assert issue is not None and issue.id is not None
    sending.start_sending(settings, store, issue)
    return store, issue


def r(i: int) -> str:
    return f"reader{i}@example.org"
