"""Crontab lines read the way cron reads them: weekday 0 (and 7) is Sunday, 1 is Monday."""

# APScheduler 3's CronTrigger.from_crontab numbers weekdays from Monday = 0, so "0 7 * * 1"
# fired on Tuesdays and "* * * * 0" on Mondays. Numeric weekdays (single, lists, ranges and
# steps) are rewritten as day names, which both read the same; names and "*" pass unchanged.

from __future__ import annotations

import re

_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_RANGE = re.compile(r"^(\*|\d+(?:-\d+)?)(?:/(\d+))?$")


def _days(token: str) -> list[int] | None:
    """The days (cron numbering, Sunday = 0) a numeric token names; None: not numeric."""
    m = _RANGE.match(token)
    if not m:
        return None
    span, step = m[1], int(m[2]) if m[2] else 1
    if span == "*":
        if not m[2]:
            return None  # a plain "*": every day, leave it as it is
        first, last = 0, 6
    elif "-" in span:
        first, last = (int(x) for x in span.split("-"))
    else:
        first = last = int(span)
        if m[2]:
            last = 6  # "1/2": from Monday, every other day
    if step < 1 or not 0 <= first <= 7 or not 0 <= last <= 7 or first > last:
        raise ValueError(f"day of week {token!r} is not a cron weekday (0-7, 0 and 7 Sunday)")
    return sorted({d % 7 for d in range(first, last + 1, step)})


def weekday_field(field: str) -> str:
    """The weekday field with every numeric part written as day names."""
    out = []
    for token in field.split(","):
        days = _days(token)
        out.append(token if days is None else ",".join(_NAMES[d] for d in days))
    return ",".join(out)


def standard(line: str) -> str:
    """A five-field crontab line whose weekday field APScheduler reads as cron does."""
    fields = line.split()
    if len(fields) != 5:
        return line  # the trigger says what is wrong with it
    fields[4] = weekday_field(fields[4])
    return " ".join(fields)
