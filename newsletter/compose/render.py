"""Issue emails (CSS inlined once, personalised per recipient), archive pages and archive feed."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from feedgen.feed import FeedGenerator
from premailer import Premailer

from newsletter import __version__, templating
from newsletter.collect.sanitize import first_paragraph, one_line, shorten
from newsletter.compose.intro import intro_html, intro_text
from newsletter.compose.text import (
    ArticleView,
    IssueView,
    SectionView,
    byline,
    issue_text,
    long_date,
    names_publication,
)
from newsletter.deliver.qp import qp_piece, qp_value
from newsletter.errors import NewsletterError
from newsletter.models import Article, Issue
from newsletter.templating import DEFAULT_TEMPLATES  # noqa: F401  (tests read it here)

__all__ = ["Masthead", "RenderedIssue", "Renderer", "archive_feed", "personalize",
           "personalize_text", "sent_time", "SIZE_LIMIT"]

# Gmail clips messages whose HTML exceeds about 102 KB, hiding the footer (and with it the
# unsubscribe link). Counted as transmitted: the HTML part quoted-printable encoded, as
# deliver/mail.py sends it, with the per-recipient values at their longest. deliver/qp.py is
# a leaf (it imports nothing of the project), so the budget is counted with the encoder
# itself rather than with an estimate that could drift from it.
SIZE_LIMIT = 100_000
# Room for the values filled in per recipient: audience/ appends "preferences?token=" and a
# signed token of about 100 characters to base_url, and cuts names to 100 characters.
_URL_ROOM = 160
_NAME_ROOM = 100
# Summary lengths tried in turn until the email fits: whole, then shorter, then none.
SUMMARY_LIMITS: tuple[int | None, ...] = (None, 300, 160, 80, 0)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Where `email/_content.html` lets blocks be cut ({{ cut.section }} …): nothing, unless
# compose/blocks.py renders with markers to cut a choice of sections from.
NO_CUT: Mapping[str, str] = {"section": "", "article": "", "notice": "", "end": ""}
_LINK_SCHEMES = ("http", "https")


# Hardening: article text and links are in the email before the per-recipient %%NAME%%,
# %%UNSUBSCRIBE_URL%% and %%PREFERENCES_URL%% are filled in, so a title or an image URL
# from an upstream feed that held "%%UNSUBSCRIBE_URL%%" got each reader's own link put in
# it (and an image on a third-party host received it when the mail was opened). Text from
# articles gets a word joiner between two "%"; URLs get stray "%" percent-encoded.
_PERCENT_PAIR_RE = re.compile("%(?=%)")
_STRAY_PERCENT_RE = re.compile("%(?![0-9A-Fa-f]{2})")


def _inert(text: str) -> str:
    """Text that can never form a %%PLACEHOLDER%% (it looks the same)."""
    return _PERCENT_PAIR_RE.sub("%\u2060", text)


def _absolute(url: str, base: str) -> str:
    """`url` made absolute against `base`; "" when it is empty, a bare fragment or unsafe."""
    url = url.strip()
    if not url or url.startswith("#"):
        return ""
    joined = _STRAY_PERCENT_RE.sub("%25", urljoin(base, url))
    parts = urlsplit(joined)
    return joined if parts.scheme in _LINK_SCHEMES and parts.netloc else ""


def _require_absolute(name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in _LINK_SCHEMES or not parts.netloc:
        raise ValueError(f"{name} must be an absolute http(s) URL, got {url!r}")


@dataclass(frozen=True)
class Masthead:
    """Everything the templates learn about the publication: plain values, never settings."""

    name: str
    base_url: str  # absolute site URL
    language: str = "en"
    direction: str = "ltr"
    postal_address: str = ""
    reason: str = ""  # "You are receiving this because …"

    @property
    def footer_name(self) -> str:
        """The name above the postal address, or "" when the address starts with it."""
        return "" if names_publication(self.postal_address, self.name) else self.name

    def __post_init__(self) -> None:
        _require_absolute("Masthead.base_url", self.base_url)
        if not self.base_url.endswith("/"):
            # Page links are built by concatenation, so the base must name a folder.
            object.__setattr__(self, "base_url", self.base_url + "/")
        if self.direction not in ("ltr", "rtl"):
            raise ValueError(f"Masthead.direction must be 'ltr' or 'rtl', got {self.direction!r}")


@dataclass(frozen=True)
class RenderedIssue:
    """The two parts of the email, with %%PLACEHOLDERS%% where per-recipient values go."""

    html: str
    text: str
    omitted: int = 0  # articles left out to stay under SIZE_LIMIT
    summary_limit: int | None = None  # None: summaries whole


def _encoded_size(document: str, base_url: str) -> int:
    """Bytes of the HTML part as transmitted, the values filled in at their longest.

    Hardening: the decoded HTML was measured, but quoted-printable adds a soft break every
    75 columns and "=3D" for each "=", so a 94 KB issue went out as 107 KB and was clipped.
    """
    # Split and encoded the way MessageTemplate.build encodes the HTML part.
    parts = _PLACEHOLDER_RE.split(document.replace("\r\n", "\n").replace("\r", "\n"))
    pieces, names = parts[0::2], parts[1::2]
    size = sum(len(qp_piece(piece, soft_end=i < len(names))) for i, piece in enumerate(pieces))
    room = value_room(base_url)
    return size + sum(room[n] for n in names)


def value_room(base_url: str) -> dict[str, int]:
    """Encoded bytes to count for each placeholder: its value at its longest, as sent."""
    url = len(qp_value(html.escape(base_url + "x" * _URL_ROOM, quote=True)))
    name = len(qp_value("\U0001f600" * _NAME_ROOM))  # four UTF-8 bytes each: the longest
    return {"NAME": name, "UNSUBSCRIBE_URL": url, "PREFERENCES_URL": url}


def _fits(document: str, base_url: str) -> bool:
    # Encoding never shrinks text: when the UTF-8 alone is over, the encoding is not needed.
    return len(document.encode("utf-8")) < SIZE_LIMIT \
        and _encoded_size(document, base_url) < SIZE_LIMIT


def _inline(document: str) -> str:
    """Copy the <style> rules into style attributes; @media rules stay in a <style>."""
    # Not keep_style_tags: premailer then writes back only what it cannot inline (the @media
    # blocks), so the CSS is not sent twice. No base_url and no network: links are already
    # absolute and nothing may be fetched while building an issue.
    inlined: str = Premailer(
        document,
        base_url=None,
        allow_network=False,
        strip_important=False,
        keep_style_tags=False,
        remove_classes=False,
        # cssutils knows no mso-* or -webkit-* property and would log a warning for each.
        cssutils_logging_level=logging.CRITICAL,
        disable_validation=True,
        # CSS widths ("100%", "auto") must not replace the pixel width attributes the
        # templates give tables and images for Outlook, which ignores CSS widths.
        disable_basic_attributes=["width", "height"],
    ).transform()
    return inlined


class Renderer:
    """Jinja2 templates, each overridable by a same-named file in the operator's folder."""

    def __init__(self, templates_dir: Path | None = None) -> None:
        # Autoescape: titles, names and summaries come from feeds and files. StrictUndefined:
        # a typo in an operator's template fails the build instead of sending a blank.
        self.env = templating.environment(templates_dir, autoescape=True, strict=True,
                                          trim=True, keep_trailing_newline=True)

    def _render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)

    # -- the email ------------------------------------------------------------------------

    def render_issue(self, issue: Issue, masthead: Masthead, archive_url: str) -> RenderedIssue:
        """HTML (inlined, under SIZE_LIMIT bytes as sent) and text parts, not personalised."""
        _require_absolute("archive_url", archive_url)
        total = len(issue.articles)
        for limit in SUMMARY_LIMITS:
            view = issue_view(issue, masthead, summary_limit=limit)
            document = self._email_html(view, masthead, archive_url)
            if _fits(document, masthead.base_url):
                return self._rendered(view, document, masthead, archive_url, limit)
        # Still too big without summaries: keep the longest run of leading articles that
        # fits. Size grows with the count, so a binary search needs few premailer runs.
        best: tuple[IssueView, str] | None = None
        low, high = 0, total - 1
        while low <= high:
            keep = (low + high) // 2
            view = issue_view(issue, masthead, summary_limit=0, keep=keep)
            document = self._email_html(view, masthead, archive_url)
            if _fits(document, masthead.base_url):
                best, low = (view, document), keep + 1
            else:
                high = keep - 1
        if best is None:
            raise NewsletterError(f"issue {issue.number}: the email template alone is over "
                                  f"{SIZE_LIMIT} bytes as sent")
        return self._rendered(*best, masthead, archive_url, 0)

    def _email_html(self, view: IssueView, masthead: Masthead, archive_url: str) -> str:
        return _inline(self.email_document(view, masthead, archive_url))

    def email_document(self, view: IssueView, masthead: Masthead, archive_url: str,
                       cut: Mapping[str, str] = NO_CUT) -> str:
        """The email's HTML before inlining; `cut` marks where blocks begin (compose/blocks.py)."""
        return self._render("email/issue.html", masthead=masthead, issue=view,
                            archive_url=archive_url, email=True, cut=cut)

    @staticmethod
    def _rendered(view: IssueView, document: str, masthead: Masthead, archive_url: str,
                  limit: int | None) -> RenderedIssue:
        # The text part carries the same articles and summaries as the HTML part, so the two
        # alternatives of the message say the same thing.
        text = issue_text(view, publication=masthead.name, postal_address=masthead.postal_address,
                          reason=masthead.reason, archive_url=archive_url)
        return RenderedIssue(document, text, view.omitted, limit)

    # -- the web archive ------------------------------------------------------------------

    def render_archive_page(self, issue: Issue, masthead: Masthead, issue_url: str, *,
                            draft: bool = False) -> str:
        """The issue as a public web page: same look, no personal data, no placeholders.
        `draft`: an unpublished issue's signed preview, marked as such and not in the
        archive's trail (the archive does not list it)."""
        _require_absolute("issue_url", issue_url)
        view = issue_view(issue, masthead, summary_limit=None)
        return self._render("archive/issue.html", masthead=masthead, issue=view,
                            archive_url=issue_url, issue_url=issue_url, email=False,
                            draft=draft, **_site_links(masthead, urljoin(issue_url, ".")))

    def render_archive_list(self, issues: Sequence[Issue], masthead: Masthead,
                            archive_base_url: str) -> str:
        """Every issue given, in the order given, linking to its archive page."""
        base = _folder(archive_base_url)
        items = [{"number": i.number, "subject": i.subject, "preheader": i.preheader,
                  "date": long_date(sent_time(i)), "url": f"{base}{i.number}"} for i in issues]
        return self._render("archive/list.html", masthead=masthead, issues=items,
                            **_site_links(masthead, base))


def _site_links(masthead: Masthead, archive_base_url: str) -> dict[str, str]:
    # Generic pages stand in for the per-recipient links: an archive page is public, so
    # "Manage preferences" is the form that mails a subscriber their own link.
    return {"subscribe_url": f"{masthead.base_url}subscribe",
            "preferences_url": f"{masthead.base_url}manage",
            "list_url": archive_base_url, "feed_url": f"{archive_base_url}feed.xml"}


def _folder(url: str) -> str:
    _require_absolute("archive_base_url", url)
    return url if url.endswith("/") else url + "/"


def _summary(article: Article) -> str:
    return one_line(article.summary) or first_paragraph(article.content_html)


def _article_view(article: Article, base: str, summary: str) -> ArticleView:
    title = _inert(one_line(article.title))
    link = _absolute(article.link, base)
    image = _absolute(article.image, base)
    credit = _inert(one_line(article.image_credit))
    return ArticleView(
        title=title or link or "Untitled",
        link=link,
        byline=_inert(byline(tuple(one_line(a) for a in article.authors))),
        summary=_inert(summary),
        image=image,
        # Never empty: screen readers would read out the file name instead.
        image_alt=(title or credit or "Illustration") if image else "",
        image_credit=credit if image else "",
    )


def summary_at(article: Article, limit: int | None) -> tuple[str, bool]:
    """The article's summary cut to `limit` (None: whole; 0: none), and whether it was cut."""
    summary = _summary(article)
    if limit is not None and len(summary) > limit:
        return (shorten(summary, limit) if limit else ""), True
    return summary, False


def issue_view(issue: Issue, masthead: Masthead, *, summary_limit: int | None,
               keep: int | None = None) -> IssueView:
    """The issue's first `keep` articles (all by default) with summaries cut to the limit."""
    sections: list[SectionView] = []
    left = len(issue.articles) if keep is None else max(keep, 0)
    shortened = False
    for section in issue.sections:
        chosen, left = section.articles[:left], max(left - len(section.articles), 0)
        views = []
        for article in chosen:
            summary, cut = summary_at(article, summary_limit)
            shortened = shortened or cut
            views.append(_article_view(article, masthead.base_url, summary))
        if views:
            sections.append(SectionView(_inert(one_line(section.name)), tuple(views)))
    shown = sum(len(s.articles) for s in sections)
    note = _inert(intro_html(issue.intro, masthead.base_url))
    return IssueView(number=issue.number, subject=_inert(one_line(issue.subject)),
                     preheader=_inert(one_line(issue.preheader)), date=long_date(issue.created),
                     sections=tuple(sections), omitted=len(issue.articles) - shown,
                     shortened=shortened, intro_html=note, intro_text=intro_text(note))


# -- personalisation (runs once per recipient: one regex pass, no parsing) ------------------

_PLACEHOLDER_RE = re.compile(r"%%(UNSUBSCRIBE_URL|PREFERENCES_URL|NAME)%%")


def _values(unsubscribe_url: str, preferences_url: str, name: str) -> dict[str, str]:
    # A name must not add lines to the text part or the greeting; no name reads "Hello there".
    return {"UNSUBSCRIBE_URL": unsubscribe_url, "PREFERENCES_URL": preferences_url,
            "NAME": one_line(name) or "there"}


def personalize(html_doc: str, *, unsubscribe_url: str, preferences_url: str, name: str) -> str:
    """Fill the placeholders of an inlined issue, HTML-escaped (they land in attributes too)."""
    values = {k: html.escape(v, quote=True)
              for k, v in _values(unsubscribe_url, preferences_url, name).items()}
    # One pass: a value that itself contains "%%NAME%%" is never substituted again.
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], html_doc)


def personalize_text(text: str, *, unsubscribe_url: str, preferences_url: str, name: str) -> str:
    """Fill the placeholders of the plain-text part, unescaped."""
    values = _values(unsubscribe_url, preferences_url, name)
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], text)


# -- the archive feed -----------------------------------------------------------------------

def sent_time(issue: Issue) -> datetime:
    """When the issue went out: sending records it in send_at; older rows fall back to the build."""
    when = issue.send_at if issue.status in ("sending", "sent") and issue.send_at else None
    return (when or issue.created).replace(microsecond=0)


def archive_updated(issues: Sequence[Issue]) -> datetime:
    """The archive feed's last change: the newest issue's send time."""
    return max((sent_time(i) for i in issues), default=EPOCH)


def archive_feed(issues: Sequence[Issue], masthead: Masthead, archive_base_url: str) -> bytes:
    """Atom feed of the issues given, each entry linking to its archive page; deterministic.

    Entries are by the publication and dated when the issue was sent, not when it was built.
    """
    base = _folder(archive_base_url)
    self_url = f"{base}feed.xml"
    fg = FeedGenerator()
    fg.id(self_url)
    fg.title(f"{masthead.name} — issues")
    fg.author({"name": masthead.name})
    fg.language(masthead.language)
    fg.generator("newsletter", version=__version__)
    # Never "now": the feed only changes when an issue does.
    fg.updated(archive_updated(issues))
    fg.link(href=self_url, rel="self", type="application/atom+xml")
    fg.link(href=base, rel="alternate", type="text/html")
    for issue in sorted(issues, key=lambda i: i.number, reverse=True):
        url = f"{base}{issue.number}"
        fe = fg.add_entry(order="append")
        fe.id(url)
        fe.title(one_line(issue.subject) or f"Issue {issue.number}")
        fe.link(href=url, rel="alternate", type="text/html")
        fe.author({"name": masthead.name, "uri": masthead.base_url})
        sent = sent_time(issue)
        fe.published(sent)
        fe.updated(sent)
        if issue.preheader:
            fe.summary(one_line(issue.preheader))
        titles = "".join(f"<li>{html.escape(one_line(a.title))}</li>" for a in issue.articles)
        if titles:
            fe.content(f"<ul>{titles}</ul>", type="html")
    return bytes(fg.atom_str(pretty=True))
