"""Poll upstream RSS/Atom feeds safely (conditional GET, SSRF checks, caps) into ArticleDraft."""

from __future__ import annotations

import asyncio
import email.utils
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

import httpx

from newsletter import __version__
from newsletter.collect.netguard import (
    BodyTooLarge,
    GuardedClient,
    Resolver,
    UnsafeURLError,
    read_body,
)
from newsletter.collect.sources.feed_parse import describe, parse_feed
from newsletter.models import ArticleDraft

Status = Literal["ok", "not_modified", "error", "gone", "deferred"]

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# A hostile or broken server must not park a feed for years with one header.
MAX_RETRY_AFTER = timedelta(days=7)
ACCEPT = (
    "application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
    "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.1"
)


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
    # Networks (CIDR) that pass the address check even when private; none by default.
    allowed_networks: tuple[str, ...] = ()


class _Fail(Exception):
    """A poll that ends as an error; the message is the one line for the operator."""


def open_client(limits: FetchLimits, concurrency: int = 8) -> GuardedClient:
    """The client to poll with: checks addresses by `limits` and connects only to those."""
    return GuardedClient(allow_private_networks=limits.allow_private_networks,
                         resolver=limits.resolver, allowed_networks=limits.allowed_networks,
                         max_connections=concurrency)


async def fetch_feed(
    client: GuardedClient, state: FeedState, limits: FetchLimits, section: str = ""
) -> FetchResult:
    """Poll one feed. Never raises for network, HTTP or feed problems: they become the result.

    The address policy is the client's (see open_client); the other limits are `limits`.
    """
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
        result.error = f"network error: {describe(exc)}"
        return result
    except BodyTooLarge:
        result.error = f"body larger than {limits.max_bytes} bytes (after decompression)"
        return result
    except (_Fail, UnsafeURLError, ValueError) as exc:
        result.error = describe(exc)
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
        drafts, warnings, error = [], [], f"could not parse the feed: {describe(exc)}"
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
    async with open_client(limits, max(1, concurrency)) as client:

        async def one(state: FeedState, section: str) -> FetchResult:
            async with gate:
                try:
                    return await fetch_feed(client, state, limits, section)
                except Exception as exc:  # a bug in one feed's handling must not sink the rest
                    return FetchResult(state.url, "error", etag=state.etag,
                                       last_modified=state.last_modified,
                                       error=f"internal error: {describe(exc)}")

        return list(await asyncio.gather(*(one(s, sec) for s, sec in states)))


async def _download(
    client: GuardedClient, state: FeedState, limits: FetchLimits, warnings: list[str]
) -> tuple[httpx.Response, bytes]:
    """Follow redirects by hand so every hop is checked and pinned; the final response, body."""
    headers = {"User-Agent": limits.user_agent, "Accept": ACCEPT,
               # Only codings read_body can inflate with a bound.
               "Accept-Encoding": "gzip, deflate"}
    if state.etag:
        headers["If-None-Match"] = state.etag
    if state.last_modified:
        headers["If-Modified-Since"] = state.last_modified
    url, seen = state.url, {state.url}
    for _ in range(limits.max_redirects + 1):
        # Resolves and checks this hop's host, and connects only to the addresses checked.
        response = await client.send(url, headers, limits.timeout)
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
