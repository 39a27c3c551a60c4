"""Operating mistakes at run time: each is refused with one line on stderr and an exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from test_send import seed

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.models import example_send_time
from newsletter.store import Store


def cli(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return subprocess.run([sys.executable, "-m", "newsletter.cli", "--config",
                           str(settings.path), "--log-level", "ERROR", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def draft(settings: Settings, readers: int = 2) -> Store:
    store = pipeline.open_store(settings)
    seed(store, readers)
    assert pipeline.build_issue(settings, store).issue is not None
    return store


def test_schedule_in_the_past_is_refused(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    store = draft(settings)
    past = (datetime.now(UTC) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M+00:00")
    proc = cli(settings, "issue", "schedule", "1", "--at", past)
    assert proc.returncode == 2
    one_error_line(proc, "error: send time", "is in the past")
    assert store.get_issue(1).status == "draft"  # type: ignore[union-attr]
    # "Now", typed by hand, is a few seconds old by the time it arrives: still accepted.
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    ok = cli(settings, "issue", "schedule", "1", "--at", now)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    assert store.get_issue(1).status == "scheduled"  # type: ignore[union-attr]
    store.close()


def test_the_example_send_time_is_the_next_monday_morning() -> None:
    monday_6 = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)  # 06:00 in Berlin, before 07:00
    assert example_send_time("Europe/Berlin", monday_6) == "2026-12-07T07:00+01:00"
    sunday = datetime(2026, 3, 22, 12, 0, tzinfo=UTC)  # the Monday after is still winter time
    assert example_send_time("Europe/Berlin", sunday) == "2026-03-23T07:00+01:00"
    before_dst = datetime(2026, 3, 25, 12, 0, tzinfo=UTC)  # summer time from 29 March
    assert example_send_time("Europe/Berlin", before_dst) == "2026-03-30T07:00+02:00"
