"""How often issues come, in words, read from the issue cron's own runs."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from newsletter import crontab
from newsletter.config import Settings
from newsletter.words import joined

# Fixed English names, as words.py's: strftime follows the process locale.
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_HORIZON = 364  # whole days of runs read to name the rhythm: 52 weeks, 11 full months
WHENEVER = "an issue whenever the editors send one"


def issue_rhythm(settings: Settings, now: datetime | None = None) -> str:
    """How often issues come, in words: "an issue every Monday at 07:00 UTC", "… every
    weekday (Monday to Friday) …", "… on the 1st and 15th of every month …", WHENEVER
    without a cron, "issues on a set schedule" for a pattern it cannot name.

    Read from the trigger's own runs over the next year, not from the cron's text, so the
    words say what the scheduler will do, however the line is spelt.
    """
    zone = ZoneInfo(settings.schedule.timezone)
    now = (now or datetime.now(zone)).astimezone(zone)
    first = now.date() + timedelta(days=1)  # whole days only: today is partly gone
    days = [first + timedelta(days=i) for i in range(_HORIZON)]
    runs = _runs(settings, now, until=days[-1])
    if not runs:
        return WHENEVER
    times: dict[date, set[tuple[int, int]]] = {}
    for run in runs:
        times.setdefault(run.date(), set()).add((run.hour, run.minute))
    fired = set(times) & set(days)
    if not fired or any(len(at) > 1 for at in times.values()):
        return "issues on a set schedule"  # several a day: no one time to name
    # The time most days have: a run a clock change moved (02:30 on the night there is
    # none) does not change the rhythm.
    (hour, minute), _ = Counter(min(at) for at in times.values()).most_common(1)[0]
    zone_name = settings.schedule.timezone
    at = f"at {hour:02d}:{minute:02d} {zone_name}{'' if zone_name == 'UTC' else ' time'}"
    weekdays = sorted({day.weekday() for day in fired})
    if fired == {day for day in days if day.weekday() in weekdays}:
        if len(weekdays) == 7:
            return f"an issue every day {at}"
        if weekdays == [0, 1, 2, 3, 4]:
            return f"an issue every weekday (Monday to Friday) {at}"
        return f"an issue every {joined([_DAYS[d] for d in weekdays], limit=7)} {at}"
    dates = sorted({day.day for day in fired})
    if dates[-1] <= 28 and fired == {day for day in days if day.day in dates}:
        return f"an issue on the {joined([_ordinal(d) for d in dates], limit=31)} " \
               f"of every month {at}"
    return "issues on a set schedule"


def prepared_rhythm(rhythm: str) -> str:
    """In review mode the schedule is when issues are prepared, not when they come: "Issues
    are prepared every Monday at 07:00 UTC"; "" without a cron (WHENEVER says it already)."""
    if rhythm == WHENEVER:
        return ""
    return "Issues are prepared " + rhythm.removeprefix("an issue ").removeprefix("issues ")


def _runs(settings: Settings, now: datetime, *, until: date,
          limit: int = 1000) -> list[datetime]:
    """The cron's next runs from `now`, in the schedule's zone: none on a day after `until`,
    at most `limit` (a cron firing every minute needs no year of them to be told apart)."""
    cron = settings.schedule.issue_cron
    if not cron:
        return []
    zone = ZoneInfo(settings.schedule.timezone)
    trigger = CronTrigger.from_crontab(crontab.standard(cron), timezone=zone)
    runs: list[datetime] = []
    previous, after = None, now.astimezone(zone)
    while len(runs) < limit:
        run = trigger.get_next_fire_time(previous, after)
        if run is None or run.date() > until:
            break
        runs.append(run)
        # In UTC: a wall-clock second after 02:00 on the night 02:00 comes twice is the
        # first 02:00 again, and the trigger would give the second one for ever.
        previous, after = run, (run.astimezone(UTC) + timedelta(seconds=1)).astimezone(zone)
    return runs


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
