"""Upstream feed polling over real HTTP on loopback: formats, caching, limits and SSRF guards."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from feedserver import FeedServer

from newsletter.collect.netguard import UnsafeURLError, check_url, forbidden_reason
from newsletter.collect.sources.upstream import (
    FeedState,
    FetchLimits,
    FetchResult,
    fetch_all,
    fetch_feed,
    open_client,
    parse_retry_after,
)

FIXTURES = Path(__file__).parent / "fixtures" / "feeds"
LOCAL = FetchLimits(allow_private_networks=True, timeout=5, deadline=10)


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with FeedServer() as srv:
        yield srv


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fetch(url_or_state: str | FeedState, limits: FetchLimits = LOCAL,
          section: str = "") -> FetchResult:
    state = FeedState(url_or_state) if isinstance(url_or_state, str) else url_or_state

    async def go() -> FetchResult:
        async with open_client(limits) as client:
            return await fetch_feed(client, state, limits, section)

    return asyncio.run(go())


def with_limits(**changes: object) -> FetchLimits:
    values = {**LOCAL.__dict__, **changes}
    return FetchLimits(**values)  # type: ignore[arg-type]


# -- formats -----------------------------------------------------------------------------


def test_rss20_entries_become_drafts(server: FeedServer) -> None:
    url = server.add("/feeds/rss20.xml", fixture("rss20.xml"),
                     headers={"Date": "Wed, 06 Mar 2024 10:00:00 GMT"})
    result = fetch(url)
    assert result.status == "ok", result.error
    assert result.error is None
    assert result.warnings == ["entry 3: no title and no link; skipped"]
    first, second = result.drafts
    assert first.title == "Rates rise & markets react"  # markup stripped, newline collapsed
    assert first.url == server.url("/news/rates-rise")  # relative link made absolute
    assert first.guid == "wire-0001"
    assert first.published == datetime(2024, 3, 5, 8, 30, tzinfo=UTC)
    assert first.authors == ("Ada Lovelace",)
    assert first.tags == ("Economy", "Markets")
    assert first.section == "Economy"  # no section given: first tag
    assert first.summary == "The central bank raised rates."
    assert first.body_html.startswith("<p>The central bank <em>raised</em>")
    assert "Full story." in first.body_html  # content:encoded wins over description
    assert first.image == server.url("/img/rates.jpg")
    assert first.origin == url
    # No date in the entry: the response Date stands in.
    assert second.published == datetime(2024, 3, 6, 10, 0, tzinfo=UTC)
    assert second.image == "https://cdn.wire.example/photo.png"
    assert second.body_html == "Just a <b>picture</b>."


def test_given_section_wins_over_tags(server: FeedServer) -> None:
    result = fetch(server.add("/f", fixture("rss20.xml")), section="World")
    assert {d.section for d in result.drafts} == {"World"}


def test_rss091(server: FeedServer) -> None:
    before = datetime.now(UTC)
    result = fetch(server.add("/old.xml", fixture("rss091.xml"), content_type="text/xml"))
    assert result.status == "ok", result.error
    assert [d.title for d in result.drafts] == ["First post", "Second post"]
    assert result.drafts[0].url == "http://old.example/first"
    # Undated entries: the server's own Date header (about now) stands in.
    assert all(d.published >= before - timedelta(seconds=5) for d in result.drafts)


def test_rss10_rdf(server: FeedServer) -> None:
    result = fetch(server.add("/rdf", fixture("rss10.rdf"), content_type="application/rdf+xml"))
    assert result.status == "ok", result.error
    a, b = result.drafts
    assert (a.title, a.url, a.authors, a.section) == (
        "RDF item A", "http://rdf.example/a", ("Grace Hopper",), "Science")
    assert a.published == datetime(2023, 11, 2, 8, 0, tzinfo=UTC)
    assert b.published == datetime(2023, 11, 3, 8, 0, tzinfo=UTC)


def test_atom(server: FeedServer) -> None:
    result = fetch(server.add("/atom", fixture("atom.xml"), content_type="application/atom+xml"))
    assert result.status == "ok", result.error
    hello, plain = result.drafts
    assert hello.title == "Hello Atom"
    assert hello.url == "https://atom.example/blog/posts/hello"  # xml:base applied
    assert hello.guid == "tag:atom.example,2024:hello"
    assert hello.authors == ("Alan Turing", "Joan Clarke")
    assert hello.published == datetime(2024, 1, 9, 10, 0, tzinfo=UTC)
    assert hello.updated == datetime(2024, 1, 10, 12, 0, tzinfo=UTC)
    assert hello.body_html == "<p>Long <strong>body</strong>.</p>"
    assert hello.summary == "Short summary."
    assert plain.title == "Plain <not a tag> title"  # type="text": kept literally
    assert plain.body_html == "a &lt; b &amp; c"  # plain text content escaped into HTML
    assert plain.published == datetime(2024, 1, 8, 7, 30, tzinfo=UTC)


def test_gzip_encoded_feed(server: FeedServer) -> None:
    result = fetch(server.add("/gz", fixture("atom.xml"), gzip=True))
    assert result.status == "ok", result.error
    assert len(result.drafts) == 2
    assert "gzip" in server.requests[0].headers["accept-encoding"]


@pytest.mark.parametrize(("encoding", "wbits"), [
    ("deflate", zlib.MAX_WBITS), ("deflate", -zlib.MAX_WBITS), ("gzip", 31)])
def test_deflate_and_multi_member_gzip(server: FeedServer, encoding: str, wbits: int) -> None:
    def pack(data: bytes) -> bytes:
        packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
        return packer.compress(data) + packer.flush()

    feed = fixture("atom.xml")
    # Two gzip members make one body; deflate is tried with and without the zlib header.
    body = pack(feed[:100]) + pack(feed[100:]) if encoding == "gzip" else pack(feed)
    result = fetch(server.add("/z", body, headers={"Content-Encoding": encoding}))
    assert result.status == "ok", result.error
    assert len(result.drafts) == 2


def test_unsafe_entry_links_are_dropped(server: FeedServer) -> None:
    body = (b'<rss version="2.0"><channel><title>x</title>'
            b"<item><title>Click</title><link>javascript:alert(1)</link></item>"
            b"<item><link>data:text/html,hi</link></item></channel></rss>")
    result = fetch(server.add("/js", body))
    assert [(d.title, d.url) for d in result.drafts] == [("Click", "")]
    assert result.warnings == ["entry 2: no title and no link; skipped"]


# -- conditional GET ---------------------------------------------------------------------


def test_etag_second_fetch_gets_304(server: FeedServer) -> None:
    url = server.add("/e", fixture("atom.xml"), etag='"v1"')
    first = fetch(url)
    assert (first.status, first.etag) == ("ok", '"v1"')
    state = FeedState(url).after(first)
    server.requests.clear()
    second = fetch(state)
    assert second.status == "not_modified"
    assert (second.etag, second.drafts) == ('"v1"', [])
    (request,) = server.requests
    assert request.headers["if-none-match"] == '"v1"'
    assert request.status == 304


def test_last_modified_second_fetch_gets_304(server: FeedServer) -> None:
    stamp = "Mon, 04 Mar 2024 10:00:00 GMT"
    url = server.add("/lm", fixture("rss091.xml"), last_modified=stamp)
    first = fetch(url)
    assert (first.status, first.last_modified, first.etag) == ("ok", stamp, None)
    server.requests.clear()
    second = fetch(FeedState(url).after(first))
    assert (second.status, second.last_modified) == ("not_modified", stamp)
    (request,) = server.requests
    assert request.headers["if-modified-since"] == stamp
    assert "if-none-match" not in request.headers
    assert request.status == 304


# -- bodies that are not feeds -----------------------------------------------------------


@pytest.mark.parametrize(("body", "content_type", "reason"), [
    (fixture("broken.xml"), "application/xml", "not a feed: XML error at line 2"),
    (fixture("page.html"), "text/html; charset=utf-8", "not a feed: an HTML page"),
    (fixture("page.html"), "application/rss+xml", "not a feed: an HTML page"),
    (b"", "application/rss+xml", "not a feed: empty body"),
    (b"just some words", "text/plain", "not a feed"),
])
def test_not_a_feed(server: FeedServer, body: bytes, content_type: str, reason: str) -> None:
    result = fetch(server.add("/x", body, content_type=content_type))
    assert result.status == "error"
    assert result.error is not None and result.error.startswith(reason), result.error
    assert "\n" not in result.error


def test_malformed_feed_keeps_entries_with_warning(server: FeedServer) -> None:
    result = fetch(server.add("/m", fixture("malformed_entries.xml")))
    assert result.status == "ok"
    assert [d.title for d in result.drafts] == ["Survivor one", "Survivor two"]
    assert len(result.warnings) == 1 and result.warnings[0].startswith("malformed feed")


def test_body_naming_a_local_file_is_not_opened(server: FeedServer, tmp_path: Path) -> None:
    # feedparser treats a bytes argument that names a file as a path; the body must not.
    secret = tmp_path / "secret-feed.xml"
    secret.write_bytes(fixture("rss091.xml"))
    result = fetch(server.add("/p", str(secret).encode(), content_type="text/plain"))
    assert result.status == "error" and result.drafts == []


# -- size, time and decompression limits --------------------------------------------------


def test_huge_body_is_cut_at_the_cap(server: FeedServer) -> None:
    url = server.add("/big", b"<rss>" + b"x" * 2_000_000)
    result = fetch(url, with_limits(max_bytes=100_000))
    assert result.status == "error"
    assert result.error == "body larger than 100000 bytes (after decompression)"


def test_gzip_bomb_is_not_inflated(server: FeedServer) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(200)) + packer.flush()
    assert len(bomb) < 300_000  # 200 MiB of zeros
    url = server.add("/bomb", bomb, headers={"Content-Encoding": "gzip"})
    tracemalloc.start()
    try:
        result = fetch(url, with_limits(max_bytes=1_000_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == "error"
    assert result.error is not None and "larger than 1000000 bytes" in result.error
    assert peak < 20_000_000, f"peak {peak} bytes while reading a gzip bomb"


def test_unsupported_content_encoding(server: FeedServer) -> None:
    url = server.add("/br", b"\x00\x01", headers={"Content-Encoding": "br"})
    result = fetch(url)
    assert result.status == "error" and "Content-Encoding 'br'" in (result.error or "")


def test_slow_trickle_is_cut_by_the_deadline(server: FeedServer) -> None:
    url = server.add("/slow", fixture("atom.xml"), trickle=0.02)  # ~30 s to send it all
    started = time.monotonic()
    result = fetch(url, with_limits(deadline=0.5, timeout=5))
    # Generous for a loaded machine, and still far below the ~30 s of the whole body.
    assert time.monotonic() - started < 15
    assert result.status == "error"
    assert result.error == "no complete response within the 0.5 s deadline"


def test_hundred_thousand_items_are_capped(server: FeedServer) -> None:
    items = b"<item><title>a</title></item>" * 100_000
    body = b'<rss version="2.0"><channel><title>big</title>' + items + b"</channel></rss>"
    result = fetch(server.add("/many", body))
    assert result.status == "ok", result.error
    assert len(result.drafts) == 1000
    assert result.warnings == ["feed has 100000 entries; took the first 1000"]


# -- XML attacks -------------------------------------------------------------------------


@pytest.mark.parametrize("newline", [b"\n", b""])
def test_external_entity_is_not_resolved(server: FeedServer, tmp_path: Path,
                                         newline: bytes) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    body = newline.join([
        b'<?xml version="1.0"?>',
        b"<!DOCTYPE rss [",
        b'<!ENTITY xxe SYSTEM "' + secret.as_uri().encode() + b'">',
        b"]>",
        b'<rss version="2.0"><channel><title>t</title><item><title>a &xxe;</title>'
        b"<link>https://x.example/a</link><description>&xxe;</description></item>"
        b"</channel></rss>",
    ])
    result = fetch(server.add("/xxe", body, content_type="application/xml"))
    assert "TOP-SECRET" not in repr(result)


@pytest.mark.parametrize("newline", [b"\n", b""])
def test_billion_laughs_is_bounded(server: FeedServer, newline: bytes) -> None:
    lines = [b'<?xml version="1.0"?>', b"<!DOCTYPE lolz [", b'<!ENTITY lol0 "lol">']
    lines += [b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10)]
    lines += [b"]>", b'<rss version="2.0"><channel><title>t</title><item><title>&lol9;'
                     b"</title><link>https://x.example/</link></item></channel></rss>"]
    started = time.monotonic()
    result = fetch(server.add("/lol", newline.join(lines), content_type="application/xml"))
    assert time.monotonic() - started < 10
    # Either refused or not expanded: nothing near 10**9 "lol"s came out.
    assert all(len(d.title) < 1000 and len(d.body_html) < 1000 for d in result.drafts)


# -- HTTP statuses -----------------------------------------------------------------------


def test_gone(server: FeedServer) -> None:
    url = server.add("/gone", status=410)
    result = fetch(url)
    assert result.status == "gone" and "remove" in (result.error or "")
    server.requests.clear()
    again = fetch(FeedState(url).after(result))
    assert again.status == "gone" and server.requests == []  # never polled again


def test_429_retry_after_seconds(server: FeedServer) -> None:
    url = server.add("/busy", status=429, headers={"Retry-After": "120"})
    before = datetime.now(UTC)
    result = fetch(url)
    assert result.status == "deferred" and result.retry_after is not None
    assert before + timedelta(seconds=119) <= result.retry_after
    assert result.retry_after <= datetime.now(UTC) + timedelta(seconds=121)
    server.requests.clear()
    again = fetch(FeedState(url).after(result))
    assert again.status == "deferred" and server.requests == []  # waits without asking


def test_503_retry_after_http_date(server: FeedServer) -> None:
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    url = server.add("/down", status=503, headers={"Retry-After": format_datetime(when, True)})
    result = fetch(url)
    assert (result.status, result.retry_after) == ("deferred", when)


def test_other_http_errors_name_the_status(server: FeedServer) -> None:
    assert fetch(server.add("/boom", status=500)).error == "HTTP 500 Internal Server Error"
    assert fetch(server.url("/missing")).error == "HTTP 404 Not Found"
    no_hint = fetch(server.add("/busy", status=429))  # no Retry-After: plain error
    assert (no_hint.status, no_hint.error) == ("error", "HTTP 429 Too Many Requests")


def test_parse_retry_after() -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_retry_after("30", now) == now + timedelta(seconds=30)
    assert parse_retry_after("9" * 5000, now) == now + timedelta(days=7)  # clamped
    assert parse_retry_after("Sun, 31 Dec 2023 00:00:00 GMT", now) == now  # past: now
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


# -- redirects ---------------------------------------------------------------------------


def test_redirect_chain_is_followed(server: FeedServer) -> None:
    server.redirect("/a", "/b", status=301)
    server.redirect("/b", server.url("/c"), status=307)
    server.add("/c", fixture("rss20.xml"))
    result = fetch(server.url("/a"))
    assert result.status == "ok", result.error
    assert [r.path for r in server.requests] == ["/a", "/b", "/c"]
    assert result.drafts[0].origin == server.url("/a")  # origin: the configured URL
    assert result.drafts[0].url == server.url("/news/rates-rise")
    assert result.warnings[0] == (f"{server.url('/a')} moved permanently to "
                                  f"{server.url('/b')}; update the source")


def test_redirect_loop_is_refused(server: FeedServer) -> None:
    server.redirect("/x", "/y")
    server.redirect("/y", "/x")
    result = fetch(server.url("/x"))
    assert result.status == "error"
    assert result.error == f"redirect loop: {server.url('/y')} -> {server.url('/x')}"
    assert len(server.requests) == 2


def test_too_many_redirects(server: FeedServer) -> None:
    for i in range(7):
        server.redirect(f"/r{i}", f"/r{i + 1}")
    server.add("/r7", fixture("atom.xml"))
    result = fetch(server.url("/r0"), with_limits(max_redirects=5))
    assert (result.status, result.error) == ("error", "too many redirects (more than 5)")
    assert len(server.requests) == 6
    assert fetch(server.url("/r0"), with_limits(max_redirects=7)).status == "ok"


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://example.com/feed",
                                    "gopher://127.0.0.1:70/"])
def test_redirect_to_other_scheme_is_refused(server: FeedServer, target: str) -> None:
    server.redirect("/jump", target)
    result = fetch(server.url("/jump"))
    assert result.status == "error" and "is not allowed (http/https only)" in (result.error or "")
    assert len(server.requests) == 1


# -- private addresses (SSRF) ------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "127.1", "[::1]"])
def test_private_address_refused_before_any_request(server: FeedServer, host: str) -> None:
    port = server.base_url.rsplit(":", 1)[1]
    url = server.add("/feed", fixture("atom.xml")).replace(f"127.0.0.1:{port}", f"{host}:{port}")
    result = fetch(url, with_limits(allow_private_networks=False))
    assert result.status == "error"
    assert result.error is not None and "private networks not allowed" in result.error
    assert server.requests == []


@pytest.mark.parametrize("address", [
    "10.0.0.1", "169.254.169.254", "::1", "::ffff:127.0.0.1", "::ffff:10.1.2.3",
    "192.168.1.1", "172.16.5.4", "fc00::1", "fe80::1", "0.0.0.0", "::", "224.0.0.1",
    "ff02::1", "100.64.0.1", "240.0.0.1", "255.255.255.255", "2002:7f00:1::",
    "64:ff9b::a00:1", "127.255.255.254",
])
def test_forbidden_addresses(address: str) -> None:
    assert forbidden_reason(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111",
                                     "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert forbidden_reason(address) is None


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/", "javascript:1",
                                 "http:///nohost", "not a url"])
def test_check_url_refuses_bad_urls(url: str) -> None:
    with pytest.raises(UnsafeURLError):
        asyncio.run(check_url(url, allow_private_networks=True))


# -- many feeds at once ------------------------------------------------------------------


def test_fetch_all_isolates_failures_and_keeps_order(server: FeedServer) -> None:
    good1 = server.add("/one", fixture("rss20.xml"))
    good2 = server.add("/two", fixture("atom.xml"))
    bad = server.add("/bad", fixture("page.html"), content_type="text/html")
    states = [(FeedState(good1), "News"), (FeedState(bad), ""), (FeedState(good2), "Tech")]
    results = asyncio.run(fetch_all(states, LOCAL, concurrency=2))
    assert [r.url for r in results] == [good1, bad, good2]
    assert [r.status for r in results] == ["ok", "error", "ok"]
    assert {d.section for d in results[0].drafts} == {"News"}
    assert {d.section for d in results[2].drafts} == {"Tech"}
