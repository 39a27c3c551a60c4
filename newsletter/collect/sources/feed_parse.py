"""Feed bytes into ArticleDrafts: feedparser with entities refused, entries read safely."""

from __future__ import annotations

import email.utils
import html
import io
import re
import xml.sax
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import feedparser

from newsletter.collect.netguard import declares_xml_entities
from newsletter.collect.sanitize import one_line, plain_text, shorten
from newsletter.models import ArticleDraft
from newsletter.words import plural

SUMMARY_CHARS = 300
# feedparser flags these as "bozo" although the document parsed fine as XML.
_SOFT_BOZO = (feedparser.NonXMLContentType, feedparser.CharacterEncodingOverride)


def parse_feed(
    body: bytes, headers: Mapping[str, str], feed_url: str, origin: str,
    section: str = "", max_entries: int = 1000, now: datetime | None = None,
) -> tuple[list[ArticleDraft], list[str], str | None]:
    """Parse feed bytes into drafts; returns (drafts, warnings, error or None)."""
    now = now or datetime.now(UTC)
    headers = {k.lower(): v for k, v in headers.items()}  # httpx's are already lower
    if not body.strip():
        return [], [], "not a feed: empty body"
    fp_headers = {"content-location": feed_url}
    for name in ("content-type", "content-language"):
        if name in headers:
            fp_headers[name] = headers[name]
    if declares_xml_entities(body, fp_headers):
        return [], [], "not a feed: it declares XML entities (<!ENTITY …>), refused"
    # BytesIO, not bytes: given bytes, feedparser first tries to open them as a file path.
    # XML attacks: its SAX parser has external entities off (no XXE), and entity
    # declarations are refused above, so neither expat nor its loose fallback expands any.
    parsed: Any = feedparser.parse(io.BytesIO(body), response_headers=fp_headers,
                                   sanitize_html=False)  # sanitising happens downstream
    entries = parsed.entries
    warnings: list[str] = []
    bozo = parsed.get("bozo_exception") if parsed.bozo else None
    if not parsed.get("version"):
        ctype = headers.get("content-type", "")
        looks_html = "html" in ctype.lower() or re.match(rb"\s*<(!doctype\s+html|html)", body,
                                                         re.IGNORECASE)
        why = "an HTML page" if looks_html else describe(bozo) if bozo else "no RSS/Atom root"
        return [], [], f"not a feed: {why}"
    if bozo is not None and not isinstance(bozo, _SOFT_BOZO):
        if not entries:
            return [], [], f"not a feed: {describe(bozo)}"
        warnings.append(f"malformed feed, kept {plural(len(entries), 'entry', 'entries')}: "
                        f"{describe(bozo)}")
    if len(entries) > max_entries:
        warnings.append(f"feed has {plural(len(entries), 'entry', 'entries')}; took the first "
                        f"{max_entries}")
        entries = entries[:max_entries]
    fallback = _http_date(headers.get("date")) or now
    drafts: list[ArticleDraft] = []
    for number, entry in enumerate(entries, 1):
        draft = entry_to_draft(entry, feed_url, origin, section, fallback)
        if draft is None:
            warnings.append(f"entry {number}: no title and no link; skipped")
        else:
            drafts.append(draft)
    return drafts, warnings, None


def entry_to_draft(
    entry: Any, base_url: str, origin: str, section: str, fallback_date: datetime
) -> ArticleDraft | None:
    """One feedparser entry as an ArticleDraft, or None when it has neither title nor link."""
    title = _text_of(entry, "title")
    url = _absolute(base_url, entry.get("link"))
    if not title and not url:
        return None
    # Undated entries get the response Date (or now) rather than being dropped; each poll
    # gives them a newer date, so their identity must come from guid or link, not the date.
    # dict.get: feedparser's own lookup aliases a missing `updated` to `published` (and
    # warns); only a date the feed really gave counts as an update.
    updated = _struct_dt(dict.get(entry, "updated_parsed"))
    published = _struct_dt(entry.get("published_parsed")) or updated or fallback_date
    tags = tuple(dict.fromkeys(
        t for t in (plain_text(tag.get("term") or tag.get("label") or "")
                    for tag in entry.get("tags") or ()) if t))
    authors = [plain_text(a.get("name") or "") for a in entry.get("authors") or ()]
    if not any(authors) and entry.get("author"):
        authors = [plain_text(entry.get("author"))]
    content = entry.get("content") or []
    if content:
        body_html = _as_html(content[0].get("value") or "", content[0].get("type"))
    else:
        body_html = _as_html(entry.get("summary") or "", (entry.get("summary_detail") or {})
                             .get("type"))
    return ArticleDraft(
        title=title,
        published=published,
        updated=updated,
        body_html=body_html,
        origin=origin,
        authors=tuple(dict.fromkeys(a for a in authors if a)),
        section=section or (tags[0] if tags else ""),
        summary=shorten(_text_of(entry, "summary"), SUMMARY_CHARS),
        image=_image(entry, base_url),
        url=url,
        guid=(entry.get("id") or "").strip(),
        tags=tags,
    )


def _image(entry: Any, base_url: str) -> str:
    candidates: list[str] = [t.get("url", "") for t in entry.get("media_thumbnail") or ()]
    candidates += [m.get("url", "") for m in entry.get("media_content") or ()
                   if m.get("medium") == "image" or str(m.get("type", "")).startswith("image/")]
    candidates += [e.get("href", "") for e in entry.get("enclosures") or ()
                   if str(e.get("type", "")).startswith("image/")]
    for candidate in candidates:
        if url := _absolute(base_url, candidate):
            return url
    return ""


def _absolute(base_url: str, link: str | None) -> str:
    """`link` made absolute; empty unless http(s), so javascript: or data: links never pass."""
    if not link or not link.strip():
        return ""
    url = urljoin(base_url, link.strip())
    return url if urlsplit(url).scheme in ("http", "https") else ""


def _text_of(entry: Any, key: str) -> str:
    """Plain text of a text construct: markup stripped unless the feed says it is plain."""
    value = entry.get(key) or ""
    kind = (entry.get(f"{key}_detail") or {}).get("type", "text/html")
    return one_line(value) if kind == "text/plain" else plain_text(value)


def _as_html(value: str, kind: str | None) -> str:
    return html.escape(value, quote=False) if kind == "text/plain" else value


def _struct_dt(value: Any) -> datetime | None:
    """feedparser's UTC struct_time as an aware datetime."""
    if not value:
        return None
    try:
        year, month, day, hour, minute, second = value[:6]
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except (TypeError, ValueError):
        return None


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def describe(exc: object) -> str:
    if isinstance(exc, xml.sax.SAXParseException):
        # Its str() starts with "<unknown>" (no system id): say where in the body instead.
        text = f"XML error at line {exc.getLineNumber()}, column {exc.getColumnNumber()}: " \
            f"{exc.getMessage()}"
    else:
        text = str(exc)
    text = " ".join(text.split())
    return text or type(exc).__name__
