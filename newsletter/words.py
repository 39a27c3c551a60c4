"""Counted nouns, name lists and friendly times for messages people read."""

from __future__ import annotations

from datetime import datetime

# Fixed English names: strftime follows the process locale, and these lines are English.
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


def plural(count: int, singular: str, many: str | None = None) -> str:
    """'1 article', '2 articles', '0 articles'; `many` for irregular nouns."""
    word = singular if count == 1 else (many or singular + "s")
    return f"{count} {word}"


def joined(names: list[str], limit: int = 4) -> str:
    """'A', 'A and B', 'A, B and C'; past `limit` names, 'A, B, C and 2 more'."""
    if len(names) > limit:
        names = [*names[:limit - 1], f"{len(names) - limit + 1} more"]
    if len(names) < 2:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def friendly_time(when: datetime, now: datetime | None = None) -> str:
    """'Monday 7 December, 07:00 UTC' in `when`'s own zone; the year only when not `now`'s."""
    year = "" if now is not None and now.astimezone(when.tzinfo).year == when.year \
        else f" {when.year}"
    zone = when.tzname() or ""
    return (f"{_DAYS[when.weekday()]} {when.day} {_MONTHS[when.month - 1]}{year}, "
            f"{when:%H:%M}{' ' + zone if zone else ''}")
