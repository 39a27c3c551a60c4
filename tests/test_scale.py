"""Scale-out on PostgreSQL: worker processes share one ledger; one scheduler per database."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from newsletter.config import Settings
from newsletter.pipeline import scheduling
from newsletter.store.database import Store
from tests.helpers.schedule import register_stopped, set_stored_next_run
from tests.helpers.sending import seed
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.postgres
NOW = datetime.now(UTC)


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
