"""Crontab weekdays read as cron reads them (0 and 7 Sunday), not as APScheduler numbers them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from newsletter import crontab
from newsletter.config import Settings
from newsletter.errors import ConfigError
from newsletter.pipeline.schedule import next_issue_time

UTC = ZoneInfo("UTC")
SATURDAY = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("field", "names"), [
    ("1", "mon"), ("0", "sun"), ("7", "sun"), ("1-5", "mon,tue,wed,thu,fri"),
    ("5-7", "sun,fri,sat"), ("0-6", "sun,mon,tue,wed,thu,fri,sat"),
    ("*/2", "sun,tue,thu,sat"), ("1,3", "mon,wed"), ("1-5/2", "mon,wed,fri"),
    ("mon-fri", "mon-fri"), ("*", "*"), ("sun,3", "sun,wed"),
])
def test_numeric_weekdays_become_names(field: str, names: str) -> None:
    assert crontab.weekday_field(field) == names


@pytest.mark.parametrize(("cron", "weekday"), [
    ("0 7 * * 1", "Monday"), ("0 7 * * 0", "Sunday"), ("0 7 * * 7", "Sunday"),
    ("0 7 * * 5", "Friday"), ("0 7 * * mon", "Monday"),
])
def test_the_issue_fires_on_the_day_cron_means(
        make_settings: Callable[..., Settings], cron: str, weekday: str) -> None:
    settings = make_settings(f'[schedule]\nissue_cron = "{cron}"\n')
    fire = next_issue_time(settings, SATURDAY)
    assert fire is not None and fire.strftime("%A") == weekday


@pytest.mark.parametrize("cron", ["0 7 * * 8", "0 7 * * 5-2", "0 7 * * 1/0"])
def test_a_weekday_cron_does_not_have_is_one_line(
        make_settings: Callable[..., Settings], cron: str) -> None:
    with pytest.raises(ConfigError) as refused:
        make_settings(f'[schedule]\nissue_cron = "{cron}"\n')
    assert "schedule.issue_cron" in str(refused.value) and "\n" not in str(refused.value)
