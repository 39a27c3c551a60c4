"""The plain view records both parts of an issue are built from, and the plain-text part."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import datetime

WIDTH = 72
# Fixed English month names: strftime("%B") follows the process locale, which would make
# the output (and the golden files) depend on where the issue was built.
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


@dataclass(frozen=True, slots=True)
class ArticleView:
    """One article as the templates see it: plain strings, absolute URLs, no raw HTML."""

    title: str
    link: str  # absolute http(s) URL, or "" when the article has none
    byline: str  # "By A, B and C", or ""
    summary: str  # plain text, already shortened to the issue's limit
    image: str  # absolute http(s) URL, or ""
    image_alt: str  # never empty when there is an image
    image_credit: str


@dataclass(frozen=True, slots=True)
class SectionView:
    name: str
    articles: tuple[ArticleView, ...]


@dataclass(frozen=True, slots=True)
class IssueView:
    """What one rendering shows: maybe fewer articles and shorter summaries than the issue."""

    number: int
    subject: str
    preheader: str
    date: str  # "3 June 2024"
    sections: tuple[SectionView, ...]
    omitted: int = 0  # articles left out of the email to stay under the size limit
    shortened: bool = False  # summaries were cut to stay under the size limit
    # The editor's note (compose/intro.py): sanitised HTML, and the same as plain text.
    # Empty: the preheader stands in for it, as before notes existed.
    intro_html: str = ""
    intro_text: str = ""


def long_date(value: datetime) -> str:
    return f"{value.day} {_MONTHS[value.month - 1]} {value.year}"


def byline(authors: tuple[str, ...]) -> str:
    """ "By A", "By A and B", "By A, B and C"; "" without authors."""
    names = [a for a in (n.strip() for n in authors) if a]
    if not names:
        return ""
    if len(names) == 1:
        return f"By {names[0]}"
    return f"By {', '.join(names[:-1])} and {names[-1]}"


def names_publication(postal_address: str, publication: str) -> bool:
    """Whether the address already starts with the name, so the footer need not repeat it."""
    return postal_address.casefold().startswith(publication.casefold())


def _wrap(text: str) -> list[str]:
    # No long-word or hyphen breaking: a URL inside a paragraph must stay clickable, so it
    # may overflow its line rather than be split.
    return textwrap.wrap(text, WIDTH, break_long_words=False, break_on_hyphens=False) or [""]


def _labelled(label: str, url: str) -> list[str]:
    """ "Label: URL" on one line when it fits, else the URL alone on the next line."""
    line = f"{label}: {url}"
    return [line] if len(line) <= WIDTH else [f"{label}:", url]


def _heading(name: str) -> list[str]:
    lines = _wrap(name)
    return [*lines, "=" * max(len(line) for line in lines)]


@dataclass(frozen=True, slots=True)
class TextParts:
    """The text part cut where sections and articles begin: runs of whole lines ("\n" after
    each), so that any choice of sections is their join (compose/blocks.py)."""

    head: str
    sections: tuple[tuple[str, tuple[str, ...]], ...]  # (heading, articles) per section
    notice: str
    foot: str

    def joined(self) -> str:
        return "".join((self.head, *(h + "".join(a) for h, a in self.sections), self.notice,
                        self.foot))


def _lines(out: list[str]) -> str:
    return "".join(line.rstrip() + "\n" for line in out)


def text_article(article: ArticleView) -> str:
    """One article of the text part, ending in its blank line."""
    out = _wrap(article.title)
    if article.byline:
        out += _wrap(article.byline)
    if article.summary:
        out += ["", *_wrap(article.summary)]
    if article.link:
        out += ["", article.link]  # alone on its line, never wrapped
    out.append("")
    return _lines(out)


def text_notice(view: IssueView, archive_url: str) -> str:
    """What the text part says when articles were left out or summaries cut ("" if neither)."""
    if view.omitted:
        more = "article" if view.omitted == 1 else "articles"
        return _lines(["", *_labelled(f"{view.omitted} more {more} in the archive",
                                      archive_url)])
    if view.shortened:
        return _lines(["", *_labelled("Read the full issue", archive_url)])
    return ""


def text_parts(view: IssueView, *, publication: str, postal_address: str, reason: str,
               archive_url: str) -> TextParts:
    """The text/plain part in its parts, with the same articles and summaries as the HTML."""
    # As the HTML masthead: the name, then number and date. The subject (which usually holds
    # the name too) is already the message's Subject header.
    out: list[str] = [*_wrap(publication), f"Issue {view.number} · {view.date}", ""]
    out += _labelled("View in browser", archive_url)
    out += ["", "Hello %%NAME%%,", ""]
    if view.intro_text:
        out += [*view.intro_text.split("\n"), ""]
    elif view.preheader:
        out += [*_wrap(view.preheader), ""]
    # The part never starts with blank lines (an empty name); "Issue N" is never blank.
    head = _lines(out).lstrip("\n")
    sections = tuple((_lines(["", *_heading(section.name), ""]),
                      tuple(text_article(a) for a in section.articles))
                     for section in view.sections)
    out = ["", "-" * 20]
    if not names_publication(postal_address, publication):
        out += _wrap(publication)
    for line in postal_address.splitlines():
        out += _wrap(line)
    if reason:
        out += ["", *_wrap(reason)]
    # Ends in a line that is never blank, so nothing trails.
    out += ["", "Unsubscribe: %%UNSUBSCRIBE_URL%%", "Preferences: %%PREFERENCES_URL%%"]
    return TextParts(head, sections, text_notice(view, archive_url), _lines(out))


def issue_text(view: IssueView, *, publication: str, postal_address: str, reason: str,
               archive_url: str) -> str:
    """The text/plain part, with the same articles and summaries as the HTML part."""
    return text_parts(view, publication=publication, postal_address=postal_address,
                      reason=reason, archive_url=archive_url).joined()
