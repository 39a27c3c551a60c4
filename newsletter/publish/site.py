"""The public site as static files: home, article and section pages, sitemap and robots.txt."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape

from jinja2 import ChoiceLoader, Environment, FileSystemLoader

from newsletter.models import Article
from newsletter.publish.feeds import FEED_FILES, section_slug, select_entries, write_if_changed
from newsletter.resources import DEFAULT_TEMPLATES

# Which input hashes each page was last rendered from; a dot file, so never served.
MANIFEST = ".manifest.json"
TEMPLATES = ("site/home.html", "site/article.html", "site/section.html", "site/_head.html",
             "site/_list.html", "site/_subscribe.html", "web/_base.html")
# Top-level names other parts of the service answer: an article must not shadow them.
RESERVED = frozenset({"feeds", "issues", "sections", "admin", "subscribe", "confirm",
                      "unsubscribe", "preferences", "healthz", "metrics", "sitemap.xml",
                      "robots.txt", "index.html"})
_FEED_LABELS = {"rss.xml": ("application/rss+xml", "RSS"),
                "atom.xml": ("application/atom+xml", "Atom"),
                "feed.json": ("application/feed+json", "JSON Feed")}
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")


def environment(templates_dir: Path | None = None) -> Environment:
    """The site's Jinja environment: an operator's folder first, then the shipped templates."""
    folders = [FileSystemLoader(templates_dir)] if templates_dir else []
    return Environment(loader=ChoiceLoader([*folders, FileSystemLoader(DEFAULT_TEMPLATES)]),
                       autoescape=True, keep_trailing_newline=True)


@dataclass(frozen=True, slots=True)
class Feed:
    """One feed the pages link to and announce with <link rel="alternate">."""

    title: str
    media_type: str
    href: str


@dataclass(frozen=True)
class SiteMeta:
    """What the pages say about the publication; plain values, decided by the caller."""

    name: str
    site_url: str  # absolute, ending in "/"
    feeds_url: str  # absolute, ending in "/"
    description: str = ""
    language: str = "en"
    untitled_section: str = "More"
    per_page: int = 20
    home_per_section: int = 5
    next_issue: str = ""  # "Next issue: Monday 7 December, 07:00 UTC"
    latest_issue: tuple[int, str] | None = None  # (number, subject)

    @property
    def archive_url(self) -> str:
        return self.site_url + "issues/"


@dataclass(slots=True)
class _Page:
    path: str  # file under the output folder
    inputs: str  # hash of everything the bytes depend on
    render: Callable[[], bytes]


@dataclass(slots=True)
class SiteResult:
    """Files written (changed bytes), removed (no longer published) and pages rendered."""

    written: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    rendered: int = 0
    pages: int = 0


def page_url_path(article: Article, site_url: str) -> str | None:
    """The article's path on this site ("articles/x/") if its canonical home is here, else None.

    Upstream articles have no slug and keep their original link; a local article whose link
    leaves the site (front matter `url`) or would shadow another page gets no copy here.
    """
    if not article.slug or not article.link.startswith(site_url):
        return None
    path = article.link[len(site_url):]
    # Plain string tests, not urlsplit: this runs for every article on every publish.
    if not path or path[0] == "/" or "?" in path or "#" in path:
        return None
    parts = path.rstrip("/").split("/")
    if any(not p or p.startswith(".") for p in parts) or parts[0] in RESERVED:
        return None
    return path


def file_for(url_path: str) -> str:
    """Where a URL path is stored: folders get an index.html, as nginx and the app look up."""
    return url_path + "index.html" if url_path.endswith("/") else url_path


def section_path(slug: str, page: int = 1) -> str:
    base = f"sections/{quote(slug)}/"
    return base if page == 1 else f"{base}page/{page}/"


def long_date(value: datetime) -> str:
    return f"{value.day} {_MONTHS[value.month - 1]} {value.year}"


def _digest(*parts: object) -> str:
    blob = json.dumps(parts, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def _quick(*parts: str) -> str:
    # The per-article hash, 10,000 times per publish: plain strings joined by a separator
    # no stored field contains (sanitising drops control characters) instead of JSON.
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


class SiteBuilder:
    """Plans every page with a hash of its inputs; renders only those asked for."""

    def __init__(self, articles: Sequence[Article], meta: SiteMeta, env: Environment) -> None:
        self.meta, self.env = meta, env
        self.entries = select_entries(articles, len(articles))
        self.local = [(a, p) for a in reversed(self.entries)
                      if (p := page_url_path(a, meta.site_url)) is not None]  # oldest first
        self.url_of = {a.id: meta.site_url + p for a, p in self.local}
        self._slugs: dict[str, str] = {}
        self._section_urls: dict[str, str] = {}
        self.sections: dict[str, list[Article]] = {}
        for a in self.entries:
            slug = self.slug(a.section)
            if slug:
                self.sections.setdefault(slug, []).append(a)
        # Several spellings can share a slug ("Tech", "tech"); show one, chosen the same way
        # the section feeds choose their title.
        self.names = {slug: min(a.section for a in members)
                      for slug, members in self.sections.items()}
        self.feeds = self._feeds()
        sources = []
        for name in TEMPLATES:
            with contextlib.suppress(Exception):
                sources.append(env.loader.get_source(env, name)[0])  # type: ignore[union-attr]
        self.base_inputs = _digest(meta.name, meta.site_url, meta.feeds_url, meta.description,
                                   meta.language, [f.href for f in self.feeds], sources)

    def _feeds(self) -> list[Feed]:
        out = []
        for prefix, label in [("", ""), *((f"sections/{quote(s)}/", self.names[s])
                                          for s in sorted(self.sections))]:
            for filename in FEED_FILES:
                media_type, kind = _FEED_LABELS[filename]
                what = f"{label} ({kind})" if label else kind
                out.append(Feed(f"{self.meta.name} — {what}", media_type,
                                self.meta.feeds_url + prefix + filename))
        return out

    def slug(self, section: str) -> str:
        found = self._slugs.get(section)
        if found is None:
            found = self._slugs[section] = section_slug(section)
        return found

    def link(self, article: Article) -> str:
        """Where a listed article is read: its page here, or its original link."""
        return self.url_of.get(article.id, article.link)

    def pages(self) -> list[_Page]:
        pages = [self._home()]
        for i, (article, path) in enumerate(self.local):
            prev = self.local[i - 1][0] if i > 0 else None
            nxt = self.local[i + 1][0] if i + 1 < len(self.local) else None
            pages.append(self._article(article, path, prev, nxt))
        for slug in sorted(self.sections):
            members = self.sections[slug]
            count = max(1, math.ceil(len(members) / self.meta.per_page))
            for n in range(1, count + 1):
                pages.append(self._section(slug, n, count))
        pages.append(self._sitemap())
        pages.append(_Page("robots.txt", _digest(self.meta.site_url), self._robots))
        return pages

    def _context(self, title: str, canonical: str, **extra: object) -> dict[str, object]:
        return {"title": title, "publication": self.meta.name, "home_url": self.meta.site_url,
                "meta": self.meta, "canonical": canonical, "feeds": self.feeds,
                "main_feeds": self.feeds[:len(FEED_FILES)], "long_date": long_date,
                "link": self.link, "section_url": self.section_url, **extra}

    def section_url(self, section: str) -> str:
        slug = self.slug(section)
        if slug not in self.sections:
            return ""
        found = self._section_urls.get(slug)
        if found is None:
            found = self._section_urls[slug] = self.meta.site_url + section_path(slug)
        return found

    def _render(self, template: str, context: dict[str, object]) -> bytes:
        return self.env.get_template(template).render(context).encode("utf-8")

    def _home(self) -> _Page:
        groups: list[tuple[str, str, list[Article]]] = []
        for slug in sorted(self.sections, key=lambda s: self.names[s].casefold()):
            groups.append((self.names[slug], self.meta.site_url + section_path(slug),
                           self.sections[slug][:self.meta.home_per_section]))
        loose = [a for a in self.entries if not self.slug(a.section)]
        if loose:
            groups.append((self.meta.untitled_section, "", loose[:self.meta.home_per_section]))
        inputs = _digest(self.base_inputs, self.meta.next_issue, self.meta.latest_issue,
                         self.meta.untitled_section,
                         [(n, u, [(a.id, a.content_hash, self.link(a)) for a in m])
                          for n, u, m in groups])

        def render() -> bytes:
            return self._render("site/home.html", self._context(
                self.meta.name, self.meta.site_url, groups=groups))
        return _Page("index.html", inputs, render)

    def _article(self, a: Article, path: str, prev: Article | None,
                 nxt: Article | None) -> _Page:
        url = self.meta.site_url + path
        name = self.names.get(self.slug(a.section), a.section)
        url_of = self.url_of
        near = [f"{x.id}\x1e{x.title}\x1e{url_of.get(x.id, x.link)}" if x else ""
                for x in (prev, nxt)]
        inputs = _quick(self.base_inputs, a.id, a.content_hash, str(a.updated), *near,
                        self.section_url(a.section), name)

        def render() -> bytes:
            return self._render("site/article.html", self._context(
                a.title, url, article=a, section_name=name, prev=prev, next=nxt))
        return _Page(file_for(path), inputs, render)

    def _section(self, slug: str, n: int, count: int) -> _Page:
        per = self.meta.per_page
        members = self.sections[slug][(n - 1) * per:n * per]
        name = self.names[slug]
        url = self.meta.site_url + section_path(slug, n)
        inputs = _quick(self.base_inputs, name, str(n), str(count),
                        *(f"{a.id}\x1e{a.content_hash}\x1e{self.link(a)}" for a in members))

        def render() -> bytes:
            older = self.meta.site_url + section_path(slug, n + 1) if n < count else ""
            newer = self.meta.site_url + section_path(slug, n - 1) if n > 1 else ""
            title = name if n == 1 else f"{name} — page {n}"
            feed = [f for f in self.feeds if f.href.startswith(
                self.meta.feeds_url + f"sections/{quote(slug)}/")]
            return self._render("site/section.html", self._context(
                title, url, name=name, articles=members, page=n, pages=count,
                older=older, newer=newer, section_feeds=feed))
        return _Page(file_for(section_path(slug, n)), inputs, render)

    def _urls(self) -> list[tuple[str, str]]:
        site = self.meta.site_url
        urls = [(site, "")]
        urls += [(site + path, str(a.updated.date())) for a, path in self.local]
        for slug in sorted(self.sections):
            count = max(1, math.ceil(len(self.sections[slug]) / self.meta.per_page))
            urls += [(site + section_path(slug, n), "") for n in range(1, count + 1)]
        return urls

    def _sitemap(self) -> _Page:
        urls = self._urls()

        def render() -> bytes:
            lines = ['<?xml version="1.0" encoding="UTF-8"?>',
                     '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">']
            for loc, lastmod in urls:
                mod = f"<lastmod>{lastmod}</lastmod>" if lastmod else ""
                lines.append(f"  <url><loc>{escape(loc)}</loc>{mod}</url>")
            return ("\n".join([*lines, "</urlset>"]) + "\n").encode("utf-8")
        return _Page("sitemap.xml", _quick(*(f"{loc} {mod}" for loc, mod in urls)), render)

    def _robots(self) -> bytes:
        # Token-bearing pages and the dashboard are nobody's search result.
        hidden = ("/admin/", "/confirm", "/unsubscribe", "/preferences")
        lines = ["User-agent: *", *(f"Disallow: {p}" for p in hidden),
                 f"Sitemap: {self.meta.site_url}sitemap.xml"]
        return ("\n".join(lines) + "\n").encode("utf-8")


def write_site(articles: Sequence[Article], meta: SiteMeta, output_dir: Path,
               env: Environment | None = None) -> SiteResult:
    """Render what changed since the last run and write it atomically; remove what is gone.

    A page is rendered again only when the hash of its inputs moved (or the manifest is
    gone), so republishing 10,000 articles after one edit renders a handful of pages.
    Only files this function wrote before (listed in the manifest) are ever removed.
    """
    output_dir = Path(output_dir)
    builder = SiteBuilder(articles, meta, env or environment())
    try:
        old = json.loads((output_dir / MANIFEST).read_text(encoding="utf-8"))
        old = old if isinstance(old, dict) else {}
    except (OSError, ValueError):
        old = {}
    result = SiteResult()
    manifest: dict[str, str] = {}
    for page in builder.pages():
        manifest[page.path] = page.inputs
        # Trusted without a stat (a stat per page was most of a warm run): the manifest lives
        # in the folder, so whatever wipes the folder wipes it too and everything is redone.
        if old.get(page.path) == page.inputs:
            continue
        result.rendered += 1
        target = output_dir / page.path
        if write_if_changed(target, page.render()):
            result.written.append(target)
    result.pages = len(manifest)
    for path in sorted(set(old) - set(manifest)):
        target = output_dir / path
        if ".." in Path(path).parts:
            continue  # a hand-edited manifest must not reach outside the folder
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
            result.removed.append(target)
        with contextlib.suppress(OSError):
            target.parent.rmdir()  # an article's own folder, once empty
    data = (json.dumps(manifest, sort_keys=True, indent=0) + "\n").encode("utf-8")
    write_if_changed(output_dir / MANIFEST, data)
    return result
