"""Scale-out on PostgreSQL: worker processes share one ledger; one scheduler per database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from smtpserver import SmtpTestServer

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.models import Article
from newsletter.pipeline import scheduling, sending
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


@pytest.mark.slow
def test_four_workers_two_killed_every_address_once(
        make_settings: Callable[..., Settings], pg_url: str, tmp_path: Path) -> None:
    total, concurrency = 20_000, 4
    with SmtpTestServer() as srv:
        settings = make_settings(f"""
[mail]
transport = "smtp"
from_address = "news@ledger.example.org"
[smtp]
host = "{srv.host}"
port = {srv.port}
security = "none"
concurrency = {concurrency}
[delivery]
batch_size = 100
lease_seconds = 10
""", database_url=pg_url)
        store = Store(pg_url)
        addresses = seed(store, total)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None and issue.id is not None
        sending.start_sending(settings, store, issue)
        cmd = [sys.executable, "-m", "newsletter", "--config", str(settings.path),
               "--log-level", "WARNING", "worker", "--poll", "0.2"]
        workers = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for _ in range(4)]
        try:
            wait_for(lambda: len(srv.messages) >= total // 4, 120, "a quarter sent")
            for victim in workers[:2]:
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait(timeout=10)
            wait_for(lambda: store.delivery_counts(issue.id)["sent"] == total, 240,
                     "every row sent")
        finally:
            for proc in workers[2:]:
                proc.send_signal(signal.SIGTERM)
            for proc in workers[2:]:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        received = Counter(m.rcpt_tos[0] for m in srv.messages)
        assert set(received) == set(addresses)
        duplicates = sum(n - 1 for n in received.values())
        # Only what the two killed workers had in flight (one per connection) can repeat.
        assert duplicates <= 2 * concurrency, duplicates
        assert store.get_issue(issue.number).status in ("sending", "sent")
        store.close()


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
