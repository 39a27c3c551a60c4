"""Poll upstream RSS/Atom feeds safely (conditional GET, SSRF checks, caps) into ArticleDraft."""

from __future__ import annotations

import asyncio
import email.utils
import html
import io
import re
import xml.sax
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import feedparser
import httpx

from newsletter import __version__
from newsletter.collect.netguard import (
    BodyTooLarge,
    Resolver,
    UnsafeURLError,
    check_url,
    declares_xml_entities,
    read_body,
)
from newsletter.collect.sanitize import one_line, plain_text, shorten
from newsletter.models import ArticleDraft
from newsletter.words import plural

Status = Literal["ok", "not_modified", "error", "gone", "deferred"]

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# A hostile or broken server must not park a feed for years with one header.
MAX_RETRY_AFTER = timedelta(days=7)
SUMMARY_CHARS = 300
ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
    "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.1"
)
# feedparser flags these as "bozo" although the document parsed fine as XML.
_SOFT_BOZO = (feedparser.NonXMLContentType, feedparser.CharacterEncodingOverride)


@dataclass
class FeedState:
    """What the poller remembers about one feed between polls."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    gone: bool = False
    retry_after: datetime | None = None

    def after(self, result: FetchResult) -> FeedState:
        """The state to keep after `result` (validators, gone flag, retry time)."""
        if result.status in ("ok", "not_modified"):
            return replace(self, etag=result.etag, last_modified=result.last_modified,
                           retry_after=None)
        if result.status == "gone":
            return replace(self, gone=True)
        if result.status == "deferred":
            return replace(self, retry_after=result.retry_after)
        return self  # an error keeps the validators: the next poll may still get a 304


@dataclass
class FetchResult:
    """The outcome of one poll. `error` is one line saying what failed and why (no URL)."""

    url: str
    status: Status
    drafts: list[ArticleDraft] = field(default_factory=list)
    etag: str | None = None
    last_modified: str | None = None
    error: str | None = None
    retry_after: datetime | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class FetchLimits:
    """Bounds on one feed poll, so a slow, huge or hostile upstream cannot hurt the collector."""

    timeout: float = 10.0  # seconds per connect / read / write operation
    deadline: float = 30.0  # seconds for the whole poll, redirects and body included
    max_bytes: int = 10 * 1024 * 1024  # of the decompressed body
    max_redirects: int = 5
    allow_private_networks: bool = False
    user_agent: str = f"newsletter/{__version__} (feed poller)"
    max_entries: int = 1000
    resolver: Resolver | None = None  # None: the system's (getaddrinfo); tests inject one


class _Fail(Exception):
    """A poll that ends as an error; the message is the one line for the operator."""


async def fetch_feed(
    client: httpx.AsyncClient, state: FeedState, limits: FetchLimits, section: str = ""
) -> FetchResult:
    """Poll one feed. Never raises for network, HTTP or feed problems: they become the result."""
    now = datetime.now(UTC)
    result = FetchResult(state.url, "error", etag=state.etag, last_modified=state.last_modified)
    if state.gone:
        result.status, result.error = "gone", "feed was reported gone (HTTP 410); remove it"
        return result
    if state.retry_after is not None and state.retry_after > now:
        result.status, result.retry_after = "deferred", state.retry_after
        result.error = f"upstream asked to wait until {state.retry_after.isoformat()}"
        return result
    try:
        async with asyncio.timeout(limits.deadline):
            response, body = await _download(client, state, limits, result.warnings)
    except TimeoutError:
        result.error = f"no complete response within the {limits.deadline:g} s deadline"
        return result
    except httpx.TimeoutException as exc:
        result.error = f"timed out ({type(exc).__name__}, {limits.timeout:g} s per operation)"
        return result
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        result.error = f"network error: {_describe(exc)}"
        return result
    except BodyTooLarge:
        result.error = f"body larger than {limits.max_bytes} bytes (after decompression)"
        return result
    except (_Fail, UnsafeURLError, ValueError) as exc:
        result.error = _describe(exc)
        return result
    _apply_status(result, response, state, now)
    if result.status != "ok":
        return result
    # Parsing is CPU-bound (seconds for a 10 MB feed), so it runs off the event loop and
    # outside the network deadline: max_bytes already bounds its work.
    try:
        drafts, warnings, error = await asyncio.to_thread(
            parse_feed, body, response.headers, str(response.url), state.url, section,
            limits.max_entries, now,
        )
    except Exception as exc:  # hostile input may trip feedparser in odd ways; report, go on
        drafts, warnings, error = [], [], f"could not parse the feed: {_describe(exc)}"
    result.drafts = drafts
    result.warnings.extend(warnings)
    if error:
        # Keep the old validators: this body was unusable, so it must not be skipped as a 304.
        result.status, result.error = "error", error
        result.etag, result.last_modified = state.etag, state.last_modified
    return result


async def fetch_all(
    states: list[tuple[FeedState, str]], limits: FetchLimits, concurrency: int = 8
) -> list[FetchResult]:
    """Poll every (state, section) with at most `concurrency` at once; results in input order."""
    gate = asyncio.Semaphore(max(1, concurrency))
    pool = httpx.Limits(max_connections=max(1, concurrency))
    # trust_env=False: no proxy or .netrc credentials picked up from the environment.
    async with httpx.AsyncClient(follow_redirects=False, limits=pool, trust_env=False) as client:

        async def one(state: FeedState, section: str) -> FetchResult:
            async with gate:
                try:
                    return await fetch_feed(client, state, limits, section)
                except Exception as exc:  # a bug in one feed's handling must not sink the rest
                    return FetchResult(state.url, "error", etag=state.etag,
                                       last_modified=state.last_modified,
                                       error=f"internal error: {_describe(exc)}")

        return list(await asyncio.gather(*(one(s, sec) for s, sec in states)))


async def _download(
    client: httpx.AsyncClient, state: FeedState, limits: FetchLimits, warnings: list[str]
) -> tuple[httpx.Response, bytes]:
    """Follow redirects by hand so every hop is checked; return the final response and body."""
    headers = {"User-Agent": limits.user_agent, "Accept": ACCEPT,
               # Only codings read_body can inflate with a bound.
               "Accept-Encoding": "gzip, deflate"}
    if state.etag:
        headers["If-None-Match"] = state.etag
    if state.last_modified:
        headers["If-Modified-Since"] = state.last_modified
    url, seen = state.url, {state.url}
    for _ in range(limits.max_redirects + 1):
        await check_url(url, limits.allow_private_networks, limits.resolver)
        request = client.build_request("GET", url, headers=headers,
                                       timeout=httpx.Timeout(limits.timeout))
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            code = response.status_code
            if code in REDIRECT_CODES:
                location = response.headers.get("location", "").strip()
                if not location:
                    raise _Fail(f"HTTP {code} redirect without a Location header")
                target = str(response.url.join(location))
                if target in seen:
                    raise _Fail(f"redirect loop: {url} -> {target}")
                if code in (301, 308):
                    warnings.append(f"{url} moved permanently to {target}; update the source")
                seen.add(target)
                url = target
                continue
            body = await read_body(response, limits.max_bytes) if 200 <= code < 300 else b""
            return response, body
        finally:
            await response.aclose()
    raise _Fail(f"too many redirects (more than {limits.max_redirects})")


def _apply_status(
    result: FetchResult, response: httpx.Response, state: FeedState, now: datetime
) -> None:
    code, headers = response.status_code, response.headers
    if code == 304:
        result.status = "not_modified"
        # A 304 may carry fresher validators; otherwise the old ones still apply.
        result.etag = headers.get("etag") or state.etag
        result.last_modified = headers.get("last-modified") or state.last_modified
    elif 200 <= code < 300:
        result.status = "ok"
        result.etag = headers.get("etag")
        result.last_modified = headers.get("last-modified")
    elif code == 410:
        result.status = "gone"
        result.error = "HTTP 410 Gone: the feed was removed upstream; remove this source"
    elif code in (429, 503) and (when := parse_retry_after(headers.get("retry-after"), now)):
        result.status, result.retry_after = "deferred", when
        result.error = f"HTTP {code} {response.reason_phrase}; retry after {when.isoformat()}"
    else:
        result.error = f"HTTP {code} {response.reason_phrase}".rstrip()


def parse_retry_after(value: str | None, now: datetime) -> datetime | None:
    """Retry-After as an aware datetime (delta seconds or HTTP date), clamped; None if invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        # Length check first: int() refuses very long digit strings, timedelta overflows.
        seconds = int(value) if len(value) <= 9 else MAX_RETRY_AFTER.total_seconds()
        when = now + min(timedelta(seconds=seconds), MAX_RETRY_AFTER)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return min(max(when, now), now + MAX_RETRY_AFTER)


def parse_feed(
    body: bytes, headers: httpx.Headers | dict[str, str], feed_url: str, origin: str,
    section: str = "", max_entries: int = 1000, now: datetime | None = None,
) -> tuple[list[ArticleDraft], list[str], str | None]:
    """Parse feed bytes into drafts; returns (drafts, warnings, error or None)."""
    now = now or datetime.now(UTC)
    headers = httpx.Headers(headers)
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
        why = "an HTML page" if looks_html else _describe(bozo) if bozo else "no RSS/Atom root"
        return [], [], f"not a feed: {why}"
    if bozo is not None and not isinstance(bozo, _SOFT_BOZO):
        if not entries:
            return [], [], f"not a feed: {_describe(bozo)}"
        warnings.append(f"malformed feed, kept {plural(len(entries), 'entry', 'entries')}: "
                        f"{_describe(bozo)}")
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


def _describe(exc: object) -> str:
    if isinstance(exc, xml.sax.SAXParseException):
        # Its str() starts with "<unknown>" (no system id): say where in the body instead.
        text = f"XML error at line {exc.getLineNumber()}, column {exc.getColumnNumber()}: " \
            f"{exc.getMessage()}"
    else:
        text = str(exc)
    text = " ".join(text.split())
    return text or type(exc).__name__
