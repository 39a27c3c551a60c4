"""A fixed clock and articles relative to it for the issue tests."""

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
