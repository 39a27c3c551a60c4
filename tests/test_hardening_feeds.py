"""Hardening, upstream feeds: hostile servers and documents, through collect where it matters.

Single-fetch cases already covered in test_sources_upstream.py (billion laughs, XXE via
file://, gzip bomb, 2 MB body cap, trickle, 100,000 items, redirect loops, 410 and 429 at
the fetch level, addresses the guard refuses) are not repeated here.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from feedserver import FeedServer

from newsletter import pipeline
from newsletter.audience import subscriptions
from newsletter.collect.sources.upstream import (
    FeedState,
    FetchLimits,
    FetchResult,
    fetch_feed,
    open_client,
)
from newsletter.config import Settings
from newsletter.pipeline import sending

FIXTURES = Path(__file__).parent / "fixtures" / "feeds"
LOCAL = FetchLimits(allow_private_networks=True, timeout=5, deadline=10)


def rss(*titles: str, extra_prolog: bytes = b"") -> bytes:
    items = b"".join(b"<item><title>%s</title><link>https://partner.example.net/%d</link>"
                     b"<guid>g-%d</guid><pubDate>Tue, 10 Nov 2026 10:00:00 +0000</pubDate>"
                     b"<description>About %s</description></item>"
                     % (t.encode(), i, i, t.encode()) for i, t in enumerate(titles))
    return (b'<?xml version="1.0" encoding="utf-8"?>\n' + extra_prolog +
            b'<rss version="2.0"><channel><title>Partner</title>'
            b"<link>https://partner.example.net/</link><description>d</description>"
            + items + b"</channel></rss>")


def fetch(url: str, limits: FetchLimits = LOCAL) -> FetchResult:
    async def go() -> FetchResult:
        async with open_client(limits) as client:
            return await fetch_feed(client, FeedState(url), limits)

    return asyncio.run(go())


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with FeedServer() as srv:
        yield srv


# -- XML attacks: nothing expanded, nothing fetched, no file read ------------------------------


def _doctype(decls: bytes, *, newline: bool) -> bytes:
    sep = b"\n" if newline else b""
    return b"<!DOCTYPE rss [" + sep + decls + sep + b"]>\n"


@pytest.mark.parametrize("newline", [True, False], ids=["own-line", "same-line"])
@pytest.mark.parametrize("attack", ["quadratic", "external-http", "external-file",
                                    "parameter", "external-dtd", "utf16-quadratic"])
def test_xml_entity_attacks_expand_and_fetch_nothing(server: FeedServer, tmp_path: Path,
                                                     attack: str, newline: bool) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    leak = server.add("/leak", b"LEAKED-OVER-HTTP", content_type="text/plain")
    dtd = server.add("/evil.dtd", b'<!ENTITY e "LEAKED-BY-DTD">', content_type="text/plain")
    big = b"A" * 50_000
    prolog = {
        # 50 KB entity used 50,000 times: 2.5 GB once expanded (feedparser's loose parser did).
        "quadratic": _doctype(b'<!ENTITY e "' + big + b'">', newline=newline),
        "utf16-quadratic": _doctype(b'<!ENTITY e "' + big + b'">', newline=newline),
        "external-http": _doctype(b'<!ENTITY e SYSTEM "' + leak.encode() + b'">',
                                  newline=newline),
        "external-file": _doctype(b'<!ENTITY e SYSTEM "' + secret.as_uri().encode() + b'">',
                                  newline=newline),
        "parameter": _doctype(b'<!ENTITY % p SYSTEM "' + dtd.encode() + b'"> %p;',
                              newline=newline),
        "external-dtd": b'<!DOCTYPE rss SYSTEM "' + dtd.encode() + b'">\n',
    }[attack]
    uses = b"&e;" * (50_000 if "quadratic" in attack else 1)
    body = rss("x", extra_prolog=prolog).replace(b"<title>x</title>", b"<title>" + uses
                                                  + b"</title>")
    ctype = "application/rss+xml"
    if attack == "utf16-quadratic":
        body = body.decode().replace('encoding="utf-8"', 'encoding="utf-16"').encode("utf-16")
        ctype = "application/rss+xml; charset=utf-16"
    url = server.add("/attack.xml", body, content_type=ctype)
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = fetch(url)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 10
    assert peak < 100_000_000, f"{peak} bytes for a {len(body)}-byte feed"
    assert all(len(d.title) < 1000 and len(d.body_html) < 1000 for d in result.drafts)
    assert "LEAKED" not in repr(result) and "TOP-SECRET" not in repr(result)
    assert [r.path for r in server.requests] == ["/attack.xml"]  # no entity was fetched
    if attack != "external-dtd":  # declared entities are refused outright, with a reason
        assert result.status == "error"
        assert result.error == "not a feed: it declares XML entities (<!ENTITY …>), refused"


# -- many bad feeds in one collect: each named, the good one stored, state kept ---------------


def test_one_collect_survives_every_bad_feed_and_remembers_410_and_429(
        make_settings: Callable[..., Settings], server: FeedServer) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(packer.compress(bytes(1 << 20)) for _ in range(100)) + packer.flush()
    sources = {
        "/good.xml": dict(body=rss("Partner piece")),
        "/malformed.xml": dict(body=(FIXTURES / "broken.xml").read_bytes()),
        "/page.html": dict(body=(FIXTURES / "page.html").read_bytes(),
                           content_type="text/html; charset=utf-8"),
        "/empty.xml": dict(body=b""),
        "/bomb.xml": dict(body=bomb, headers={"Content-Encoding": "gzip"}),
        "/trickle.xml": dict(body=rss("slow"), trickle=0.05),
        "/gone.xml": dict(status=410),
        "/busy.xml": dict(status=429, headers={"Retry-After": "3600"}),
    }
    for path, kw in sources.items():
        server.add(path, **kw)  # type: ignore[arg-type]
    feeds = "".join(f'[[sources]]\ntype = "feed"\nurl = "{server.url(p)}"\n' for p in sources)
    settings = make_settings("[collect]\nallow_private_networks = true\ndeadline = 2\n"
                             "timeout = 2\nmax_feed_bytes = 1000000\n" + feeds, folder=False)
    store = pipeline.open_store(settings)
    report = pipeline.collect(settings, store)
    assert report.new == 1 and [a.title for a in store.latest_articles(5)] == ["Partner piece"]
    errors = {e.split(": ", 1)[0].removeprefix(server.base_url): e.split(": ", 1)[1]
              for e in report.errors}
    assert all("\n" not in e for e in report.errors)
    assert errors["/malformed.xml"].startswith("not a feed: XML error at line")
    assert errors["/page.html"] == "not a feed: an HTML page"
    assert errors["/empty.xml"] == "not a feed: empty body"
    assert errors["/bomb.xml"] == "body larger than 1000000 bytes (after decompression)"
    assert errors["/trickle.xml"] == "no complete response within the 2 s deadline"
    assert "410 Gone" in errors["/gone.xml"] and "remove this source" in errors["/gone.xml"]
    assert "/busy.xml" not in errors
    assert any(w.startswith(server.url("/busy.xml")) and "deferred until" in w
               for w in report.warnings)

    # The next collect asks neither the gone feed nor the busy one, tells the operator why,
    # and loses nothing stored.
    server.add("/trickle.xml", rss("no longer slow").replace(b"g-0", b"t-0"))  # quick now
    server.requests.clear()
    again = pipeline.collect(settings, store)
    asked = {r.path for r in server.requests}
    assert "/gone.xml" not in asked and "/busy.xml" not in asked
    assert {"/good.xml", "/malformed.xml"} <= asked
    assert any("/gone.xml" in e and "410 Gone" in e for e in again.errors)
    assert any("/busy.xml" in w and "Retry-After" in w for w in again.warnings)
    assert store.count_articles() == 2  # the once-slow feed came through this time
    # Once the Retry-After time has passed, the busy feed is asked again; the gone one never.
    server.requests.clear()
    pipeline.collect(settings, store, now=datetime.now(UTC) + timedelta(hours=2))
    asked = {r.path for r in server.requests}
    assert "/busy.xml" in asked and "/gone.xml" not in asked
    store.close()


# -- a 100 MB feed, streamed: cut at the cap, never held ---------------------------------------


class _Endless(BaseHTTPRequestHandler):
    """Streams up to 100 MB of valid-looking RSS items, counting what it managed to send."""

    protocol_version = "HTTP/1.1"
    timeout = 5
    chunk = b"<item><title>t</title><link>https://x.example/</link></item>" * 1000

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        chunked = self.path == "/chunked"
        self.send_response(200)
        self.send_header("Content-Type", "application/rss+xml")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(100 * 1024 * 1024))
        self.end_headers()
        sent = 0
        try:
            data = b'<rss version="2.0"><channel><title>big</title>'
            while sent < 100 * 1024 * 1024:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                sent += len(data)
                data = self.chunk
        except OSError:
            pass  # the client hung up at its cap, as it should
        finally:
            self.server.sent[self.path] = sent  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/declared", "/chunked"])
def test_hundred_megabyte_feed_is_cut_at_the_cap_while_streaming(path: str) -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    httpd.sent = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}{path}"
        started = time.monotonic()
        result = fetch(url, FetchLimits(allow_private_networks=True, timeout=5, deadline=20,
                                        max_bytes=2_000_000))
        assert time.monotonic() - started < 10
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    assert result.status == "error"
    assert result.error == "body larger than 2000000 bytes (after decompression)"
    # The client stopped reading at the cap: the server got rid of a few socket buffers'
    # worth more, not 100 MB.
    assert httpd.sent[path] < 30 * 1024 * 1024  # type: ignore[attr-defined]


# -- SSRF: every hop checked, with a fake resolver (a boundary fake, like DNS itself) ----------
# The client connects only to the address it checked, so a first hop that must pass the check
# is served on 127.0.0.2, which these tests allow in place of a public address.

PUBLIC_STAND_IN = ("127.0.0.2/32",)


@pytest.fixture
def public_server() -> Iterator[FeedServer]:
    with FeedServer(host="127.0.0.2") as srv:
        yield srv


def fake_resolver(names: dict[str, list[str]]) -> Callable[[str, int], object]:
    async def resolve(host: str, port: int) -> list[str]:
        if host in names:
            return names[host]
        return [host.strip("[]")]  # an address literal resolves to itself

    return resolve


@pytest.mark.parametrize(("target", "reason"), [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    ("http://10.0.0.1/feed", "10.0.0.1 is a private address"),
    ("http://metadata.test/computeMetadata/v1/", "169.254.169.254 is a link-local address"),
    ("http://intranet.test/feed", "10.0.0.1 is a private address"),
    ("http://mixed.test/feed", "10.0.0.2 is a private address"),
    ("http://[::ffff:127.0.0.1]:{port}/feed.xml", "127.0.0.1 is a loopback address"),
    ("http://127.1:{port}/feed.xml", "127.0.0.1 is a loopback address"),
])
def test_redirect_from_an_allowed_host_to_a_private_one_is_refused(
        public_server: FeedServer, target: str, reason: str) -> None:
    server, port = public_server, public_server.port
    names = {"feeds.test": ["127.0.0.2"],  # allowed as if public, so the first hop passes
             "metadata.test": ["169.254.169.254"], "intranet.test": ["10.0.0.1"],
             "mixed.test": ["93.184.216.34", "10.0.0.2"], "127.1": ["127.0.0.1"]}
    server.add("/feed.xml", rss("Should not be read"))
    server.redirect("/start", target.format(port=port), status=302)
    limits = FetchLimits(timeout=5, deadline=10, resolver=fake_resolver(names),  # type: ignore[arg-type]
                         allowed_networks=PUBLIC_STAND_IN)
    result = fetch(f"http://feeds.test:{port}/start", limits)
    assert result.status == "error" and result.drafts == []
    assert result.error is not None and reason in result.error
    assert "private networks not allowed" in result.error
    assert [r.path for r in server.requests] == ["/start"]  # the second hop never happened


def test_allowed_hops_are_followed_and_private_feeds_refused_in_collect(
        make_settings: Callable[..., Settings], public_server: FeedServer) -> None:
    server, port = public_server, public_server.port
    server.add("/feed.xml", rss("Reached"))
    server.redirect("/start", f"http://feeds.test:{port}/feed.xml", status=301)
    names = {"feeds.test": ["127.0.0.2"]}
    limits = FetchLimits(timeout=5, deadline=10, resolver=fake_resolver(names),  # type: ignore[arg-type]
                         allowed_networks=PUBLIC_STAND_IN)
    result = fetch(f"http://feeds.test:{port}/start", limits)
    assert result.status == "ok" and [d.title for d in result.drafts] == ["Reached"]
    assert [r.headers["host"] for r in server.requests] == [f"feeds.test:{port}"] * 2
    # With the real resolver and the default config, loopback is refused before any request.
    server.requests.clear()
    settings = make_settings(f'[[sources]]\ntype = "feed"\nurl = "{server.url("/feed.xml")}"\n',
                             folder=False)
    store = pipeline.open_store(settings)
    report = pipeline.collect(settings, store)
    assert len(report.errors) == 1 and "private networks not allowed" in report.errors[0]
    assert server.requests == [] and store.count_articles() == 0
    store.close()


# -- an encoded-word title cannot become a header --------------------------------------------


HOSTILE_TITLE = "=?UTF-8?Q?=0A?=Bcc: x@example.org"


def test_encoded_word_title_never_becomes_a_header(make_settings: Callable[..., Settings],
                                                   server: FeedServer, tmp_path: Path) -> None:
    server.add("/feed.xml", rss(HOSTILE_TITLE, "a&#13;&#10;Bcc: y@example.org"))
    # The subject template cannot name an article, so the same string goes in through it.
    settings = make_settings(f"""
[collect]
allow_private_networks = true
[mail]
outbox_dir = "{tmp_path / 'outbox'}"
[newsletter]
subject = "{{publication}} {HOSTILE_TITLE}"
[[sources]]
type = "feed"
url = "{server.url('/feed.xml')}"
""", folder=False)
    store = pipeline.open_store(settings)
    assert pipeline.collect(settings, store).new == 2
    assert sorted(a.title for a in store.latest_articles(5)) == [HOSTILE_TITLE,
                                                                 "a Bcc: y@example.org"]
    subscriptions.subscribe(store, "reader@example.org", "R", method="admin", ip=None,
                            user_agent=None, now=datetime.now(UTC), confirmed=True)
    issue = pipeline.build_issue(settings, store, now=datetime(2026, 11, 11, tzinfo=UTC)).issue
    assert issue is not None
    sending.start_sending(settings, store, issue)
    sending.run_worker(settings, store, issue)
    [eml] = (tmp_path / "outbox").glob("*.eml")
    raw = eml.read_bytes()
    head = raw.partition(b"\r\n\r\n")[0]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.keys() == ["From", "To", "Subject", "Date", "Message-ID", "List-Id",
                          "List-Unsubscribe", "List-Unsubscribe-Post", "MIME-Version",
                          "Content-Type"]
    assert msg["Subject"] == f"Test Ledger {HOSTILE_TITLE}"
    assert head.count(b"\r\nSubject:") == 1 and not re.search(rb"(?im)^bcc:", head)
    assert b"=?UTF-8?Q?" not in head  # re-encoded as our own words, never passed through
    assert msg.get_all("Bcc") is None
    text = msg.get_body(("plain",)).get_content()
    assert HOSTILE_TITLE in text and "a Bcc: y@example.org" in text
    store.close()


def test_a_feed_cannot_take_over_an_article_of_the_folder(
        make_settings: Callable[..., Settings], server: FeedServer, tmp_path: Path) -> None:
    server.add("/partner.xml", b"""<rss version="2.0"><channel><title>P</title>
<link>https://partner.example.net/</link><description>d</description>
<item><title>Defaced by link</title><link>https://ledger.example.org/articles/our-piece/</link>
<description>evil</description></item>
<item><title>Defaced by guid</title><link>https://partner.example.net/x</link>
<guid isPermaLink="false">our-own-id</guid><description>evil</description></item>
<item><title>Partner's own</title><link>https://partner.example.net/y</link></item>
</channel></rss>""")
    settings = make_settings(f"""
[collect]
allow_private_networks = true
[[sources]]
type = "feed"
url = "{server.url('/partner.xml')}"
""")
    folder = tmp_path / "articles"
    (folder / "a.md").write_text("---\ntitle: Our piece\ndate: 2026-11-01\n---\nOurs.\n", "utf-8")
    (folder / "b.md").write_text("---\ntitle: Our other piece\nid: our-own-id\n"
                                 "date: 2026-11-01\n---\nOurs too.\n", "utf-8")
    store = pipeline.open_store(settings)
    for _ in range(2):  # the second run does not parse the unchanged files again
        report = pipeline.collect(settings, store)
        assert report.errors == [] and store.count_articles() == 3
        assert sum("has the identity of an article in the folder" in w
                   for w in report.warnings) == 2
    assert sorted((a.title, a.content_html) for a in store.latest_articles(5)) == [
        ("Our other piece", "<p>Ours too.</p>\n"), ("Our piece", "<p>Ours.</p>\n"),
        ("Partner's own", "")]
    store.close()
