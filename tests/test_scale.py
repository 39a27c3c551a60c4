"""Scale-out on PostgreSQL: worker processes share one ledger; one scheduler per database."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from newsletter.config import Settings
from newsletter.models import Article
from newsletter.pipeline import scheduling
from newsletter.store import schema as s
from newsletter.store.database import Store
from tests.helpers.schedule import register_stopped, set_stored_next_run

pytestmark = pytest.mark.postgres
NOW = datetime.now(UTC)


def seed(store: Store, readers: int) -> list[str]:
    rows = [{"email": f"r{i}@example.org", "email_key": f"r{i}@example.org", "name": "",
             "status": "active", "sections": json.dumps([]), "hard_bounces": 0,
             "created_at": NOW, "updated_at": NOW} for i in range(readers)]
    with store.engine.begin() as conn:
        for i in range(0, readers, 10_000):
            conn.execute(s.subscribers.insert(), rows[i:i + 10_000])
    when = NOW - timedelta(hours=1)
    store.save_articles([Article(key="link:a", title="A piece", link="https://x.example/a",
                                 published=when, updated=when, content_html="<p>a</p>",
                                 content_hash="a", section="World")], [], NOW)
    return [r["email"] for r in rows]


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_two_schedulers_build_one_issue(make_settings: Callable[..., Settings],
                                        pg_url: str, tmp_path: Path) -> None:
    settings = make_settings(f"""
[mail]
outbox_dir = "{tmp_path / 'outbox'}"
[schedule]
collect_minutes = 0
issue_cron = "0 9 * * *"
late_limit_minutes = 600
sweep_minutes = 60
""", database_url=pg_url)
    stores = [Store(pg_url), Store(pg_url)]
    seed(stores[0], 5)
    register_stopped(settings, stores[0])
    set_stored_next_run(stores[0], "issue", datetime.now(UTC) - timedelta(minutes=5))
    services = [scheduling.SingleScheduler(settings, st, retry_seconds=0.2) for st in stores]
    try:
        started = [svc.start() for svc in services]
        assert sorted(started) == [False, True]
        wait_for(lambda: any(i.status == "sent" for i in stores[0].list_issues()), 30,
                 "the issue sent")
        time.sleep(1)  # a period that must pass, not a wait: the standby must not act in it
        assert [(i.number, i.status) for i in stores[0].list_issues()] == [(1, "sent")]
        assert len(list((tmp_path / "outbox").glob("*.eml"))) == 5
    finally:
        for svc in services:
            svc.stop()
        for st in stores:
            st.close()
