"""HTML from feeds and Markdown made safe (nh3) with absolute links, and plain-text helpers."""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from urllib.parse import urljoin, urlsplit

import nh3

_TAGS = set(nh3.ALLOWED_TAGS) | {"figure", "figcaption", "picture", "source", "del", "ins",
                                 "sub", "sup", "hr", "table", "thead", "tbody", "tr", "th", "td"}
_TAGS -= {"script", "style", "iframe", "object", "embed", "form", "input", "button"}
_ATTRS = {k: set(v) for k, v in nh3.ALLOWED_ATTRIBUTES.items()}
_ATTRS.setdefault("img", set()).update({"src", "alt", "title", "width", "height"})
_ATTRS.setdefault("a", set()).update({"href", "title"})
_ATTRS.setdefault("source", set()).update({"srcset", "type", "media"})
_URL_ATTRS = {"href", "src"}
_SCHEMES = {"http", "https", "mailto"}
SLUG_MAX = 80


def clean_html(fragment: str, base_url: str) -> str:
    """Strip scripts, handlers and unsafe URLs; make links absolute; drop `#` placeholder links."""

    def keep(tag: str, attr: str, value: str) -> str | None:
        if attr not in _URL_ATTRS:
            return value
        value = value.strip()
        if not value or value.startswith("#"):
            return None  # a bare fragment is a placeholder in exports, never a useful link
        absolute = urljoin(base_url, value)
        return absolute if urlsplit(absolute).scheme in _SCHEMES else None

    return nh3.clean(fragment, tags=_TAGS, attributes=_ATTRS, attribute_filter=keep,
                     url_schemes=_SCHEMES, clean_content_tags={"script", "style"},
                     link_rel="noopener noreferrer")


# What XML 1.0 cannot carry: C0 controls but tab, LF and CR; lone surrogates; U+FFFE/U+FFFF.
# Hardening: one such character in one article (a YAML "\x01" escape, a stray byte in a
# body, a feed's "&#1;" read by feedparser's loose parser) made lxml refuse to write any
# feed at all, so they are removed before an article is stored.
_NOT_XML_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """`text` without the characters XML cannot carry (vertical tab and form feed: a space)."""
    return _NOT_XML_RE.sub(lambda m: " " if m[0] in "\x0b\x0c" else "", text)


_TAG_RE = re.compile(r"<[^>]*>")
_SPACE_RE = re.compile(r"\s+")
_BLOCK_END_RE = re.compile(r"</(p|div|li|h[1-6]|blockquote|tr)>|<br\s*/?>", re.I)


def plain_text(fragment: str) -> str:
    """Visible text of an HTML fragment on one line (for summaries and titles)."""
    text = nh3.clean(fragment, tags=set(), clean_content_tags={"script", "style"})
    return one_line(html.unescape(text))


def one_line(text: str) -> str:
    """Collapse every run of whitespace, CR and LF included, to one space."""
    return _SPACE_RE.sub(" ", text).strip()


def first_paragraph(fragment: str) -> str:
    match = re.search(r"<p[^>]*>(.*?)</p>", fragment, re.S | re.I)
    return plain_text(match.group(1) if match else fragment)


def shorten(text: str, limit: int = 300) -> str:
    """Trim to at most `limit` characters at a word boundary, ending with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:  # a very long "word" (a URL) is cut mid-word instead
        cut = cut[:space]
    return cut.rstrip(" ,;:-\u2013\u2014") + "\u2026"


def slugify(text: str) -> str:
    """Lowercase ASCII words joined by hyphens; accents folded via NFKD, the rest dropped."""
    # Apostrophes are dropped rather than turned into hyphens: "Putin's" -> "putins".
    text = text.replace("'", "").replace("\u2019", "")
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")
    if len(slug) > SLUG_MAX:
        slug = slug[:SLUG_MAX].rsplit("-", 1)[0]
    return slug


def slug_for(title: str) -> str:
    """slugify(title), or a stable hash-based slug when no ASCII survives (e.g. Chinese)."""
    return slugify(title) or "article-" + hashlib.sha256(title.encode("utf-8")).hexdigest()[:10]
