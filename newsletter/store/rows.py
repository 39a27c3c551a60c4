"""Converters between stored rows and the models, shared by every query group."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from newsletter.models import Article


def article_row(a: Article, collected_at: datetime) -> dict[str, Any]:
    return {
        "id": a.id, "key": a.key, "source": a.source, "guid": a.guid, "link": a.link,
        "slug": a.slug, "title": a.title, "summary": a.summary, "content_html": a.content_html,
        "authors": json.dumps(list(a.authors), ensure_ascii=False),
        "section": a.section, "tags": json.dumps(list(a.tags), ensure_ascii=False),
        "image": a.image, "image_credit": a.image_credit, "published": a.published,
        "updated": a.updated, "content_hash": a.content_hash, "collected_at": collected_at,
    }


def row_to_article(row: Any) -> Article:
    m = row._mapping
    return Article(
        id=m["id"], key=m["key"], source=m["source"], guid=m["guid"], link=m["link"],
        slug=m["slug"], title=m["title"], summary=m["summary"], content_html=m["content_html"],
        authors=tuple(json.loads(m["authors"])), section=m["section"],
        tags=tuple(json.loads(m["tags"])), image=m["image"], image_credit=m["image_credit"],
        published=m["published"], updated=m["updated"], content_hash=m["content_hash"],
    )
