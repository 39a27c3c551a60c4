"""A fixed clock and articles relative to it (or to the caller's clock) for the issue tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from newsletter.models import Article

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def art(n: int, section: str, hours_ago: float) -> Article:
    when = NOW - timedelta(hours=hours_ago)
    return Article(key=f"link:https://ledger.example.org/a/{n}/", title=f"Piece {n}",
                   link=f"https://ledger.example.org/a/{n}/", published=when, updated=when,
                   content_html=f"<p>Body {n}</p>", content_hash=f"h{n}", section=section,
                   summary=f"Summary {n}.", authors=("Ada",))


def piece(key: str, title: str, section: str, hours: float, *, now: datetime) -> Article:
    """An article titled `title`, published `hours` before `now`, at /`key`/."""
    when = now - timedelta(hours=hours)
    return Article(key=f"link:https://ledger.example.org/{key}/", title=title,
                   link=f"https://ledger.example.org/{key}/", published=when, updated=when,
                   content_html=f"<p>{title}.</p>", content_hash=key, section=section,
                   summary=f"All about {title.lower()}.")
