"""Drafts become Articles: sanitised, absolute, with a stable identity; decide what is new."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol
from urllib.parse import urljoin, urlsplit

from newsletter import named_fields
from newsletter.collect.sanitize import (
    clean_html,
    first_paragraph,
    one_line,
    shorten,
    slug_for,
    slugify,
    xml_safe,
)
from newsletter.errors import SourceError
from newsletter.models import Article, ArticleDraft


class ArticleStore(Protocol):
    """What saving needs from a store: the stored fingerprints, and one write of the result."""

    def article_hashes(self, keys: Iterable[str]) -> dict[str, tuple[str, datetime]]: ...
    def save_articles(self, new: Sequence[Article], changed: Sequence[Article],
                      now: datetime) -> None: ...


@dataclass(frozen=True, slots=True)
class LinkRules:
    """How a local article's canonical link is built on the publication's site."""

    base_url: str
    article_path: str = "articles/{slug}/"

    def link_for(self, slug: str) -> str:
        # Not str.format: it would let the template reach the slug's attributes and items.
        path = named_fields.fill(self.article_path, {"slug": slug})
        return urljoin(self.base_url.rstrip("/") + "/", path)


def content_hash(fields: dict[str, object]) -> str:
    blob = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def build_article(draft: ArticleDraft, *, source: str, rules: LinkRules | None,
                  default_section: str = "") -> Article:
    """Identity is the guid, else the canonical link, else a hash of the content.

    SourceError (naming the draft's origin and the field) for a link or image that is not
    http(s): feeds publish both as they are, and feed readers make them clickable.
    """
    draft = _xml_safe_draft(draft)
    slug = (slugify(draft.slug) if draft.slug else slug_for(draft.title)) if rules else ""
    if draft.url:
        link = urljoin(rules.base_url if rules else draft.origin, draft.url)
    elif rules:
        link = rules.link_for(slug)
    else:
        link = ""
    body = clean_html(draft.body_html, link or (rules.base_url if rules else draft.origin))
    summary = shorten(one_line(draft.summary) or first_paragraph(body))
    image = urljoin(link or draft.origin, draft.image) if draft.image else ""
    # Hardening: upstream entries were already limited to http(s), local front matter was
    # not (`url: "javascript:…"` went into every feed's <link> and guid).
    for name, url in (("url", link), ("image", image)):
        if url and urlsplit(url).scheme not in ("http", "https"):
            raise SourceError(draft.origin, f"field '{name}' must be an http(s) URL or a path "
                                            f"on the site, got {url[:100]!r}")
    title, section = one_line(draft.title), one_line(draft.section or default_section)
    authors = [one_line(a) for a in draft.authors if a.strip()]
    tags = [one_line(t) for t in draft.tags if t.strip()]
    image_credit = one_line(draft.image_credit)
    digest = content_hash({
        "title": title, "link": link, "summary": summary, "content": body, "authors": authors,
        "section": section, "tags": tags, "image": image, "image_credit": image_credit,
        "published": draft.published.isoformat(),
    })
    if draft.guid:
        key = "guid:" + draft.guid.strip()
    elif link:
        # Case and Unicode-form variants of one slug are the same article, not two.
        key = "link:" + unicodedata.normalize("NFKC", link).casefold()
    else:
        key = "hash:" + digest
    return Article(
        key=key, title=title or "(untitled)", link=link or draft.origin,
        published=draft.published, updated=draft.updated or draft.published,
        content_html=body, content_hash=digest, source=source, summary=summary,
        authors=tuple(authors), section=section, tags=tuple(tags),
        image=image, image_credit=image_credit, slug=slug,
        guid=draft.guid.strip() or link,
    )


def _xml_safe_draft(draft: ArticleDraft) -> ArticleDraft:
    """Every text field without characters XML cannot carry (see sanitize.xml_safe)."""
    s = xml_safe
    return replace(draft, title=s(draft.title), body_html=s(draft.body_html),
                   authors=tuple(s(a) for a in draft.authors), section=s(draft.section),
                   summary=s(draft.summary), image=s(draft.image),
                   image_credit=s(draft.image_credit), slug=s(draft.slug), url=s(draft.url),
                   guid=s(draft.guid), tags=tuple(s(t) for t in draft.tags))


@dataclass(slots=True)
class SaveResult:
    new: list[Article] = field(default_factory=list)
    updated: list[Article] = field(default_factory=list)
    unchanged: int = 0


def save(store: ArticleStore, articles: Sequence[Article], now: datetime) -> SaveResult:
    """Store what is new, update in place what changed (its `updated` time moves), skip the rest."""
    result = SaveResult()
    known = store.article_hashes(a.key for a in articles)
    seen: set[str] = set()
    for a in articles:
        if a.key in seen:
            continue
        seen.add(a.key)
        old = known.get(a.key)
        if old is None:
            result.new.append(a)
        elif old[0] != a.content_hash:
            # An edit without an explicit `updated` time is dated when we noticed it.
            result.updated.append(replace(a, updated=max(a.updated, now)))
        else:
            result.unchanged += 1
    store.save_articles(result.new, result.updated, now)
    return result
