"""An issue's email cut into blocks inlined once; a reader's choice of sections joins them."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace

from markupsafe import Markup

from newsletter.compose.render import (
    SIZE_LIMIT,
    SUMMARY_LIMITS,
    Masthead,
    Renderer,
    _inline,
    issue_view,
    summary_at,
    value_room,
)
from newsletter.compose.text import IssueView, SectionView, text_article, text_notice, text_parts
from newsletter.deliver.mail import Piece, encode_piece, join_pieces
from newsletter.errors import NewsletterError
from newsletter.models import Issue

__all__ = ["Choice", "IssueBlocks", "Uncuttable"]

_MARKS = ("section", "article", "notice", "end")
# Selectors whose match depends on an element's neighbours or position: a block inlined in
# the whole issue could then differ from the same block inlined in a reader's choice.
_POSITIONAL_RE = re.compile(r":(?:first|last|nth|only)-|:has\(|[+~]")
_STYLE_RE = re.compile(r"<style[^>]*>(.*?)</style\s*>", re.S | re.I)
_COMMENT_RE = re.compile(r"/\*.*?\*/", re.S)
_PRELUDE_RE = re.compile(r"([^{};]*)\{")


class Uncuttable(Exception):
    """The templates cannot be cut into blocks that join to what a whole render gives."""


@dataclass(frozen=True, slots=True)
class Block:
    """Whole lines of both parts (each ends in a line end unless it ends its part), encoded
    once as they are sent, and the HTML's size: UTF-8 bytes and as sent, the values at their
    longest. Encodings and sizes add up over a join: QP encodes line by line."""

    html: str
    text: str
    html_piece: Piece
    text_piece: Piece
    size: int
    sent: int


def _joined(blocks: Sequence[Block]) -> Block:
    return Block("".join(b.html for b in blocks), "".join(b.text for b in blocks),
                 join_pieces([b.html_piece for b in blocks]),
                 join_pieces([b.text_piece for b in blocks]),
                 sum(b.size for b in blocks), sum(b.sent for b in blocks))


@dataclass(frozen=True, slots=True)
class Choice:
    """A choice of sections as the email gives it: the blocks of both parts, in order."""

    blocks: tuple[Block, ...]
    omitted: int = 0  # articles left out to stay under SIZE_LIMIT, as render_issue says
    summary_limit: int | None = None

    @property
    def html_doc(self) -> str:
        return "".join(b.html for b in self.blocks)

    @property
    def text_doc(self) -> str:
        return "".join(b.text for b in self.blocks)


@dataclass(frozen=True, slots=True)
class _Cut:
    """The whole issue at one summary length, cut: per section index, its heading and
    articles alone and all joined; which summaries were cut; the shortened-notice if any;
    whether the whole issue fits (then so does any choice: sizes only add up)."""

    head: Block
    headings: dict[int, Block]
    articles: dict[int, tuple[Block, ...]]
    sections: dict[int, Block]
    shortened: dict[int, tuple[bool, ...]]
    notice: Block | None
    foot: Block
    fits: bool


def positional_selector(document: str) -> str:
    """The first selector of the document's <style> sheets that depends on position, or ""."""
    for sheet in _STYLE_RE.findall(document):
        for prelude in _PRELUDE_RE.findall(_COMMENT_RE.sub("", sheet)):
            if not prelude.lstrip().startswith("@") and _POSITIONAL_RE.search(prelude):
                return " ".join(prelude.split())
    return ""


def _fits(blocks: Sequence[Block]) -> bool:
    """render._fits of the join, from the blocks' sizes."""
    return (sum(b.size for b in blocks) < SIZE_LIMIT
            and sum(b.sent for b in blocks) < SIZE_LIMIT)


class IssueBlocks:
    """Renders and inlines the whole issue once per summary length that some choice needs
    (premailer at most len(SUMMARY_LIMITS) times, plus twice if articles must be left out),
    then gives any choice of sections what render_issue would give for it, by a join.

    Raises Uncuttable (first use, or later) when the templates do not mark their blocks,
    when a stylesheet selects by position, or when a probe differs from a whole render:
    the caller then renders each choice whole, as before."""

    def __init__(self, renderer: Renderer, issue: Issue, masthead: Masthead,
                 archive_url: str) -> None:
        self.renderer, self.issue, self.masthead = renderer, issue, masthead
        self.archive_url = archive_url
        token = secrets.token_hex(6)
        # A comment no article text can hold: text is escaped, and notes are sanitised.
        self._marks = {name: Markup("<!--cut:%s:%s-->") % (token, name) for name in _MARKS}
        self._mark_re = re.compile(f"<!--cut:{token}:({'|'.join(_MARKS)})-->")
        self._cuts: dict[int | None, _Cut] = {}
        self._lasts: dict[tuple[int, int], Block] = {}
        self._notices: dict[int, Block] = {}
        self._truncation_checked = False
        self._room = value_room(masthead.base_url)
        # Indexes of the sections with articles: issue_view leaves out empty ones.
        self.present = tuple(i for i, s in enumerate(issue.sections) if s.articles)

    # -- checks ------------------------------------------------------------------------------

    def verify(self) -> None:
        """Compare one choice (the issue's second section alone) with a whole render of it;
        Uncuttable if they differ in a byte."""
        if len(self.present) < 2:
            return  # one section: the only choice is the whole issue
        probe = self.present[1:2]  # alone, the second section is both first and last
        self._compare(probe, self.choose(probe))

    def _compare(self, sections: Sequence[int], got: Choice) -> None:
        chosen = replace(self.issue, sections=tuple(self.issue.sections[i] for i in sections))
        whole = self.renderer.render_issue(chosen, self.masthead, self.archive_url)
        if (got.html_doc, got.text_doc) != (whole.html, whole.text):
            raise Uncuttable(f"issue {self.issue.number}: sections joined from blocks differ "
                             f"from a whole render (a template row that depends on the rows "
                             f"around it?)")

    # -- rendering and cutting ---------------------------------------------------------------

    def _render(self, view: IssueView) -> list[str]:
        """The view rendered and inlined, cut where the marks were: [head, then one text per
        mark expected for the view]."""
        document = self.renderer.email_document(view, self.masthead, self.archive_url,
                                                cut=self._marks)
        if selector := positional_selector(document):
            raise Uncuttable(f"the email stylesheet selects by position ({selector})")
        parts = self._mark_re.split(_inline(document))
        expected = [name for section in view.sections
                    for name in ("section", *["article"] * len(section.articles))]
        expected += ["notice"] * bool(view.omitted or view.shortened) + ["end"]
        if parts[1::2] != expected:
            raise Uncuttable("email/_content.html does not mark its blocks ({{ cut.… }})")
        texts = [parts[0], *parts[2::2]]
        if not all(t.endswith("\n") for t in texts[:-1]):
            raise Uncuttable("a block mark is not at the start of a line")
        return texts

    def _block(self, html: str, text: str) -> Block:
        piece = encode_piece(html, "html")
        sent = sum(len(c) if isinstance(c, bytes) else self._room[c.partition(":")[2]]
                   for c in piece.chunks)  # render._encoded_size, from the one encoding
        return Block(html, text, piece, encode_piece(text, "text"), len(piece.raw), sent)

    def _text_args(self) -> dict[str, str]:
        m = self.masthead
        return {"publication": m.name, "postal_address": m.postal_address,
                "reason": m.reason, "archive_url": self.archive_url}

    def _cut(self, limit: int | None) -> _Cut:
        if limit in self._cuts:
            return self._cuts[limit]
        view = issue_view(self.issue, self.masthead, summary_limit=limit)
        html = iter(self._render(view))
        text = text_parts(view, **self._text_args())
        head = self._block(next(html), text.head)
        headings: dict[int, Block] = {}
        articles: dict[int, tuple[Block, ...]] = {}
        sections: dict[int, Block] = {}
        for index, (heading, pieces) in zip(self.present, text.sections, strict=True):
            headings[index] = self._block(next(html), heading)
            articles[index] = tuple(self._block(next(html), piece) for piece in pieces)
            sections[index] = _joined((headings[index], *articles[index]))
        notice = self._block(next(html), text.notice) if text.notice else None
        foot = self._block(next(html), text.foot)
        shortened = {i: tuple(summary_at(a, limit)[1] for a in self.issue.sections[i].articles)
                     for i in self.present}
        whole = [head, *sections.values(), *([notice] if notice else []), foot]
        cut = self._cuts[limit] = _Cut(head, headings, articles, sections, shortened, notice,
                                       foot, _fits(whole))
        return cut

    def _last(self, index: int, position: int) -> Block:
        """An article, summary-less, as the last one shown of its section."""
        if not self._lasts:
            # Every article alone in a section of its own: each one is its section's last.
            view = issue_view(self.issue, self.masthead, summary_limit=0)
            alone = tuple(SectionView(s.name, (a,)) for s in view.sections for a in s.articles)
            html = self._render(replace(view, sections=alone, omitted=0, shortened=False))
            rows = iter(html[2:-1:2])  # each section's heading, then its one article
            for i in self.present:
                for j, article in enumerate(view.sections[self.present.index(i)].articles):
                    self._lasts[i, j] = self._block(next(rows), text_article(article))
        return self._lasts[index, position]

    def _notice(self, omitted: int) -> Block:
        """The "N more articles in the archive" row."""
        if omitted not in self._notices:
            view = replace(issue_view(self.issue, self.masthead, summary_limit=0),
                           sections=(), omitted=omitted, shortened=False)
            html = self._render(view)
            self._notices[omitted] = self._block(html[1], text_notice(view, self.archive_url))
        return self._notices[omitted]

    # -- choosing ------------------------------------------------------------------------------

    def choose(self, sections: Sequence[int]) -> Choice:
        """What render_issue gives for the issue with only these sections (indexes into
        issue.sections, in issue order): the first summary length at which it fits, else the
        longest run of its first articles that fits, summary-less, as render_issue does."""
        present = [i for i in sections if self.issue.sections[i].articles]
        for limit in SUMMARY_LIMITS:
            cut = self._cut(limit)
            blocks = [cut.head, *(cut.sections[i] for i in present)]
            if any(any(cut.shortened[i]) for i in present):
                assert cut.notice is not None  # the whole issue is cut where this choice is
                blocks.append(cut.notice)
            blocks.append(cut.foot)
            if cut.fits or _fits(blocks):  # within the whole, or within the budget alone
                return Choice(tuple(blocks), 0, limit)
        return self._truncated(present)

    def _truncated(self, present: Sequence[int]) -> Choice:
        cut = self._cut(0)
        total = sum(len(cut.articles[i]) for i in present)
        best: tuple[list[Block], int] | None = None
        low, high = 0, total - 1
        while low <= high:  # the same search as render_issue, on sizes instead of renders
            keep = (low + high) // 2
            blocks = self._kept(cut, present, keep)
            blocks.append(self._notice(total - keep))
            blocks.append(cut.foot)
            if _fits(blocks):
                best, low = (blocks, keep), keep + 1
            else:
                high = keep - 1
        if best is None:
            raise NewsletterError(f"issue {self.issue.number}: the email template alone is "
                                  f"over {SIZE_LIMIT} bytes as sent")
        blocks, keep = best
        got = Choice(tuple(blocks), total - keep, 0)
        if not self._truncation_checked:  # rows cut short come from other renders: probe once
            self._compare(present, got)
            self._truncation_checked = True
        return got

    def _kept(self, cut: _Cut, present: Sequence[int], keep: int) -> list[Block]:
        blocks = [cut.head]
        left = keep
        for i in present:
            shown = min(left, len(cut.articles[i]))
            left -= shown
            if shown == len(cut.articles[i]):
                blocks.append(cut.sections[i])
            elif shown:
                blocks += [cut.headings[i], *cut.articles[i][:shown - 1],
                           self._last(i, shown - 1)]
        return blocks
