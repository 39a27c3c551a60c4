"""Seeded subscribers, SMTP settings and a killed-and-restarted send shared by the delivery
tests."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
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


def smtp_toml(srv: SmtpTestServer, smtp: str = "", delivery: str = "", *,
              security: str = "none") -> str:
    """The [mail], [smtp] and [delivery] tables of a config sending to `srv`: `smtp` and
    `delivery` are the lines each table adds (delivery's last, so tables may follow)."""
    return f"""
[mail]
transport = "smtp"
from_address = "news@ledger.example.org"
[smtp]
host = "{srv.host}"
port = {srv.port}
security = "{security}"
{smtp}
[delivery]
{delivery}
"""


def smtp_settings(make_settings: Callable[..., Settings], srv: SmtpTestServer,
                  extra: str = "", *, database_url: str = "") -> Settings:
    return make_settings(smtp_toml(srv, "concurrency = 3\ntimeout = 5",
                                   f"retry_initial = 1\nlease_seconds = 10\n{extra}"),
                         database_url=database_url)


def start(settings: Settings, readers: int) -> tuple[Store, Issue]:
    store = pipeline.open_store(settings)
    seed(store, readers)
    issue = pipeline.build_issue(settings, store).issue
    assert issue is not None and issue.id is not None
    sending.start_sending(settings, store, issue)
    return store, issue


def r(i: int) -> str:
    return f"reader{i}@example.org"


def send_killed_until_done(settings: Settings, number: int, srv: SmtpTestServer,
                           rng: random.Random, most: int,
                           after_each: Callable[[], object] = lambda: None) -> int:
    """`newsletter issue send` SIGKILLed once `srv` has 50 to `most` more messages (if it
    is still running), `after_each` run, and started again until it exits 0 (40 runs at
    most): returns how many times it was killed."""
    cmd = [sys.executable, "-m", "newsletter", "--config", str(settings.path),
           "--log-level", "WARNING", "issue", "send", str(number)]
    kills = 0
    for _attempt in range(40):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = len(srv.messages) + rng.randint(50, most)
        deadline = time.monotonic() + 60
        while proc.poll() is None and len(srv.messages) < target:
            assert time.monotonic() < deadline, "sender made no progress"
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        after_each()
        if proc.returncode == 0:
            break
    return kills
