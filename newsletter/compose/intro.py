"""The editor's note of an issue: Markdown to email-safe HTML, and that HTML to plain text."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml as escape_html
from markdown_it.token import Token

from newsletter.compose.text import WIDTH

# What an editor's note needs and every mail client shows alike. Raw HTML in the Markdown is
# text (html=False), so "<b>" arrives as "&lt;b&gt;"; nh3 then keeps only these tags and
# attributes, and links only to http(s) and mailto: the allow-list holds even if the Markdown
# renderer someday lets something through.
TAGS = {"p", "br", "strong", "em", "a", "ul", "ol", "li", "blockquote", "code", "pre", "hr"}
_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
SCHEMES = ("http", "https", "mailto")
_STRAY_PERCENT_RE = re.compile("%(?![0-9A-Fa-f]{2})")
_SPACE_RE = re.compile(r"[ \t\r\n\f\v]+")


def _image_as_link(self: Any, tokens: Sequence[Token], idx: int, options: Any,
                   env: Any) -> str:
    # No images in a note (a remote image in the first screen is a tracking pixel to some
    # readers, and weighs on the size budget): ![alt](url) becomes a link named by its alt.
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env) or "image"
    src = str(token.attrGet("src") or "")
    return f'<a href="{escape_html(src)}">{escape_html(alt)}</a>' if src else escape_html(alt)


def _strong_open(self: Any, tokens: Sequence[Token], idx: int, options: Any,
                 env: Any) -> str:
    return "<p><strong>"  # a heading reads as a bold line: the email has its own headings


def _strong_close(self: Any, tokens: Sequence[Token], idx: int, options: Any,
                  env: Any) -> str:
    return "</strong></p>\n"


_md = MarkdownIt("commonmark", {"html": False, "typographer": False})
_md.add_render_rule("image", _image_as_link)
_md.add_render_rule("heading_open", _strong_open)
_md.add_render_rule("heading_close", _strong_close)


def intro_html(markdown: str, base_url: str) -> str:
    """The note as a sanitised HTML fragment; relative links made absolute on `base_url`."""
    if not markdown.strip():
        return ""

    def keep(tag: str, attr: str, value: str) -> str | None:
        if attr != "href":
            return value
        value = value.strip()
        if not value or value.startswith("#"):
            return None  # no page to jump within in a mail
        absolute = _STRAY_PERCENT_RE.sub("%25", urljoin(base_url, value))
        parts = urlsplit(absolute)
        if parts.scheme == "mailto":
            return absolute
        return absolute if parts.scheme in SCHEMES and parts.netloc else None

    rendered = _md.render(markdown)
    cleaned: str = nh3.clean(rendered, tags=TAGS, attributes=_ATTRIBUTES,
                             attribute_filter=keep, url_schemes=set(SCHEMES),
                             clean_content_tags={"script", "style"},
                             link_rel="noopener noreferrer")
    return cleaned.strip()


def intro_text(fragment: str, width: int = WIDTH) -> str:
    """The plain-text form of intro_html's output: paragraphs wrapped, links as
    "text (url)", list items as "- " or "1. ", quotes as "> "."""
    if not fragment:
        return ""
    parser = _TextParser()
    parser.feed(fragment)
    parser.close()
    parser.flush()
    out: list[str] = []
    for i, (group, prefix, indent, text) in enumerate(parser.blocks):
        if i and not (group and group == parser.blocks[i - 1][0]):
            out.append("")  # a blank line between blocks, not between items of one list
        out += _wrap_block(text, prefix, indent, width)
    return "\n".join(line.rstrip() for line in out).strip("\n")


def _wrap_block(text: str, prefix: str, indent: str, width: int) -> list[str]:
    if text.startswith(_PRE):  # preformatted: kept as written, indented
        return [indent + "    " + line for line in text[len(_PRE):].rstrip("\n").split("\n")]
    lines: list[str] = []
    for n, part in enumerate(text.split(_BR)):
        first = prefix if n == 0 else indent
        lines += textwrap.wrap(part, width, initial_indent=first, subsequent_indent=indent,
                               break_long_words=False, break_on_hyphens=False) or [first]
    return lines


_PRE, _BR = "\0pre\0", "\0br\0"


class _TextParser(HTMLParser):
    """Blocks of (outermost list's number or 0, first-line prefix, other-lines indent,
    text)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[int, str, str, str]] = []
        self.serial = 0  # counts the outermost lists
        self.buffer: list[str] = []
        self.lists: list[list[int]] = []  # [next number] for <ol>, [] for <ul>
        self.items: list[int] = []  # the marker width of each open <li>: the indent inside
        self.quote = 0
        self.pre = False
        self.marker = ""  # the marker waiting for the item's first block
        self.links: list[tuple[str, int]] = []  # (href, where its text starts in buffer)

    def flush(self) -> None:
        raw = "".join(self.buffer)
        self.buffer = []
        if self.pre:
            text = _PRE + raw
        else:
            text = _BR.join(_SPACE_RE.sub(" ", part).strip() for part in raw.split(_BR))
            if not text.replace(_BR, "").strip():
                return
        quote = "> " * self.quote
        outer = " " * sum(self.items[:-1] if self.marker else self.items)
        indent = quote + " " * sum(self.items)
        group = self.serial if self.lists else 0
        self.blocks.append((group, quote + outer + self.marker, indent, text))
        self.marker = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("p", "pre", "blockquote", "ul", "ol", "li", "hr"):
            self.flush()
        if tag == "br":
            self.buffer.append(_BR)
        elif tag == "a":
            self.links.append((dict(attrs).get("href") or "", len(self.buffer)))
        elif tag in ("ul", "ol"):
            self.serial += not self.lists
            start = dict(attrs).get("start") or "1"
            self.lists.append([int(start) if start.isdigit() else 1] if tag == "ol" else [])
        elif tag == "li" and self.lists:
            counter = self.lists[-1]
            self.marker = f"{counter[0]}. " if counter else "- "
            self.items.append(len(self.marker))
            if counter:
                counter[0] += 1
        elif tag == "blockquote":
            self.quote += 1
        elif tag == "pre":
            self.pre = True
        elif tag == "hr":
            self.blocks.append((0, "", "", "-" * 20))

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self.links:
            href, start = self.links.pop()
            shown = _SPACE_RE.sub(" ", "".join(self.buffer[start:])).strip()
            target = href.removeprefix("mailto:")
            if href and shown not in (href, target):
                self.buffer.append(f" ({target})")
        elif tag in ("p", "li", "blockquote", "pre", "ul", "ol"):
            self.flush()
            if tag == "blockquote":
                self.quote = max(self.quote - 1, 0)
            elif tag == "pre":
                self.pre = False
            elif tag == "li" and self.items:
                self.items.pop()
            elif tag in ("ul", "ol") and self.lists:
                self.lists.pop()

    def handle_data(self, data: str) -> None:
        self.buffer.append(data)
