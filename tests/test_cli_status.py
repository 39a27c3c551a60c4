"""`newsletter status` names the next issue whichever way it was planned: the cron's next run
or an issue scheduled for a date (by `issue schedule`, the dashboard or an approval)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from newsletter import pipeline
from newsletter.cli.main import cli
from newsletter.config import Settings
from newsletter.words import friendly_time
from tests.helpers.sending import seed


def next_issue(settings: Settings) -> str:
    result = CliRunner().invoke(cli, ["--config", str(settings.path), "status"])
    assert result.exit_code == 0, result.output
    found = re.search(r"^next issue: .*$", result.stdout, re.M)
    assert found is not None, result.stdout
    return found[0]


def schedule(settings: Settings, at: datetime) -> None:
    result = CliRunner().invoke(cli, ["--config", str(settings.path), "issue", "schedule",
                                      "1", "--at", at.isoformat()])
    assert result.exit_code == 0, result.output


def built(settings: Settings) -> None:
    store = pipeline.open_store(settings)
    try:
        seed(store, 1)
        assert pipeline.build_issue(settings, store).issue is not None
    finally:
        store.close()


def test_status_names_an_issue_scheduled_for_a_date_without_a_cron(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()  # no [schedule] issue_cron: issues go by hand only
    built(settings)
    assert next_issue(settings) == "next issue: none scheduled ([schedule] issue_cron is empty)"
    at = (datetime.now(UTC) + timedelta(days=2)).replace(second=0, microsecond=0)
    schedule(settings, at)
    assert next_issue(settings) == \
        f"next issue: issue 1 scheduled for {friendly_time(at, datetime.now(UTC))}"


def test_status_puts_the_cron_and_a_scheduled_issue_in_their_order(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    now = datetime.now(UTC)
    hour = (now.hour + 12) % 24  # the cron's next run is 11 to 12 hours ahead
    settings = make_settings(f'[schedule]\nissue_cron = "0 {hour} * * *"\n'
                             '[newsletter]\nreview = true\neditors = ["ed@example.org"]\n'
                             f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n')
    built(settings)  # review mode: the editor's review mail is in the test's outbox
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1
    cron = datetime.combine(now.date(), datetime.min.time(), UTC).replace(hour=hour)
    cron += timedelta(days=1) if cron <= now else timedelta(0)
    sooner = (now + timedelta(minutes=30)).replace(second=0, microsecond=0)
    schedule(settings, sooner)
    waiting = ", once approved (`newsletter issue approve 1`)"
    assert next_issue(settings) == \
        f"next issue: issue 1 scheduled for {friendly_time(sooner, now)}{waiting}"
    later = cron + timedelta(days=1, hours=2)
    schedule(settings, later)
    assert next_issue(settings) == (
        f"next issue: {friendly_time(cron, now)}; then issue 1 scheduled "
        f"for {friendly_time(later, now)}{waiting}")
