"""The magazine's "digest export" Markdown: a metadata header, a heading title, then the body."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time

from newsletter.collect.sanitize import shorten, slug_for
from newsletter.collect.sources.markdown import (
    check_year,
    first_paragraph_text,
    has_front_matter,
    markdown_plain_text,
    normalise_newlines,
    render_markdown_tokens,
)
from newsletter.errors import SourceError
from newsletter.models import ArticleDraft

SUMMARY_LIMIT = 300

# Between the authors and the title only a short photo credit is expected. Without a cap,
# a missing title heading would swallow body paragraphs as "credit" until some subheading
# turned up and was mistaken for the title.
_MAX_CREDIT_LINES = 3
_MAX_CREDIT_CHARS = 300

_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
# The export decorates the publication name: `# ***NAME***` or `# __NAME__`.
_DECORATED = re.compile(r"^([*_]{1,3})\S.*?\1$")
_BOLD_PART = re.compile(r"\*\*([^*]+?)\*\*|__([^_]+?)__")
_AUTHOR_GLUE = re.compile(r"(?:\s|,|&|\band\b)*", re.IGNORECASE)
_BY = re.compile(r"^by\s+", re.IGNORECASE)
_CREDIT_WORDS = re.compile(
    r"^(photo|photograph|photography|image|illustration|photo illustration|picture)\b",
    re.IGNORECASE,
)

_MONTH_NAMES = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
# Full names and three-letter abbreviations, plus the common "Sept".
_MONTHS = {
    name: number for number, full in enumerate(_MONTH_NAMES, start=1) for name in (full, full[:3])
} | {"sept": 9}
_WEEKDAY = r"(?:(?:mon|tues|wednes|thurs|fri|satur|sun)day,?\s+)?"
_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_DATE_FORMS = (
    # September 5, 2025 / Sept. 5 2025 / Friday, September 5th, 2025
    re.compile(_WEEKDAY + r"(?P<month>[a-z]+)\.?\s+" + _DAY + r",?\s+(?P<year>\d{4})", re.I),
    # 5 September 2025
    re.compile(_WEEKDAY + _DAY + r"\s+(?P<month>[a-z]+)\.?,?\s+(?P<year>\d{4})", re.I),
    # 2025-09-05
    re.compile(r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})"),
)

# A paragraph ending in one of these (possibly followed by closers) finished its sentence.
_SENTENCE_END = frozenset(".!?:;\u2026")
_CLOSERS = frozenset("\"'\u201d\u2019\u00bb\u203a)]*_")


def looks_like_digest(text: str) -> bool:
    """True for text without front matter that opens like a digest export."""
    if has_front_matter(text):
        return False
    head: list[str] = []
    for line in normalise_newlines(text).split("\n"):
        if line.strip():
            head.append(line.strip())
            if len(head) == 3:
                break
    if not head:
        return False
    first = _heading(head[0])
    if first is None or first[0] != 1:
        return False
    if _DECORATED.match(first[1]):
        return True
    second = _heading(head[1]) if len(head) > 1 else None
    return second is not None and second[0] == 2 and len(head) == 3 and _date_shape(head[2])


def parse_digest(text: str, origin: str) -> ArticleDraft:
    """Read a digest export, repairing its split paragraphs and `(#)` placeholder links."""
    lines = normalise_newlines(text).split("\n")
    header = [(index, line.strip()) for index, line in enumerate(lines) if line.strip()]
    pos = 0

    headings: list[tuple[int, str]] = []
    while pos < len(header) and len(headings) < 2 and (found := _heading(header[pos][1])):
        headings.append(found)
        pos += 1
    if not headings:
        raise SourceError(origin, "does not start with the '# PUBLICATION' heading of a digest")
    section = ""
    if len(headings) == 2 or headings[0][0] >= 2:
        section = markdown_plain_text(headings[-1][1])

    expected = "expected a date line like 'September 5, 2025' after the section heading"
    if pos >= len(header):
        raise SourceError(origin, f"no date line: {expected}")
    date_line = header[pos][1]
    try:
        day = _parse_date_line(date_line)
    except ValueError as exc:
        raise SourceError(origin, f"bad date line {date_line!r}: {exc}") from None
    if day is None:
        raise SourceError(origin, f"no date line: {expected}, found {_clip(date_line)!r}")
    pos += 1

    authors: list[str] = []
    credit: list[str] = []
    title = ""
    title_index = -1
    for index, line in header[pos:]:
        level_text = _heading(line)
        if level_text is not None:
            title = _title_text(level_text[1])
            if not title:
                raise SourceError(origin, f"the title heading {line!r} is empty")
            title_index = index
            break
        names = _author_names(line)
        if names:
            authors.extend(name for name in names if name not in authors)
            continue
        credit.append(markdown_plain_text(line))
        if len(credit) > _MAX_CREDIT_LINES or len(line) > _MAX_CREDIT_CHARS:
            break
    if title_index < 0:
        raise SourceError(
            origin, "no title heading (such as '### **Title**') after the date and author lines"
        )

    body = join_split_paragraphs("\n".join(lines[title_index + 1 :]))
    body_html, tokens = render_markdown_tokens(body, drop_placeholder_links=True)
    return ArticleDraft(
        title=title,
        published=datetime.combine(day, time(0, 0), tzinfo=UTC),
        body_html=body_html,
        origin=origin,
        authors=tuple(authors),
        section=section,
        summary=shorten(first_paragraph_text(tokens), SUMMARY_LIMIT),
        image_credit=" ".join(part for part in credit if part),
        slug=slug_for(title),
    )


def _heading(line: str) -> tuple[int, str] | None:
    """(level, inline text) for an ATX heading line, else None."""
    match = _HEADING.match(line)
    if match is None:
        return None
    return len(match.group(1)), (match.group(2) or "").strip()


def _title_text(source: str) -> str:
    """Plain title text; bold is decoration, and so are markers left over when unbalanced."""
    title = markdown_plain_text(source)
    # `### **Title*` renders as "*Title": strip markers the source itself starts or ends
    # with, but not escaped ones (`\*Live\*` is meant literally).
    if source.startswith(("*", "_")):
        title = title.lstrip("*_ ")
    if re.search(r"(?<!\\)[*_]$", source):
        title = title.rstrip("*_ ")
    return title


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _author_names(line: str) -> list[str]:
    """Names from a line made only of bold parts (`**A**`, `**A** and **B**`), else []."""
    parts = _BOLD_PART.findall(line)
    if not parts or not _AUTHOR_GLUE.fullmatch(_BOLD_PART.sub("", line)):
        return []
    names = [_BY.sub("", markdown_plain_text(a or b)) for a, b in parts]
    # A bold "Photo by …" line is the credit, not a byline.
    if any(_CREDIT_WORDS.match(name) for name in names):
        return []
    return [name for name in names if name]


def _date_match(line: str) -> re.Match[str] | None:
    plain = markdown_plain_text(line)  # tolerate `*September 5, 2025*`
    for form in _DATE_FORMS:
        match = form.fullmatch(plain)
        if match and (match["month"].isdigit() or match["month"].lower() in _MONTHS):
            return match
    return None


def _date_shape(line: str) -> bool:
    return _date_match(line) is not None


def _parse_date_line(line: str) -> date | None:
    """The date on a date-shaped line; None if the line is not one; ValueError if impossible."""
    match = _date_match(line)
    if match is None:
        return None
    month_text = match["month"]
    month = int(month_text) if month_text.isdigit() else _MONTHS[month_text.lower()]
    year = int(match["year"])
    check_year(year)
    try:
        return date(year, month, int(match["day"]))
    except ValueError:
        raise ValueError("no such day in the calendar") from None


def join_split_paragraphs(body: str) -> str:
    """Re-join paragraphs the export split mid-sentence (no closing punctuation, then lowercase)."""
    # Built from pieces, not by growing the joined line, so a file of thousands of
    # fragments stays linear rather than quadratic.
    pieces: list[str] = []
    previous: list[str] = []
    previous_plain = False
    for block in _blocks(body):
        plain = _is_plain_paragraph(block)
        if (
            previous_plain
            and plain
            and not _ends_sentence(previous[-1])
            and _starts_lowercase(block[0])
        ):
            pieces[-1] = pieces[-1].rstrip()  # always the previous block's last line
            pieces += [" ", block[0].lstrip()]
        else:
            pieces += ["\n\n", block[0]] if previous else [block[0]]
        for line in block[1:]:
            pieces += ["\n", line]
        previous, previous_plain = block, plain
    return "".join(pieces) + "\n"


def _blocks(body: str) -> list[list[str]]:
    """Split on blank lines, keeping fenced code (which may contain blank lines) whole."""
    blocks: list[list[str]] = []
    current: list[str] = []
    fence = ""
    for line in body.split("\n"):
        stripped = line.strip()
        if fence:
            current.append(line)
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = ""
            continue
        opener = re.match(r"^ {0,3}(`{3,}|~{3,})", line)
        if opener:
            fence = opener.group(1)
        if stripped or fence:
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


# Block starts that are not a paragraph: indented code, heading, quote, table, HTML, fence,
# list item, thematic break, or a link reference definition (`[r]: url`).
_NOT_PARAGRAPH = re.compile(
    r"^(?: {4}|\t| {0,3}(?:#|>|\||<|```|~~~|[-*+](?:\s|$)|\d{1,9}[.)](?:\s|$)"
    r"|(?:[-*_]\s*){3,}$|\[[^\]]+\]:))"
)
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(?:=+|-+)[ \t]*$")
_TABLE_DELIMITER = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")


def _is_plain_paragraph(block: list[str]) -> bool:
    if _NOT_PARAGRAPH.match(block[0]) or _SETEXT_UNDERLINE.match(block[-1]):
        return False
    # A table may start without a pipe; its second line (the delimiter row) gives it away.
    return not (len(block) > 1 and "|" in block[1] and _TABLE_DELIMITER.match(block[1]))


def _ends_sentence(line: str) -> bool:
    text = line.rstrip()
    while text and text[-1] in _CLOSERS:
        text = text[:-1]
    return bool(text) and text[-1] in _SENTENCE_END


def _starts_lowercase(line: str) -> bool:
    text = line.lstrip().lstrip("*_[")
    return text[:1].islower()
