"""Choose the articles of the next issue: window, sections, order, cap, number, subject."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from newsletter import named_fields
from newsletter.collect.sanitize import one_line
from newsletter.errors import NewsletterError
from newsletter.models import Article, Issue, IssueSection
from newsletter.words import joined, plural


@dataclass(frozen=True, slots=True)
class IssueRules:
    publication: str
    lookback: timedelta = timedelta(days=7)
    max_articles: int = 30
    section_order: tuple[str, ...] = ()
    subject: str = "{publication} No. {number} — {date:%d %B %Y}"
    preheader: str = ""
    untitled_section: str = "More"


def window_start(previous: Issue | None, now: datetime, rules: IssueRules) -> datetime:
    """After the previous (not cancelled) issue's window; without one, the look-back."""
    return previous.window_end if previous else now - rules.lookback


def oldest_late(previous: Issue, rules: IssueRules) -> datetime:
    """How old an article that arrived after the previous issue was built may be dated and
    still go into the next one: the look-back before that build. An upstream entry dated
    hours back, or a file dropped in with yesterday's date, goes in; an archive imported
    later (years of articles never in an issue) stays on the site and in the feeds."""
    return previous.window_end - rules.lookback


def group_sections(articles: Sequence[Article], rules: IssueRules) -> tuple[IssueSection, ...]:
    """Newest first, capped, then grouped by section in the configured order."""
    chosen = sorted(articles, key=lambda a: (a.published, a.id), reverse=True)
    chosen = chosen[:rules.max_articles]
    by_section: dict[str, list[Article]] = {}
    for a in chosen:
        by_section.setdefault(a.section or rules.untitled_section, []).append(a)
    order = {name.casefold(): i for i, name in enumerate(rules.section_order)}
    names = sorted(by_section, key=lambda n: (order.get(n.casefold(), len(order)),
                                              n == rules.untitled_section, n.casefold()))
    return tuple(IssueSection(n, tuple(by_section[n])) for n in names)


def default_intro(sections: Sequence[IssueSection], rules: IssueRules) -> str:
    """'This issue: 5 articles in City, Economy and Culture.' Not an article's summary: the
    intro sits just above the first article, which would then say the same thing twice."""
    count = sum(len(s.articles) for s in sections)
    if not count:
        return ""
    names = [s.name for s in sections]
    where = "" if names == [rules.untitled_section] else f" in {joined(names)}"
    return f"This issue: {plural(count, 'article')}{where}."


def make_subject(rules: IssueRules, number: int, date: datetime) -> str:
    # Not str.format: it would let the template reach the values' attributes and items.
    try:
        subject = named_fields.fill(rules.subject, {"publication": rules.publication,
                                                    "number": number, "date": date})
    except named_fields.TemplateError as exc:
        raise NewsletterError(f"newsletter.subject: {exc}") from None
    # A subject becomes a mail header: one line, whatever the template or titles held.
    return one_line(subject)


def make_issue(*, number: int, articles: Sequence[Article], start: datetime, end: datetime,
               rules: IssueRules) -> Issue:
    sections = group_sections(articles, rules)
    preheader = one_line(rules.preheader or default_intro(sections, rules))
    return Issue(number=number, subject=make_subject(rules, number, end), preheader=preheader,
                 created=end, window_start=start, window_end=end, sections=sections)
