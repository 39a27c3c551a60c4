"""Time building a 50-article issue, then per-recipient personalising vs premailer per recipient."""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from newsletter.compose.issue import IssueRules, make_issue  # noqa: E402
from newsletter.compose.render import (  # noqa: E402
    Masthead,
    Renderer,
    _inline,
    issue_view,
    personalize,
    personalize_text,
)
from newsletter.models import Article  # noqa: E402

T = TypeVar("T")
WORDS = ["council", "budget", "river", "school", "housing", "transit", "library", "market",
         "festival", "weather", "court", "hospital", "museum", "bridge", "election", "harbour",
         "park", "energy", "water", "policy", "report", "volunteers", "residents", "mayor"]
MASTHEAD = Masthead(name="The Bench Ledger", base_url="https://bench.example.org/",
                    postal_address="1 Bench Street\nTimeton", reason="You subscribed.")
NOW = datetime(2026, 1, 31, tzinfo=UTC)


def pool(count: int, rng: random.Random) -> list[Article]:
    """Candidate articles over two weeks; the issue keeps the 50 newest of the last week."""
    sections = ["World", "Economy", "Technology", "Culture", ""]

    def sentence(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize()

    out = []
    for n in range(count):
        when = NOW - timedelta(minutes=97 * n)
        out.append(Article(
            key=f"link:https://bench.example.org/a/{n}", title=sentence(5, 11),
            link=f"https://bench.example.org/a/{n}", published=when, updated=when,
            content_html=f"<p>{sentence(30, 60)}.</p>", content_hash=str(n),
            summary=f"{sentence(25, 45)}.", authors=tuple(sentence(2, 2) for _ in range(2)),
            section=sections[n % 5],
            image=f"https://cdn.bench.example.org/{n}.jpg" if n % 4 == 0 else ""))
    return out


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=10_000,
                        help="recipients personalised from the built issue")
    parser.add_argument("--premailer-recipients", type=int, default=20,
                        help="recipients for the premailer-per-recipient comparison")
    args = parser.parse_args()
    rng = random.Random(7)
    articles = pool(300, rng)
    renderer = Renderer()
    rules = IssueRules(publication=MASTHEAD.name, max_articles=50)
    archive_url = "https://bench.example.org/issues/1"

    renderer.render_issue(make_issue(number=0, articles=articles[:5], start=NOW - timedelta(7),
                                     end=NOW, rules=rules), MASTHEAD, archive_url)  # warm-up

    def build():  # noqa: ANN202
        issue = make_issue(number=1, articles=articles, start=NOW - timedelta(days=7), end=NOW,
                           rules=rules)
        return issue, renderer.render_issue(issue, MASTHEAD, archive_url)

    build_s, (issue, rendered) = timed(build)
    size = len(rendered.html.encode("utf-8"))
    print(f"python {platform.python_version()} on {platform.machine()}")
    print(f"build issue: select {len(issue.articles)} of {len(articles)} articles, render, "
          f"inline once: {build_s * 1000:.1f} ms  (HTML {size:,} bytes, "
          f"text {len(rendered.text):,} chars, summaries "
          f"{'whole' if rendered.summary_limit is None else rendered.summary_limit})")

    people = [(f"https://bench.example.org/u/{i}?t={i:032x}",
               f"https://bench.example.org/p/{i}?t={i:032x}", f"Reader {i}")
              for i in range(max(args.recipients, args.premailer_recipients))]

    def fast(count: int) -> int:
        total = 0
        for unsub, prefs, name in people[:count]:
            html = personalize(rendered.html, unsubscribe_url=unsub, preferences_url=prefs,
                               name=name)
            text = personalize_text(rendered.text, unsubscribe_url=unsub,
                                    preferences_url=prefs, name=name)
            total += len(html) + len(text)
        return total

    view = issue_view(issue, MASTHEAD, summary_limit=rendered.summary_limit)
    template_html = renderer.email_document(view, MASTHEAD, archive_url)

    def slow(count: int) -> int:
        # What the design avoids: fill in the values first, then inline each copy.
        total = 0
        for unsub, prefs, name in people[:count]:
            html = _inline(personalize(template_html, unsubscribe_url=unsub,
                                       preferences_url=prefs, name=name))
            total += len(html)
        return total

    fast_s, _ = timed(lambda: fast(args.recipients))
    slow_s, _ = timed(lambda: slow(args.premailer_recipients))
    per_fast = fast_s / args.recipients
    per_slow = slow_s / args.premailer_recipients
    print(f"personalise the built issue (HTML + text), {args.recipients:,} recipients: "
          f"{fast_s:.3f} s  ({per_fast * 1e6:.1f} µs/recipient, "
          f"{args.recipients / fast_s:,.0f}/s)")
    print(f"premailer per recipient, {args.premailer_recipients} recipients: {slow_s:.3f} s  "
          f"({per_slow * 1000:.1f} ms/recipient)")
    print(f"ratio: {per_slow / per_fast:,.0f}x faster per recipient (expect >> 100x)")


if __name__ == "__main__":
    main()
