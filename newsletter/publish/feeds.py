"""RSS 2.0, Atom and JSON Feed output for the whole publication and for each section."""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import os
import re
import secrets
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from feedgen.ext.base import BaseEntryExtension, BaseExtension
from feedgen.feed import FeedGenerator
from feedgen.util import xml_elem

from newsletter import __version__
from newsletter.models import Article

FEED_FILES = ("rss.xml", "atom.xml", "feed.json")
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
GENERATOR = "newsletter"

# Stands in for "last updated" when a feed has no entries, so empty feeds are still
# byte-identical from run to run instead of carrying the time they were built.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_ATOM_NS = "http://www.w3.org/2005/Atom"
_DC_NS = "http://purl.org/dc/elements/1.1/"
_MEDIA_NS = "http://search.yahoo.com/mrss/"
_ATOM_TYPE = "application/atom+xml"


@dataclass(frozen=True)
class FeedMeta:
    """What the feeds say about the publication and where they are served."""

    title: str
    site_url: str  # absolute URL of the publication's home page
    feeds_url: str  # absolute base the feed files are served under, ending in "/"
    language: str
    description: str
    subtitle: str = ""

    def __post_init__(self) -> None:
        for name in ("site_url", "feeds_url"):
            parts = urlsplit(getattr(self, name))
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"FeedMeta.{name} must be an absolute http(s) URL")
        if not self.feeds_url.endswith("/"):
            # Self links are built by plain concatenation, so the base must be a folder.
            object.__setattr__(self, "feeds_url", self.feeds_url + "/")


# Letters NFKD leaves alone but which have a usual ASCII spelling.
_TRANSLITERATE = str.maketrans(
    {"ß": "ss", "æ": "ae", "ø": "o", "œ": "oe", "đ": "d", "ł": "l", "þ": "th", "ð": "d"}
)


def section_slug(name: str) -> str:
    """Lowercase ASCII words joined by hyphens: "Über Tech & AI" -> "uber-tech-ai"."""
    decomposed = unicodedata.normalize("NFKD", name.lower().translate(_TRANSLITERATE))
    # Accents and other non-ASCII letters are dropped ("ü" -> "u"), but non-ASCII
    # punctuation and spaces ("—", NBSP) still separate words.
    kept = "".join(
        ch if ch.isascii() else "" if unicodedata.category(ch)[0] in "LM" else " "
        for ch in decomposed
    )
    slug = re.sub(r"[^a-z0-9]+", "-", kept.lower()).strip("-")
    if not slug and name.strip():
        # Names with no Latin letters (e.g. "日本") would all collapse to "", so give each
        # its own stable slug rather than merging them into one feed folder.
        slug = "section-" + hashlib.sha256(name.strip().encode("utf-8")).hexdigest()[:8]
    return slug


def select_entries(articles: Iterable[Article], max_entries: int) -> list[Article]:
    """Newest first; ties broken by id so the order never depends on the input order."""
    by_id = sorted(articles, key=lambda a: a.id)
    return sorted(by_id, key=lambda a: a.published, reverse=True)[: max(max_entries, 0)]


def render_feeds(
    articles: Sequence[Article], meta: FeedMeta, path: str = "", max_entries: int = 50
) -> dict[str, bytes]:
    """Render {"rss.xml", "atom.xml", "feed.json"} for the latest `max_entries` articles.

    `path` is "" for the main feeds or "sections/<slug>/" for a section; self links
    are `meta.feeds_url + path + filename`.
    """
    if path and not path.endswith("/"):
        raise ValueError(f"feed path must be empty or end with '/': {path!r}")
    entries = select_entries(articles, max_entries)
    return {
        "rss.xml": _render_rss(entries, meta, path),
        "atom.xml": _render_atom(entries, meta, path),
        "feed.json": render_json_feed(entries, meta, path),
    }


def write_feeds(
    articles: Sequence[Article], meta: FeedMeta, output_dir: Path, max_entries: int
) -> list[Path]:
    """Write the main feeds and `sections/<slug>/` feeds; return the files that changed.

    Files whose bytes would not change are left alone (mtime included), and nothing
    else under `output_dir` is removed.
    """
    output_dir = Path(output_dir)
    sections: dict[str, list[Article]] = {}
    for article in articles:
        slug = section_slug(article.section)
        if slug:
            sections.setdefault(slug, []).append(article)

    jobs: list[tuple[str, FeedMeta, list[Article]]] = [("", meta, list(articles))]
    for slug in sorted(sections):
        members = sections[slug]
        # Several spellings can share a slug ("Tech", "tech"); pick one deterministically.
        name = min(a.section for a in members)
        section_meta = FeedMeta(
            title=f"{meta.title}: {name}",
            site_url=meta.site_url,
            feeds_url=meta.feeds_url,
            language=meta.language,
            description=meta.description,
            subtitle=meta.subtitle,
        )
        jobs.append((f"sections/{slug}/", section_meta, members))

    changed: list[Path] = []
    for path, job_meta, members in jobs:
        rendered = render_feeds(members, job_meta, path, max_entries)
        for filename in FEED_FILES:
            target = output_dir / path / filename
            if write_if_changed(target, rendered[filename]):
                changed.append(target)
    return changed


def write_if_changed(target: Path, data: bytes) -> bool:
    """Atomically replace `target` with `data` unless it already holds exactly that."""
    try:
        if target.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    # os.open with 0o666 lets the umask decide the mode, as for any normal file;
    # mkstemp would leave published feeds at 0600, unreadable by a web server.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _seconds(value: datetime) -> datetime:
    # RSS dates cannot carry fractions of a second; drop them everywhere so the three
    # formats state the same instant.
    return value.replace(microsecond=0)


def rfc3339(value: datetime) -> str:
    """RFC 3339 with the article's own offset, whole seconds."""
    return _seconds(value).isoformat()


def _feed_updated(entries: Sequence[Article]) -> datetime:
    # The feed changes when any entry does, so use the latest entry update, never "now".
    return _seconds(max((a.updated for a in entries), default=EPOCH))


def _guid(article: Article) -> str:
    return article.guid or article.link


def _categories(article: Article) -> list[str]:
    """Section first, then tags, without blanks or repeats."""
    seen: list[str] = []
    for term in (article.section, *article.tags):
        term = term.strip()
        if term and term not in seen:
            seen.append(term)
    return seen


def _self_url(meta: FeedMeta, path: str, filename: str) -> str:
    return meta.feeds_url + path + filename


class _NamespaceExtension(BaseExtension):  # type: ignore[misc]  # feedgen is untyped
    """Feed-level half of the item extension: only declares the namespaces."""

    def extend_ns(self) -> dict[str, str]:
        return {"dc": _DC_NS, "media": _MEDIA_NS}


class _ItemExtension(BaseEntryExtension):  # type: ignore[misc]  # feedgen is untyped
    """Adds what feedgen's core entry lacks: dc:creator, atom:updated, media:content."""

    article: Article | None = None

    def extend_ns(self) -> dict[str, str]:
        return {"dc": _DC_NS, "media": _MEDIA_NS}

    def extend_rss(self, item: Any) -> Any:
        if self.article is None:
            return item
        # RSS 2.0 <author> must be an email address; dc:creator carries a plain name.
        for name in self.article.authors:
            xml_elem(f"{{{_DC_NS}}}creator", item).text = name
        # RSS has no "updated"; atom:updated is the common, feedparser-readable choice.
        xml_elem(f"{{{_ATOM_NS}}}updated", item).text = rfc3339(self.article.updated)
        self._media(item)
        return item

    def extend_atom(self, entry: Any) -> Any:
        if self.article is not None:
            self._media(entry)
        return entry

    def _media(self, parent: Any) -> None:
        # media:content needs no byte length, unlike an RSS enclosure, which we cannot
        # know for a remote image without fetching it.
        assert self.article is not None
        if not self.article.image:
            return
        media = xml_elem(f"{{{_MEDIA_NS}}}content", parent)
        media.set("url", self.article.image)
        media.set("medium", "image")
        if self.article.image_credit:
            xml_elem(f"{{{_MEDIA_NS}}}credit", media).text = self.article.image_credit


def _generator(entries: Sequence[Article], meta: FeedMeta, path: str, rss: bool) -> FeedGenerator:
    """A generator for ONE format: feedgen couples RSS and Atom fields (description sets
    atom:content, summary sets the RSS description), so each format is set up on its own."""
    self_url = _self_url(meta, path, "rss.xml" if rss else "atom.xml")
    fg = FeedGenerator()
    fg.register_extension("newsletter", _NamespaceExtension, _ItemExtension)
    fg.id(self_url)
    fg.title(meta.title)
    # RSS requires a channel description and feedgen refuses an empty one (the config
    # allows ""), so fall back to the title.
    described = meta.description if rss else meta.subtitle or meta.description
    fg.description(described or meta.title)
    fg.language(meta.language)
    # Atom requires a feed-level author when an entry has none; the publication is it.
    fg.author({"name": meta.title})
    fg.generator(GENERATOR, version=__version__)
    fg.updated(_feed_updated(entries))
    # feedgen takes the RSS channel <link> from the LAST link: self first, site last.
    fg.link(href=self_url, rel="self", type="application/rss+xml" if rss else _ATOM_TYPE)
    fg.link(href=meta.site_url, rel="alternate", type="text/html")

    for article in entries:
        fe = fg.add_entry(order="append")  # the default, "prepend", would reverse them
        fe.newsletter.article = article
        guid = _guid(article)
        fe.guid(guid, permalink=guid == article.link)
        # feedgen refuses an empty title; the link is the most useful stand-in.
        fe.title(article.title or article.link)
        fe.link(href=article.link, rel="alternate", type="text/html")
        for name in article.authors:
            fe.author({"name": name})  # no email, so feedgen adds no RSS <author>
        for term in _categories(article):
            fe.category(term=term)
        if rss:
            # summary is plain text but RSS <description> is read as HTML, so escape it;
            # without a summary, readers that ignore content:encoded still get the body.
            description = html.escape(article.summary, quote=False) or article.content_html
            if description:
                fe.description(description)
        elif article.summary:
            fe.summary(article.summary)
        if article.content_html:
            # type="html" escapes the markup as text; "CDATA" would write a CDATA section.
            # In RSS this becomes content:encoded because a description is set too.
            fe.content(article.content_html, type="html")
        fe.published(_seconds(article.published))
        fe.updated(_seconds(article.updated))
    return fg


def _render_rss(entries: Sequence[Article], meta: FeedMeta, path: str) -> bytes:
    return bytes(_generator(entries, meta, path, rss=True).rss_str(pretty=True))


def _render_atom(entries: Sequence[Article], meta: FeedMeta, path: str) -> bytes:
    return bytes(_generator(entries, meta, path, rss=False).atom_str(pretty=True))


def render_json_feed(entries: Sequence[Article], meta: FeedMeta, path: str) -> bytes:
    """JSON Feed 1.1 for entries already selected and ordered; keys in a fixed order."""
    feed: dict[str, Any] = {
        "version": JSON_FEED_VERSION,
        "title": meta.title,
        "home_page_url": meta.site_url,
        "feed_url": _self_url(meta, path, "feed.json"),
        "description": meta.subtitle or meta.description,
        "language": meta.language,
        "items": [_json_item(a) for a in entries],
    }
    if not feed["description"]:
        del feed["description"]  # optional in JSON Feed: omit rather than publish ""
    return (json.dumps(feed, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _json_item(article: Article) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": _guid(article),
        "url": article.link,
        "title": article.title,
        "content_html": article.content_html,
    }
    # JSON Feed wants optional members left out rather than empty.
    if article.summary:
        item["summary"] = article.summary
    if article.image:
        item["image"] = article.image
    item["date_published"] = rfc3339(article.published)
    item["date_modified"] = rfc3339(article.updated)
    if article.authors:
        item["authors"] = [{"name": name} for name in article.authors]
    tags = _categories(article)
    if tags:
        item["tags"] = tags
    return item
